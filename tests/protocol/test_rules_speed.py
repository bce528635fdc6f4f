"""What keeps the rules fast at the edge: every edge rule reads a person's history through an index.

A rule that scans ``hist_lines`` takes tens of milliseconds once the agent holds a few hundred thousand
lines, instead of tens of microseconds; that is what a loose time bound here used to catch, and it is
checked here in the query plan, which does not depend on how loaded the machine is. The figures
(per-rule median and p99, ``evaluate`` per moment) are measured by ``benchmarks/rules_eval.py``.
"""

from __future__ import annotations

import re
import sqlite3

import pytest

from protocol.rules import create_current
from protocol.rules.templates import compile_rule

from .rules_kit import connect, sample_rules
from .rules_kit import ruleset as _ruleset

RULES = [r for r in _ruleset(*sample_rules()["rules"]).rules if r.spec.sql and not r.spec.centre]
#: ``FROM hist_lines AS h`` / ``JOIN hist_lines h``: the names the plan gives the history table.
HIST_ALIAS = re.compile(r"\bhist_lines\s+(?:AS\s+)?([A-Za-z_]\w*)", re.IGNORECASE)
PLAN_STEP = re.compile(r"(SCAN|SEARCH) (\w+)(?: USING (?:COVERING )?INDEX (\w+))?")


def _history_steps(conn: sqlite3.Connection, sql: str, params: object) -> list[str]:
    """The plan's steps that read ``hist_lines`` (under its own name or an alias)."""
    names = {"hist_lines"} | set(HIST_ALIAS.findall(sql))
    steps = []
    for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params):
        m = PLAN_STEP.match(row[3])
        if m and m.group(2) in names:
            steps.append(row[3])
    return steps


@pytest.fixture(scope="module")
def conn() -> sqlite3.Connection:
    c = connect()
    create_current(c)
    return c


def test_the_sample_rules_include_history_rules() -> None:
    """The control: at least the duplicate-medication and frequency rules read history."""
    reading = {r.template for r in RULES if "hist_lines" in compile_rule(r).sql}
    assert {"duplicate_medication", "frequency_limit", "frequent_visits", "drug_interaction"} <= reading


@pytest.mark.parametrize("rule", RULES, ids=[r.id for r in RULES])
def test_each_edge_rule_searches_history_by_person_through_an_index(conn: sqlite3.Connection, rule) -> None:
    compiled = compile_rule(rule)
    steps = _history_steps(conn, compiled.sql, compiled.params)
    if "hist_lines" not in compiled.sql:
        assert steps == []
        return
    assert steps, f"{rule.id}: no plan step reads hist_lines; the alias pattern missed it"
    for step in steps:
        m = PLAN_STEP.match(step)
        assert m and m.group(1) == "SEARCH" and m.group(3), (
            f"{rule.id} does not search history by index: {step}"
        )
        assert "psn_no=?" in step, f"{rule.id} reads history without the person as the index's key: {step}"


def test_the_plan_check_sees_a_full_scan(conn: sqlite3.Connection) -> None:
    """The check above can fail: a query without the person scans the table, and is caught."""
    steps = _history_steps(conn, "SELECT count(*) FROM hist_lines AS h WHERE h.days > ?", (7,))
    assert steps and all(PLAN_STEP.match(s).group(1) == "SCAN" for s in steps), steps  # type: ignore[union-attr]
