"""Agents' signed policy reports: what each agent runs, and how far behind the centre it is.

Rules:

1. A report is stored only when it verifies with the agent's enrolment key
   (``protocol.wire.verify_report``); an unknown or revoked agent is refused, a bad signature is
   refused and recorded as a security event.
2. Only the newest report (by its ``at``) is kept per agent; an older one replayed later is
   accepted (it is genuine) but does not overwrite the newer one, unless the held one claims a
   time in the future (an agent clock since corrected must not freeze its view).
3. "Behind" is, per bundle kind, the centre's newest seq for the agent's pooling area minus the
   seq the agent reports (0 when it never reported one), never below 0.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from protocol.bundles import KINDS
from protocol.errors import BadSignature, DecodeError
from protocol.wire import REPORT_CODEC, PolicyReport, SignedCodec

from .errors import (
    AgentMismatch,
    AgentRevoked,
    AgentUnknown,
    LimitExceededError,
    MalformedRequest,
    SignatureInvalid,
)
from .policy import newest_seqs
from .store import AgentRow, Store, agent_summary, get_agent, list_agents, now_iso, record_security_event

__all__ = ["MAX_REPORT_BYTES", "agent_views", "newer_than_held", "record_report", "verified_statement"]

_M = TypeVar("_M")

log = logging.getLogger(__name__)

MAX_REPORT_BYTES = 64 * 1024
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_CODE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


_FUTURE_SLACK = timedelta(minutes=5)


def _aware(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _check(report: PolicyReport) -> None:
    try:
        datetime.fromisoformat(report.at)
    except ValueError:
        raise MalformedRequest("the report's 'at' is not an ISO-8601 time") from None
    if len(report.versions) > 32 or not all(
        _NAME.match(k) and type(v) is int and 0 <= v < 2**53 for k, v in report.versions.items()
    ):
        raise MalformedRequest("versions must map up to 32 lower-case names to non-negative integers")
    if len(report.problems) > 64 or not all(_CODE.match(p) for p in report.problems):
        raise MalformedRequest("problems must be up to 64 codes of 1-64 letters, digits, '_', '.', ':', '-'")


def verified_statement(
    store: Store,
    data: bytes,
    codec: SignedCodec[_M],
    *,
    max_bytes: int,
    check: Callable[[_M], None],
    remote: str | None,
    peer_agent: str | None,
) -> tuple[_M, AgentRow]:
    """Decode, check and verify an agent's signed statement (a policy report, a heartbeat).

    Refused: malformed or oversized bytes; a statement of another agent than the client
    certificate (``peer_agent``); an unknown or revoked agent; a bad signature, which is also
    recorded as a security event because only a forger or a broken agent sends one.
    """
    try:
        message = codec.decode(data, max_bytes)
    except DecodeError as exc:
        if len(data) > max_bytes:
            raise LimitExceededError(exc.message) from None
        raise MalformedRequest(exc.message) from None
    check(message)
    agent_id = message.agent_id  # type: ignore[attr-defined]
    if peer_agent is not None and agent_id != peer_agent:
        raise AgentMismatch(
            f"the {codec.what} is signed by agent {agent_id!r} but came with the client certificate of "
            f"{peer_agent!r}; each agent sends with its own certificate"
        )
    agent = store.read(lambda conn: get_agent(conn, agent_id))
    if agent is None:
        raise AgentUnknown(f"agent {agent_id!r} is not enrolled; enrol it with a new token")
    if agent.revoked:
        raise AgentRevoked(f"agent {agent_id} was revoked at {agent.revoked_at}; re-enrol it")
    try:
        codec.verify(message, agent.public_key)
    except BadSignature as exc:
        error = SignatureInvalid(exc.message)
        log.warning("security event from agent %s (%s): %s", agent_id, remote, error.code)
        store.write(lambda conn: record_security_event(conn, agent_id, error.code, error.message, remote))
        raise error from None
    return message, agent


def newer_than_held(held_at: str | None, at: str) -> bool:
    """Whether a statement made at ``at`` replaces one held from ``held_at`` (the newest is kept).

    An older one replayed later is genuine but must not overwrite a newer one, unless the held one
    claims a time in the future: an agent clock since corrected must not freeze the view.
    """
    if held_at is None:
        return True
    held = _aware(held_at)
    return not (held > _aware(at) and held <= datetime.now(UTC) + _FUTURE_SLACK)


def record_report(
    store: Store, data: bytes, *, remote: str | None = None, peer_agent: str | None = None
) -> bool:
    """Verify and store an agent's report; True when it is now the agent's newest.

    ``peer_agent``: the agent id of the TLS client certificate; a report of another agent is refused.
    """
    report, _ = verified_statement(
        store, data, REPORT_CODEC, max_bytes=MAX_REPORT_BYTES, check=_check, remote=remote,
        peer_agent=peer_agent,
    )  # fmt: skip

    def tx(conn: sqlite3.Connection) -> bool:
        held = conn.execute(
            "SELECT reported_at FROM agent_reports WHERE agent_id = ?", (report.agent_id,)
        ).fetchone()
        if not newer_than_held(held[0] if held else None, report.at):
            return False
        conn.execute(
            "INSERT INTO agent_reports (agent_id, reported_at, received_at, versions, problems) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET reported_at = excluded.reported_at, "
            "received_at = excluded.received_at, versions = excluded.versions, problems = excluded.problems",
            (
                report.agent_id, report.at, now_iso(), json.dumps(dict(sorted(report.versions.items()))),
                json.dumps(list(report.problems)),
            ),
        )  # fmt: skip
        return True

    return store.write(tx)


def agent_views(conn: sqlite3.Connection, hospital: str | None = None) -> list[dict[str, Any]]:
    """``GET /v1/agents``: each agent's summary, pooling area, last report and per-kind lag."""
    newest = newest_seqs(conn)
    reports = {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT agent_id, reported_at, received_at, versions, problems FROM agent_reports"
        )
    }
    areas = dict(conn.execute("SELECT agent_id, pooling_area FROM agents"))
    views = []
    agent: AgentRow
    for agent in list_agents(conn, hospital):
        view = agent_summary(agent)
        area = areas.get(agent.agent_id)
        view["pooling_area"] = area
        held = reports.get(agent.agent_id)
        versions: dict[str, int] = json.loads(held[2]) if held else {}
        view["policy"] = (
            {
                "reported_at": held[0],
                "received_at": held[1],
                "versions": versions,
                "problems": json.loads(held[3]),
            }
            if held
            else None
        )
        view["behind"] = {
            kind: max(0, newest.get((area, kind), 0) - versions.get(kind, 0)) if area else None
            for kind in KINDS
        }
        views.append(view)
    return views
