"""Backtest: a rules file over a range beside the rules in force; the report differs, nothing is stored."""

from __future__ import annotations

import copy
import json

from central.cli import main
from central.monitoring.screening import backtest
from central.storage.store import Store

from .test_screening import RULES, dispensing, ingest, published  # noqa: F401 - the fixture

TABLES = ("suspicions", "screen_runs", "audit_log", "settings", "bundles", "analysis_results")


def _snapshot(store: Store) -> dict[str, list]:
    return {
        t: store.read(lambda c, t=t: c.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()) for t in TABLES
    }


def _candidate() -> dict:
    doc = copy.deepcopy(RULES)
    for rule in doc["rules"]:
        if rule["id"] == "dup_same_drug":  # stricter: a 3-day overlap is no longer enough
            rule["params"]["min_overlap_days"], rule["version"] = 25, 2
        if rule["id"] == "visits_shadow":  # looser: two visits in 30 days are too many
            rule["params"]["max_visits"] = 1
    doc["rules"].append(
        {
            "id": "new_rule",
            "version": 1,
            "template": "frequent_visits",
            "severity": "info",
            "mode": "enforce",
            "action": "prompt",
            "params": {"max_visits": 1, "days": 10},
        }
    )
    return doc


def test_a_backtest_reports_the_difference_and_writes_nothing(store, repo, chain, published) -> None:  # noqa: F811
    # overlaps of the 30-day supplies: S2-S1 21 days, S3-S2 20, S4-S3 29: only S4 passes 25 days
    days = ("2026-11-01", "2026-11-10", "2026-11-20", "2026-11-21")
    ingest(store, chain, *(dispensing(f"S{i}", d) for i, d in enumerate(days, start=1)))
    before = _snapshot(store)
    report = backtest(store, _candidate(), None, "2026-11-01", "2026-11-30", repo=repo, workers=1)
    assert _snapshot(store) == before
    rules = {r["rule_id"]: r for r in report["rules"]}
    dup = rules["dup_same_drug"]
    # S4 is found by both (fewer dispensings in its evidence: changed), S2 and S3 no longer
    assert (dup["in_force"], dup["candidate"], dup["new"], dup["removed"], dup["changed"]) == (3, 1, 0, 2, 1)
    visits = rules["visits_shadow"]  # 3 and 4 visits in 30 days before; now 2 are too many as well
    assert (visits["in_force"], visits["candidate"], visits["new"], visits["removed"]) == (2, 3, 1, 0)
    assert (rules["new_rule"]["candidate"], rules["new_rule"]["in_force"]) == (2, 0)
    assert rules["new_rule"]["in_force_rule"] is False
    assert report["visits"] == 4 and report["catalogue"] == "in force"
    assert report["hospitals"]["in_force"] == {"H11010100001": report["totals"]["in_force"]}


def test_the_cli_prints_the_report(config, store, chain, published, tmp_path, capsys) -> None:  # noqa: F811
    ingest(store, chain, dispensing("S1", "2026-11-01"), dispensing("S2", "2026-11-10"))
    f = tmp_path / "candidate.json"
    f.write_text(json.dumps(_candidate()))
    argv = [
        "--home",
        str(config.home),
        "rules",
        "backtest",
        str(f),
        "--from",
        "2026-11-01",
        "--to",
        "2026-11-30",
    ]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {r["rule_id"] for r in report["rules"]} >= {"dup_same_drug", "new_rule"}
    assert main(argv) == 0
    assert "dup_same_drug" in capsys.readouterr().out
    assert store.read(lambda c: c.execute("SELECT count(*) FROM suspicions").fetchone()[0]) == 0
