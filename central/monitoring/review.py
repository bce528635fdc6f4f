"""The review workflow: initial review → case → decision → effect; rule precision (``docs/MONITORING.md``).

States (``suspicions.status``): ``new`` → ``confirmed`` | ``dismissed`` (initial review, once, a
reason required) → ``in_case`` (gathered into a case of its own area) → ``decided`` (a decision was
made on its case). ``shadow`` suspicions (a shadow-mode rule's hits) may be reviewed too, so the
rule's precision is known before it is switched on, but they keep status ``shadow`` and can never
go into a case: a shadow rule must not cost anyone anything.

Cases (``cases.status``): ``open`` → ``decided`` (at least one decision) → ``closed``. Notes,
evidence and assignment are taken until the case is closed; suspicions are added while it is
``open``; decisions are made while it is open or decided (a deduction and a warning may follow each
other); a closed case takes nothing.

Every action is one write transaction that also writes its ``audit_log`` row
(``central.policy.bundles.audit_in``), so the log holds exactly what happened. The one exception is a
blacklist decision's effect: ``Policy.blacklist_add`` publishes in transactions of its own, so the
decision is first recorded ``pending_publish`` and then marked ``effective`` with the bundle seq;
if publishing fails (or there are no operator keys, as in the API server) it stays pending until
``publish_pending`` (``yibao-central decisions publish``) signs it.

Every function takes the acting ``Operator``; ids outside the operator's areas are ``NotFound``
(see ``central.operators``).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import Collection, Iterable, Sequence
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from securesystemslib.signer import CryptoSigner

from central.errors import (
    AreaForbidden,
    BlacklistEntryUnknown,
    CaseAreaMismatch,
    CentralError,
    MonitorInputInvalid,
    NotFound,
    SelfApproval,
    WorkflowState,
)
from central.operators import Operator, get_operator, may_see, require_area, require_supervisor
from central.policy.bundles import Actor, Policy, area_of_hospital, audit_in
from central.policy.documents import check_blacklist_fields
from central.storage.store import Store, Where, now_iso

from .suspicions import get_suspicion, list_suspicions

__all__ = [
    "DECISION_TARGETS",
    "OUTCOMES",
    "add_note",
    "add_suspicions",
    "assign_case",
    "close_case",
    "get_case",
    "lift_ended_suspensions",
    "list_cases",
    "list_decisions",
    "make_decision",
    "open_case",
    "publish_pending",
    "review_suspicion",
    "rule_quality",
    "scoped_suspicions",
    "visible_suspicion",
    "yuan_to_fen",
]

log = logging.getLogger(__name__)

OUTCOMES = {"confirm": "confirmed", "dismiss": "dismissed"}
#: What each decision kind may target.
DECISION_TARGETS: dict[str, tuple[str, ...]] = {
    "deduction": ("hospital",),
    "warning": ("hospital", "department", "doctor", "person"),
    "suspension": ("doctor", "hospital"),
    "blacklist": ("card", "person", "employer"),
}
NOTE_KINDS = ("note", "evidence")
#: Decisions whose effect is a signed blacklist bundle: a blacklist entry, or a suspension (list type
#: ``doctor`` / ``hospital``) that agents enforce at settlement until it is lifted after ``until``.
PUBLISHED_KINDS = ("blacklist", "suspension")
_YUAN = re.compile(r"^[0-9]{1,10}(?:\.[0-9]{1,2})?$")
_TARGET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")


# -- inputs ------------------------------------------------------------------------------------


def yuan_to_fen(text: str | int) -> int:
    """Yuan as decimal text (``"1234.50"``) → exact fen; more than 2 decimals, signs or zero are refused."""
    raw = str(text).strip() if isinstance(text, str | int) and not isinstance(text, bool) else None
    if raw is None or not _YUAN.match(raw):
        raise MonitorInputInvalid(
            f"amount {text!r} must be yuan as decimal text with at most 2 decimals, like 1234.50"
        )
    try:
        fen = Decimal(raw) * 100
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        raise MonitorInputInvalid(f"amount {text!r} is not a number") from None
    if fen <= 0 or fen != fen.to_integral_value():
        raise MonitorInputInvalid(f"amount {text!r} must be more than 0")
    return int(fen)


def _reason(reason: str | None, what: str = "reason") -> str:
    text = (reason or "").strip()
    if not 1 <= len(text) <= 500:
        raise MonitorInputInvalid(f"a {what} is required (1-500 characters)")
    return text


def _ids(ids: Iterable[int], what: str) -> list[int]:
    out: list[int] = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or i < 1:
            raise MonitorInputInvalid(f"{what} ids must be positive integers, not {i!r}")
        if i not in out:
            out.append(i)
    if not out:
        raise MonitorInputInvalid(f"name at least one {what}")
    return out


# -- scope -------------------------------------------------------------------------------------


def visible_suspicion(conn: sqlite3.Connection, op: Operator, suspicion_id: int) -> dict[str, Any]:
    """The suspicion if it is in the operator's areas; otherwise ``NotFound``, as for an unknown id."""
    row = get_suspicion(conn, suspicion_id)
    if row is None or not may_see(op, row["area"]):
        raise NotFound(
            f"suspicion {suspicion_id} does not exist in your areas ({', '.join(sorted(op.scope))})"
        )
    return row


def _case_row(conn: sqlite3.Connection, op: Operator, case_id: int) -> dict[str, Any]:
    row = conn.execute(
        "SELECT id, area, title, status, assignee, created_by, created_at, updated_at FROM cases "
        "WHERE id = ?",
        (case_id,),
    ).fetchone()
    if row is None or not may_see(op, row[1]):
        raise NotFound(f"case {case_id} does not exist in your areas ({', '.join(sorted(op.scope))})")
    keys = ("id", "area", "title", "status", "assignee", "created_by", "created_at", "updated_at")
    return dict(zip(keys, row, strict=True))


def _note(
    conn: sqlite3.Connection,
    case_id: int,
    op: Operator,
    kind: str,
    text: str,
    detail: dict[str, Any],
    at: str,
) -> None:
    conn.execute(
        "INSERT INTO case_notes (case_id, at, operator, kind, text, detail) VALUES (?, ?, ?, ?, ?, ?)",
        (case_id, at, op.name, kind, text, json.dumps(detail, ensure_ascii=False)),
    )
    conn.execute("UPDATE cases SET updated_at = ? WHERE id = ?", (at, case_id))


def _assignee(conn: sqlite3.Connection, name: str, area: str) -> str:
    other = get_operator(conn, name)
    if not may_see(other, area):
        raise AreaForbidden(
            f"operator {name} does not manage pooling area {area}; assign the case to one who does"
        )
    return other.name


def _gather(conn: sqlite3.Connection, op: Operator, ids: list[int], area: str | None) -> str:
    """Check suspicions can join a case (of ``area``, or a new one); returns the one area they share."""
    areas = set()
    for sid in ids:
        s = visible_suspicion(conn, op, sid)
        if s["status"] == "shadow":
            raise WorkflowState(
                f"suspicion {sid} comes from a shadow-mode rule: it is reviewed for the rule's precision "
                "only and never goes into a case"
            )
        if s["status"] != "confirmed" or s["case_id"] is not None:
            where = f" (case {s['case_id']})" if s["case_id"] is not None else ""
            raise WorkflowState(
                f"suspicion {sid} is {s['status']}{where}; only confirmed suspicions not in a case can be "
                "added"
            )
        areas.add(s["area"])
    if area is not None and areas - {area}:
        raise CaseAreaMismatch(
            f"case is of pooling area {area}; suspicions of {', '.join(sorted(areas - {area}))} need a case "
            "of their own"
        )
    if len(areas) > 1:
        raise CaseAreaMismatch(
            f"the suspicions span pooling areas {', '.join(sorted(areas))}; a case gathers one area's"
        )
    return areas.pop()


# -- initial review ----------------------------------------------------------------------------


def review_suspicion(
    store: Store, op: Operator, suspicion_id: int, outcome: str, reason: str
) -> dict[str, Any]:
    """Confirm or dismiss a ``new`` suspicion (or review a ``shadow`` one for precision); once only."""
    if outcome not in OUTCOMES:
        raise MonitorInputInvalid(f"outcome {outcome!r} must be confirm or dismiss")
    why = _reason(reason)

    def tx(conn: sqlite3.Connection) -> dict[str, Any]:
        s = visible_suspicion(conn, op, suspicion_id)
        held = conn.execute(
            "SELECT outcome, operator, at FROM reviews WHERE suspicion_id = ? ORDER BY id LIMIT 1",
            (suspicion_id,),
        ).fetchone()
        if held is not None:
            raise WorkflowState(
                f"suspicion {suspicion_id} was already reviewed ({held[0]} by {held[1]} at {held[2]}); "
                "a suspicion is reviewed once"
            )
        if s["status"] not in ("new", "shadow"):
            raise WorkflowState(
                f"suspicion {suspicion_id} is {s['status']}; only new suspicions are reviewed"
            )
        at = now_iso()
        conn.execute(
            "INSERT INTO reviews (suspicion_id, at, operator, outcome, reason) VALUES (?, ?, ?, ?, ?)",
            (suspicion_id, at, op.name, outcome, why),
        )
        status = s["status"] if s["status"] == "shadow" else OUTCOMES[outcome]
        conn.execute("UPDATE suspicions SET status = ? WHERE id = ?", (status, suspicion_id))
        audit_in(conn, op.actor(why), f"suspicion.{outcome}", {
            "suspicion": suspicion_id, "area": s["area"], "rule_id": s["rule_id"],
            "rule_version": s["rule_version"], "status": status,
        })  # fmt: skip
        return {
            **s,
            "status": status,
            "review": {"outcome": outcome, "operator": op.name, "at": at, "reason": why},
        }

    return store.write(tx)


def scoped_suspicions(
    conn: sqlite3.Connection, op: Operator, *, area: str | None = None, **filters: Any
) -> list[dict[str, Any]]:
    """``list_suspicions`` over the operator's areas, or one of them (``area``; others: ``AreaForbidden``)."""
    if area is not None:
        require_area(op, area)
    return list_suspicions(conn, areas=[area] if area is not None else op.scope, **filters)


# -- cases -------------------------------------------------------------------------------------


def open_case(
    store: Store, op: Operator, suspicion_ids: Iterable[int], title: str, *, assignee: str | None = None
) -> dict[str, Any]:
    """Gather confirmed suspicions of one pooling area into a new open case."""
    ids = _ids(suspicion_ids, "suspicion")
    title = (title or "").strip()
    if not 1 <= len(title) <= 200:
        raise MonitorInputInvalid("a case needs a title (1-200 characters)")

    def tx(conn: sqlite3.Connection) -> int:
        area = _gather(conn, op, ids, None)
        who = _assignee(conn, assignee, area) if assignee else None
        at = now_iso()
        case_id = conn.execute(
            "INSERT INTO cases (area, title, status, assignee, created_by, created_at, updated_at) "
            "VALUES (?, ?, 'open', ?, ?, ?, ?)",
            (area, title, who, op.name, at, at),
        ).lastrowid
        assert case_id is not None
        conn.executemany(
            "UPDATE suspicions SET status = 'in_case', case_id = ? WHERE id = ?", [(case_id, i) for i in ids]
        )
        _note(
            conn, case_id, op, "status", "opened", {"status": "open", "suspicions": ids, "assignee": who}, at
        )
        audit_in(
            conn, op.actor(), "case.open", {"case": case_id, "area": area, "suspicions": ids, "assignee": who}
        )
        return case_id

    case_id = store.write(tx)
    return store.read(lambda conn: get_case(conn, op, case_id))


def _open_for(
    conn: sqlite3.Connection, op: Operator, case_id: int, allowed: Collection[str], what: str
) -> dict:
    case = _case_row(conn, op, case_id)
    if case["status"] not in allowed:
        raise WorkflowState(f"case {case_id} is {case['status']}; {what}")
    return case


def add_suspicions(store: Store, op: Operator, case_id: int, suspicion_ids: Iterable[int]) -> dict[str, Any]:
    """Add confirmed suspicions of the case's area to an open case."""
    ids = _ids(suspicion_ids, "suspicion")

    def tx(conn: sqlite3.Connection) -> None:
        case = _open_for(conn, op, case_id, ("open",), "suspicions are added to open cases only")
        _gather(conn, op, ids, case["area"])
        conn.executemany(
            "UPDATE suspicions SET status = 'in_case', case_id = ? WHERE id = ?", [(case_id, i) for i in ids]
        )
        text = f"added suspicions {', '.join(map(str, ids))}"
        _note(conn, case_id, op, "evidence", text, {"suspicions": ids}, now_iso())
        audit_in(conn, op.actor(), "case.add", {"case": case_id, "area": case["area"], "suspicions": ids})

    store.write(tx)
    return store.read(lambda conn: get_case(conn, op, case_id))


def assign_case(store: Store, op: Operator, case_id: int, assignee: str, reason: str = "") -> dict[str, Any]:
    """Give a case to an operator who manages its area."""

    def tx(conn: sqlite3.Connection) -> None:
        case = _open_for(conn, op, case_id, ("open", "decided"), "a closed case is not reassigned")
        who = _assignee(conn, assignee, case["area"])
        at = now_iso()
        conn.execute("UPDATE cases SET assignee = ? WHERE id = ?", (who, case_id))
        _note(conn, case_id, op, "assign", reason.strip() or f"assigned to {who}",
              {"assignee": who, "was": case["assignee"]}, at)  # fmt: skip
        audit_in(
            conn, op.actor(reason), "case.assign", {"case": case_id, "area": case["area"], "assignee": who}
        )

    store.write(tx)
    return store.read(lambda conn: get_case(conn, op, case_id))


def add_note(
    store: Store,
    op: Operator,
    case_id: int,
    text: str,
    *,
    kind: str = "note",
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A note or a piece of evidence (free text, and ``detail``: references, figures) on a case not closed."""
    if kind not in NOTE_KINDS:
        raise MonitorInputInvalid(f"note kind {kind!r} must be note or evidence")
    text = (text or "").strip()
    if not 1 <= len(text) <= 4000:
        raise MonitorInputInvalid("a note needs text (1-4000 characters)")
    if detail is not None and not isinstance(detail, dict):
        raise MonitorInputInvalid("a note's detail must be a JSON object")

    def tx(conn: sqlite3.Connection) -> None:
        case = _open_for(conn, op, case_id, ("open", "decided"), "a closed case takes no notes")
        _note(conn, case_id, op, kind, text, detail or {}, now_iso())
        audit_in(conn, op.actor(), f"case.{kind}", {"case": case_id, "area": case["area"]})

    store.write(tx)
    return store.read(lambda conn: get_case(conn, op, case_id))


def close_case(store: Store, op: Operator, case_id: int, reason: str) -> dict[str, Any]:
    """Close a case (supervisor); it takes nothing more. Its suspicions keep their status."""
    require_supervisor(op, "close a case")
    why = _reason(reason)

    def tx(conn: sqlite3.Connection) -> None:
        case = _open_for(conn, op, case_id, ("open", "decided"), "it is already closed")
        at = now_iso()
        conn.execute("UPDATE cases SET status = 'closed' WHERE id = ?", (case_id,))
        _note(conn, case_id, op, "status", why, {"status": "closed", "was": case["status"]}, at)
        audit_in(conn, op.actor(why), "case.close", {"case": case_id, "area": case["area"]})

    store.write(tx)
    return store.read(lambda conn: get_case(conn, op, case_id))


_DECISION_COLUMNS = (
    "d.id, d.case_id, d.at, d.operator, d.kind, d.target_type, d.target_id, d.amount_fen, d.until, d.reason, "
    "d.status, d.bundle_area, d.bundle_seq, c.area"
)


def _decision_dict(row: Sequence[Any]) -> dict[str, Any]:
    keys = [c.split(".")[1] for c in _DECISION_COLUMNS.split(", ")]
    return dict(zip(keys, row, strict=True))


def get_case(conn: sqlite3.Connection, op: Operator, case_id: int) -> dict[str, Any]:
    """A case of the operator's areas with its suspicions, notes and decisions."""
    case = _case_row(conn, op, case_id)
    case["suspicions"] = list_suspicions(
        conn, areas=[case["area"]], status=None, case_id=case_id, limit=10_000
    )
    case["amount_fen"] = sum(s["amount_fen"] for s in case["suspicions"])
    case["notes"] = [
        {"id": i, "at": at, "operator": who, "kind": kind, "text": text, "detail": json.loads(detail)}
        for i, at, who, kind, text, detail in conn.execute(
            "SELECT id, at, operator, kind, text, detail FROM case_notes WHERE case_id = ? ORDER BY id",
            (case_id,),
        )
    ]
    case["decisions"] = [
        _decision_dict(r)
        for r in conn.execute(
            f"SELECT {_DECISION_COLUMNS} FROM decisions AS d JOIN cases AS c ON c.id = d.case_id "
            "WHERE d.case_id = ? ORDER BY d.id",
            (case_id,),
        )
    ]
    return case


def list_cases(
    conn: sqlite3.Connection,
    areas: Collection[str] | None,
    *,
    status: str | None = None,
    assignee: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Cases of ``areas`` (None: all) with their suspicions' count, money and top score; highest first."""
    where = Where()
    if not where.any_of("c.area", areas):
        return []
    where.equal(("c.status", status), ("c.assignee", assignee))
    sql = (
        "SELECT c.id, c.area, c.title, c.status, c.assignee, c.created_by, c.created_at, c.updated_at, "
        "count(s.id), coalesce(sum(s.amount_fen), 0), coalesce(max(s.score), 0) "
        f"FROM cases AS c LEFT JOIN suspicions AS s ON s.case_id = c.id{where.sql} "
        "GROUP BY c.id ORDER BY 11 DESC, 10 DESC, c.id LIMIT ? OFFSET ?"
    )
    params = [*where.params, max(0, int(limit)), max(0, int(offset))]
    keys = ("id", "area", "title", "status", "assignee", "created_by", "created_at", "updated_at",
            "suspicions", "amount_fen", "score")  # fmt: skip
    return [dict(zip(keys, r, strict=True)) for r in conn.execute(sql, params)]


# -- decisions ---------------------------------------------------------------------------------


def _hospital_area(conn: sqlite3.Connection, hospital: str) -> str | None:
    """The pooling area a hospital settles in: its agents' area, else its visits', else its code's."""
    for sql in (
        "SELECT pooling_area FROM agents WHERE fixmedins_code = ? AND pooling_area IS NOT NULL LIMIT 1",
        "SELECT area FROM hist_visits WHERE fixmedins_code = ? AND area IS NOT NULL LIMIT 1",
    ):
        row = conn.execute(sql, (hospital,)).fetchone()
        if row is not None:
            return row[0]
    return area_of_hospital(hospital)


def _check_decision(
    kind: str, target_type: str, target_id: str, amount: str | int | None, until: str | None, reason: str
) -> tuple[int | None, str | None, str]:
    if kind not in DECISION_TARGETS:
        raise MonitorInputInvalid(f"decision kind {kind!r} must be one of {', '.join(DECISION_TARGETS)}")
    if target_type not in DECISION_TARGETS[kind]:
        raise MonitorInputInvalid(
            f"a {kind} targets a {' or '.join(DECISION_TARGETS[kind])}, not {target_type!r}"
        )
    if not isinstance(target_id, str) or not _TARGET_ID.match(target_id):
        raise MonitorInputInvalid("the target id must be 1-64 letters, digits, '.', '_', '/' or '-'")
    why = _reason(reason)
    fen = None
    if kind == "deduction":
        if amount is None:
            raise MonitorInputInvalid("a deduction needs an amount in yuan, like 1234.50")
        fen = yuan_to_fen(amount)
    elif amount is not None:
        raise MonitorInputInvalid(f"a {kind} takes no amount")
    day = None
    if kind == "suspension":
        if not until:
            raise MonitorInputInvalid("a suspension needs an until date, like 2027-06-30")
        try:
            parsed = date.fromisoformat(until)
        except (TypeError, ValueError):
            raise MonitorInputInvalid(f"until {until!r} is not a date like 2027-06-30") from None
        if parsed < date.today():
            raise MonitorInputInvalid(f"until {until} is in the past")
        day = parsed.isoformat()
    elif until:
        raise MonitorInputInvalid(f"a {kind} takes no until date")
    if kind == "blacklist":
        problems, _ = check_blacklist_fields(target_type, target_id, why[:200], "", None)
        if problems:
            raise MonitorInputInvalid("; ".join(f"{field}: {message}" for field, message in problems))
    return fen, day, why


def _publish(
    store: Store, op: Operator, policy: Policy, signers: Sequence[CryptoSigner], decision: dict[str, Any]
) -> dict[str, Any]:
    """The blacklist decision's effect: a signed bundle of the case's area; then ``effective``."""
    reason = decision["reason"]
    if decision["kind"] == "suspension":
        reason = f"suspended until {decision['until']}: {reason}"
    published = policy.blacklist_add(
        op.actor(decision["reason"]), signers, list_type=decision["target_type"],
        entry_id=decision["target_id"], reason=reason[:200], source=f"case {decision['case_id']}",
        area=decision["area"],
    )  # fmt: skip

    def tx(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE decisions SET status = 'effective', bundle_area = ?, bundle_seq = ? WHERE id = ?",
            (published.area, published.seq, decision["id"]),
        )
        audit_in(conn, op.actor(), "decision.publish", {
            "decision": decision["id"], "case": decision["case_id"], "area": published.area,
            "seq": published.seq,
        })  # fmt: skip

    store.write(tx)
    log.info("decision %d published as %s blacklist seq %d", decision["id"], published.area, published.seq)
    return {**decision, "status": "effective", "bundle_area": published.area, "bundle_seq": published.seq}


def _second_person(conn: sqlite3.Connection, op: Operator, case_id: int, kind: str) -> None:
    """The two-person rule of what agents enforce: a blacklist or suspension is decided by a supervisor
    who did not confirm any of the case's suspicions (the reviewer is the first person, they the
    second), so no single operator both finds and punishes."""
    confirmed = conn.execute(
        "SELECT 1 FROM reviews AS r JOIN suspicions AS s ON s.id = r.suspicion_id "
        "WHERE s.case_id = ? AND r.outcome = 'confirm' AND r.operator = ? LIMIT 1",
        (case_id, op.name),
    ).fetchone()
    if confirmed:
        raise SelfApproval(
            f"{op.name} confirmed a suspicion of case {case_id} and may not also decide a {kind} on it: "
            "another supervisor decides (two persons for what agents enforce)"
        )


def make_decision(
    store: Store,
    op: Operator,
    case_id: int,
    *,
    kind: str,
    target_type: str,
    target_id: str,
    reason: str,
    amount: str | int | None = None,
    until: str | None = None,
    policy: Policy | None = None,
    signers: Sequence[CryptoSigner] = (),
) -> dict[str, Any]:
    """Record a supervisor's decision on an open or decided case; a blacklist one is published if it can be.

    ``amount`` is yuan text (``"1234.50"``) → exact fen; ``until`` an ISO date. A blacklist decision
    with ``policy`` and ``signers`` is published at once (``status`` ``effective``, ``bundle_seq``);
    without them, or if publishing fails, it stays ``pending_publish`` and the result carries
    ``publish_error``. Nothing at all is recorded when the input or the case refuses it.
    """
    require_supervisor(op, "make a decision")
    fen, day, why = _check_decision(kind, target_type, target_id, amount, until, reason)
    status = "pending_publish" if kind in PUBLISHED_KINDS else "effective"

    def tx(conn: sqlite3.Connection) -> dict[str, Any]:
        case = _open_for(conn, op, case_id, ("open", "decided"), "a closed case takes no decisions")
        if kind in PUBLISHED_KINDS:
            _second_person(conn, op, case_id, kind)
        if target_type == "hospital":
            area = _hospital_area(conn, target_id)
            if area is not None and area != case["area"]:
                raise AreaForbidden(
                    f"hospital {target_id} settles in pooling area {area}, not the case's {case['area']}"
                )
        at = now_iso()
        decision_id = conn.execute(
            "INSERT INTO decisions (case_id, at, operator, kind, target_type, target_id, amount_fen, until, "
            "reason, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (case_id, at, op.name, kind, target_type, target_id, fen, day, why, status),
        ).lastrowid
        assert decision_id is not None
        conn.execute("UPDATE cases SET status = 'decided' WHERE id = ?", (case_id,))
        conn.execute("UPDATE suspicions SET status = 'decided' WHERE case_id = ?", (case_id,))
        _note(conn, case_id, op, "status", f"decision {decision_id}: {kind}",
              {"status": "decided", "was": case["status"], "decision": decision_id}, at)  # fmt: skip
        # the audit row names the target unless it is a person's or a card's number (personal data)
        shown = target_id if target_type in ("hospital", "department", "doctor", "employer") else None
        audit_in(conn, op.actor(why), "decision.make", {
            "decision": decision_id, "case": case_id, "area": case["area"], "kind": kind,
            "target_type": target_type, "target_id": shown, "amount_fen": fen, "until": day, "status": status,
        })  # fmt: skip
        return {
            "id": decision_id, "case_id": case_id, "at": at, "operator": op.name, "kind": kind,
            "target_type": target_type, "target_id": target_id, "amount_fen": fen, "until": day,
            "reason": why, "status": status, "bundle_area": None, "bundle_seq": None, "area": case["area"],
        }  # fmt: skip

    decision = store.write(tx)
    if kind not in PUBLISHED_KINDS:
        return decision
    if policy is None or not signers:
        return {
            **decision,
            "publish_error": "no operator keys at hand; `yibao-central decisions publish` signs it",
        }
    try:
        return _publish(store, op, policy, signers, decision)
    except CentralError as exc:
        log.warning("decision %d is recorded but not published (%s)", decision["id"], exc.code)
        return {**decision, "publish_error": exc.message}


def publish_pending(
    store: Store, op: Operator, policy: Policy, signers: Sequence[CryptoSigner]
) -> list[dict[str, Any]]:
    """Publish the ``pending_publish`` blacklist decisions of the operator's areas (supervisor), oldest first.

    Stops at the first failure (the keys are the same for every one) and raises it; those done stay done.
    """
    require_supervisor(op, "publish decisions")
    pending = store.read(lambda conn: list_decisions(conn, op.scope, status="pending_publish", limit=100_000))
    done = []
    for decision in sorted(pending, key=lambda d: d["id"]):
        done.append(_publish(store, op, policy, signers, decision))
    return done + lift_ended_suspensions(store, op.actor("the suspension ended"), policy, signers, op.scope)


def lift_ended_suspensions(
    store: Store,
    actor: Actor,
    policy: Policy,
    signers: Sequence[CryptoSigner],
    areas: Collection[str] | None = None,
    *,
    today: date | None = None,
) -> list[dict[str, Any]]:
    """Remove the blacklist entry of every published suspension whose ``until`` day has passed.

    A suspension runs to the end of its ``until`` day; the next ``decisions publish`` (or the server,
    when it holds operator keys) lifts it, so agents settle for the doctor or hospital again. Each
    lift is its own signed bundle, audited, and marks the decision ``ended``.
    """
    day = (today or date.today()).isoformat()
    due = [
        d for d in store.read(
            lambda conn: list_decisions(conn, areas, kind="suspension", status="effective", limit=100_000)
        )
        if d["until"] is not None and d["until"] < day
    ]  # fmt: skip
    lifted = []
    for decision in sorted(due, key=lambda d: d["id"]):
        try:
            policy.blacklist_remove(
                actor, signers, list_type=decision["target_type"], entry_id=decision["target_id"],
                area=decision["bundle_area"] or decision["area"],
            )  # fmt: skip
        except BlacklistEntryUnknown:  # an operator removed the entry by hand already: nothing left to lift
            log.info("decision %d: its suspension entry was already removed", decision["id"])

        def tx(conn: sqlite3.Connection, d: dict[str, Any] = decision) -> None:
            conn.execute("UPDATE decisions SET status = 'ended' WHERE id = ?", (d["id"],))
            audit_in(conn, actor, "decision.lift", {
                "decision": d["id"], "case": d["case_id"], "target_type": d["target_type"],
                "target_id": d["target_id"], "until": d["until"],
            })  # fmt: skip

        store.write(tx)
        lifted.append({**decision, "status": "ended"})
    return lifted


def list_decisions(
    conn: sqlite3.Connection,
    areas: Collection[str] | None,
    *,
    case_id: int | None = None,
    kind: str | None = None,
    status: str | None = None,
    hospital: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Decisions on cases of ``areas`` (None: all), newest first; ``hospital``: those targeting it."""
    where = Where()
    if not where.any_of("c.area", areas):
        return []
    if hospital is not None:
        target_type, target_id = "hospital", hospital
    where.equal(("d.case_id", case_id), ("d.kind", kind), ("d.status", status),
                ("d.target_type", target_type), ("d.target_id", target_id))  # fmt: skip
    sql = (
        f"SELECT {_DECISION_COLUMNS} FROM decisions AS d JOIN cases AS c ON c.id = d.case_id{where.sql} "
        "ORDER BY d.id DESC LIMIT ? OFFSET ?"
    )
    params = [*where.params, max(0, int(limit)), max(0, int(offset))]
    return [_decision_dict(r) for r in conn.execute(sql, params)]


# -- rule quality ------------------------------------------------------------------------------


def rule_quality(conn: sqlite3.Connection, areas: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Per rule id and version: suspicions found, shadow ones, reviewed, confirmed, dismissed, precision.

    ``precision`` = confirmed / reviewed (None when nothing was reviewed), rounded to 4 places;
    shadow suspicions reviewed for precision count like any other. ``areas`` narrows to those
    pooling areas (an operator's); None counts every area.
    """
    where = Where()
    if not where.any_of("s.area", areas):
        return []
    sql = (
        "SELECT s.rule_id, s.rule_version, min(s.template), count(*), sum(s.mode = 'shadow'), "
        "count(r.outcome), coalesce(sum(r.outcome = 'confirm'), 0), coalesce(sum(r.outcome = 'dismiss'), 0), "
        "sum(s.status = 'new') "
        "FROM suspicions AS s LEFT JOIN (SELECT suspicion_id, min(outcome) AS outcome FROM reviews "
        f"GROUP BY suspicion_id) AS r ON r.suspicion_id = s.id{where.sql} "
        "GROUP BY s.rule_id, s.rule_version ORDER BY s.rule_id, s.rule_version"
    )
    out = []
    for rule_id, version, template, found, shadow, reviewed, confirmed, dismissed, pending in conn.execute(
        sql, where.params
    ):
        out.append({
            "rule_id": rule_id, "rule_version": version, "template": template, "found": found,
            "shadow": shadow, "reviewed": reviewed, "confirmed": confirmed, "dismissed": dismissed,
            "pending": pending,
            "precision": round(confirmed / reviewed, 4) if reviewed else None,
        })  # fmt: skip
    return out
