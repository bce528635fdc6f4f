"""A person's cross-hospital history, answered to enrolled agents for the doctor's prompts (issue 5).

``GET /v1/persons/{psn_no}/history?days=N`` (``protocol.wire.PERSON_HISTORY_PATH``). Rules, in the
order ``answer_history`` applies them; nothing is answered unless all pass:

1. The request carries ``Yibao-Agent``, ``Yibao-Time`` and ``Yibao-Signature``
   (``protocol.wire.sign_request``), else 401 ``request_unsigned``.
2. The agent is enrolled (403 ``agent_unknown``) and not revoked (403 ``agent_revoked``).
3. The signature verifies with the agent's enrolment key over the method, the path with its query
   string exactly as sent (the HTTP request target, e.g. ``/v1/persons/P1/history?days=90``) and the
   time header; else 422 ``signature_invalid`` and a security event.
4. The signed time is an ISO-8601 time with a UTC offset (else 400 ``decode_malformed``) within
   ``REQUEST_SKEW_S`` of the centre's clock (else 401 ``request_stale``): a captured request cannot
   be replayed later.
5. ``psn_no`` is 1-64 letters, digits, ``.``, ``_`` or ``-``; ``days`` (once, optional, default 90)
   is a whole number 1..366; else 400 ``decode_malformed``.
6. The answer: the person's ``hist_lines`` with ``setl_date`` on or after today minus ``days``
   (reversed settlements have none), oldest first in bill order, and the year-to-date totals of the
   person's unreversed settlements in today's calendar year across hospitals: total, fund share and
   its parts (``hifp_pay`` pooled, ``hifmi_pay`` critical-illness / large-amount, ``hifob_pay``
   other funds; a settlement without a split counts 0), and admissions (inpatient med_types as
   ``protocol.benefit.is_inpatient`` defines them). "Today" is the centre host's local date (run it
   with the pooling area's time zone, e.g. ``TZ=Asia/Shanghai``).
7. Every answered lookup is written to ``person_access_log`` (when, agent, hospital, SHA-256 of
   the psn_no, days, lines returned) before the answer leaves; if that write fails, there is no
   answer. Logs name agents and counts, never the psn_no.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec

from central.errors import (
    MalformedRequest,
    RequestStale,
    RequestUnsigned,
    SignatureInvalid,
)
from central.storage.store import AgentRow, Store, record_security_event
from protocol.errors import BadSignature
from protocol.wire import AGENT_HEADER, REQUEST_SKEW_S, SIGNATURE_HEADER, TIME_HEADER, verify_request

from .statements import enrolled_agent

__all__ = [
    "DEFAULT_DAYS",
    "LINE_FIELDS",
    "MAX_DAYS",
    "access_log",
    "answer_history",
    "authenticate",
    "check_query",
    "person_history",
    "psn_hash",
    "record_access",
]

log = logging.getLogger(__name__)

DEFAULT_DAYS = 90
MAX_DAYS = 366
_PSN_NO = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_DAYS = re.compile(r"^[0-9]{1,3}$")
_MAX_HEADER = 256

#: Fields of each line in the answer, in this order.
LINE_FIELDS = (
    "setl_id",
    "setl_date",
    "begn_date",
    "fixmedins_code",
    "med_type",
    "dise_codg",
    "dr_codg",
    "dept_codg",
    "hosp_lv",
    "feedetl_sn",
    "med_list_codg",
    "list_type",
    "cnt",
    "pric_fen",
    "amount_fen",
    "days",
)
_LINES_SQL = (
    f"SELECT {', '.join(LINE_FIELDS)} FROM hist_lines WHERE psn_no = ? AND setl_date >= ? "
    "ORDER BY setl_date, setl_id, rowid"
)
# A settlement counts unless a reversal from its own hospital cancels it (index on orig_setl_id).
# An admission is an inpatient settlement as ``protocol.benefit.is_inpatient`` says: med_type 2x, 2xxx
# (21 and its local subtypes, 22-28…) or 52 (maternity), so the centre and the agent count alike.
_YTD_SQL = (
    "SELECT coalesce(sum(s.medfee_sumamt), 0), coalesce(sum(s.fund_pay_sumamt), 0), "
    "coalesce(sum(s.hifp_pay), 0), coalesce(sum(s.hifmi_pay), 0), coalesce(sum(s.hifob_pay), 0), "
    "count(*) FILTER (WHERE s.med_type LIKE '2%' OR s.med_type = '52') "
    "FROM settlements AS s WHERE s.psn_no = ? AND s.setl_date BETWEEN ? AND ? AND s.kind = 'setl' "
    "AND NOT EXISTS (SELECT 1 FROM settlements AS r WHERE r.orig_setl_id = s.setl_id "
    "AND r.kind = 'revs' AND r.fixmedins_code = s.fixmedins_code)"
)
#: The same totals per medical type, so the agent can sum the ones in the bill's benefit pool.
_YTD_BY_TYPE_SQL = (
    "SELECT s.med_type, coalesce(sum(s.medfee_sumamt), 0), coalesce(sum(s.hifp_pay), 0), "
    "coalesce(sum(coalesce(s.hifmi_pay, 0) + coalesce(s.hifob_pay, 0)), 0), count(*) "
    "FROM settlements AS s WHERE s.psn_no = ? AND s.setl_date BETWEEN ? AND ? AND s.kind = 'setl' "
    "AND NOT EXISTS (SELECT 1 FROM settlements AS r WHERE r.orig_setl_id = s.setl_id "
    "AND r.kind = 'revs' AND r.fixmedins_code = s.fixmedins_code) GROUP BY s.med_type"
)
_json = msgspec.json.Encoder()


def psn_hash(psn_no: str) -> str:
    """What the access log holds instead of the psn_no: hex SHA-256 of its UTF-8 text."""
    return hashlib.sha256(psn_no.encode("utf-8")).hexdigest()


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if not value:
        raise RequestUnsigned(
            f"personal data is answered only to a request signed by an enrolled agent: {AGENT_HEADER}, "
            f"{TIME_HEADER} and {SIGNATURE_HEADER} are required ({name} is missing)"
        )
    if len(value) > _MAX_HEADER:
        raise MalformedRequest(f"{name} is longer than {_MAX_HEADER} characters")
    return value


def authenticate(
    store: Store,
    method: str,
    path_qs: str,
    headers: Mapping[str, str],
    *,
    remote: str | None = None,
    now: datetime | None = None,
) -> AgentRow:
    """Rules 1-4: the enrolled, unrevoked agent that signed this request just now, or a refusal."""
    agent_id = _header(headers, AGENT_HEADER)
    at = _header(headers, TIME_HEADER)
    sig = _header(headers, SIGNATURE_HEADER)
    agent = enrolled_agent(store, agent_id)
    try:
        verify_request(agent.public_key, agent_id, method, path_qs, at, sig)
    except BadSignature as exc:
        error = SignatureInvalid(exc.message)
        log.warning("security event from agent %s (%s): %s (history request)", agent_id, remote, error.code)
        store.write(lambda conn: record_security_event(conn, agent_id, error.code, error.message, remote))
        raise error from None
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise MalformedRequest(f"{TIME_HEADER} {at!r} is not an ISO-8601 time with a UTC offset")
    skew = abs(((now or datetime.now(UTC)) - when).total_seconds())
    if skew > REQUEST_SKEW_S:
        raise RequestStale(
            f"{TIME_HEADER} {at} is {skew:.0f} s from the centre's clock (at most {REQUEST_SKEW_S:.0f} s): "
            "sign each request when it is sent, and check the agent's clock (NTP)"
        )
    return agent


def check_query(psn_no: str, days: Sequence[str]) -> tuple[str, int]:
    """Rule 5: the psn_no and the number of days asked for (``days``: every value of the parameter)."""
    if not _PSN_NO.match(psn_no):
        raise MalformedRequest("psn_no must be 1-64 letters, digits, '.', '_' or '-'")
    values = list(days)
    if len(values) > 1:
        raise MalformedRequest("days is given more than once")
    if not values:
        return psn_no, DEFAULT_DAYS
    text = values[0]
    if not _DAYS.match(text) or not 1 <= int(text) <= MAX_DAYS:
        raise MalformedRequest(f"days must be a whole number from 1 to {MAX_DAYS}")
    return psn_no, int(text)


@dataclass(frozen=True, slots=True)
class History:
    lines: list[dict[str, Any]]
    ytd: dict[str, Any]


def person_history(conn: sqlite3.Connection, psn_no: str, days: int, today: date) -> History:
    """Rule 6: the lines since ``today - days`` and the year-to-date totals of ``today``'s year."""
    since = (today - timedelta(days=days)).isoformat()
    lines = [dict(zip(LINE_FIELDS, row, strict=True)) for row in conn.execute(_LINES_SQL, (psn_no, since))]
    year = today.year
    medfee, fund, hifp, hifmi, hifob, admissions = conn.execute(
        _YTD_SQL, (psn_no, f"{year:04d}-01-01", f"{year:04d}-12-31")
    ).fetchone()
    ytd = {
        "year": year,
        "medfee_sumamt": medfee,
        "fund_pay_sumamt": fund,
        "hifmi_pay": hifmi,
        "admissions": admissions,
        "hifp_pay": hifp,
        "hifob_pay": hifob,
        "by_med_type": {
            mt: {"medfee_sumamt": m, "hifp_pay": h, "large_amount_paid": la, "settlements": n}
            for mt, m, h, la, n in conn.execute(
                _YTD_BY_TYPE_SQL, (psn_no, f"{year:04d}-01-01", f"{year:04d}-12-31")
            )
        },
    }
    return History(lines, ytd)


def record_access(
    conn: sqlite3.Connection, agent: AgentRow, psn_no: str, days: int, rows: int, at: str
) -> None:
    conn.execute(
        "INSERT INTO person_access_log (at, agent_id, fixmedins_code, psn_hash, days, rows) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (at, agent.agent_id, agent.fixmedins_code, psn_hash(psn_no), days, rows),
    )


def answer_history(
    store: Store,
    *,
    method: str,
    path_qs: str,
    headers: Mapping[str, str],
    psn_no: str,
    days: Sequence[str] = (),
    remote: str | None = None,
    now: datetime | None = None,
    today: date | None = None,
) -> bytes:
    """Rules 1-7 for one request; the JSON answer, or a ``CentralError``. Blocking: run it off the loop."""
    now = now or datetime.now(UTC)
    agent = authenticate(store, method, path_qs, headers, remote=remote, now=now)
    psn_no, n_days = check_query(psn_no, days)
    today = today or datetime.now().astimezone().date()
    history = store.read(lambda conn: person_history(conn, psn_no, n_days, today))
    as_of = now.isoformat(timespec="seconds")
    store.write(lambda conn: record_access(conn, agent, psn_no, n_days, len(history.lines), as_of))
    log.debug("history for agent %s: %d lines over %d days", agent.agent_id, len(history.lines), n_days)
    return _json.encode(
        {"psn_no": psn_no, "days": n_days, "as_of": as_of, "lines": history.lines, "ytd": history.ytd}
    )


def access_log(
    conn: sqlite3.Connection, *, psn_no: str | None = None, agent_id: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Answered lookups, newest first; ``psn_no`` is matched through its hash (never stored)."""
    cols = ("id", "at", "agent_id", "fixmedins_code", "psn_hash", "days", "rows")
    where, params = [], []
    if psn_no is not None:
        where.append("psn_hash = ?")
        params.append(psn_hash(psn_no))
    if agent_id is not None:
        where.append("agent_id = ?")
        params.append(agent_id)
    sql = f"SELECT {', '.join(cols)} FROM person_access_log"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
    return [dict(zip(cols, row, strict=True)) for row in rows]
