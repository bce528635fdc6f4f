"""The dialect layer: every template's SQL (edge 1-11, centre 13-20) carries to PostgreSQL, Spark SQL and
DuckDB through SQLGlot without error, keeps its ``:name`` parameters, and leaves none of SQLite's own date
idioms behind; the helpers compute in SQLite what their translations compute elsewhere."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import pytest
import sqlglot
from sqlglot import exp

from protocol.rules import TEMPLATES, Rule, compile_rule, transpile
from protocol.rules.dialect import (
    UnsupportedError,
    date_add,
    days_between,
    in_code_list,
    seconds_between,
)

from .rules_kit import rule_doc, ruleset, sample_rules

_FILTERS = {
    "med_types": ["11", "21"],
    "insutypes": ["310"],
    "hosp_lvs": ["2", "3"],
    "disease_prefixes": ["I10", "E11"],
}
_IDLE = ["001109000010000", "001201000010000"]
_VARIANTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("duplicate_medication", {"match": "code"}, {}),
    ("duplicate_medication", {"match": "class", "min_overlap_days": 3}, _FILTERS),
    ("over_quantity", {"chronic_med_types": []}, {}),
    ("frequency_limit", {}, _FILTERS),
    ("repeated_charge", {}, {}),
    ("gender_restricted", {}, {}),
    ("age_restricted", {}, _FILTERS),
    ("restricted_indication", {}, {}),
    ("price_over_ceiling", {"tolerance_fen": 5}, {}),
    ("not_in_catalogue", {"class_c": True}, {}),
    ("drug_interaction", {"min_severity": "major"}, _FILTERS),
    ("frequent_visits", {"max_visits": 3, "days": 7}, {"med_types": ["11"]}),
    ("readmission", {"within_days": 15}, {}),
    ("readmission", {"within_days": 30, "same_hospital": True, "related": "any"}, _FILTERS),
    ("impersonation_distance", {"max_minutes": 30, "min_km": 50}, _FILTERS),
    ("care_after_death", {"grace_days": 2}, _FILTERS),
    ("bed_hanging", {"min_idle_days": 3, "idle_codes": _IDLE}, {}),
    ("bed_hanging", {"min_idle_days": 3, "idle_codes": _IDLE}, _FILTERS),
    ("excessive_cost", {"max_fen": 5_000_000}, {}),
    ("excessive_cost", {"peer_ratio": "3.5"}, _FILTERS),
    ("excessive_cost", {"max_fen": 5_000_000, "peer_ratio": "4", "peer_days": 180, "min_peers": 5}, {}),
    ("unreasonable_admission", {"outpatient_prefixes": ["J06", "250", "401.9"]}, {}),
    ("unreasonable_admission", {"max_stay_days": 2, "max_cost_fen": 100_000}, _FILTERS),
    ("unreasonable_admission", {"outpatient_prefixes": ["J06"], "max_stay_days": 1}, {}),
    ("repeated_treatment", {"days": 30}, {}),
    (
        "repeated_treatment",
        {"days": 14, "min_visits": 3, "list_types": ["201", "301"], "exclude_codes": ["001102000010000"]},
        _FILTERS,
    ),
] + [
    ("peer_outlier", {"measure": measure, "ratio": "2"}, {"object": obj, **extra})
    for measure in ("cost_per_visit", "drug_share", "visits_per_patient", "admission_rate")
    for obj in ("doctor", "department", "hospital")
    for extra in ({}, _FILTERS)
]


def _rules() -> list[Rule]:
    samples = [r for r in ruleset(*sample_rules()["rules"]).rules if r.spec.sql]
    variants = [
        ruleset(rule_doc(template, id=f"v{i}", params=params, **fields)).rules[0]
        for i, (template, params, fields) in enumerate(_VARIANTS)
    ]
    return samples + variants


RULES = _rules()


def test_the_variants_cover_every_sql_template() -> None:
    assert {r.template for r in RULES} == {name for name, t in TEMPLATES.items() if t.sql}


@pytest.mark.parametrize("dialect", ["postgres", "spark", "duckdb"])
@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.id}-{r.template}")
def test_every_template_transpiles_and_keeps_its_parameters(rule: Rule, dialect: str) -> None:
    compiled = compile_rule(rule)
    out = transpile(compiled.sql, dialect)
    mark = "$" if dialect == "duckdb" else ":"
    assert set(re.findall(rf"\{mark}([a-z_][a-z0-9_]*)", out)) == set(compiled.params)
    assert "%(" not in out and not re.search(r"JULIANDAY|INSTR\(", out, re.IGNORECASE)
    if dialect == "duckdb":  # DuckDB's own strftime, written by date_add with the one ISO format
        assert set(re.findall(r"STRFTIME\([^']*'([^']*)'\)", out)) <= {"%Y-%m-%d"}
    else:
        assert "STRFTIME" not in out.upper()
    assert not re.search(r"\bDATE\([^()]*,", out)  # no two-argument (SQLite modifier) date()
    if dialect == "spark":
        assert "MATERIALIZED" not in out.upper()
    # what SQLGlot wrote, it reads back as that dialect, with no function it does not know
    tree = sqlglot.parse_one(out, read=dialect)
    assert not [f.name for f in tree.find_all(exp.Anonymous)]


def test_sqlite_is_the_text_itself() -> None:
    sql = compile_rule(RULES[0]).sql
    assert transpile(sql, "sqlite") is sql
    with pytest.raises(ValueError, match="not one of sqlite, postgres, spark, duckdb"):
        transpile(sql, "oracle")


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        (date_add("'2026-03-01'", "-1"), "2026-02-28"),
        (date_add("'2026-12-31'", "1"), "2027-01-01"),
        (date_add("'2026-11-24'", ":n"), "2026-10-25"),
        (date_add("'2026-11-24'", "1 - 30"), "2026-10-26"),
        (days_between("'2026-03-01'", "'2026-02-27'"), 2),
        (days_between("'2026-02-27'", "'2026-03-01'"), -2),
        (seconds_between("'2026-11-24T09:30:00+08:00'", "'2026-11-24T01:00:00Z'"), 1800),
        (seconds_between("'2026-11-23T23:50:00-02:00'", "'2026-11-24T09:00:00+08:00'"), 3000),
        (in_code_list("'I10.x00,E11.900'", "'E11'"), 1),
        (in_code_list("'I10.x00,E11.900'", "'11'"), 0),
        (in_code_list("'I10.x00,E11.900'", "'I10.x00'"), 1),
    ],
)
def test_the_helpers_in_sqlite(expression: str, value: Any) -> None:
    conn = sqlite3.connect(":memory:")
    assert conn.execute(f"SELECT {expression}", {"n": -30}).fetchone()[0] == value


def test_the_helpers_in_postgres_and_spark() -> None:
    sql = (
        f"SELECT {date_add('a.d', ':n')} AS x, {days_between('a.d', 'a.e')} AS y, "
        f"{seconds_between('a.t', 'a.u')} AS z, {in_code_list('a.codes', ':p')} AS w FROM a"
    )
    assert transpile(sql, "postgres") == (
        "SELECT TO_CHAR(CAST(a.d AS DATE) + (INTERVAL '1 DAY' * :n), 'YYYY-MM-DD') AS x, "
        "CAST(EXTRACT(epoch FROM CAST(a.d AS TIMESTAMP) - CAST(a.e AS TIMESTAMP)) / 86400 AS BIGINT) AS y, "
        "CAST((DATE_PART('epoch', CAST(a.t AS TIMESTAMPTZ)) - DATE_PART('epoch', CAST(a.u AS TIMESTAMPTZ))) "
        "AS BIGINT) AS z, POSITION(',' || :p IN ',' || a.codes) > 0 AS w FROM a"
    )
    assert transpile(sql, "spark") == (
        "SELECT DATE_FORMAT(DATE_ADD(TO_DATE(a.d), CAST(:n AS INT)), 'yyyy-MM-dd') AS x, "
        "DATEDIFF(a.d, a.e) AS y, "
        "CAST((UNIX_TIMESTAMP(CAST(a.t AS TIMESTAMP)) - UNIX_TIMESTAMP(CAST(a.u AS TIMESTAMP))) AS BIGINT) "
        "AS z, LOCATE(',' || :p, ',' || a.codes) > 0 AS w FROM a"
    )


def test_the_helpers_in_duckdb_and_what_duckdb_computes() -> None:
    import duckdb

    sql = (
        f"SELECT {date_add('a.d', ':n')} AS x, {days_between('a.d', 'a.e')} AS y, "
        f"{seconds_between('a.t', 'a.u')} AS z, {in_code_list('a.codes', ':p')} AS w FROM a"
    )
    out = transpile(sql, "duckdb")
    assert "$n" in out and "$p" in out and ":n" not in out
    conn = duckdb.connect()
    conn.execute(
        "CREATE TABLE a AS SELECT '2026-03-01' AS d, '2026-02-27' AS e, '2026-11-24T09:30:00+08:00' AS t, "
        "'2026-11-24T01:00:00Z' AS u, 'I10.x00,E11.900' AS codes"
    )
    assert conn.execute(out, {"n": -1, "p": "E11"}).fetchone() == ("2026-02-28", 2, 1800, True)


def test_integer_conditions_become_booleans_outside_sqlite() -> None:
    """SQLite's ``0``/``1`` as a condition (a template's "no such filter") is refused by Spark and
    PostgreSQL; transpile writes FALSE/TRUE there and leaves integer values alone."""
    sql = "SELECT CASE WHEN 0 THEN 1 ELSE 0 END AS x FROM a WHERE NOT (0) AND (1 OR a.b = 2)"
    for dialect in ("spark", "postgres", "duckdb"):
        out = transpile(sql, dialect)
        assert "CASE WHEN FALSE THEN 1 ELSE 0 END" in out, out
        assert "NOT (FALSE)" in out and "(TRUE OR" in out, out


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT julianday(a.d) FROM a",  # a julianday that is not a helper's difference
        "SELECT date(a.d, 'start of month') FROM a",
        "SELECT date(a.d, '-30 days') FROM a",  # a modifier written by hand
        "SELECT strftime('%s', a.t) FROM a",
        "SELECT unixepoch(a.t) FROM a",
    ],
)
@pytest.mark.parametrize("dialect", ["postgres", "spark", "duckdb"])
def test_what_sqlglot_cannot_carry_is_an_error(sql: str, dialect: str) -> None:
    with pytest.raises(UnsupportedError):
        transpile(sql, dialect)
