"""Analysis rules: rankings of hospitals, departments and doctors against their peers (docs/MONITORING.md).

No threshold and no suspicion: a reviewer reads the ranking to decide where to look. Every run is
stored in ``analysis_results`` under a new run id (the largest held plus one), one row per object.

Objects and peers (as template 18, ``peer_outlier``):

- ``hospital``: ``fixmedins_code``; peers: hospitals of the same grade (``hosp_lv``).
- ``department``: ``fixmedins_code/dept_codg``; peers: departments with the same ``dept_codg`` at
  hospitals of the same grade.
- ``doctor``: ``dr_codg``; peers: doctors of the same ``dept_codg`` and grade (a doctor's most
  frequent department and grade in the range).

Measures over the visits settled in the range (``hist_visits``; reversed settlements are not there):

- ``cost_per_visit``: ``medfee_sumamt`` per visit (fen).
- ``drug_share``: drug fen (list types 101-103) ÷ ``medfee_sumamt``.
- ``visits_per_patient``: visits ÷ distinct persons.
- ``growth``: total cost in the range ÷ total cost in the same number of days just before it
  (1.0: flat; no value when the object had nothing before).
- ``cost_per_disease``: cost per visit per main-diagnosis category (3 characters); one row per
  object and category, ``object_id`` ``<object>|<category>``, peers within the category.

Each row: ``value``, ``peer_median`` (median of the peer group's values, the object included),
``ratio`` = value ÷ peer median, ``rank`` (1 = the highest ratio; rows without a ratio last).

**Minimum volume.** A provider with three visits has a cost per visit, but not one that says anything:
ranked by ratio alone, the tiny providers fill the top. So, unless the caller gives ``min_visits``,
objects with fewer visits than ``MIN_VISITS[by]`` are kept but marked ``low_volume`` and ranked after
every object with enough visits, and the peer medians are taken over the objects with enough visits
(over all of them when none has). A ``min_visits`` given leaves out the objects under it instead.
"""

from __future__ import annotations

import sqlite3
import statistics
from collections import defaultdict
from datetime import date, timedelta
from typing import Any

from central.errors import ConfigInvalid
from central.storage.store import Store

__all__ = ["BY", "MEASURES", "MIN_VISITS", "analyse", "list_results"]

BY = ("hospital", "department", "doctor")
MEASURES = ("cost_per_visit", "drug_share", "visits_per_patient", "growth", "cost_per_disease")
#: Visits in the range below which an object is ranked after the others (when no ``min_visits`` is given).
MIN_VISITS = {"hospital": 30, "department": 20, "doctor": 20}

_OBJECT = {
    "hospital": "v.fixmedins_code",
    "department": "v.fixmedins_code || '/' || coalesce(v.dept_codg, '?')",
    "doctor": "v.dr_codg",
}
_PEER = {
    "hospital": "coalesce(v.hosp_lv, '?')",
    "department": "coalesce(v.dept_codg, '?') || '|' || coalesce(v.hosp_lv, '?')",
    "doctor": "coalesce(v.dept_codg, '?') || '|' || coalesce(v.hosp_lv, '?')",
}
_COLUMNS = ("object_id", "area", "visits", "value", "peer_median", "ratio", "rank", "peer_group")


def _rows(
    conn: sqlite3.Connection, by: str, measure: str, lo: str, hi: str, area: str | None
) -> list[tuple[str, str, str | None, int, float | None]]:
    """(object, peer group, area, visits, value) per object (per object and category for cost_per_disease)."""
    obj, peer = _OBJECT[by], _PEER[by]
    where = "v.setl_date BETWEEN ? AND ?" + (" AND v.area = ?" if area else "")
    params: list[Any] = [lo, hi] + ([area] if area else [])
    if by == "doctor":
        where += " AND v.dr_codg IS NOT NULL"
    if measure == "cost_per_disease":
        obj = f"{obj} || '|' || coalesce(substr(v.dise_main, 1, 3), '?')"
        peer = f"{peer} || '|' || coalesce(substr(v.dise_main, 1, 3), '?')"
    value = {
        "cost_per_visit": "avg(v.medfee_sumamt)",
        "cost_per_disease": "avg(v.medfee_sumamt)",
        "drug_share": "1.0 * sum(v.drug_fen) / nullif(sum(v.medfee_sumamt), 0)",
        "visits_per_patient": "1.0 * count(*) / count(DISTINCT v.psn_no)",
        "growth": "sum(v.medfee_sumamt)",
    }[measure]
    # the peer group of an object is the one most of its visits fall in (a doctor moving departments)
    sql = (
        f"WITH g AS (SELECT {obj} AS object_id, {peer} AS peer_group, min(v.area) AS area, count(*) AS n, "
        f"{value} AS value "
        f"FROM hist_visits AS v WHERE {where} GROUP BY 1, 2) "
        "SELECT object_id, peer_group, area, n, value FROM g ORDER BY object_id, n DESC, peer_group"
    )
    per_group = conn.execute(sql, params).fetchall()
    if len({r[0] for r in per_group}) == len(per_group):
        return [tuple(r) for r in per_group]
    # an object in several peer groups: its value over all its visits, in its main group
    main: dict[str, tuple] = {}
    for row in per_group:
        main.setdefault(row[0], row)
    whole = dict(
        (r[0], (r[1], r[2]))
        for r in conn.execute(
            f"SELECT {obj}, count(*), {value} FROM hist_visits AS v WHERE {where} GROUP BY 1", params
        )
    )
    return [(o, g, a, whole[o][0], whole[o][1]) for o, (_, g, a, _n, _v) in main.items()]


def analyse(
    store: Store,
    *,
    by: str,
    measure: str,
    date_from: date | str,
    date_to: date | str,
    area: str | None = None,
    min_visits: int | None = None,
) -> dict[str, Any]:
    """Rank every object of ``by`` on ``measure`` over the range against its peers; store and return it.

    ``min_visits``: leave out objects with fewer visits; None: keep them, ranked after the objects with
    at least ``MIN_VISITS[by]`` visits and marked ``low_volume`` (see the module docstring).
    """
    if by not in BY:
        raise ConfigInvalid(f"--by must be one of {', '.join(BY)}, not {by!r}")
    if measure not in MEASURES:
        raise ConfigInvalid(f"--measure must be one of {', '.join(MEASURES)}, not {measure!r}")
    lo = date_from if isinstance(date_from, date) else date.fromisoformat(date_from)
    hi = date_to if isinstance(date_to, date) else date.fromisoformat(date_to)
    if lo > hi:
        raise ConfigInvalid(f"--from {lo} is after --to {hi}")
    if min_visits is not None and min_visits < 1:
        raise ConfigInvalid("--min-visits must be at least 1")

    def read(conn: sqlite3.Connection) -> list[tuple]:
        rows = _rows(conn, by, measure, lo.isoformat(), hi.isoformat(), area)
        if measure != "growth":
            return rows
        days = (hi - lo).days + 1
        start, end = (lo - timedelta(days=days)).isoformat(), (lo - timedelta(days=1)).isoformat()
        before = {r[0]: r[4] for r in _rows(conn, by, measure, start, end, area)}
        return [(o, g, a, n, (v / before[o]) if before.get(o) else None) for o, g, a, n, v in rows]

    rows = [r for r in store.read(read) if min_visits is None or r[3] >= min_visits]
    floor = MIN_VISITS[by] if min_visits is None else 1
    enough = [r for r in rows if r[3] >= floor] or rows  # the peers whose medians mean something
    peers: dict[str, list[float]] = defaultdict(list)
    for _o, group, _a, _n, value in enough:
        if value is not None:
            peers[group].append(float(value))
    medians = {g: statistics.median(values) for g, values in peers.items()}
    results = []
    for object_id, group, obj_area, visits, value in rows:
        median = medians.get(group)
        ratio = value / median if value is not None and median else None
        results.append({
            "object_id": object_id, "area": obj_area, "visits": visits,
            "value": float(value) if value is not None else None, "peer_median": median, "ratio": ratio,
            "peer_group": group, "low_volume": visits < floor,
        })  # fmt: skip
    results.sort(key=lambda r: (r["low_volume"], r["ratio"] is None, -(r["ratio"] or 0), -(r["value"] or 0),
                                r["object_id"]))  # fmt: skip
    for rank, row in enumerate(results, start=1):
        row["rank"] = rank

    def write(conn: sqlite3.Connection) -> int:
        run_id = conn.execute("SELECT coalesce(max(run_id), 0) + 1 FROM analysis_results").fetchone()[0]
        conn.executemany(
            "INSERT INTO analysis_results (run_id, measure, by, object_id, area, visits, value, peer_median, "
            "ratio, rank) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(run_id, measure, by, r["object_id"], r["area"], r["visits"], r["value"], r["peer_median"],
              r["ratio"], r["rank"]) for r in results],
        )  # fmt: skip
        return run_id

    run_id = store.write(write)
    return {
        "run_id": run_id, "by": by, "measure": measure, "date_from": lo.isoformat(),
        "date_to": hi.isoformat(), "area": area,
        "min_visits": min_visits if min_visits is not None else floor,
        "min_visits_given": min_visits is not None, "objects": len(results), "results": results,
    }  # fmt: skip


def list_results(conn: sqlite3.Connection, run_id: int, *, limit: int = 50) -> list[dict[str, Any]]:
    """A stored run's rows by rank."""
    cols = ("measure", "by", "object_id", "area", "visits", "value", "peer_median", "ratio", "rank")
    rows = conn.execute(
        f"SELECT {', '.join(cols)} FROM analysis_results WHERE run_id = ? ORDER BY rank LIMIT ?",
        (run_id, limit),
    )
    return [dict(zip(cols, r, strict=True)) for r in rows]
