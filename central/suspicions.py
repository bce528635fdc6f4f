"""Suspicions: what screening found, one row per fact however often it is found (``docs/MONITORING.md``).

The screening engine (``central.screening``) turns each rule hit into a ``Finding`` (the hit
attributed to its object, with the money at stake and the rule's weight) and hands a batch to
``record_findings`` inside its own write transaction. Dedupe is by the **fact key**: the same
rule version finding the same object in the same settlements and lines is the same fact, so an
incremental screen followed by a full one, or a later batch re-finding an old fact, bumps
``times_found``/``last_found`` of the one suspicion and never queues a second one for review.

Reviewers' listings (``list_suspicions``) are always narrowed to a set of pooling areas (the
operator's); ``None`` means "every area" and is for the centre's own tools only.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from protocol import rules

from .store import Where

__all__ = [
    "OBJECT_TYPES",
    "SEVERITIES",
    "STATUSES",
    "Finding",
    "fact_key",
    "get_suspicion",
    "list_suspicions",
    "record_findings",
    "score",
    "severity",
    "suspicion_dict",
]

OBJECT_TYPES = ("person", "doctor", "department", "hospital")
#: ``new`` → ``confirmed`` | ``dismissed`` → ``in_case`` → ``decided``; ``shadow`` never enters the queue.
STATUSES = ("new", "confirmed", "dismissed", "in_case", "decided", "shadow")
SEVERITIES = ("red", "yellow", "green")
RED, YELLOW = 70, 40
#: The score's raise stops at this fraction over the threshold (×1.5 at 50 % over).
MAX_OVER = Decimal("0.5")
#: Keys per ``IN (…)`` lookup and rows per ``executemany``: well under SQLite's variable limit.
CHUNK = 500


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule hit attributed to the object it accuses, ready to become (or refresh) a suspicion."""

    hit: (
        rules.Hit
    )  # rule_id, rule_version, template, severity, mode, message, lines, evidence, psn_no, setl_id
    object_type: str  # person | doctor | department | hospital
    object_id: str
    area: str  # pooling area of the hospital (hist_visits.area)
    fixmedins_code: str | None
    setl_ids: tuple[str, ...]  # every settlement the fact involves (the checked one + evidence's)
    amount_fen: int  # money at stake
    weight: int  # the rule's weight (Rule.weight; 1-100)
    #: For a fact about an object over a period rather than about settlements: template 18 (a
    #: doctor's measure over a window, the window's end; no ``setl_ids``) and a run of visits over a
    #: limit (template 11, the run's first day). The fact key is then the object and the period, not
    #: the settlements, so the same object over the same period is one fact whichever visits a
    #: screen happened to hold; the suspicion keeps the settlements of its first finding.
    period: str | None = None


def fact_key(f: Finding) -> str:
    """SHA-256 hex of what makes a fact the same fact: rule version, object, settlements and lines
    (and the period, for a fact about an object over a period).

    Sorted and JSON-encoded so neither the order the engine found things in nor a separator
    inside an id can make two facts collide or one fact split in two. Without a period the material
    (and so every key already stored) is what it always was.
    """
    h = f.hit
    material: list[Any] = [h.rule_id, h.rule_version, f.object_type, f.object_id]
    if f.period is None:
        material += [sorted(set(f.setl_ids)), sorted(set(h.lines))]
    else:  # template 18's findings carry no settlements or lines: their keys are what they were
        material += [[], [], {"period": f.period}]
    blob = json.dumps(material, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | Decimal | str):
        try:
            d = Decimal(str(value))
        except InvalidOperation:
            return None
        return d if d.is_finite() else None
    return None


def _over(evidence: Iterable[Mapping[str, Any]]) -> Decimal:
    """How far the worst numeric ``value`` passes its ``threshold``, as a fraction (0 when none does)."""
    worst = Decimal(0)
    for item in evidence:
        value, threshold = _number(item.get("value")), _number(item.get("threshold"))
        if value is None or threshold is None or threshold <= 0 or value <= threshold:
            continue
        worst = max(worst, (value - threshold) / threshold)
    return min(worst, MAX_OVER)


def score(f: Finding) -> int:
    """0-100: the rule's weight, raised by how far the value passes the threshold (up to ×1.5 at 50 % over).

    Only evidence carrying both a numeric ``value`` and a positive numeric ``threshold`` raises
    it; the worst such item counts. Rounded half up, capped at 100.
    """
    weight = Decimal(max(0, min(100, int(f.weight))))
    raised = weight * (1 + _over(f.hit.evidence))
    return min(100, int(raised + Decimal("0.5")))


def severity(score: int) -> str:
    """The traffic light of a score: red ≥ 70, yellow ≥ 40, green below."""
    if score >= RED:
        return "red"
    if score >= YELLOW:
        return "yellow"
    return "green"


_INSERT = (
    "INSERT INTO suspicions (fact_key, rule_id, rule_version, template, object_type, object_id, area, "
    "fixmedins_code, psn_no, setl_ids, lines, evidence, message, amount_fen, score, severity, mode, status, "
    "case_id, first_found, last_found, times_found, run_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, 1, ?) "
    "ON CONFLICT (fact_key) DO UPDATE SET last_found = excluded.last_found, "
    "times_found = suspicions.times_found + 1, evidence = excluded.evidence, message = excluded.message, "
    "amount_fen = excluded.amount_fen, score = excluded.score, severity = excluded.severity"
)


def _row(key: str, f: Finding, run_id: int | None, at: str) -> tuple[Any, ...]:
    h = f.hit
    s = score(f)
    return (
        key, h.rule_id, h.rule_version, h.template, f.object_type, f.object_id, f.area, f.fixmedins_code,
        h.psn_no or None, json.dumps(sorted(set(f.setl_ids)), ensure_ascii=False),
        json.dumps(sorted(set(h.lines)), ensure_ascii=False),
        json.dumps([dict(e) for e in h.evidence], ensure_ascii=False, default=str), h.message,
        int(f.amount_fen), s, severity(s), h.mode, "shadow" if h.mode == "shadow" else "new", at, at, run_id,
    )  # fmt: skip


def record_findings(
    conn: sqlite3.Connection, findings: Iterable[Finding], *, run_id: int | None, at: str
) -> dict[str, int]:
    """Upsert findings by fact key, in the caller's write transaction; ``{"new": n, "again": m}``.

    A new fact becomes a suspicion with status ``new`` (``shadow`` for a shadow-mode rule's hit);
    a fact already held gets ``last_found = at``, ``times_found + 1`` and fresh evidence, message,
    amount and score, its status and review untouched. The same fact twice in one batch counts
    once. Works in chunks of ``CHUNK``: one ``IN`` lookup (to count) and one ``executemany`` each.
    """
    new = again = 0
    batch: dict[str, Finding] = {}

    def flush() -> None:
        nonlocal new, again
        if not batch:
            return
        keys = list(batch)
        marks = ",".join("?" * len(keys))
        held = {
            r[0] for r in conn.execute(f"SELECT fact_key FROM suspicions WHERE fact_key IN ({marks})", keys)
        }
        conn.executemany(_INSERT, [_row(k, f, run_id, at) for k, f in batch.items()])
        again += len(held)
        new += len(keys) - len(held)
        batch.clear()

    for f in findings:
        batch[fact_key(f)] = f
        if len(batch) >= CHUNK:
            flush()
    flush()
    return {"new": new, "again": again}


# -- reading -----------------------------------------------------------------------------------

_COLUMNS = (
    "id, fact_key, rule_id, rule_version, template, object_type, object_id, area, fixmedins_code, psn_no, "
    "setl_ids, lines, evidence, message, amount_fen, score, severity, mode, status, case_id, first_found, "
    "last_found, times_found, run_id"
)
_JSON_COLUMNS = ("setl_ids", "lines", "evidence")


def suspicion_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    """One ``suspicions`` row (``_COLUMNS`` order) as JSON-ready values."""
    out = dict(zip(_COLUMNS.split(", "), row, strict=True))
    for column in _JSON_COLUMNS:
        out[column] = json.loads(out[column])
    return out


def get_suspicion(conn: sqlite3.Connection, suspicion_id: int) -> dict[str, Any] | None:
    """One suspicion by id, or None; callers check the area (``central.operators``)."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM suspicions WHERE id = ?", (suspicion_id,)).fetchone()
    return suspicion_dict(tuple(row)) if row else None


def list_suspicions(
    conn: sqlite3.Connection,
    *,
    areas: Collection[str] | None,
    status: str | Collection[str] | None = ("new",),
    rule_id: str | None = None,
    severity: str | None = None,
    min_score: int | None = None,
    hospital: str | None = None,
    case_id: int | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Suspicions of ``areas`` (None: every area) matching the filters, highest score then amount first.

    The default ``status`` is the review queue (``new``); pass None for every status. ``shadow``
    suspicions appear only when asked for by status.
    """
    where = Where()
    statuses = None if status is None else [status] if isinstance(status, str) else status
    if not where.any_of("area", areas) or not where.any_of("status", statuses):
        return []
    where.equal(
        ("rule_id", rule_id), ("severity", severity), ("fixmedins_code", hospital), ("case_id", case_id)
    )
    if min_score is not None:
        where.add("score >= ?", int(min_score))
    order = "ORDER BY score DESC, amount_fen DESC, id LIMIT ? OFFSET ?"
    sql = f"SELECT {_COLUMNS} FROM suspicions{where.sql} {order}"
    params = [*where.params, max(0, int(limit)), max(0, int(offset))]
    return [suspicion_dict(tuple(r)) for r in conn.execute(sql, params)]
