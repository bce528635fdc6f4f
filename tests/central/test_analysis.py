"""Analysis rankings: each object against its peers' median, stored under a run id."""

from __future__ import annotations

import pytest

from central.errors import ConfigInvalid
from central.intake.hospitals import set_hospital
from central.intake.ingest import Ingestor
from central.monitoring.analysis import analyse, list_results
from central.storage.store import Store

from .conftest import ACTOR, enrol, settlement

HOSPITALS = ("H11010100001", "H11010100002", "H11010100003")


def _visit(setl_id: str, hospital: str, day: str, cost_lines: tuple, psn_no: str, dr: str, dept: str = "A03"):
    s = settlement(
        setl_id,
        hospital=hospital,
        setl_time=f"{day}T10:00:00+08:00",
        lines=cost_lines,
        split=None,
        psn_no=psn_no,
    )
    s.mdtrt.dr_codg, s.mdtrt.dept_codg, s.mdtrt.dise_codg = dr, dept, "I10.x00"
    return s


@pytest.fixture
def held(store: Store) -> Store:
    """Three level-2 hospitals: H1 and H2 bill 10 yuan a visit, H3 40 yuan (all drugs); in November H3
    had two visits, in October one."""
    ingestor = Ingestor(store)
    for n, hospital in enumerate(HOSPITALS, start=1):
        set_hospital(store, ACTOR, hospital, "2")
        chain = enrol(store, hospital)
        price = (("1", "40", 4000),) if n == 3 else (("1", "10", 1000),)
        for i, day in enumerate(("2026-11-02", "2026-11-03")):
            chain.append(_visit(f"S{n}{i}", hospital, day, price, f"P{n}{i % (1 if n == 3 else 2)}", f"D{n}"))
        chain.append(_visit(f"O{n}", hospital, "2026-10-20", price, f"P{n}0", f"D{n}"))
        assert ingestor.ingest(chain.batch(1, 3)).rejected == []
    return store


def test_cost_per_visit_ranks_the_expensive_hospital_first(held: Store) -> None:
    result = analyse(
        held, by="hospital", measure="cost_per_visit", date_from="2026-11-01", date_to="2026-11-30"
    )
    top = result["results"][0]
    assert (top["object_id"], top["value"], top["peer_median"], top["rank"]) == (
        "H11010100003",
        4000,
        1000,
        1,
    )
    assert top["ratio"] == pytest.approx(4.0)
    assert [r["rank"] for r in result["results"]] == [1, 2, 3]
    stored = held.read(lambda c: list_results(c, result["run_id"]))
    assert stored[0]["object_id"] == "H11010100003" and len(stored) == 3
    again = analyse(
        held, by="hospital", measure="cost_per_visit", date_from="2026-11-01", date_to="2026-11-30"
    )
    assert again["run_id"] == result["run_id"] + 1


def test_the_other_measures(held: Store) -> None:
    window = {"date_from": "2026-11-01", "date_to": "2026-11-30"}
    vpp = {
        r["object_id"]: r["value"]
        for r in analyse(held, by="doctor", measure="visits_per_patient", **window)["results"]
    }
    assert vpp == {"D1": 1.0, "D2": 1.0, "D3": 2.0}  # D3 saw one person twice
    share = analyse(held, by="department", measure="drug_share", **window)["results"]
    assert {r["object_id"]: r["value"] for r in share}["H11010100001/A03"] == 1.0
    growth = {
        r["object_id"]: r["value"]
        for r in analyse(held, by="hospital", measure="growth", **window)["results"]
    }
    assert growth == {"H11010100001": 2.0, "H11010100002": 2.0, "H11010100003": 2.0}  # 2 visits vs 1 before
    disease = analyse(held, by="hospital", measure="cost_per_disease", **window)["results"]
    assert disease[0]["object_id"] == "H11010100003|I10" and disease[0]["ratio"] == pytest.approx(4.0)


def test_bad_arguments_are_refused(held: Store) -> None:
    with pytest.raises(ConfigInvalid):
        analyse(held, by="ward", measure="cost_per_visit", date_from="2026-11-01", date_to="2026-11-30")
    with pytest.raises(ConfigInvalid):
        analyse(held, by="doctor", measure="cost_per_visit", date_from="2026-12-01", date_to="2026-11-30")


def test_the_cli_prints_the_ranking(config, held: Store, capsys) -> None:
    from central.cli import main

    argv = [
        "--home",
        str(config.home),
        "analysis",
        "--by",
        "hospital",
        "--measure",
        "cost_per_visit",
        "--from",
        "2026-11-01",
        "--to",
        "2026-11-30",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "H11010100003" in out.splitlines()[2]


def test_the_cli_json_is_one_ranked_row_per_line(config, held: Store, capsys) -> None:
    """``--json`` prints one object per line, as every other listing does; each row names its run."""
    import json

    from central.cli import main

    argv = ["--home", str(config.home), "analysis", "--by", "hospital", "--measure", "cost_per_visit",
            "--from", "2026-11-01", "--to", "2026-11-30", "--json"]  # fmt: skip
    assert main([*argv, "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 2 and [r["rank"] for r in rows] == [1, 2]
    assert rows[0]["object_id"] == "H11010100003" and rows[0]["ratio"] == pytest.approx(4.0)
    run = {"run_id": rows[0]["run_id"], "by": "hospital", "measure": "cost_per_visit",
           "date_from": "2026-11-01", "date_to": "2026-11-30"}  # fmt: skip
    assert all({k: r[k] for k in run} == run for r in rows)
    row_keys = {"object_id", "area", "visits", "value", "peer_median", "ratio", "peer_group", "rank",
                "low_volume"}
    assert set(rows[0]) == set(run) | row_keys
    assert main(argv) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3  # every object, under the default --limit


def _busy(store: Store, hospital: str, visits: int, fen: int, start: int) -> None:
    rows = [(f"{hospital}-{i}", f"P{start + i:09d}", hospital, "110100", "2", "2026-11-24T10:00:00+08:00",
             "2026-11-24", "2026-11-24", "2026-11-24", "11", "I10.x00", "I10.x00", f"D-{hospital}", "A03",
             None, fen, 0, "1", "1970-01-01", "310", "11") for i in range(visits)]  # fmt: skip
    store.write(lambda c: c.executemany(f"INSERT INTO hist_visits VALUES ({','.join('?' * 21)})", rows))


def test_tiny_providers_do_not_fill_the_top_of_a_ranking(store: Store) -> None:
    """Two busy hospitals and a tiny one that is dearest per visit: by default the tiny one is kept but
    ranked last (low_volume), and the peers' median is the busy ones'; --min-visits leaves it out."""
    _busy(store, "H-BUSY-1", 40, 1000, 0)
    _busy(store, "H-BUSY-2", 40, 3000, 100)
    _busy(store, "H-TINY", 3, 9000, 200)
    window = {"date_from": "2026-11-01", "date_to": "2026-11-30"}
    result = analyse(store, by="hospital", measure="cost_per_visit", **window)
    order = [(r["object_id"], r["low_volume"]) for r in result["results"]]
    assert order == [("H-BUSY-2", False), ("H-BUSY-1", False), ("H-TINY", True)]
    assert result["results"][0]["peer_median"] == 2000  # the busy ones' median, not pulled by the tiny one
    assert result["min_visits"] == 30 and not result["min_visits_given"]
    kept = analyse(store, by="hospital", measure="cost_per_visit", min_visits=10, **window)
    assert [r["object_id"] for r in kept["results"]] == ["H-BUSY-2", "H-BUSY-1"]
    assert all(not r["low_volume"] for r in kept["results"])
    with pytest.raises(ConfigInvalid, match="at least 1"):
        analyse(store, by="hospital", measure="cost_per_visit", min_visits=0, **window)
