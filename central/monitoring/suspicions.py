"""Suspicions: what screening found, one row per fact however often it is found (``docs/MONITORING.md``).

The screening engine (``central.monitoring.screening``) turns each rule hit into a ``Finding`` (the hit
attributed to its object, with the money at stake and the rule's weight) and hands a batch to
``record_findings`` inside its own write transaction. Dedupe is by the **fact key**: the same
rule version finding the same object about the same **anchor** (the settlement judged) and lines is
the same fact, so an incremental screen followed by a full one, or a later batch re-finding an old
fact, bumps ``times_found``/``last_found`` of the one suspicion and never queues a second one for
review. The key never holds evidence that can grow: a readmission found again once an older stay
arrives late is the same readmission with more evidence, not a second suspicion.

A fact that stops holding (a screen judged its anchor again and did not find it: a settlement it
rested on was reversed, an older settlement arrived and changed a peer median) is **retracted**, never
deleted (``retract_missing``): an unreviewed suspicion becomes ``no_longer_holds``; a reviewed one
(confirmed, dismissed, in a case, decided) keeps its status, because a reviewer's decision is not
undone behind their back, and is flagged ``holds = 0`` for the reviewer to see. Both are audited
(``audit_log``, actor ``screening``). A retracted fact that is found again holds again: an
unreviewed one goes back to the queue (``new``, or ``shadow``).

Reviewers' listings (``list_suspicions``) are always narrowed to a set of pooling areas (the
operator's); ``None`` means "every area" and is for the centre's own tools only.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from central.storage.store import Where
from protocol import rules

__all__ = [
    "CATEGORIES",
    "OBJECT_TYPES",
    "SEVERITIES",
    "STATUSES",
    "Finding",
    "fact_key",
    "get_suspicion",
    "list_suspicions",
    "record_findings",
    "retract_missing",
    "score",
    "severity",
    "suspicion_dict",
]

OBJECT_TYPES = ("person", "doctor", "department", "hospital")
#: ``new`` → ``confirmed`` | ``dismissed`` → ``in_case`` → ``decided``; ``shadow`` never enters the queue;
#: ``no_longer_holds``: an unreviewed fact a later screen no longer finds (kept for the audit trail).
STATUSES = ("new", "confirmed", "dismissed", "in_case", "decided", "shadow", "no_longer_holds")
#: Statuses a retraction changes (nobody has judged the fact yet); a reviewed fact is only flagged.
UNREVIEWED = ("new", "shadow")
CATEGORIES = rules.CATEGORIES
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
    #: The settlement the fact is about (the one the rule judged; a pair's two joined by ``|`` for a
    #: symmetric pair such as impersonation); None: ``hit.setl_id``. Never the evidence's settlements,
    #: which grow as older ones arrive.
    anchor: str | None = None
    #: ``setl_date`` of the anchor (a full screen retracts what it judged by date); None when unknown.
    anchor_date: str | None = None
    #: The rule's category (``protocol.rules.CATEGORIES``); reports by category read it.
    category: str | None = None

    @property
    def anchor_id(self) -> str:
        return self.anchor or self.hit.setl_id


def fact_key(f: Finding) -> str:
    """SHA-256 hex of what makes a fact the same fact: rule version, object, anchor settlement and
    lines (the period instead, for a fact about an object over a period).

    What the key leaves out matters as much: the evidence's other settlements (the earlier stays of a
    readmission, the other dispensings of a duplicate) grow when older settlements arrive late, and a
    fact whose identity moved with them would become a second suspicion of the same readmission. So
    the evidence is refreshed on the one suspicion instead. Sorted and JSON-encoded so neither the
    order the engine found things in nor a separator inside an id can make two facts collide.
    """
    h = f.hit
    material: list[Any] = [h.rule_id, h.rule_version, f.object_type, f.object_id]
    if f.period is None:
        material += [{"anchor": f.anchor_id}, sorted(set(h.lines))]
    else:  # a fact about an object over a period: no anchor settlement
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
    "case_id, first_found, last_found, times_found, run_id, anchor, anchor_date, period, category, holds) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, 1, ?, ?, ?, ?, ?, 1) "
    "ON CONFLICT (fact_key) DO UPDATE SET last_found = excluded.last_found, "
    "times_found = suspicions.times_found + 1, evidence = excluded.evidence, message = excluded.message, "
    "amount_fen = excluded.amount_fen, score = excluded.score, severity = excluded.severity, "
    "setl_ids = (SELECT json_group_array(value) FROM (SELECT DISTINCT value FROM ("
    "SELECT value FROM json_each(suspicions.setl_ids) UNION SELECT value FROM json_each(excluded.setl_ids)) "
    "ORDER BY value)), "
    "anchor_date = coalesce(excluded.anchor_date, suspicions.anchor_date), "
    "category = coalesce(excluded.category, suspicions.category), holds = 1, retracted_at = NULL, "
    "status = CASE WHEN suspicions.status = 'no_longer_holds' THEN excluded.status ELSE suspicions.status END"
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
        None if f.period is not None else f.anchor_id, f.anchor_date, f.period, f.category,
    )  # fmt: skip


#: Who the audit log names for what screening does by itself (no operator acts in a screen).
SCREENING_ACTOR = "screening"


def _audit(conn: sqlite3.Connection, action: str, detail: dict[str, Any], at: str) -> None:
    """One ``audit_log`` row for a screening action (ids and counts only: no personal data)."""
    conn.execute(
        "INSERT INTO audit_log (at, operator, action, reason, detail, area) VALUES (?, ?, ?, ?, ?, ?)",
        (at, SCREENING_ACTOR, action, detail.pop("reason", ""), json.dumps(detail, ensure_ascii=False),
         detail.get("area")),
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
            r[0]: (r[1], r[2], r[3])
            for r in conn.execute(
                f"SELECT fact_key, id, status, holds FROM suspicions WHERE fact_key IN ({marks})", keys
            )
        }
        conn.executemany(_INSERT, [_row(k, f, run_id, at) for k, f in batch.items()])
        again += len(held)
        new += len(keys) - len(held)
        back = sorted(i for i, _st, holds in held.values() if not holds)
        if back:
            reopened = sorted(i for i, st, holds in held.values() if not holds and st == "no_longer_holds")
            _audit(conn, "suspicion.holds_again",
                   {"suspicions": back, "requeued": reopened, "run_id": run_id,
                    "reason": "found again by a later screen"}, at)  # fmt: skip
        batch.clear()

    for f in findings:
        f = _merge_run(conn, f)
        batch[fact_key(f)] = f
        if len(batch) >= CHUNK:
            flush()
    flush()
    return {"new": new, "again": again}


def _merge_run(conn: sqlite3.Connection, f: Finding) -> Finding:
    """A run of visits over a limit (template 11) found again from a later visit, or after an older visit
    arrived late, starts on another day; its period then names another run although it is the same
    burst. The held run of the same rule and object that shares a settlement with it is the fact: the
    finding takes that run's period (and anchor), so one burst stays one suspicion."""
    if f.period is None or not f.period.startswith("run from ") or not f.setl_ids:
        return f
    marks = ",".join("?" * len(f.setl_ids))
    row = conn.execute(
        "SELECT period, anchor FROM suspicions WHERE rule_id = ? AND rule_version = ? AND object_type = ? "
        "AND object_id = ? AND period LIKE 'run from %' AND period != ? AND EXISTS ("
        f"SELECT 1 FROM json_each(suspicions.setl_ids) WHERE value IN ({marks})) ORDER BY id LIMIT 1",
        (f.hit.rule_id, f.hit.rule_version, f.object_type, f.object_id, f.period, *f.setl_ids),
    ).fetchone()
    if row is None:
        return f
    return replace(f, period=row[0], anchor=row[1] or f.anchor)


@dataclass(frozen=True, slots=True)
class Judged:
    """What a screen judged again for one rule version in one area: the facts it would have found had
    they held. ``anchors``: the settlements judged (an incremental scope); ``dates``: every anchor
    settled in [from, to] (a full screen of the range); ``periods``: the period ends judged (template
    18's windows in a full screen)."""

    rule_id: str
    rule_version: int
    area: str
    anchors: frozenset[str] = frozenset()
    dates: tuple[str, str] | None = None
    periods: frozenset[str] = frozenset()


def retract_missing(
    conn: sqlite3.Connection, judged: Iterable[Judged], found: Collection[str], *, run_id: int | None, at: str
) -> dict[str, int]:
    """Retract the facts a screen judged and did not find again (in the caller's write transaction).

    ``found``: the fact keys the screen found. Each held fact (``holds = 1``) of a judged rule version
    and area whose anchor (or period) was judged and whose key is not in ``found`` stops holding:
    ``new``/``shadow`` → ``no_longer_holds``; a reviewed fact keeps its status and is flagged
    ``holds = 0``. Nothing is deleted; one ``audit_log`` row per kind per call names the ids.
    ``{"retracted": n, "flagged": m}``.
    """
    found = set(found)
    retracted: list[int] = []
    flagged: list[int] = []
    for j in judged:
        base = (
            "SELECT id, fact_key, status FROM suspicions WHERE rule_id = ? AND rule_version = ? AND area = ? "
            "AND holds = 1"
        )
        params: list[Any] = [j.rule_id, j.rule_version, j.area]
        rows: list[tuple] = []
        if j.dates is not None:
            rows += conn.execute(
                base + " AND anchor IS NOT NULL AND anchor_date BETWEEN ? AND ?", [*params, *j.dates]
            ).fetchall()
        for part in _parts(sorted(j.anchors)):
            marks = ",".join("?" * len(part))
            rows += conn.execute(base + f" AND anchor IN ({marks})", [*params, *part]).fetchall()
        for part in _parts(sorted(j.periods)):
            marks = ",".join("?" * len(part))
            rows += conn.execute(
                base + f" AND anchor IS NULL AND anchor_date IN ({marks})", [*params, *part]
            ).fetchall()
        for sid, key, status in {r[0]: r for r in rows}.values():
            if key in found:
                continue
            (retracted if status in UNREVIEWED else flagged).append(sid)
    for part in _parts(retracted):
        marks = ",".join("?" * len(part))
        conn.execute(
            "UPDATE suspicions SET status = 'no_longer_holds', holds = 0, retracted_at = ? "
            f"WHERE id IN ({marks})",
            [at, *part],
        )
    for part in _parts(flagged):
        marks = ",".join("?" * len(part))
        conn.execute(f"UPDATE suspicions SET holds = 0, retracted_at = ? WHERE id IN ({marks})", [at, *part])
    if retracted:
        _audit(conn, "suspicion.retract", {"suspicions": sorted(retracted), "run_id": run_id,
               "reason": "a later screen judged the fact again and it no longer holds"}, at)  # fmt: skip
    if flagged:
        reason = "reviewed facts that no longer hold: flagged for the reviewer, status kept"
        _audit(conn, "suspicion.no_longer_holds", {"suspicions": sorted(flagged), "run_id": run_id,
               "reason": reason}, at)  # fmt: skip
    return {"retracted": len(retracted), "flagged": len(flagged)}


def _parts(items: list[Any]) -> Iterable[list[Any]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


# -- reading -----------------------------------------------------------------------------------

_COLUMNS = (
    "id, fact_key, rule_id, rule_version, template, object_type, object_id, area, fixmedins_code, psn_no, "
    "setl_ids, lines, evidence, message, amount_fen, score, severity, mode, status, case_id, first_found, "
    "last_found, times_found, run_id, anchor, anchor_date, period, category, holds, retracted_at"
)
_JSON_COLUMNS = ("setl_ids", "lines", "evidence")


def suspicion_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    """One ``suspicions`` row (``_COLUMNS`` order) as JSON-ready values."""
    out = dict(zip(_COLUMNS.split(", "), row, strict=True))
    for column in _JSON_COLUMNS:
        out[column] = json.loads(out[column])
    out["holds"] = bool(out["holds"])
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
    object_type: str | None = None,
    object_id: str | None = None,
    min_amount_fen: int | None = None,
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
        ("rule_id", rule_id), ("severity", severity), ("fixmedins_code", hospital), ("case_id", case_id),
        ("object_type", object_type), ("object_id", object_id),
    )
    if min_score is not None:
        where.add("score >= ?", int(min_score))
    if min_amount_fen is not None:
        where.add("amount_fen >= ?", int(min_amount_fen))
    order = "ORDER BY score DESC, amount_fen DESC, id LIMIT ? OFFSET ?"
    sql = f"SELECT {_COLUMNS} FROM suspicions{where.sql} {order}"
    params = [*where.params, max(0, int(limit)), max(0, int(offset))]
    return [suspicion_dict(tuple(r)) for r in conn.execute(sql, params)]
