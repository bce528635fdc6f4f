"""Templates 13-20, run only at the centre: SQL over ``cur_visits``, ``hist_visits``, ``cur_lines``,
``hist_lines``, ``deaths`` and ``hospitals``; rows → ``Hit``s (docs/MONITORING.md, docs/RULES.md).

The conventions are those of ``templates``: each query starts from the visits being screened
(``cur_visits``, alias ``v``, one or many persons), is keyed by the visit's own columns, never by a
parameter naming a person or a day, returns ``psn_no, setl_id, hit_key, sn`` first (``sn`` is
empty: these templates find visits, not lines), and carries the rule's filters on the checked visit.
``hist_visits`` holds every held settlement, the screened ones included, so a query leaves the
checked visit out by ``setl_id``. Dates are ISO text; date arithmetic goes through the
``dialect`` helpers so that the same text transpiles to PostgreSQL and Spark SQL. Ratios are
compared in integer ten-thousandths (``value × 10000 ≥ ratio_e4 × median``), money in fen.

Hits name the checked visit (``psn_no``, ``setl_id``); the centre attributes them to the rule's
object from that visit. Evidence entries name every other settlement involved under ``setl_id``.
Template 18 (``peer_outlier``) finds an object, not a visit: its hit carries the object's id in
``evidence[0]["object_id"]`` and, as ``setl_id``/``psn_no``, one representative visit of the object
in the screened batch (its latest: greatest ``setl_date``, then ``setl_id``).
"""

from __future__ import annotations

import bisect
import functools
import itertools
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from ..records import fen_to_text
from .definitions import Rule
from .dialect import date_add, days_between, seconds_between
from .templates import _TEMPLATES, Compiled, _filters, _in, _num

__all__ = [
    "CENTRE_SQL_TEMPLATES",
    "INPATIENT_MED_TYPES",
    "OBJECT_TEMPLATES",
    "PEER_MEDIANS_DDL",
    "compile_excessive_given",
    "peer_medians",
    "ratio_e4",
]

#: Templates whose hit is an object (doctor, department, hospital) measured over a window of days,
#: not a visit: its fact is (object, window), whatever visits the screened batch held.
OBJECT_TEMPLATES = frozenset({"peer_outlier"})

#: The inpatient medical types templates 13 and 16 look at when the rule names no ``med_types``.
INPATIENT_MED_TYPES = ("21",)


def ratio_e4(ratio: str) -> int:
    """A ratio's decimal text ("1.5", at most 4 decimals) in integer ten-thousandths (15000)."""
    return int(Decimal(ratio) * 10_000)


def _inpatient(rule: Rule, p: dict[str, Any], alias: str, prefix: str) -> str:
    """The rule's ``med_types`` (inpatient ``21`` when it names none) on ``alias``."""
    return _in(f"{alias}.med_type", rule.med_types or INPATIENT_MED_TYPES, prefix, p)


def _level(hosp_lv: str | None) -> str:
    if hosp_lv is None:
        return "hospitals of unknown level"
    return "ungraded hospitals" if hosp_lv == "0" else f"level-{hosp_lv} hospitals"


def _days(n: int) -> str:
    return "1 day" if n == 1 else f"{n} days"


# -- 13 readmission ----------------------------------------------------------------------------


def _sql_readmission(rule: Rule, p: dict[str, Any], f: str) -> str:
    p["p_within_back"] = -rule.params["within_days"]  # negative numbers are bound, not written "-:p"
    same = "AND h.fixmedins_code = v.fixmedins_code" if rule.params["same_hospital"] else ""
    related = (
        "AND substr(h.dise_main, 1, 3) = substr(v.dise_main, 1, 3)"
        if rule.params["related"] == "category"
        else ""
    )
    gap = days_between("v.begn_date", "h.end_date")
    # the earlier stay ended on or before this admission, at most within_days before it; a stay that
    # ended the day this one began counts when it was settled first (two same-day stays: one hit)
    return f"""
SELECT v.psn_no, v.setl_id, v.setl_id AS hit_key, '' AS sn, v.fixmedins_code, v.begn_date,
       h.setl_id AS h_setl_id, h.fixmedins_code AS h_hosp, h.begn_date AS h_begn, h.end_date AS h_end,
       substr(h.dise_main, 1, 3) AS category, {gap} AS gap
FROM cur_visits AS v
JOIN hist_visits AS h ON h.psn_no = v.psn_no AND h.setl_id <> v.setl_id
     AND h.end_date <= v.begn_date AND h.end_date >= {date_add("v.begn_date", ":p_within_back")}
WHERE v.begn_date IS NOT NULL AND {f}
  AND {_inpatient(rule, p, "v", "p_mv")} AND {_inpatient(rule, p, "h", "p_mh")}
  AND (h.end_date < v.begn_date OR h.setl_time < v.setl_time
       OR (h.setl_time = v.setl_time AND h.setl_id < v.setl_id))
  {same} {related}
ORDER BY v.psn_no, v.setl_id, gap, h.end_date DESC, h.setl_id
"""


def _msg_readmission(rule: Rule, rows: list[dict[str, Any]], names: Mapping[str, str]) -> tuple[str, list]:
    top = rows[0]
    within = rule.params["within_days"]
    where = "the same hospital" if top["h_hosp"] == top["fixmedins_code"] else top["h_hosp"]
    related = " with a diagnosis of the same category" if rule.params["related"] == "category" else ""
    text = (
        f"Admitted to {top['fixmedins_code']} on {top['begn_date']}, {_days(top['gap'])} after a "
        f"discharge from {where} on {top['h_end']}{related}; the rule looks for readmissions within "
        f"{_days(within)}."
    )
    if len(rows) > 1:
        text += f" {len(rows) - 1} other stay(s) ended in those {within} days."
    evidence = [
        {
            "setl_id": r["h_setl_id"], "fixmedins_code": r["h_hosp"], "begn_date": r["h_begn"],
            "end_date": r["h_end"], "category": r["category"], "value": r["gap"], "threshold": within,
        }
        for r in rows
    ]  # fmt: skip
    return text, evidence


# -- 14 impersonation: one card, two distant hospitals, minutes apart ---------------------------


def _sql_impersonation(rule: Rule, p: dict[str, Any], f: str) -> str:
    minutes, km = rule.params["max_minutes"], rule.params["min_km"]
    p["p_max_seconds"] = minutes * 60
    p["p_min_km2"] = km * km
    p["p_days"] = minutes // 1440 + 1  # the settlement dates to look at (local dates, any offset)
    p["p_days_back"] = -p["p_days"]
    seconds = seconds_between("o.setl_time", "v.setl_time")
    return f"""
SELECT v.psn_no, v.setl_id, v.setl_id AS hit_key, '' AS sn, v.fixmedins_code, v.setl_time,
       o.setl_id AS o_setl_id, o.fixmedins_code AS o_hosp, o.setl_time AS o_time,
       (ho.x_km - hv.x_km) * (ho.x_km - hv.x_km) + (ho.y_km - hv.y_km) * (ho.y_km - hv.y_km) AS km2,
       {seconds} AS seconds
FROM cur_visits AS v
JOIN hospitals AS hv ON hv.fixmedins_code = v.fixmedins_code
JOIN hist_visits AS o ON o.psn_no = v.psn_no AND o.setl_id <> v.setl_id
     AND o.fixmedins_code <> v.fixmedins_code
     AND o.setl_date >= {date_add("v.setl_date", ":p_days_back")}
     AND o.setl_date <= {date_add("v.setl_date", ":p_days")}
JOIN hospitals AS ho ON ho.fixmedins_code = o.fixmedins_code
WHERE {f} AND hv.x_km IS NOT NULL AND hv.y_km IS NOT NULL AND ho.x_km IS NOT NULL AND ho.y_km IS NOT NULL
  AND (ho.x_km - hv.x_km) * (ho.x_km - hv.x_km) + (ho.y_km - hv.y_km) * (ho.y_km - hv.y_km) >= :p_min_km2
  AND abs({seconds}) <= :p_max_seconds
ORDER BY v.psn_no, v.setl_id, abs({seconds}), o.setl_id
"""


def _msg_impersonation(rule: Rule, rows: list[dict[str, Any]], names: Mapping[str, str]) -> tuple[str, list]:
    top = rows[0]
    km = round(top["km2"] ** 0.5, 1)
    minutes = round(abs(top["seconds"]) / 60)
    order = "before" if top["seconds"] < 0 else "after"
    text = (
        f"The same person settled at {top['fixmedins_code']} ({top['setl_time']}) and at {top['o_hosp']} "
        f"{minutes} minutes {order}, {_num(km)} km apart; the rule flags settlements at least "
        f"{rule.params['min_km']} km apart within {rule.params['max_minutes']} minutes."
    )
    if len(rows) > 1:
        text += f" {len(rows) - 1} other such settlement(s)."
    evidence = [
        {
            "setl_id": r["o_setl_id"], "fixmedins_code": r["o_hosp"], "setl_time": r["o_time"],
            "from_fixmedins_code": r["fixmedins_code"], "minutes": round(abs(r["seconds"]) / 60, 1),
            "max_minutes": rule.params["max_minutes"], "value": round(r["km2"] ** 0.5, 1),
            "threshold": rule.params["min_km"],
        }
        for r in rows
    ]  # fmt: skip
    return text, evidence


# -- 15 care after death -----------------------------------------------------------------------


def _sql_after_death(rule: Rule, p: dict[str, Any], f: str) -> str:
    p["p_grace"] = rule.params["grace_days"]
    return f"""
SELECT v.psn_no, v.setl_id, v.setl_id AS hit_key, '' AS sn, v.fixmedins_code, v.begn_date, v.setl_date,
       d.death_date, d.source, {days_between("v.begn_date", "d.death_date")} AS value
FROM cur_visits AS v JOIN deaths AS d ON d.psn_no = v.psn_no
WHERE v.begn_date IS NOT NULL AND v.begn_date > {date_add("d.death_date", ":p_grace")} AND {f}
ORDER BY v.psn_no, v.setl_id
"""


def _msg_after_death(rule: Rule, rows: list[dict[str, Any]], names: Mapping[str, str]) -> tuple[str, list]:
    r = rows[0]
    grace = rule.params["grace_days"]
    text = (
        f"This visit at {r['fixmedins_code']} began on {r['begn_date']}, {_days(r['value'])} after the "
        f"date of death on record ({r['death_date']}, source: {r['source']})"
    )
    text += f"; the rule allows {_days(grace)}." if grace else "."
    return text, [
        {"death_date": r["death_date"], "source": r["source"], "begn_date": r["begn_date"],
         "value": r["value"], "threshold": grace}
    ]  # fmt: skip


# -- 16 bed-hanging: inpatient days without treatment ------------------------------------------


def _sql_bed_hanging(rule: Rule, p: dict[str, Any], f: str) -> str:
    p["p_min_idle"] = rule.params["min_idle_days"]
    idle = _in("l.med_list_codg", tuple(rule.params["idle_codes"]), "p_ic", p)
    return f"""
WITH st AS (
  SELECT v.psn_no, v.setl_id, v.fixmedins_code, v.begn_date, v.end_date,
         max(1, {days_between("v.end_date", "v.begn_date")}) AS stay_days
  FROM cur_visits AS v
  WHERE v.begn_date IS NOT NULL AND v.end_date IS NOT NULL AND {f} AND {_inpatient(rule, p, "v", "p_mv")}
), tr AS (
  SELECT st.setl_id, count(l.fee_date) AS dated,
         count(DISTINCT CASE WHEN NOT ({idle}) AND l.fee_date >= st.begn_date AND l.fee_date <= st.end_date
                        THEN l.fee_date END) AS treated
  FROM st JOIN cur_lines AS l ON l.psn_no = st.psn_no AND l.setl_id = st.setl_id
  GROUP BY st.setl_id
)
SELECT st.psn_no, st.setl_id, st.setl_id AS hit_key, '' AS sn, st.fixmedins_code, st.begn_date, st.end_date,
       st.stay_days, tr.treated, st.stay_days - tr.treated AS value
FROM st JOIN tr ON tr.setl_id = st.setl_id
WHERE tr.dated > 0 AND st.stay_days - tr.treated >= :p_min_idle
ORDER BY st.psn_no, st.setl_id
"""


def _msg_bed_hanging(rule: Rule, rows: list[dict[str, Any]], names: Mapping[str, str]) -> tuple[str, list]:
    r = rows[0]
    text = (
        f"An inpatient stay at {r['fixmedins_code']} from {r['begn_date']} to {r['end_date']} "
        f"({_days(r['stay_days'])}) has treatment on {_days(r['treated'])} only: {_days(r['value'])} with no "
        f"more than bed, nursing or meals; the rule flags {_days(rule.params['min_idle_days'])} or more."
    )
    return text, [
        {"begn_date": r["begn_date"], "end_date": r["end_date"], "stay_days": r["stay_days"],
         "treatment_days": r["treated"], "value": r["value"], "threshold": rule.params["min_idle_days"]}
    ]  # fmt: skip


# -- 17 excessive cost -------------------------------------------------------------------------


def _sql_excessive(rule: Rule, p: dict[str, Any], f: str, *, given: bool = False) -> str:
    """``given``: the peer medians come from ``cur_peer_medians`` (``PEER_MEDIANS_DDL``), filled by the
    caller with ``peer_medians`` for every date of the batch, instead of being computed here."""
    prm = rule.params
    conditions = []
    if prm["max_fen"] is not None:
        p["p_max_fen"] = prm["max_fen"]
        conditions.append("cv.medfee_sumamt > :p_max_fen")
    peers = ""
    median = "NULL AS median, NULL AS peers"
    if prm["peer_ratio"] is not None:
        p["p_ratio_e4"] = ratio_e4(prm["peer_ratio"])
        p["p_peer_back"] = -prm["peer_days"]
        p["p_min_peers"] = prm["min_peers"]
        # peers: visits of the same diagnosis category, hospital level and medical type in the
        # peer_days before the visit's date (strictly before: the same answer whichever same-day
        # visits a batch holds). Computed once per (category, level, type, date) of the batch; the
        # median is the middle row, or the mean of the middle two (2·rn ∈ {n, n+1, n+2}).
        peers = f""", grp AS (
  SELECT DISTINCT cv.cat, cv.hosp_lv, cv.med_type, cv.setl_date FROM cv
  WHERE cv.cat IS NOT NULL AND cv.hosp_lv IS NOT NULL
), pr AS (
  SELECT g.cat, g.hosp_lv, g.med_type, g.setl_date, p.medfee_sumamt AS cost,
         row_number() OVER (PARTITION BY g.cat, g.hosp_lv, g.med_type, g.setl_date ORDER BY p.medfee_sumamt)
           AS rn,
         count(*) OVER (PARTITION BY g.cat, g.hosp_lv, g.med_type, g.setl_date) AS n
  FROM grp AS g
  JOIN hist_visits AS p ON p.med_type = g.med_type AND p.hosp_lv = g.hosp_lv
       AND p.setl_date >= {date_add("g.setl_date", ":p_peer_back")} AND p.setl_date < g.setl_date
       AND substr(p.dise_main, 1, 3) = g.cat
), md AS (
  SELECT cat, hosp_lv, med_type, setl_date, max(n) AS n, avg(cost) AS median FROM pr
  WHERE 2 * rn IN (n, n + 1, n + 2) GROUP BY cat, hosp_lv, med_type, setl_date
)"""
        if given:
            p["p_peer_days"] = prm["peer_days"]
            peers = """, md AS (
  SELECT cat, hosp_lv, med_type, setl_date, n, median FROM cur_peer_medians WHERE peer_days = :p_peer_days
)"""
        median = "md.median, md.n AS peers"
        conditions.append(
            "(md.n >= :p_min_peers AND md.median > 0 AND cv.medfee_sumamt * 10000 > :p_ratio_e4 * md.median)"
        )
    join = (
        "LEFT JOIN md ON md.cat = cv.cat AND md.hosp_lv = cv.hosp_lv AND md.med_type = cv.med_type "
        "AND md.setl_date = cv.setl_date"
        if peers
        else ""
    )
    return f"""
WITH cv AS (
  SELECT v.psn_no, v.setl_id, v.fixmedins_code, v.setl_date, v.hosp_lv, v.med_type, v.medfee_sumamt,
         substr(v.dise_main, 1, 3) AS cat
  FROM cur_visits AS v WHERE {f}
){peers}
SELECT cv.psn_no, cv.setl_id, cv.setl_id AS hit_key, '' AS sn, cv.fixmedins_code, cv.setl_date, cv.hosp_lv,
       cv.med_type, cv.medfee_sumamt AS value, {median}
FROM cv {join}
WHERE {" OR ".join(conditions)}
ORDER BY cv.psn_no, cv.setl_id
"""


def _msg_excessive(rule: Rule, rows: list[dict[str, Any]], names: Mapping[str, str]) -> tuple[str, list]:
    r = rows[0]
    prm = rule.params
    cost = r["value"]
    parts, evidence = [], []
    if prm["max_fen"] is not None and cost > prm["max_fen"]:
        parts.append(f"above the limit of {fen_to_text(prm['max_fen'])} yuan")
        evidence.append({"kind": "max_fen", "value": cost, "threshold": prm["max_fen"]})
    median = r["median"]
    if (
        prm["peer_ratio"] is not None
        and median
        and r["peers"] >= prm["min_peers"]
        and cost * 10_000 > ratio_e4(prm["peer_ratio"]) * median
    ):
        limit = int(Decimal(prm["peer_ratio"]) * Decimal(str(median)))
        times = _num(round(cost / median, 1))
        parts.append(
            f"{times} times the median of {r['peers']} similar visits in the {prm['peer_days']} days before "
            f"(same diagnosis category, medical type and hospital level: "
            f"{fen_to_text(round(median))} yuan); the rule flags more than {prm['peer_ratio']} times"
        )
        evidence.append(
            {"kind": "peer_ratio", "value": cost, "threshold": limit, "peer_median": median,
             "peers": r["peers"], "peer_ratio": prm["peer_ratio"], "med_type": r["med_type"],
             "hosp_lv": r["hosp_lv"]}
        )  # fmt: skip
    text = f"This visit at {r['fixmedins_code']} on {r['setl_date']} cost {fen_to_text(cost)} yuan, "
    return text + "; ".join(parts) + ".", evidence


#: Peer medians of template 17 computed by the caller (``peer_medians``): one row per (peer_days,
#: diagnosis category, hospital level, medical type, date) with at least one peer. A screening engine
#: that screens a long range in many batches computes them once (each batch recomputing them from
#: ``hist_visits`` re-reads a year of visits per batch) and runs ``compile_excessive_given``.
PEER_MEDIANS_DDL = """
CREATE TEMP TABLE IF NOT EXISTS cur_peer_medians (
    peer_days INTEGER NOT NULL, cat TEXT NOT NULL, hosp_lv TEXT NOT NULL, med_type TEXT NOT NULL,
    setl_date TEXT NOT NULL, n INTEGER NOT NULL, median REAL NOT NULL,
    PRIMARY KEY (peer_days, cat, hosp_lv, med_type, setl_date)) WITHOUT ROWID
"""


@functools.lru_cache(maxsize=256)
def compile_excessive_given(rule: Rule) -> Compiled:
    """Template 17's SQL reading the peer medians from ``cur_peer_medians`` (same rows as ``compile_rule``'s
    when that table holds ``peer_medians`` for every date of the batch)."""
    if rule.template != "excessive_cost":
        raise ValueError(f"{rule.template} is not excessive_cost")
    params: dict[str, Any] = {}
    f = _filters(rule, params, "v")
    return Compiled(_sql_excessive(rule, params, f, given=True), params)


def peer_medians(
    rows: Iterable[tuple[str, str, str, str, int]], dates: Iterable[str], peer_days: int
) -> Iterator[tuple[str, str, str, str, int, float]]:
    """Template 17's peer medians, exactly as its SQL computes them, for every group and each of ``dates``.

    ``rows``: ``(category, hosp_lv, med_type, setl_date, medfee_sumamt)`` of the held visits with
    ``setl_date`` from ``peer_days`` before the first date up to the last, **sorted** by group then
    date (category = first 3 characters of ``dise_main``; rows without category or level left out).
    Yields ``(category, hosp_lv, med_type, date, n, median)`` for each group and date with at least one
    peer: the visits of the group in [date - peer_days, date), median the middle one or the mean of
    the middle two. One pass per group with a sorted window that slides over the dates: each visit
    enters and leaves once, where the SQL re-reads the window for every (group, date).
    """
    wanted = sorted(set(dates))
    if not wanted:
        return
    lows = {d: (date.fromisoformat(d) - timedelta(days=peer_days)).isoformat() for d in wanted}
    for (cat, lv, mt), group in itertools.groupby(rows, key=lambda r: (r[0], r[1], r[2])):
        items = [(r[3], r[4]) for r in group]
        window: list[int] = []
        enter = leave = 0
        for d in wanted:
            while enter < len(items) and items[enter][0] < d:
                bisect.insort(window, items[enter][1])
                enter += 1
            low = lows[d]
            while leave < enter and items[leave][0] < low:
                del window[bisect.bisect_left(window, items[leave][1])]
                leave += 1
            n = len(window)
            if n:
                mid = n // 2
                median = float(window[mid]) if n % 2 else (window[mid - 1] + window[mid]) / 2
                yield cat, lv, mt, d, n, median


# -- 18 peer outlier (doctor, department, hospital) --------------------------------------------

_MEASURES = {
    "cost_per_visit": "sum(x.medfee_sumamt) * 1.0 / count(*)",
    "drug_share": "sum(x.drug_fen) * 1.0 / sum(x.medfee_sumamt)",
    "visits_per_patient": "count(*) * 1.0 / count(DISTINCT x.psn_no)",
    # an admission-rate outlier: the share of the object's visits that are inpatient admissions
    "admission_rate": "sum(CASE WHEN x.med_type = '21' THEN 1 ELSE 0 END) * 1.0 / count(*)",
}
#: object → (its id, its peer group's department part) over a visit ``x``
_OBJECTS = {
    "doctor": ("{x}.dr_codg", "{x}.dept_codg"),
    "department": ("{x}.fixmedins_code || '/' || {x}.dept_codg", "{x}.dept_codg"),
    "hospital": ("{x}.fixmedins_code", "''"),
}


def _sql_peer_outlier(rule: Rule, p: dict[str, Any], f: str) -> str:
    prm = rule.params
    p["p_days"] = prm["days"]
    p["p_min_visits"] = prm["min_visits"]
    p["p_ratio_e4"] = ratio_e4(prm["ratio"])
    obj, dept = _OBJECTS[rule.object]
    known = "{x}.hosp_lv IS NOT NULL" + (
        "" if rule.object == "hospital" else " AND {x}.dept_codg IS NOT NULL"
    )
    if rule.object == "doctor":
        known += " AND {x}.dr_codg IS NOT NULL"
    fw = _filters(rule, p, "x")
    # the window: the days up to the batch's last (filtered) settlement date; every object with
    # min_visits visits in it is measured; an object the batch touched is compared with the median
    # of the others of its peer group (same department code and level; hospitals: same level).
    # r ranks each group's values once (rk of cnt); the median of the n = cnt - 1 others is at the
    # others' positions j1, j2 (2j ∈ {n, n+1, n+2}), which are ranks j (before the object) or j + 1
    # (after it) in r: two seeks per object, where pairing every object with every peer sorted
    # groups² rows.
    return f"""
WITH cv AS (
  SELECT v.psn_no, v.setl_id, v.setl_date, {obj.format(x="v")} AS obj, {dept.format(x="v")} AS g_dept,
         v.hosp_lv AS g_lv
  FROM cur_visits AS v WHERE {f} AND {known.format(x="v")}
), d AS (
  SELECT max(setl_date) AS d_to, {date_add("max(setl_date)", "1 - :p_days")} AS d_from FROM cv
), m AS (
  SELECT {obj.format(x="x")} AS obj, {dept.format(x="x")} AS g_dept, x.hosp_lv AS g_lv, count(*) AS visits,
         {_MEASURES[prm["measure"]]} AS value
  FROM d JOIN hist_visits AS x ON x.setl_date >= d.d_from AND x.setl_date <= d.d_to
  WHERE {known.format(x="x")} AND {fw}
  GROUP BY 1, 2, 3 HAVING count(*) >= :p_min_visits
), r AS (
  SELECT m.*, row_number() OVER (PARTITION BY m.g_dept, m.g_lv ORDER BY m.value) AS rk,
         count(*) OVER (PARTITION BY m.g_dept, m.g_lv) AS cnt
  FROM m WHERE m.value IS NOT NULL
), t AS (
  SELECT r.obj, r.g_dept, r.g_lv, r.visits, r.value, r.rk, r.cnt - 1 AS n,
         CAST((r.cnt - 1 + 1) / 2 AS INTEGER) AS j1, CAST((r.cnt - 1) / 2 + 1 AS INTEGER) AS j2
  FROM r WHERE r.cnt > 1
    AND EXISTS (SELECT 1 FROM cv WHERE cv.obj = r.obj AND cv.g_dept = r.g_dept AND cv.g_lv = r.g_lv)
), md AS (
  SELECT t.obj, t.g_dept, t.g_lv, max(t.visits) AS visits, max(t.value) AS value, max(t.n) AS peers,
         avg(o.value) AS median
  FROM t JOIN r AS o ON o.g_dept = t.g_dept AND o.g_lv = t.g_lv
       AND o.rk IN (CASE WHEN t.j1 < t.rk THEN t.j1 ELSE t.j1 + 1 END,
                    CASE WHEN t.j2 < t.rk THEN t.j2 ELSE t.j2 + 1 END)
  GROUP BY t.obj, t.g_dept, t.g_lv
), hit AS (
  SELECT md.* FROM md WHERE md.median > 0 AND md.value * 10000 >= :p_ratio_e4 * md.median
), rep AS (
  SELECT cv.obj, cv.g_dept, cv.g_lv, cv.psn_no, cv.setl_id,
         row_number() OVER (PARTITION BY cv.obj, cv.g_dept, cv.g_lv
                            ORDER BY cv.setl_date DESC, cv.setl_id DESC) AS pick
  FROM cv JOIN hit ON hit.obj = cv.obj AND hit.g_dept = cv.g_dept AND hit.g_lv = cv.g_lv
)
SELECT rep.psn_no, rep.setl_id, hit.obj || '|' || hit.g_dept || '|' || hit.g_lv AS hit_key, '' AS sn,
       hit.obj AS object_id, hit.g_dept, hit.g_lv, hit.visits, hit.value, hit.median, hit.peers,
       d.d_from, d.d_to
FROM hit
JOIN rep ON rep.obj = hit.obj AND rep.g_dept = hit.g_dept AND rep.g_lv = hit.g_lv AND rep.pick = 1
CROSS JOIN d
ORDER BY rep.psn_no, rep.setl_id, hit.obj
"""


_MEASURE_WORDS = {
    "cost_per_visit": "cost per visit",
    "drug_share": "drug share of the cost",
    "visits_per_patient": "visits per patient",
    "admission_rate": "share of visits admitted",
}


def _show(measure: str, value: float) -> str:
    if measure == "cost_per_visit":
        return f"{fen_to_text(round(value))} yuan"
    if measure in ("drug_share", "admission_rate"):
        return f"{value * 100:.1f} %"
    return _num(round(value, 2))


def _msg_peer_outlier(rule: Rule, rows: list[dict[str, Any]], names: Mapping[str, str]) -> tuple[str, list]:
    r = rows[0]
    prm = rule.params
    measure = prm["measure"]
    who = {"doctor": "Doctor", "department": "Department", "hospital": "Hospital"}[rule.object]
    group = (
        _level(r["g_lv"]) if rule.object == "hospital" else f"department {r['g_dept']} at {_level(r['g_lv'])}"
    )
    times = _num(round(r["value"] / r["median"], 1))
    text = (
        f"{who} {r['object_id']}: {_MEASURE_WORDS[measure]} {_show(measure, r['value'])} over {r['visits']} "
        f"visits from {r['d_from']} to {r['d_to']}, {times} times the median of {r['peers']} peers ({group}: "
        f"{_show(measure, r['median'])}); the rule flags {prm['ratio']} times or more."
    )
    evidence = [
        {
            "object_id": x["object_id"], "measure": measure, "value": x["value"],
            "threshold": float(Decimal(prm["ratio"]) * Decimal(str(x["median"]))), "peer_median": x["median"],
            "peers": x["peers"], "visits": x["visits"], "dept_codg": x["g_dept"] or None,
            "hosp_lv": x["g_lv"],
            "window_from": x["d_from"], "window_to": x["d_to"], "ratio": prm["ratio"],
        }
        for x in rows
    ]  # fmt: skip
    return text, evidence


# -- 19 unreasonable admission -----------------------------------------------------------------


def _sql_admission(rule: Rule, p: dict[str, Any], f: str) -> str:
    """An inpatient stay for a diagnosis treatable as an outpatient (``outpatient_prefixes``, ICD-10 or
    ICD-9 prefixes of the main diagnosis), or a stay of at most ``max_stay_days`` days (and, when given,
    costing at most ``max_cost_fen``): admissions made to bill an inpatient benefit for outpatient care."""
    prm = rule.params
    stay = f"max(1, {days_between('v.end_date', 'v.begn_date')})"
    prefixes = tuple(prm["outpatient_prefixes"])
    for i, prefix in enumerate(prefixes):
        p[f"p_op{i}"] = prefix
    op = " OR ".join(f"substr(v.dise_main, 1, length(:p_op{i})) = :p_op{i}" for i in range(len(prefixes)))
    short = "0"
    if prm["max_stay_days"] is not None:
        p["p_max_stay"] = prm["max_stay_days"]
        short = f"(v.end_date IS NOT NULL AND {stay} <= :p_max_stay"
        if prm["max_cost_fen"] is not None:
            p["p_max_cost"] = prm["max_cost_fen"]
            short += " AND v.medfee_sumamt <= :p_max_cost"
        short += ")"
    return f"""
SELECT v.psn_no, v.setl_id, v.setl_id AS hit_key, '' AS sn, v.fixmedins_code, v.begn_date, v.end_date,
       v.dise_main, v.medfee_sumamt,
       CASE WHEN v.end_date IS NULL OR v.begn_date IS NULL THEN NULL ELSE {stay} END AS stay_days,
       CASE WHEN {op or "0"} THEN 1 ELSE 0 END AS op_dx, CASE WHEN {short} THEN 1 ELSE 0 END AS short_stay
FROM cur_visits AS v
WHERE v.begn_date IS NOT NULL AND {f} AND {_inpatient(rule, p, "v", "p_mv")}
  AND (({op or "0"}) OR {short})
ORDER BY v.psn_no, v.setl_id
"""


def _msg_admission(rule: Rule, rows: list[dict[str, Any]], names: Mapping[str, str]) -> tuple[str, list]:
    r = rows[0]
    prm = rule.params
    why, evidence = [], []
    if r["op_dx"]:
        why.append(f"its main diagnosis ({r['dise_main']}) is one the rule lists as outpatient care")
        evidence.append({"kind": "outpatient_diagnosis", "dise_main": r["dise_main"]})
    if r["short_stay"]:
        cost = f", costing {fen_to_text(r['medfee_sumamt'])} yuan" if prm["max_cost_fen"] is not None else ""
        why.append(f"it lasted {_days(r['stay_days'])}{cost}")
        item: dict[str, Any] = {"kind": "short_stay", "stay_days": r["stay_days"], "value": r["stay_days"],
                                "threshold": prm["max_stay_days"]}  # fmt: skip
        if prm["max_cost_fen"] is not None:
            item.update(medfee_sumamt=r["medfee_sumamt"], max_cost_fen=prm["max_cost_fen"])
        evidence.append(item)
    text = (
        f"An admission to {r['fixmedins_code']} on {r['begn_date']} looks unnecessary: {' and '.join(why)}"
        f"{'; the rule flags stays of at most ' + _days(prm['max_stay_days']) if r['short_stay'] else ''}."
    )
    return text, evidence


# -- 20 repeated treatment across visits -------------------------------------------------------


def _sql_repeated_treatment(rule: Rule, p: dict[str, Any], f: str) -> str:
    """The same service item billed to the person in ``min_visits`` or more distinct visits (this one and
    earlier ones) within ``days`` days, at any hospital: an examination or treatment repeated visit after
    visit. Only the later visits hit (the first one of a series is the treatment itself)."""
    prm = rule.params
    p["p_back"] = -prm["days"]
    p["p_min"] = prm["min_visits"] - 1
    types = _in("c.list_type", tuple(prm["list_types"]), "p_lt", p)
    exclude = _in("c.med_list_codg", tuple(prm["exclude_codes"]), "p_ex", p) if prm["exclude_codes"] else "0"
    return f"""
WITH r AS (
  SELECT c.psn_no, c.setl_id, c.med_list_codg AS code, v.fixmedins_code, v.setl_date,
         group_concat(DISTINCT c.feedetl_sn) AS sn
  FROM cur_visits AS v
  JOIN cur_lines AS c ON c.psn_no = v.psn_no AND c.setl_id = v.setl_id
  WHERE {f} AND {types} AND NOT ({exclude})
  GROUP BY c.psn_no, c.setl_id, c.med_list_codg, v.fixmedins_code, v.setl_date
)
, h AS (
  SELECT r.psn_no, r.setl_id, r.code, x.setl_id AS h_setl_id, max(x.setl_date) AS h_date,
         max(x.fixmedins_code) AS h_hosp
  FROM r JOIN hist_lines AS x ON x.psn_no = r.psn_no AND x.med_list_codg = r.code AND x.setl_id <> r.setl_id
       AND x.setl_date > {date_add("r.setl_date", ":p_back")}
       AND (x.setl_date < r.setl_date OR (x.setl_date = r.setl_date AND x.setl_id < r.setl_id))
  GROUP BY r.psn_no, r.setl_id, r.code, x.setl_id
), n AS (
  SELECT psn_no, setl_id, code, count(*) AS others FROM h GROUP BY psn_no, setl_id, code
)
SELECT r.psn_no, r.setl_id, r.setl_id || '|' || r.code AS hit_key, r.sn, r.code, r.fixmedins_code,
       r.setl_date, h.h_setl_id, h.h_date, h.h_hosp, n.others + 1 AS value
FROM r
JOIN n ON n.psn_no = r.psn_no AND n.setl_id = r.setl_id AND n.code = r.code AND n.others >= :p_min
JOIN h ON h.psn_no = r.psn_no AND h.setl_id = r.setl_id AND h.code = r.code
ORDER BY r.psn_no, r.setl_id, r.code, h.h_date DESC, h.h_setl_id
"""


def _msg_repeated_treatment(
    rule: Rule, rows: list[dict[str, Any]], names: Mapping[str, str]
) -> tuple[str, list]:
    top = rows[0]
    days = rule.params["days"]
    name = names.get(top["code"]) or top["code"]
    shown = ", ".join(f"{r['h_date']} at {r['h_hosp']}" for r in rows[:3])
    more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
    limit = rule.params["min_visits"]
    text = (
        f"{name} is billed again at {top['fixmedins_code']} on {top['setl_date']}: visit {top['value']} "
        f"with it in {_days(days)} (earlier: {shown}{more}); the rule flags {limit} or more."
    )
    evidence: list[dict[str, Any]] = [
        {"med_list_codg": top["code"], "value": top["value"], "threshold": limit, "days": days}
    ]
    evidence += [
        {"setl_id": r["h_setl_id"], "setl_date": r["h_date"], "fixmedins_code": r["h_hosp"]} for r in rows
    ]
    return text, evidence


#: The centre templates' (SQL builder, message builder), registered with ``templates`` so that
#: ``compile_rule``/``run_rule`` run edge and centre templates alike.
CENTRE_SQL_TEMPLATES = {
    "readmission": (_sql_readmission, _msg_readmission),
    "impersonation_distance": (_sql_impersonation, _msg_impersonation),
    "care_after_death": (_sql_after_death, _msg_after_death),
    "bed_hanging": (_sql_bed_hanging, _msg_bed_hanging),
    "excessive_cost": (_sql_excessive, _msg_excessive),
    "peer_outlier": (_sql_peer_outlier, _msg_peer_outlier),
    "unreasonable_admission": (_sql_admission, _msg_admission),
    "repeated_treatment": (_sql_repeated_treatment, _msg_repeated_treatment),
}
_TEMPLATES.update(CENTRE_SQL_TEMPLATES)
