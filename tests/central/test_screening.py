"""The screening engine over real ingested settlements: full and incremental find the same facts once.

Rules and catalogue are published as bundles (the rules in force); settlements go through the real
``Ingestor`` from signed chains; suspicions are read back from ``central.db``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from central.intake.hospitals import set_hospital
from central.intake.ingest import Ingestor
from central.monitoring.screening import rules_in_force, screen, screen_new
from central.policy.bundles import Policy
from central.storage.store import Store
from protocol.records import Settlement

from .conftest import ACTOR, AREA, HOSPITAL, Chain, enrol, reversal, settlement

DRUG = "XA01AAA00"


def rule(**kw: Any) -> dict[str, Any]:
    base = {"version": 1, "severity": "warn", "mode": "enforce", "action": "prompt", "moments": ["post"]}
    return base | kw


RULES = {
    "area": AREA,
    "format": 1,
    "rules": [
        rule(
            id="dup_same_drug",
            template="duplicate_medication",
            window_days=60,
            params={"match": "code", "min_overlap_days": 3},
        ),
        rule(
            id="visits_shadow",
            template="frequent_visits",
            mode="shadow",
            params={"max_visits": 2, "days": 30},
        ),
        rule(
            id="visits_desk_only",
            template="frequent_visits",
            moments=["pre", "in"],
            params={"max_visits": 1, "days": 30},
        ),
        rule(id="visits_off", template="frequent_visits", mode="off", params={"max_visits": 1, "days": 30}),
        rule(id="price", template="price_over_ceiling", object="hospital", severity="block"),
    ],
}
CATALOGUE = {
    "area": AREA,
    "format": 1,
    "items": [
        {"code": DRUG, "name": "test drug A", "list_type": "101", "class": "A", "price_ceiling": {"0": 1000}},
        {"code": "XA01AAA01", "name": "test drug B", "list_type": "101", "class": "A"},
    ],
}


@pytest.fixture
def published(store: Store, policy: Policy, signers: list) -> None:
    set_hospital(store, ACTOR, HOSPITAL, "0")  # ungraded: the catalogue's level-0 ceiling applies
    policy.publish_document(ACTOR, signers, "catalogue", CATALOGUE)
    policy.publish_document(ACTOR, signers, "rules", RULES)


def dispensing(
    setl_id: str, day: str, *, psn_no: str = "P0000000001", days: int = 30, **kw: Any
) -> Settlement:
    """A settlement of the test drug (line 0, ``days`` of supply) on ``day`` (YYYY-MM-DD)."""
    s = settlement(setl_id, setl_time=f"{day}T10:00:00+08:00", psn_no=psn_no, **kw)
    s.mdtrt.begntime = f"{day}T09:30:00+08:00"
    s.mdtrt.dr_codg, s.mdtrt.dept_codg = "D1", "A03.01"
    s.feedetl[0].days = days
    return s


def ingest(store: Store, chain: Chain, *records: Any) -> None:
    first = len(chain.entries) + 1
    for rec in records:
        chain.append(rec)
    ack = Ingestor(store).ingest(chain.batch(first, len(chain.entries)))
    assert ack.rejected == [], ack.rejected


def suspicions(store: Store) -> list[dict[str, Any]]:
    cols = (
        "rule_id",
        "object_type",
        "object_id",
        "area",
        "fixmedins_code",
        "psn_no",
        "setl_ids",
        "lines",
        "amount_fen",
        "status",
        "times_found",
        "mode",
        "run_id",
    )
    rows = store.read(lambda c: c.execute(f"SELECT {', '.join(cols)} FROM suspicions ORDER BY id").fetchall())
    out = [dict(zip(cols, r, strict=True)) for r in rows]
    for row in out:
        row["setl_ids"], row["lines"] = json.loads(row["setl_ids"]), json.loads(row["lines"])
    return out


def by_rule(store: Store, rule_id: str) -> list[dict[str, Any]]:
    return [s for s in suspicions(store) if s["rule_id"] == rule_id]


def test_the_rules_in_force_are_the_published_ones_that_run_after_the_fact(store, repo, published) -> None:
    areas = rules_in_force(store, repo)
    assert list(areas) == [AREA]
    assert [r.id for r in areas[AREA].rules] == ["dup_same_drug", "visits_shadow", "price"]
    assert areas[AREA].knowledge is not None


def test_a_full_screen_records_one_suspicion_per_fact_with_its_object_and_money(
    store, repo, chain, published
) -> None:
    ingest(store, chain, dispensing("S1", "2026-11-01"), dispensing("S2", "2026-11-10"))
    summary = screen(store, "2026-11-01", "2026-11-30", repo=repo, workers=1)
    assert (summary["settlements"], summary["lines"]) == (2, 4)
    assert summary["per_rule"] == {"dup_same_drug": 1, "visits_shadow": 0, "price": 2}
    dup = by_rule(store, "dup_same_drug")
    assert dup == [
        {
            "rule_id": "dup_same_drug",
            "object_type": "person",
            "object_id": "P0000000001",
            "area": AREA,
            "fixmedins_code": HOSPITAL,
            "psn_no": "P0000000001",
            "setl_ids": ["S2"],
            "lines": ["S2-0"],
            "amount_fen": 2500,
            "status": "new",
            "times_found": 1,
            "mode": "enforce",
            "run_id": summary["run_id"],
        }
    ]
    # 12.5 yuan a unit over a ceiling of 10: a hospital-level finding, the line's amount at stake
    price = by_rule(store, "price")
    assert {(p["object_type"], p["object_id"], tuple(p["lines"]), p["amount_fen"]) for p in price} == {
        ("hospital", HOSPITAL, ("S1-0",), 2500),
        ("hospital", HOSPITAL, ("S2-0",), 2500),
    }
    run = store.read(
        lambda c: c.execute(
            "SELECT kind, date_from, date_to, settlements, lines, hits, new_suspicions, finished_at, detail "
            "FROM screen_runs WHERE id = ?",
            (summary["run_id"],),
        ).fetchone()
    )
    assert run[:7] == ("full", "2026-11-01", "2026-11-30", 2, 4, 3, 3) and run[7] is not None
    assert json.loads(run[8])["per_rule"] == summary["per_rule"]

    again = screen(store, "2026-11-01", "2026-11-30", repo=repo, workers=1)
    assert (again["new_suspicions"], again["again"]) == (0, 3)
    assert [s["times_found"] for s in suspicions(store)] == [1 + 1] * 3


def test_incremental_then_full_find_the_same_facts_once(store, repo, chain, published) -> None:
    ingest(store, chain, dispensing("S1", "2026-11-01"), dispensing("S2", "2026-11-10"))
    first = screen_new(store, repo=repo)
    assert (first["settlements"], first["new_suspicions"]) == (2, 3)
    assert screen_new(store, repo=repo)["settlements"] == 0  # the cursor moved with the findings
    full = screen(store, "2026-11-01", "2026-11-30", repo=repo, workers=1)
    assert (full["new_suspicions"], full["again"]) == (0, 3)
    assert len(suspicions(store)) == 3
    runs = store.read(lambda c: c.execute("SELECT kind, detail FROM screen_runs ORDER BY id").fetchall())
    assert [r[0] for r in runs] == ["incremental", "full"]
    cursor = store.read(
        lambda c: c.execute("SELECT value FROM settings WHERE key = 'screen_cursor'").fetchone()
    )
    assert cursor == (
        str(store.read(lambda c: c.execute("SELECT max(rowid) FROM settlements").fetchone()[0])),
    )


def test_the_incremental_scope_catches_a_late_arriving_older_settlement(
    store, repo, chain, published
) -> None:
    ingest(store, chain, dispensing("S-NEW", "2026-11-10"))
    assert screen_new(store, repo=repo)["per_rule"]["dup_same_drug"] == 0
    ingest(store, chain, dispensing("S-OLD", "2026-11-01"))  # uploaded late: it precedes S-NEW
    summary = screen_new(store, repo=repo)
    assert summary["settlements"] == 1 and summary["per_rule"]["dup_same_drug"] == 1
    assert [(s["setl_ids"], s["lines"]) for s in by_rule(store, "dup_same_drug")] == [
        (["S-NEW"], ["S-NEW-0"])
    ]
    # the same fact, screened in full afterwards, is the same suspicion
    screen(store, "2026-11-01", "2026-11-30", repo=repo, workers=1)
    assert [s["times_found"] for s in by_rule(store, "dup_same_drug")] == [2]


def test_a_shadow_rule_gives_shadow_suspicions_never_queued(store, repo, chain, published) -> None:
    days = ("2026-11-01", "2026-11-05", "2026-11-09")
    ingest(store, chain, *(dispensing(f"V{i}", d, days=1) for i, d in enumerate(days)))
    screen(store, "2026-11-01", "2026-11-30", repo=repo, workers=1)
    shadow = by_rule(store, "visits_shadow")
    assert [(s["status"], s["mode"], s["setl_ids"], s["lines"]) for s in shadow] == [
        ("shadow", "shadow", ["V2"], [])
    ]
    assert shadow[0]["amount_fen"] == 5120  # a visit-level hit: the visit's cost


def test_a_run_of_visits_over_the_limit_is_one_suspicion_and_a_later_run_another(
    store, repo, chain, published
) -> None:
    """Visits 3, 4 and 5 of a burst each pass the limit (2 in 30 days): one fact, the person's run."""
    burst = ("2026-11-01", "2026-11-05", "2026-11-09", "2026-11-12", "2026-11-15")
    ingest(store, chain, *(dispensing(f"V{i}", d, days=1) for i, d in enumerate(burst)))
    summary = screen(store, "2026-11-01", "2026-12-31", repo=repo, workers=1)
    assert summary["per_rule"]["visits_shadow"] == 3
    [run] = by_rule(store, "visits_shadow")
    assert run["setl_ids"] in (["V2"], ["V3"], ["V4"]) and run["object_id"] == "P0000000001"
    screen_new(store, repo=repo)  # found again: still one
    screen(store, "2026-11-01", "2026-12-31", repo=repo, workers=1)
    assert (
        len(by_rule(store, "visits_shadow")) == 1 and by_rule(store, "visits_shadow")[0]["times_found"] >= 2
    )
    # two months later, a new burst: a new run, a second suspicion
    later = ("2027-01-20", "2027-01-22", "2027-01-24")
    ingest(store, chain, *(dispensing(f"W{i}", d, days=1) for i, d in enumerate(later)))
    screen(store, "2027-01-01", "2027-01-31", repo=repo, workers=1)
    runs = by_rule(store, "visits_shadow")
    assert len(runs) == 2 and runs[1]["setl_ids"] == ["W2"]


def test_reversed_settlements_and_other_areas_are_not_screened(store, repo, chain, published) -> None:
    first = dispensing("S1", "2026-11-01")
    ingest(store, chain, first, dispensing("S2", "2026-11-10"), reversal(first, "R1"))
    other = enrol(store, "H37020000009")  # pooling area 370200: no rules published there
    ingest(
        store,
        other,
        dispensing("X1", "2026-11-02", hospital="H37020000009", psn_no="P2"),
        dispensing("X2", "2026-11-12", hospital="H37020000009", psn_no="P2"),
    )
    summary = screen(store, "2026-11-01", "2026-11-30", repo=repo, workers=1)
    assert summary["settlements"] == 1  # S2 only: S1 reversed, X1/X2 in an area without rules
    assert by_rule(store, "dup_same_drug") == []
    # history is everyone's, whatever the area: P2's dispensing there makes P2's visit here a duplicate
    ingest(store, chain, dispensing("S3", "2026-11-20", psn_no="P2"))
    screen(store, "2026-11-01", "2026-11-30", repo=repo, workers=1)
    assert [s["setl_ids"] for s in by_rule(store, "dup_same_drug")] == [["S3"]]


def test_nothing_new_writes_nothing(store, repo, published) -> None:
    assert screen_new(store, repo=repo)["settlements"] == 0
    assert store.read(lambda c: c.execute("SELECT count(*) FROM screen_runs").fetchone()[0]) == 0


def test_worker_processes_find_what_one_process_finds(store, repo, chain, published) -> None:
    days = [f"2026-{m:02d}-{d:02d}" for m in (9, 10, 11) for d in (1, 9, 17, 25)]
    ingest(store, chain, *(dispensing(f"W{i:02d}", d) for i, d in enumerate(days)))
    one = screen(store, "2026-09-01", "2026-11-30", repo=repo, workers=1, chunk_visits=3)
    two = screen(store, "2026-09-01", "2026-11-30", repo=repo, workers=2, chunk_visits=3)
    assert one["per_rule"] == two["per_rule"] and one["settlements"] == two["settlements"] == 12
    # every finding of the second screen is a fact the first recorded (a run of visits is one fact
    # found in several chunks, so findings can outnumber suspicions)
    assert (two["new_suspicions"], two["again"]) == (0, one["new_suspicions"] + one["again"])


def test_without_a_published_rules_bundle_nothing_is_screened(store, repo, chain) -> None:
    ingest(store, chain, dispensing("S1", "2026-11-01"))
    summary = screen(store, "2026-11-01", "2026-11-30", repo=repo, workers=1)
    assert (summary["areas"], summary["settlements"], summary["hits"]) == ([], 0, 0)


def test_the_server_screens_a_batch_seconds_after_it_is_ingested(config, monkeypatch) -> None:
    import time

    import central.api
    from central.policy.tuf_repo import TufRepository

    from .conftest import start_server

    monkeypatch.setattr(central.api, "SCREEN_INTERVAL_S", 0.2)
    server, stop = start_server(config)
    try:
        store = server.store
        Policy(store, TufRepository.open(config), config).publish_document(
            ACTOR, _signers(config), "rules", RULES
        )
        chain = enrol(store)
        chain.append(dispensing("S1", "2026-11-01"))
        chain.append(dispensing("S2", "2026-11-10"))
        assert server.post_batch(chain.batch(1, 2)).status == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not by_rule(store, "dup_same_drug"):
            time.sleep(0.1)
        assert [s["setl_ids"] for s in by_rule(store, "dup_same_drug")] == [["S2"]]
        runs = store.read(lambda c: c.execute("SELECT kind FROM screen_runs").fetchall())
        assert runs == [("incremental",)]
    finally:
        stop()


def _signers(config):
    from central.cli import operator_signers

    return operator_signers(config, None)


def test_the_cli_screens_a_range_and_what_is_new(config, store, chain, published, capsys) -> None:
    from central.cli import main

    home = ["--home", str(config.home)]
    ingest(store, chain, dispensing("S1", "2026-11-01"), dispensing("S2", "2026-11-10"))
    assert main([*home, "screen", "--new", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"settlements": 2, "new_suspicions": 3, "hits": 3}
    argv = [*home, "screen", "--from", "2026-11-01", "--to", "2026-11-30", "--workers", "1", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "screened 2 settlements" in out and "0 new suspicions, 3 found again" in out
    assert main([*home, "screen", "--from", "2026-11-30", "--to", "2026-11-01"]) == 1
    assert main([*home, "rules", "quality", "--json"]) == 0
    quality = {r["rule_id"]: r["found"] for r in json.loads(capsys.readouterr().out)}
    assert quality == {"dup_same_drug": 1, "price": 2}


# -- template 18: an object over a window is one fact, however the range is cut ---------------------------

OUTLIER_RULES = RULES | {
    "rules": [
        rule(
            id="doctor_visits_per_patient",
            template="peer_outlier",
            object="doctor",
            params={"measure": "visits_per_patient", "ratio": "2", "days": 30, "min_visits": 4},
        )
    ]
}


def test_an_outlier_doctor_is_one_suspicion_whatever_the_chunks_and_incremental(store, chain) -> None:
    from central.monitoring.screening import load_area_rules

    set_hospital(store, ACTOR, HOSPITAL, "2")
    areas = {AREA: load_area_rules(OUTLIER_RULES, CATALOGUE, area=AREA)}
    records = []
    for d, dr in enumerate(("D1", "D2", "D3", "D4")):
        for i in range(4):  # D1: 4 visits of 2 patients (2 per patient); the others 1 per patient
            s = dispensing(
                f"{dr}-{i}", f"2026-11-{1 + 5 * i + d:02d}", psn_no=f"{dr}-P{i // 2 if dr == 'D1' else i}"
            )
            s.mdtrt.dr_codg = dr
            records.append(s)
    ingest(store, chain, *records)
    found = []
    for chunk in (1, 3, 100):
        summary = screen(store, "2026-11-01", "2026-11-20", areas=areas, workers=1, chunk_visits=chunk)
        found.append(summary["per_rule"]["doctor_visits_per_patient"])
    assert found == [1, 1, 1]
    assert screen_new(store, areas=areas)["per_rule"]["doctor_visits_per_patient"] == 1
    (one,) = suspicions(store)
    assert (one["object_type"], one["object_id"], one["setl_ids"], one["times_found"]) == (
        "doctor",
        "D1",
        [],
        4,
    )
