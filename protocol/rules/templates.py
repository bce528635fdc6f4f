"""Templates 1-11 compiled to SQL over ``cur_lines``, ``hist_lines`` and ``kb_*``; rows → ``Hit``s.

Every query is keyed by the checked line's own columns (``c.psn_no``, ``c.setl_id``,
``c.setl_date``), never by a parameter naming one person or one day. That is what lets the same
SQL text check one bill at the agent (``cur_lines`` holds it, ``setl_id`` ``"CURRENT"``) and a
batch or a date range of many persons' settlements at the centre (``cur_lines`` holds them all,
history is everything ingested): history always joins on ``h.psn_no = c.psn_no``, looks back from
``c.setl_date`` and leaves out the checked settlement itself (``h.setl_id <> c.setl_id``).

Each query returns ``psn_no, setl_id, hit_key, sn`` first: rows with the same three keys make one
hit, ``sn`` is the comma-separated ``feedetl_sn`` of the checked lines it concerns. The rule's
filters are part of the SQL too (on the checked line), so a batch is filtered as one bill is.
Thresholds and filter values are bound parameters; the text of a rule's query never changes, so
SQLite's statement cache prepares it once per connection.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..records import fen_to_text
from .definitions import INTERACTION_SEVERITIES, Rule
from .dialect import date_add, days_between, in_code_list
from .model import Hit

__all__ = ["Compiled", "compile_rule", "hits_from_rows", "run_rule"]


@dataclass(frozen=True, slots=True)
class Compiled:
    sql: str
    params: Mapping[str, Any]


def _in(column: str, values: tuple[str, ...], prefix: str, params: dict[str, Any]) -> str:
    names = []
    for i, value in enumerate(values):
        params[f"{prefix}{i}"] = value
        names.append(f":{prefix}{i}")
    return f"{column} IN ({', '.join(names)})" if names else "1 = 0"


def _filters(rule: Rule, params: dict[str, Any], c: str = "c") -> str:
    parts = []
    if rule.med_types:
        parts.append(_in(f"{c}.med_type", rule.med_types, "f_mt", params))
    if rule.insutypes:
        parts.append(_in(f"{c}.insutype", rule.insutypes, "f_it", params))
    if rule.hosp_lvs:
        parts.append(_in(f"{c}.hosp_lv", rule.hosp_lvs, "f_hl", params))
    if rule.disease_prefixes:
        ors = []
        for i, prefix in enumerate(rule.disease_prefixes):
            params[f"f_dp{i}"] = prefix
            ors.append(in_code_list(f"{c}.dise_codg", f":f_dp{i}"))
        parts.append(f"({' OR '.join(ors)})")
    return " AND ".join(parts) if parts else "1 = 1"


def _back(days: int) -> int:
    """A look-back bound as the (negative) day count ``date_add`` takes."""
    return -days


# -- 1 duplicate medication --------------------------------------------------------------------

_OVERLAP = f"min(c.days, h.days - {days_between('c.setl_date', 'h.setl_date')})"


def _sql_duplicate(rule: Rule, p: dict[str, Any], f: str) -> str:
    p["p_back"] = _back(rule.window_days)
    p["p_min_overlap"] = rule.params["min_overlap_days"]
    # cand: each checked drug line with the codes it matches: its own, and (match class) every
    # other code of its drug class; each is then a seek on hist_lines (psn_no, med_list_codg, setl_date)
    line = "c.psn_no, c.setl_id, c.setl_date, c.feedetl_sn, c.med_list_codg, c.days"
    same_class = f"""
  UNION ALL
  SELECT {line}, kx.code AS code FROM cur_lines AS c
  JOIN kb_items AS kc ON kc.code = c.med_list_codg
  JOIN kb_items AS kx ON kx.drug_class = kc.drug_class AND kx.code <> kc.code
  WHERE c.days IS NOT NULL AND {f}"""
    return f"""
WITH cand AS MATERIALIZED (
  SELECT {line}, c.med_list_codg AS code FROM cur_lines AS c WHERE c.days IS NOT NULL AND {f}
  {same_class if rule.params["match"] == "class" else ""}
)
SELECT c.psn_no, c.setl_id, c.feedetl_sn AS hit_key, c.feedetl_sn AS sn,
       c.med_list_codg AS cur_code, kc.name AS cur_name, kc.drug_class AS cur_class, c.days AS cur_days,
       h.setl_date, h.fixmedins_code, h.med_list_codg, kh.name AS name, kh.drug_class AS drug_class, h.days,
       {date_add("h.setl_date", "h.days")} AS supply_until, {_OVERLAP} AS overlap
FROM cand AS c
LEFT JOIN kb_items AS kc ON kc.code = c.med_list_codg
JOIN hist_lines AS h ON h.psn_no = c.psn_no AND h.med_list_codg = c.code
     AND h.setl_date >= {date_add("c.setl_date", ":p_back")} AND h.setl_date <= c.setl_date
LEFT JOIN kb_items AS kh ON kh.code = h.med_list_codg
WHERE h.days IS NOT NULL AND h.setl_id <> c.setl_id AND {_OVERLAP} >= :p_min_overlap
ORDER BY c.psn_no, c.setl_id, c.feedetl_sn, overlap DESC, h.setl_date DESC, h.fixmedins_code, h.med_list_codg
"""


def _msg_duplicate(rule: Rule, rows: list[dict[str, Any]], names: Mapping[str, str]) -> tuple[str, list]:
    top = rows[0]
    cur = _name(top["cur_code"], top["cur_name"], names)
    hist = _name(top["med_list_codg"], top["name"], names)
    when = f"at {top['fixmedins_code']} on {top['setl_date']} for {top['days']} days"
    when += f" (until {top['supply_until']})"
    if top["med_list_codg"] == top["cur_code"]:
        text = f"{_cap(hist)} was dispensed {when}; this prescription overlaps by {top['overlap']} days."
    else:
        text = (
            f"{_cap(hist)}, of the same drug class ({top['drug_class']}) as {cur}, was dispensed {when}; "
            f"this prescription overlaps by {top['overlap']} days."
        )
    if len(rows) > 1:
        text += f" {len(rows) - 1} other overlapping dispensing(s) in the last {rule.window_days} days."
    evidence = [
        {
            "setl_date": r["setl_date"], "fixmedins_code": r["fixmedins_code"],
            "med_list_codg": r["med_list_codg"], "name": _name(r["med_list_codg"], r["name"], names),
            "days": r["days"], "supply_until": r["supply_until"], "value": r["overlap"],
            "threshold": rule.params["min_overlap_days"],
        }
        for r in rows
    ]  # fmt: skip
    return text, evidence


# -- 2 over-quantity / excessive duration ------------------------------------------------------


def _sql_over_quantity(rule: Rule, p: dict[str, Any], f: str) -> str:
    chronic = _in("c.med_type", rule.params["chronic_med_types"], "p_cm", p)
    limit = f"CASE WHEN {chronic} THEN k.max_days_chronic ELSE k.max_days_acute END"
    head = "SELECT c.psn_no, c.setl_id, c.feedetl_sn AS hit_key, c.feedetl_sn AS sn, c.med_list_codg, k.name,"
    tail = (
        f"FROM cur_lines AS c JOIN kb_items AS k ON k.code = c.med_list_codg WHERE c.days IS NOT NULL AND {f}"
    )
    return f"""
{head} 'days' AS kind, c.days, c.cnt, {chronic} AS chronic, c.days AS value, {limit} AS threshold
{tail} AND c.days > {limit}
UNION ALL
{head} 'cnt_per_day' AS kind, c.days, c.cnt, {chronic} AS chronic, c.cnt AS value,
       k.max_cnt_per_day AS threshold
{tail} AND k.max_cnt_per_day IS NOT NULL AND c.cnt > k.max_cnt_per_day * c.days + 1e-9
ORDER BY 1, 2, 3, 7
"""


def _msg_over_quantity(rule: Rule, rows: list[dict[str, Any]], names: Mapping[str, str]) -> tuple[str, list]:
    name = _cap(_name(rows[0]["med_list_codg"], rows[0]["name"], names))
    parts, evidence = [], []
    for r in rows:
        if r["kind"] == "days":
            course = "for a chronic-disease prescription" if r["chronic"] else "outside chronic-disease care"
            # a whole number of days, whichever engine ran the UNION (where it shares a REAL column)
            threshold = int(r["threshold"])
            limit = f"the limit {course} is {threshold} days"
            parts.append(f"is prescribed for {r['days']} days; {limit}")
            evidence.append({"med_list_codg": r["med_list_codg"], "kind": "days", "value": r["days"],
                             "threshold": threshold})  # fmt: skip
        else:
            allowed = r["threshold"] * r["days"]
            parts.append(
                f"quantity {_num(r['cnt'])} for {r['days']} days is more than the limit of "
                f"{_num(r['threshold'])} a day ({_num(allowed)} for {r['days']} days)"
            )
            evidence.append({"med_list_codg": r["med_list_codg"], "kind": "cnt_per_day", "value": r["cnt"],
                             "days": r["days"], "threshold": r["threshold"]})  # fmt: skip
    return f"{name} {'; '.join(parts)}.", evidence


# -- 3 frequency limit -------------------------------------------------------------------------


def _sql_frequency(rule: Rule, p: dict[str, Any], f: str) -> str:
    return f"""
WITH cc AS (
  SELECT c.psn_no, c.setl_id, c.med_list_codg AS code, max(c.setl_date) AS setl_date,
         min(c.begn_date) AS begn_date, sum(c.cnt) AS cnt, group_concat(c.feedetl_sn, ',') AS sns
  FROM cur_lines AS c WHERE {f} GROUP BY c.psn_no, c.setl_id, c.med_list_codg
), ff AS (
  SELECT cc.*, fr.per, fr.max_count,
         CASE WHEN fr.per = 'visit' THEN NULL
              WHEN fr.per = 'day' THEN cc.begn_date
              ELSE {date_add("cc.setl_date", "1 - CAST(substr(fr.per, 13) AS INTEGER)")} END AS lo,
         CASE WHEN fr.per = 'day'
              THEN fr.max_count * max(1, {days_between("cc.setl_date", "cc.begn_date")})
              ELSE fr.max_count END AS allowed
  FROM cc JOIN kb_frequency AS fr ON fr.code = cc.code
), hh AS (
  SELECT ff.psn_no, ff.setl_id, ff.code, h.setl_date AS h_date, h.fixmedins_code AS h_hosp, h.cnt AS h_cnt
  FROM ff JOIN hist_lines AS h ON h.psn_no = ff.psn_no
       AND h.setl_date >= ff.lo AND h.setl_date <= ff.setl_date
  WHERE h.setl_id <> ff.setl_id AND h.med_list_codg = ff.code
), tot AS (
  SELECT ff.*, ff.cnt + coalesce((SELECT sum(hh.h_cnt) FROM hh WHERE hh.psn_no = ff.psn_no
         AND hh.setl_id = ff.setl_id AND hh.code = ff.code), 0) AS total
  FROM ff
)
SELECT tot.psn_no, tot.setl_id, tot.code AS hit_key, tot.sns AS sn, tot.code AS med_list_codg, k.name,
       tot.per, tot.max_count, tot.allowed AS threshold, tot.total AS value, tot.cnt AS cur_cnt,
       tot.setl_date, tot.begn_date, hh.h_date, hh.h_hosp, hh.h_cnt
FROM tot
LEFT JOIN hh ON hh.psn_no = tot.psn_no AND hh.setl_id = tot.setl_id AND hh.code = tot.code
LEFT JOIN kb_items AS k ON k.code = tot.code
WHERE tot.total > tot.allowed + 1e-9
ORDER BY 1, 2, 3, hh.h_date DESC, hh.h_hosp
"""


def _msg_frequency(rule: Rule, rows: list[dict[str, Any]], names: Mapping[str, str]) -> tuple[str, list]:
    top = rows[0]
    name = _cap(_name(top["med_list_codg"], top["name"], names))
    per, most, total, allowed = top["per"], top["max_count"], top["value"], top["threshold"]
    if per == "visit":
        text = f"{name} is billed {_num(total)} times in this visit; the limit is {most} per visit."
    elif per == "day":
        days = max(1, round(allowed / most))
        span = "one day" if days == 1 else f"{days} days ({top['begn_date']} to {top['setl_date']})"
        text = (
            f"{name} is billed {_num(total)} times for {span}; the limit is {most} a day ({_num(allowed)})."
        )
    else:
        n = per.split(":", 1)[1]
        text = (
            f"{name} is billed {_num(total)} times in the {n} days up to {top['setl_date']}; "
            f"the limit is {most} per {n} days."
        )
    earlier = [r for r in rows if r["h_date"] is not None]
    if earlier:
        shown = ", ".join(f"{r['h_date']} at {r['h_hosp']}" for r in earlier[:3])
        more = f" and {len(earlier) - 3} more" if len(earlier) > 3 else ""
        text += f" Earlier: {shown}{more}."
    evidence: list[dict[str, Any]] = [
        {"med_list_codg": top["med_list_codg"], "per": per, "value": total, "threshold": allowed,
         "this_bill": top["cur_cnt"]}
    ]  # fmt: skip
    evidence += [
        {"setl_date": r["h_date"], "fixmedins_code": r["h_hosp"], "med_list_codg": top["med_list_codg"],
         "value": r["h_cnt"]}
        for r in earlier
    ]  # fmt: skip
    return text, evidence


# -- 4 repeated charge -------------------------------------------------------------------------


def _sql_repeated(rule: Rule, p: dict[str, Any], f: str) -> str:
    # the join order is fixed (CROSS JOIN: SQLite keeps it): each checked line, the exclusive pairs it is
    # the main item of (a primary-key seek), then the included item among the bill's lines (an index
    # seek). Left to itself, SQLite without statistics pairs every line of a bill with every other.
    return f"""
SELECT c.psn_no, c.setl_id, i.feedetl_sn AS hit_key, i.feedetl_sn AS sn,
       i.med_list_codg AS included_code, ki.name AS included_name,
       c.feedetl_sn AS main_sn, c.med_list_codg AS main_code, km.name AS main_name
FROM cur_lines AS c
CROSS JOIN kb_exclusive AS x
CROSS JOIN cur_lines AS i
LEFT JOIN kb_items AS km ON km.code = c.med_list_codg
LEFT JOIN kb_items AS ki ON ki.code = i.med_list_codg
WHERE x.main_code = c.med_list_codg
  AND i.psn_no = c.psn_no AND i.setl_id = c.setl_id AND i.med_list_codg = x.included_code AND {f}
ORDER BY 1, 2, 3, c.feedetl_sn
"""


def _msg_repeated(rule: Rule, rows: list[dict[str, Any]], names: Mapping[str, str]) -> tuple[str, list]:
    top = rows[0]
    inc = _cap(_name(top["included_code"], top["included_name"], names))
    main = _name(top["main_code"], top["main_name"], names)
    text = f"{inc} is included in {main} (line {top['main_sn']}) and must not be charged separately."
    evidence = [
        {"med_list_codg": r["included_code"], "included_in": r["main_code"], "main_line": r["main_sn"]}
        for r in rows
    ]
    return text, evidence


# -- 5 gender, 6 age ---------------------------------------------------------------------------


def _sql_gender(rule: Rule, p: dict[str, Any], f: str) -> str:
    return f"""
SELECT c.psn_no, c.setl_id, c.feedetl_sn AS hit_key, c.feedetl_sn AS sn, c.med_list_codg, k.name,
       k.gender AS threshold, c.gend AS value
FROM cur_lines AS c JOIN kb_items AS k ON k.code = c.med_list_codg
WHERE k.gender IS NOT NULL AND c.gend IN ('1', '2') AND c.gend <> k.gender AND {f}
ORDER BY 1, 2, 3
"""


def _msg_gender(rule: Rule, rows: list[dict[str, Any]], names: Mapping[str, str]) -> tuple[str, list]:
    r = rows[0]
    who = {"1": "male", "2": "female"}[r["threshold"]]
    name = _cap(_name(r["med_list_codg"], r["name"], names))
    text = f"{name} is for {who} patients only (catalogue restriction)."
    return text, [{"med_list_codg": r["med_list_codg"], "value": r["value"], "threshold": r["threshold"]}]


_AGE = (
    "(CAST(substr(c.begn_date, 1, 4) AS INTEGER) - CAST(substr(c.brdy, 1, 4) AS INTEGER)"
    " - CASE WHEN substr(c.begn_date, 6, 5) < substr(c.brdy, 6, 5) THEN 1 ELSE 0 END)"
)


def _sql_age(rule: Rule, p: dict[str, Any], f: str) -> str:
    return f"""
SELECT c.psn_no, c.setl_id, c.feedetl_sn AS hit_key, c.feedetl_sn AS sn, c.med_list_codg, k.name,
       k.age_min, k.age_max, {_AGE} AS value
FROM cur_lines AS c JOIN kb_items AS k ON k.code = c.med_list_codg
WHERE (k.age_min IS NOT NULL OR k.age_max IS NOT NULL) AND c.brdy IS NOT NULL AND {f}
  AND ({_AGE} < k.age_min OR {_AGE} > k.age_max)
ORDER BY 1, 2, 3
"""


def _msg_age(rule: Rule, rows: list[dict[str, Any]], names: Mapping[str, str]) -> tuple[str, list]:
    r = rows[0]
    lo, hi = r["age_min"], r["age_max"]
    if lo is not None and hi is not None:
        span, side = f"aged {lo} to {hi}", "younger" if r["value"] < lo else "older"
    elif lo is not None:
        span, side = f"aged {lo} or over", "younger"
    else:
        span, side = f"aged {hi} or under", "older"
    name = _cap(_name(r["med_list_codg"], r["name"], names))
    text = f"{name} is for patients {span} (catalogue restriction); this patient is {side}."
    return text, [{"med_list_codg": r["med_list_codg"], "value": r["value"], "threshold": [lo, hi]}]


# -- 7 restricted indication -------------------------------------------------------------------


def _sql_indication(rule: Rule, p: dict[str, Any], f: str) -> str:
    return f"""
SELECT c.psn_no, c.setl_id, c.feedetl_sn AS hit_key, c.feedetl_sn AS sn, c.med_list_codg, k.name,
       c.dise_codg AS value,
       (SELECT group_concat(d.dise_prefix, ',') FROM kb_indications AS d
        WHERE d.code = c.med_list_codg) AS threshold
FROM cur_lines AS c LEFT JOIN kb_items AS k ON k.code = c.med_list_codg
WHERE {f}
  AND EXISTS (SELECT 1 FROM kb_indications AS d WHERE d.code = c.med_list_codg)
  AND NOT EXISTS (SELECT 1 FROM kb_indications AS d WHERE d.code = c.med_list_codg
                  AND {in_code_list("c.dise_codg", "d.dise_prefix")})
ORDER BY 1, 2, 3
"""


def _msg_indication(rule: Rule, rows: list[dict[str, Any]], names: Mapping[str, str]) -> tuple[str, list]:
    r = rows[0]
    prefixes = sorted(r["threshold"].split(","))
    name = _cap(_name(r["med_list_codg"], r["name"], names))
    text = (
        f"{name} is reimbursed only with a diagnosis of {_or(prefixes)}; "
        "none of this visit's diagnoses matches."
    )
    return text, [
        {"med_list_codg": r["med_list_codg"], "value": r["value"].split(","), "threshold": prefixes}
    ]


# -- 8 price above the ceiling -----------------------------------------------------------------


def _sql_price(rule: Rule, p: dict[str, Any], f: str) -> str:
    p["p_tolerance"] = rule.params["tolerance_fen"]
    return f"""
SELECT c.psn_no, c.setl_id, c.feedetl_sn AS hit_key, c.feedetl_sn AS sn, c.med_list_codg, k.name,
       c.hosp_lv, c.pric_fen AS value, pr.ceiling_fen AS threshold
FROM cur_lines AS c
JOIN kb_price AS pr ON pr.code = c.med_list_codg AND pr.hosp_lv = c.hosp_lv
LEFT JOIN kb_items AS k ON k.code = c.med_list_codg
WHERE c.pric_fen > pr.ceiling_fen + :p_tolerance AND {f}
ORDER BY 1, 2, 3
"""


def _msg_price(rule: Rule, rows: list[dict[str, Any]], names: Mapping[str, str]) -> tuple[str, list]:
    r = rows[0]
    name = _cap(_name(r["med_list_codg"], r["name"], names))
    level = "an ungraded hospital" if r["hosp_lv"] == "0" else f"a level-{r['hosp_lv']} hospital"
    text = (
        f"{name} is priced {fen_to_text(r['value'])} yuan; the catalogue ceiling at {level} is "
        f"{fen_to_text(r['threshold'])} yuan."
    )
    return text, [{"med_list_codg": r["med_list_codg"], "value": r["value"], "threshold": r["threshold"]}]


# -- 9 not in the catalogue / class C ----------------------------------------------------------


def _sql_catalogue(rule: Rule, p: dict[str, Any], f: str) -> str:
    p["p_class_c"] = 1 if rule.params["class_c"] else 0
    return f"""
SELECT c.psn_no, c.setl_id, c.feedetl_sn AS hit_key, c.feedetl_sn AS sn, c.med_list_codg, k.name,
       CASE WHEN k.code IS NULL THEN 'not_in_catalogue' ELSE 'class_c' END AS kind
FROM cur_lines AS c LEFT JOIN kb_items AS k ON k.code = c.med_list_codg
WHERE (k.code IS NULL OR (:p_class_c = 1 AND k.class = 'C')) AND {f}
ORDER BY 1, 2, 3
"""


def _msg_catalogue(rule: Rule, rows: list[dict[str, Any]], names: Mapping[str, str]) -> tuple[str, list]:
    r = rows[0]
    name = _cap(_name(r["med_list_codg"], r["name"], names))
    if r["kind"] == "not_in_catalogue":
        code = r["med_list_codg"]
        label = f"Item {code}" if name == code else f"{name} ({code})"
        text = f"{label} is not in the area's medical-insurance catalogue"
        text += "; the fund does not pay for it."
    else:
        text = f"{name} is class C (not covered); the patient pays for it."
    return text, [{"med_list_codg": r["med_list_codg"], "kind": r["kind"]}]


# -- 10 drug-drug interaction ------------------------------------------------------------------


def _sql_interaction(rule: Rule, p: dict[str, Any], f: str) -> str:
    p["p_back"] = _back(rule.window_days)
    levels = INTERACTION_SEVERITIES[INTERACTION_SEVERITIES.index(rule.params["min_severity"]) :]
    severities = _in("x.severity", levels, "p_sv", p)
    # m: each checked line with each interaction it takes part in (by code or drug class) and the
    # key of the partner it needs; pc: the partner's item codes (itself, or every code of the
    # class); then a seek for each among the bill's other lines and in the person's history.
    return f"""
WITH m AS MATERIALIZED (
  SELECT c.psn_no, c.setl_id, c.setl_date, c.feedetl_sn AS sn, c.med_list_codg AS code, kc.name,
         x.a, x.b, x.severity, x.message,
         CASE WHEN x.a = c.med_list_codg OR x.a = kc.drug_class THEN x.b ELSE x.a END AS partner
  FROM cur_lines AS c
  LEFT JOIN kb_items AS kc ON kc.code = c.med_list_codg
  JOIN kb_interactions AS x ON x.a = c.med_list_codg OR x.a = kc.drug_class
                            OR x.b = c.med_list_codg OR x.b = kc.drug_class
  WHERE {f} AND {severities}
), pc AS (
  SELECT m.*, coalesce(k.code, m.partner) AS pcode FROM m LEFT JOIN kb_items AS k ON k.drug_class = m.partner
)
SELECT pc.psn_no, pc.setl_id,
       pc.a || '|' || pc.b || '|' || min(pc.sn, o.feedetl_sn) || '|' || max(pc.sn, o.feedetl_sn) AS hit_key,
       pc.sn,
       pc.code AS cur_code, pc.name AS cur_name, o.med_list_codg AS other_code, ko.name AS other_name,
       o.feedetl_sn AS other_sn, NULL AS h_date, NULL AS h_hosp, pc.severity, pc.message
FROM pc
JOIN cur_lines AS o ON o.psn_no = pc.psn_no AND o.setl_id = pc.setl_id AND o.med_list_codg = pc.pcode
     AND o.feedetl_sn <> pc.sn
LEFT JOIN kb_items AS ko ON ko.code = o.med_list_codg
UNION
SELECT pc.psn_no, pc.setl_id, pc.a || '|' || pc.b || '|' || pc.sn || '|' || h.med_list_codg AS hit_key, pc.sn,
       pc.code AS cur_code, pc.name AS cur_name, h.med_list_codg AS other_code, kh.name AS other_name,
       NULL AS other_sn, h.setl_date AS h_date, h.fixmedins_code AS h_hosp, pc.severity, pc.message
FROM pc
JOIN hist_lines AS h ON h.psn_no = pc.psn_no AND h.med_list_codg = pc.pcode
     AND h.setl_date >= {date_add("pc.setl_date", ":p_back")} AND h.setl_date <= pc.setl_date
LEFT JOIN kb_items AS kh ON kh.code = h.med_list_codg
WHERE h.setl_id <> pc.setl_id AND h.days IS NOT NULL
ORDER BY 1, 2, 3, 10 DESC, 11, 4, 9
"""


def _msg_interaction(rule: Rule, rows: list[dict[str, Any]], names: Mapping[str, str]) -> tuple[str, list]:
    top = rows[0]
    cur = _cap(_name(top["cur_code"], top["cur_name"], names))
    other = _name(top["other_code"], top["other_name"], names)
    text = f"{cur} with {other} ({top['severity']} interaction): {top['message'].rstrip('.')}."
    if top["h_date"] is not None:
        text += f" {_cap(other)} was dispensed at {top['h_hosp']} on {top['h_date']}."
        if len(rows) > 1:
            text += f" {len(rows) - 1} other dispensing(s) in the last {rule.window_days} days."
    if top["other_sn"] is not None:  # a pair within the bill: found from both of its lines
        rows = rows[:1]
    evidence = [
        {
            "med_list_codg": r["cur_code"], "with": r["other_code"], "with_line": r["other_sn"],
            "setl_date": r["h_date"], "fixmedins_code": r["h_hosp"], "value": r["severity"],
        }
        for r in rows
    ]  # fmt: skip
    return text, evidence


def _lines_interaction(rows: list[dict[str, Any]]) -> list[str]:
    lines = [rows[0]["sn"]]
    if rows[0]["other_sn"] is not None:
        lines.append(rows[0]["other_sn"])
    return lines


# -- 11 frequent visits ------------------------------------------------------------------------


def _sql_visits(rule: Rule, p: dict[str, Any], f: str) -> str:
    p["p_back"] = _back(rule.params["days"])
    p["p_max"] = rule.params["max_visits"]
    counted = _in("h.med_type", rule.med_types, "f_mt", p) if rule.med_types else "1 = 1"
    return f"""
WITH cv AS (
  SELECT c.psn_no, c.setl_id, max(c.setl_date) AS setl_date, min(c.fixmedins_code) AS fixmedins_code
  FROM cur_lines AS c WHERE {f} GROUP BY c.psn_no, c.setl_id
), hv AS (
  SELECT cv.psn_no, cv.setl_id, h.setl_id AS h_setl, min(h.setl_date) AS h_date,
         min(h.fixmedins_code) AS h_hosp, min(h.med_type) AS h_med
  FROM cv JOIN hist_lines AS h ON h.psn_no = cv.psn_no
       AND h.setl_date > {date_add("cv.setl_date", ":p_back")} AND h.setl_date <= cv.setl_date
  WHERE h.setl_id <> cv.setl_id AND {counted}
  GROUP BY cv.psn_no, cv.setl_id, h.setl_id
), n AS (
  SELECT psn_no, setl_id, count(*) + 1 AS visits FROM hv GROUP BY psn_no, setl_id
)
SELECT cv.psn_no, cv.setl_id, cv.setl_id AS hit_key, '' AS sn, cv.setl_date, cv.fixmedins_code,
       n.visits AS value, hv.h_date, hv.h_hosp, hv.h_med
FROM cv JOIN n ON n.psn_no = cv.psn_no AND n.setl_id = cv.setl_id
JOIN hv ON hv.psn_no = cv.psn_no AND hv.setl_id = cv.setl_id
WHERE n.visits > :p_max
ORDER BY 1, 2, 3, hv.h_date DESC, hv.h_hosp, hv.h_setl
"""


def _msg_visits(rule: Rule, rows: list[dict[str, Any]], names: Mapping[str, str]) -> tuple[str, list]:
    top = rows[0]
    days, most = rule.params["days"], rule.params["max_visits"]
    hospitals = {r["h_hosp"] for r in rows} | {top["fixmedins_code"]}
    where = f" at {len(hospitals)} hospitals" if len(hospitals) > 1 else ""
    shown = ", ".join(f"{r['h_date']} at {r['h_hosp']}" for r in rows[:3])
    more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
    text = (
        f"This is visit {top['value']} in {days} days{where}; the limit is {most} visits in {days} days. "
        f"Earlier: {shown}{more}."
    )
    evidence: list[dict[str, Any]] = [{"value": top["value"], "threshold": most, "days": days}]
    evidence += [
        {"setl_date": r["h_date"], "fixmedins_code": r["h_hosp"], "med_type": r["h_med"]} for r in rows
    ]
    return text, evidence


# -- compile and run ---------------------------------------------------------------------------

SqlBuilder = Callable[[Rule, dict[str, Any], str], str]
MessageBuilder = Callable[[Rule, list[dict[str, Any]], Mapping[str, str]], tuple[str, list]]

_TEMPLATES: dict[str, tuple[SqlBuilder, MessageBuilder]] = {
    "duplicate_medication": (_sql_duplicate, _msg_duplicate),
    "over_quantity": (_sql_over_quantity, _msg_over_quantity),
    "frequency_limit": (_sql_frequency, _msg_frequency),
    "repeated_charge": (_sql_repeated, _msg_repeated),
    "gender_restricted": (_sql_gender, _msg_gender),
    "age_restricted": (_sql_age, _msg_age),
    "restricted_indication": (_sql_indication, _msg_indication),
    "price_over_ceiling": (_sql_price, _msg_price),
    "not_in_catalogue": (_sql_catalogue, _msg_catalogue),
    "drug_interaction": (_sql_interaction, _msg_interaction),
    "frequent_visits": (_sql_visits, _msg_visits),
}


@functools.lru_cache(maxsize=4096)
def compile_rule(rule: Rule) -> Compiled:
    """The rule's SQL (SQLite dialect; ``dialect.transpile`` for others) and its bound parameters, for
    the edge templates 1-11 and the centre's 13-18 alike; ``ValueError`` for template 12."""
    if rule.template not in _TEMPLATES:
        raise ValueError(f"template {rule.template} is evaluated by the caller, not in SQL")
    params: dict[str, Any] = {}
    f = _filters(rule, params, "v" if rule.spec.centre else "c")  # centre templates check visits (v)
    sql = _TEMPLATES[rule.template][0](rule, params, f)
    return Compiled(sql, params)


def run_rule(conn: sqlite3.Connection, rule: Rule, *, names: Mapping[str, str] | None = None) -> list[Hit]:
    """Run one rule over whatever ``cur_lines`` holds (one bill, or many persons' settlements).

    A centre template (13-18) runs over ``cur_visits`` (and ``cur_lines``, ``hist_visits``,
    ``deaths``, ``hospitals``): the centre's screening engine calls this one function for every rule.
    """
    compiled = compile_rule(rule)
    cur = conn.cursor()
    cur.row_factory = None
    cur.execute(compiled.sql, compiled.params)
    columns = [d[0] for d in cur.description]
    rows = [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
    return hits_from_rows(rule, rows, names=names)


def hits_from_rows(
    rule: Rule, rows: list[dict[str, Any]], *, names: Mapping[str, str] | None = None
) -> list[Hit]:
    """Group a rule's result rows (``psn_no, setl_id, hit_key, sn, …``) into ``Hit``s, in row order."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["psn_no"], row["setl_id"], row["hit_key"]), []).append(row)
    build = _TEMPLATES[rule.template][1]
    hits = []
    for (psn_no, setl_id, _key), group in groups.items():
        message, evidence = build(rule, group, names or {})
        if rule.template == "drug_interaction":
            lines = _lines_interaction(group)
        else:
            lines = sorted({sn for sn in group[0]["sn"].split(",") if sn}, key=lambda sn: (len(sn), sn))
        hits.append(
            Hit(
                rule_id=rule.id, rule_version=rule.version, template=rule.template, severity=rule.severity,
                mode=rule.mode, action=rule.action, overridable=rule.overridable, message=message,
                lines=tuple(lines), evidence=tuple(evidence), psn_no=psn_no, setl_id=setl_id,
            )
        )  # fmt: skip
    return hits


# -- wording -----------------------------------------------------------------------------------


def _name(code: str, kb_name: str | None, names: Mapping[str, str]) -> str:
    return kb_name or names.get(code) or code


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _num(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4f}".rstrip("0").rstrip(".")


def _or(values: list[str]) -> str:
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"
