"""The realistic generator: deterministic, every body valid for the agent's intake, shaped like a district's
traffic (measured against plausible bands, not exact figures), honest refills that never overlap their
previous supply by the duplicate-medication rule's minimum, and a month of it screened by the centre's
monitoring rules in process (real SQLite) with few or no flags."""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from itertools import pairwise
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from agent.api import create_app, settle_body
from agent.checks import DeskChecks
from agent.config import AgentConfig
from agent.dropfolder import DropFolder, csv_to_body
from agent.intake import parse_settlement
from agent.policy_store import PolicyStore
from agent.store import Outbox
from central.intake.visits import INSERT_VISIT, visit_row
from central.monitoring.screening import ChunkResult, Screener, load_area_rules
from protocol import rules as rl
from protocol.bundles import BundleHeader
from protocol.rules import tables
from simulators import cli
from simulators.fraud import RULE_PARAMS, default_knowledge
from simulators.realistic import (
    HOSPITALS,
    REFILL_SLACK_DAYS,
    Planned,
    RealisticTraffic,
    generate_realistic,
    holiday,
    national_visit,
    post_national,
    post_realistic,
    write_drop_folder,
)

from .standin import TOKEN, StandInAgent, serve

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"
KB = default_knowledge()
START, END = date(2026, 11, 1), date(2026, 11, 30)
LEVEL = {h.code: h.hosp_lv for h in HOSPITALS}


@pytest.fixture(scope="module")
def month() -> RealisticTraffic:
    return generate_realistic(7, START, END, persons=3000)


def day_of(text: str) -> date:
    return datetime.fromisoformat(text).date()


# --- determinism and validity ----------------------------------------------------------------


def test_the_same_seed_gives_the_same_traffic():
    a = generate_realistic(3, START, date(2026, 11, 10), persons=800)
    b = generate_realistic(3, START, date(2026, 11, 10), persons=800)
    assert [p.body for p in a.planned] == [p.body for p in b.planned]
    assert json.dumps(a.summary()) == json.dumps(b.summary())
    c = generate_realistic(4, START, date(2026, 11, 10), persons=800)
    assert [p.body for p in a.planned] != [p.body for p in c.planned]


def test_the_traffic_does_not_depend_on_the_processs_hash_seed():
    """Nothing iterates a set or a dict of strings in hash order: two interpreters, two hash seeds."""
    code = (
        "import hashlib, json; from datetime import date; "
        "from simulators.realistic import generate_realistic; "
        "t = generate_realistic(4, date(2026, 11, 1), date(2026, 11, 7), persons=500); "
        "print(hashlib.sha256(json.dumps([p.body for p in t.planned]).encode()).hexdigest())"
    )
    root = Path(__file__).resolve().parents[2]
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], cwd=root, env={"PYTHONHASHSEED": seed, "PATH": ""},
            capture_output=True, text=True, check=True,
        ).stdout
        for seed in ("1", "2")
    }  # fmt: skip
    assert len(digests) == 1


def test_every_body_passes_the_agents_intake(month):
    seen = set()
    for p in month.planned:
        record, _ = parse_settlement(json.dumps(p.body).encode(), fixmedins_code=p.hospital)
        assert record.medfee_sumamt == sum(line.det_item_fee_sumamt for line in record.feedetl)
        assert p.body["his_setl_no"] not in seen
        seen.add(p.body["his_setl_no"])
        assert START <= day_of(p.body["mdtrt"]["endtime"]) <= END
    assert len(month.planned) > 1000


def test_prices_are_the_hospitals_levels_and_within_the_catalogue(month):
    for p in month.planned:
        lv = LEVEL[p.hospital]
        for ln in p.body["feedetl"]:
            item = KB.items[ln["med_list_codg"]]
            fen = int((Decimal(ln["pric"]) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
            assert fen <= item.price_ceiling[lv], (ln["med_list_codg"], lv)
            if len(set(item.price_ceiling.values())) > 1:  # services: the level's own price
                assert fen == item.price_ceiling[lv]
            amount = (Decimal(ln["cnt"]) * Decimal(ln["pric"])).quantize(Decimal("0.01"), ROUND_HALF_UP)
            assert Decimal(ln["det_item_fee_sumamt"]) == amount


def test_hospitals_have_levels_departments_and_stable_doctors(month):
    assert sorted({h.hosp_lv for h in HOSPITALS}) == ["1", "2", "3"]
    doctors = {
        d: h.code for h in HOSPITALS for dept in h.departments for d in (*dept.doctors, *dept.ward_doctors)
    }
    assert len(doctors) == sum(
        len(dept.doctors) + len(dept.ward_doctors) for h in HOSPITALS for dept in h.departments
    )
    for p in month.planned:
        assert doctors[p.body["mdtrt"]["dr_codg"]] == p.hospital
        depts = {d.code for h in HOSPITALS if h.code == p.hospital for d in h.departments}
        assert p.body["mdtrt"]["dept_codg"] in depts
    assert generate_realistic(7, START, START, persons=50).hospitals_json() == month.hospitals_json()


# --- distributions ---------------------------------------------------------------------------


def test_population_ages_genders_insurance_and_chronic_conditions(month):
    people = month.people
    n = len(people)
    ages = [p.age for p in people]
    assert 0.47 < sum(p.insured.gend == "1" for p in people) / n < 0.53
    assert 0.13 < sum(a < 15 for a in ages) / n < 0.21  # China 2020: ~18 %
    assert 0.10 < sum(a >= 65 for a in ages) / n < 0.18  # ~13.5 %
    assert 35 < statistics.mean(ages) < 43
    assert 0.25 < sum(p.insured.insutype == "310" for p in people) / n < 0.50
    for p in people:
        assert (p.insured.insutype, p.insured.psn_type) in {("310", "11"), ("310", "12"), ("390", "21")}
        if p.age < 18:
            assert p.insured.insutype == "390" and not p.conditions
    old = [p for p in people if p.age >= 65]
    young = [p for p in people if 18 <= p.age < 45]
    hypertension = lambda group: sum("I10.x00" in p.conditions for p in group) / len(group)  # noqa: E731
    assert 0.35 < hypertension(old) < 0.65 and hypertension(young) < 0.12
    assert 0.15 < sum(bool(p.conditions) for p in people) / n < 0.40


def test_mix_of_visits_levels_and_stays(month):
    s = month.summary()
    n = s["settlements"]
    assert 0.25 < s["refill_share"] < 0.60, s
    assert 0.01 < s["inpatient_share"] < 0.05, s
    assert 6 < s["mean_los"] < 12, s
    assert s["kinds"]["acute"] / n > 0.2 and s["kinds"]["pharmacy"] / n > 0.03
    assert all(s["hosp_lv"][lv] / n > 0.1 for lv in "123"), s
    # visits a person a year: China ~6-9 outpatient visits
    assert 4 < (n - s["med_types"]["21"]) * 365 / 30 / s["persons"] < 11


def test_weekday_shape_monday_peak_weekend_dip(month):
    by_day = month.summary()["outpatient_by_weekday"]
    days_of = Counter((START + timedelta(days=i)).weekday() for i in range((END - START).days + 1))
    per = [by_day[i] / days_of[i] for i in range(7)]
    weekday_mean = statistics.mean(per[:5])
    assert per[0] == max(per) and per[0] > 1.15 * weekday_mean
    assert per[5] < 0.85 * weekday_mean and per[6] < 0.85 * weekday_mean


def test_national_day_week_is_quiet():
    t = generate_realistic(2, date(2026, 10, 1), date(2026, 10, 30), persons=2000)
    per_day = Counter(day_of(p.body["mdtrt"]["endtime"]) for p in t.planned if p.kind in ("acute", "refill"))
    golden = [per_day[date(2026, 10, d)] for d in range(1, 8)]
    working = [per_day[date(2026, 10, d)] for d in range(12, 31) if date(2026, 10, d).weekday() < 5]
    assert holiday(date(2026, 10, 3)) and not holiday(date(2026, 10, 8)) and holiday(date(2027, 2, 5))
    assert statistics.mean(golden) < 0.75 * statistics.mean(working)


def test_winter_respiratory_peak():
    def respiratory_per_day(start: date, end: date) -> float:
        t = generate_realistic(2, start, end, persons=2000)
        acute = [p for p in t.planned if p.kind == "acute" and p.body["mdtrt"]["dise_codg"].startswith("J")]
        return len(acute) / ((end - start).days + 1)

    january = respiratory_per_day(date(2027, 1, 4), date(2027, 1, 31))
    july = respiratory_per_day(date(2027, 7, 5), date(2027, 8, 1))
    assert january > 2 * july


def test_hours_of_the_day(month):
    hours = Counter(datetime.fromisoformat(p.body["mdtrt"]["begntime"]).hour for p in month.planned
                    if p.body["mdtrt"]["med_type"] in ("11", "14"))  # fmt: skip
    total = sum(hours.values())
    assert (hours[8] + hours[9] + hours[10]) / total > 0.35
    assert hours[12] < hours[9] and sum(hours[h] for h in range(0, 7)) == 0


def test_winter_stays_and_lengths_by_condition():
    winter = generate_realistic(3, date(2026, 12, 1), date(2027, 2, 28), persons=5000)
    stays: dict[str, list[int]] = defaultdict(list)
    for p in winter.planned:
        if p.body["mdtrt"]["med_type"] == "21":
            stays[p.body["mdtrt"]["dise_codg"].split(",")[0][:3]].append(p.body["mdtrt"]["ipt_days"])
    mean = {k: statistics.mean(v) for k, v in stays.items() if len(v) >= 5}
    assert mean["I63"] > mean["J18"] > mean["K35"], mean  # stroke > pneumonia > appendicitis
    assert 4 <= mean["K35"] <= 7 and 7 <= mean["J18"] <= 10 and 10 <= mean["I63"] <= 15, mean
    respiratory = sum(len(v) for k, v in stays.items() if k.startswith("J"))
    assert respiratory / sum(len(v) for v in stays.values()) > 0.4  # pneumonia and COPD in winter


def test_inpatient_stays_have_daily_lines_within_the_stay(month):
    stays = [p.body for p in month.planned if p.body["mdtrt"]["med_type"] == "21"]
    assert stays
    idle_codes = set(RULE_PARAMS["bed_hanging"]["idle_codes"])
    for body in stays:
        md = body["mdtrt"]
        begin, end = datetime.fromisoformat(md["begntime"]), datetime.fromisoformat(md["endtime"])
        assert (end.date() - begin.date()).days == md["ipt_days"]
        beds = [ln for ln in body["feedetl"] if ln["med_list_codg"] == "001109000010000"]
        assert len(beds) == md["ipt_days"]
        assert {day_of(ln["fee_ocur_time"]) for ln in beds} == {
            begin.date() + timedelta(days=i) for i in range(md["ipt_days"])
        }
        for ln in body["feedetl"]:
            assert begin <= datetime.fromisoformat(ln["fee_ocur_time"]) <= end
        busy = {
            day_of(ln["fee_ocur_time"]) for ln in body["feedetl"] if ln["med_list_codg"] not in idle_codes
        }
        idle = md["ipt_days"] - len(busy & {begin.date() + timedelta(days=i) for i in range(md["ipt_days"])})
        assert idle < RULE_PARAMS["bed_hanging"]["min_idle_days"]


# --- honest refills ----------------------------------------------------------------------------


def test_chronic_patients_refill_when_the_supply_runs_out(month):
    """Per person and drug class, in order: each dispensing starts at most REFILL_SLACK_DAYS before the
    previous supply ends (so under the duplicate-medication rule's minimum), and refills come back."""
    need = RULE_PARAMS["duplicate_medication"]["min_overlap_days"]
    held: dict[tuple[str, str], list[tuple[date, int, str]]] = defaultdict(list)
    for p in month.planned:
        setl = day_of(p.body["mdtrt"]["endtime"])
        for ln in p.body["feedetl"]:
            if "days" in ln:
                dclass = KB.items[ln["med_list_codg"]].drug_class or ln["med_list_codg"]
                held[(p.body["psn"]["psn_no"], dclass)].append((setl, ln["days"], p.kind))
    overlaps, repeats = [], 0
    for rows in held.values():
        rows.sort()
        for (d1, days1, _k1), (d2, days2, _k2) in pairwise(rows):
            if d1 == d2:  # one stay's day-by-day lines: one day each
                assert days1 == 1 or days2 == 1
                continue
            overlap = min(days2, days1 - (d2 - d1).days)
            overlaps.append(overlap)
            repeats += 1
    assert repeats > 50
    assert max(overlaps) <= REFILL_SLACK_DAYS < need
    refills = [p for p in month.planned if p.kind == "refill"]
    assert refills and all(p.hospital == _usual(month, p.body["psn"]["psn_no"]) for p in refills)
    for p in refills:  # the chronic limit for registered patients, the acute one otherwise
        for ln in p.body["feedetl"]:
            if "days" in ln:
                item = KB.items[ln["med_list_codg"]]
                chronic = p.body["mdtrt"]["med_type"] == "14"
                assert ln["days"] <= (item.max_days_chronic if chronic else item.max_days_acute)


def _usual(traffic: RealisticTraffic, psn_no: str) -> str:
    return next(p.usual for p in traffic.people if p.insured.psn_no == psn_no)


# --- drivers ---------------------------------------------------------------------------------


def test_drop_folder_files_are_whole_json_bodies_in_order(month, tmp_path):
    code = HOSPITALS[3].code
    paths = write_drop_folder(month, tmp_path, code)
    assert paths and sorted(tmp_path.iterdir()) == [tmp_path / "inbox"]
    names = sorted(p.name for p in (tmp_path / "inbox").iterdir())
    assert names == [p.name for p in paths] and all(n.endswith(".json") for n in names)
    bodies = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    assert bodies == [p.body for p in month.for_hospital(code)]
    for body, path in zip(bodies, paths, strict=True):
        parse_settlement(path.read_bytes(), fixmedins_code=code)
        assert body["his_setl_no"] in path.name


def test_drop_folder_csv_files_are_the_same_settlements(month, tmp_path):
    code = HOSPITALS[0].code
    paths = write_drop_folder(month, tmp_path, code, layout="csv")
    expected = month.for_hospital(code)
    assert len(paths) == len(expected) and all(p.suffix == ".csv" for p in paths)
    for path, planned in zip(paths[:200], expected, strict=False):
        body, _lines = csv_to_body(path.read_bytes())
        _, digest = parse_settlement(body, fixmedins_code=code)
        assert digest == parse_settlement(json.dumps(planned.body).encode(), fixmedins_code=code)[1]
    assert not [p for p in (tmp_path / "inbox").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("layout", ["json", "csv"])
def test_a_real_agents_drop_folder_settles_every_file_in_visit_order(tmp_path, layout):
    """Through ``agent.dropfolder`` and the agent's own settlement path into a real outbox: every file
    is settled once, none refused, and (one worker) in the order the visits happened."""
    traffic = generate_realistic(8, START, date(2026, 11, 5), persons=600)
    code = HOSPITALS[0].code
    expected = [p.body["his_setl_no"] for p in traffic.for_hospital(code)]

    async def main() -> list[str]:
        config = AgentConfig(home=tmp_path, agent_id="A1", fixmedins_code=code)
        outbox = Outbox(tmp_path / "agent.db", agent_id="A1")
        root = tmp_path / "drop"
        folder = DropFolder(root, functools.partial(settle_body, config=config, outbox=outbox),
                            stable_s=0.0, poll_s=0.1, workers=1)  # fmt: skip
        for d in folder.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        write_drop_folder(traffic, root, code, layout=layout)
        task = asyncio.create_task(folder.run())
        try:
            for _ in range(600):
                if len(list((root / "done").iterdir())) + len(list((root / "rejected").iterdir())) >= len(
                    expected
                ):
                    break
                await asyncio.sleep(0.05)
        finally:
            await folder.stop()
            await asyncio.wait_for(task, 5)
            outbox.close()
        assert not list((root / "rejected").iterdir())
        with sqlite3.connect(tmp_path / "agent.db") as db:
            return [row[0] for row in db.execute("SELECT his_setl_no FROM settlements ORDER BY rowid")]

    assert asyncio.run(main()) == expected


def test_rest_driver_posts_every_hospitals_bodies_once():
    traffic = generate_realistic(5, START, date(2026, 11, 3), persons=400)
    agents = {h.code: StandInAgent(faults=False) for h in HOSPITALS[:2]}

    async def scenario() -> dict[str, str]:
        servers = {code: await serve(agent) for code, agent in agents.items()}
        try:
            targets = {code: (str(s.make_url("")), TOKEN) for code, s in servers.items()}
            return await post_realistic(traffic, targets, concurrency=2)
        finally:
            for s in servers.values():
                await s.close()

    ids = asyncio.run(scenario())
    expected = [p for p in traffic.planned if p.hospital in agents]
    assert expected and len(ids) == len(expected)
    for code, agent in agents.items():
        assert set(agent.committed) == {p.body["his_setl_no"] for p in expected if p.hospital == code}


def test_cli_writes_files_and_a_drop_folder(tmp_path, capsys):
    code = HOSPITALS[1].code
    args = ["realistic", "--from", "2026-11-02", "--to", "2026-11-04", "--persons", "300", "--seed", "9"]
    assert (
        cli.main(
            [
                *args,
                "--out",
                str(tmp_path / "out"),
                "--drop-folder",
                str(tmp_path / "drop"),
                "--hospital",
                code,
            ]
        )
        == 0
    )
    expected = generate_realistic(9, date(2026, 11, 2), date(2026, 11, 4), persons=300)
    rows = [json.loads(line) for line in (tmp_path / "out" / "settlements.jsonl").read_text().splitlines()]
    assert [r["body"] for r in rows] == [p.body for p in expected.planned]
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == expected.summary()
    assert len(list((tmp_path / "drop" / "inbox").iterdir())) == len(expected.for_hospital(code))
    assert cli.main([*args, "--drop-folder", str(tmp_path / "x")]) == 2
    assert cli.main(args) == 2
    assert "--out, --drop-folder or --agent" in capsys.readouterr().err


@pytest.fixture(scope="module")
def last_month() -> RealisticTraffic:
    """The 30 days before today: the agent stamps ``setl_time`` with its clock, so what it settles must
    have happened already (a stay discharged tomorrow, settled today, has more bed days than days)."""
    today = date.today()
    return generate_realistic(7, today - timedelta(days=30), today - timedelta(days=1), persons=2500)


@pytest.mark.parametrize("index", [0, 1, 3])
def test_a_real_desk_with_the_sample_bundles_accepts_every_settlement(last_month, tmp_path, index):
    """The agent's own settlement path with the sample rules, catalogue and policy (offline: the hospital's
    own history only): nothing refused, and the only rule outcome is the sample rule that moves class C
    lines to self-pay; the split is computed wherever the sample policy has benefits (it has none for
    chronic-disease ``14`` or pharmacy ``41`` visits, nor for retired employees' (310/12) outpatient
    visits: reported, not hidden)."""
    h = HOSPITALS[index]

    async def main() -> Counter[str]:
        config = AgentConfig(home=tmp_path, agent_id="A1", fixmedins_code=h.code)
        outbox = Outbox(tmp_path / "agent.db", agent_id="A1", hosp_lv=h.hosp_lv)
        store = PolicyStore(tmp_path / "policy.db")
        for seq, kind in enumerate(("rules", "catalogue", "policy"), start=1):
            doc = json.loads((SAMPLES / f"{kind}.json").read_text())
            store.apply_document(BundleHeader(kind, "370200", seq, None, "2026-11-25T00:00:00Z"), doc)
        desk = DeskChecks(tmp_path / "agent.db", store, None, hosp_lv=h.hosp_lv)
        uncovered: Counter[str] = Counter()
        try:
            for p in last_month.for_hospital(h.code):
                status, answer = await settle_body(
                    json.dumps(p.body).encode(), config, outbox, policy=store, desk=desk
                )
                assert status == 201
                class_c = {ln["feedetl_sn"] for ln in p.body["feedetl"] if ln["chrgitm_lv"] == "C"}
                for hit in answer["checks"]["hits"]:
                    assert hit["rule_id"] == "class_c_not_covered" and hit["outcome"] == "self_pay", hit
                    assert set(hit["lines"]) <= class_c
                if not answer["checks"]["split"]["computed"]:
                    uncovered[
                        f"{p.body['psn']['insutype']}/{p.body['psn']['psn_type']}/{p.body['mdtrt']['med_type']}"
                    ] += 1
        finally:
            desk.close()
            store.close()
            outbox.close()
        return uncovered

    uncovered = asyncio.run(main())
    # what docs/samples/policy.json has no row for: 14 and 41 visits, retired employees' outpatient visits
    assert all(k.endswith(("/14", "/41")) or k == "310/12/11" for k in uncovered), uncovered


# --- through the centre's screening engine ---------------------------------------------------


def _screening_db(traffic: RealisticTraffic, path: Path) -> dict[str, str]:
    """The centre's screening tables, filled as ingest fills them; each settlement stamped at visit end."""
    conn = sqlite3.connect(path)
    for ddl in (rl.HISTORY_DDL, tables.VISITS_DDL, tables.DEATHS_DDL, tables.HOSPITALS_GEO_DDL):
        conn.executescript(ddl)
    kinds = {}
    for i, p in enumerate(traffic.planned):
        rec, _ = parse_settlement(json.dumps(p.body).encode())
        rec.setl_id = f"S{i:06d}"
        rec.setl_time = p.body["mdtrt"]["endtime"]
        kinds[rec.setl_id] = p.kind
        setl_date = day_of(rec.setl_time).isoformat()
        lv = LEVEL[p.hospital]
        conn.executemany(rl.HISTORY_INSERT, rl.history_rows_from_settlement(rec, lv, setl_date=setl_date))
        conn.execute(INSERT_VISIT, visit_row(rec, area="370200", hosp_lv=lv, setl_date=setl_date))
    for h in traffic.hospitals:
        x, y = h.plane()
        conn.execute(
            "INSERT INTO hospitals (fixmedins_code, hosp_lv, name, lat, lon, x_km, y_km) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (h.code, h.hosp_lv, h.name, h.lat, h.lon, x, y),
        )
    conn.commit()
    conn.close()
    return kinds


def _screen(
    traffic: RealisticTraffic, path: Path, rules_file: str = "monitoring_rules.json", *, by: str = "template"
) -> tuple[dict[str, str], dict[str, set[str]], Counter[str]]:
    """(setl_id → kind, setl_id → templates (or rule ids) that flagged it, object findings)."""
    kinds = _screening_db(traffic, path)
    rules = load_area_rules(
        json.loads((SAMPLES / rules_file).read_text()),
        json.loads((SAMPLES / "catalogue.json").read_text()),
    )
    screener = Screener(path)
    result = ChunkResult("370200", traffic.start.isoformat(), traffic.end.isoformat())
    screener.conn.execute("BEGIN")
    screener.fill_range("370200", traffic.start.isoformat(), traffic.end.isoformat())
    screener.run(rules, result)
    screener.conn.execute("COMMIT")
    screener.close()
    flagged: dict[str, set[str]] = defaultdict(set)
    objects: Counter[str] = Counter()
    for f in result.findings:
        name = f.hit.template if by == "template" else f"{f.hit.rule_id}/{f.hit.mode}"
        for sid in f.setl_ids:
            flagged[sid].add(name)
        if f.object_type != "person":
            objects[name] += 1
    return kinds, flagged, objects


def test_screening_a_month_flags_few_honest_settlements(month, tmp_path):
    kinds, flagged, objects = _screen(month, tmp_path / "central.db")
    rate = len(flagged) / len(kinds)
    by_template = Counter(t for ts in flagged.values() for t in ts)
    print(
        f"\nrealistic month: {len(kinds)} settlements, {len(flagged)} flagged ({rate:.2%}): "
        f"{dict(by_template)}; object findings {dict(objects)}"
    )
    assert rate < 0.005, dict(by_template)
    assert not objects


def test_screening_a_month_with_the_desks_stricter_sample_rules(month, tmp_path):
    """docs/samples/rules.json (the agents' rules, run as the centre would): no enforced rule flags an honest
    settlement but ``class_c_not_covered``, which is how those rules make class C lines self-paid, not a
    suspicion. The shadow ``excessive_cost`` at 4 × the peers' median (the operators' candidate) flags
    about one visit in a hundred: honest work-ups do cost several times a consultation."""
    kinds, flagged, _objects = _screen(month, tmp_path / "central.db", "rules.json", by="rule")
    rules = Counter(r for names in flagged.values() for r in names)
    print(f"\ndesk rules over the month: {len(kinds)} settlements, {dict(rules)}")
    assert set(rules) <= {"class_c_not_covered/enforce", "excessive_cost/shadow"}, rules
    assert rules["excessive_cost/shadow"] / len(kinds) < 0.03


def test_the_screening_harness_does_flag_a_planted_duplicate(tmp_path):
    """The control for the test above: the same month with one refill bought again the same day at
    another hospital (doctor shopping) is flagged, so "no flags" means honest, not blind."""
    traffic = generate_realistic(7, START, date(2026, 11, 15), persons=1200)
    i, original = next(
        (i, p) for i, p in enumerate(traffic.planned)
        if p.kind == "refill" and any(ln.get("days", 0) >= 28 for ln in p.body["feedetl"])
    )  # fmt: skip
    other = next(
        h for h in HOSPITALS if h.code != original.hospital and h.hosp_lv == LEVEL[original.hospital]
    )
    body = json.loads(json.dumps(original.body))
    body["fixmedins_code"] = other.code
    body["his_setl_no"] += "-X"
    body["mdtrt"]["mdtrt_id"] += "-X"
    body["mdtrt"]["dr_codg"] = other.departments[0].doctors[0]
    end = datetime.fromisoformat(body["mdtrt"]["endtime"]) + timedelta(hours=2)
    body["mdtrt"]["endtime"] = end.isoformat()
    traffic.planned.insert(i + 1, Planned(other.code, "planted", body))
    kinds, flagged, _ = _screen(traffic, tmp_path / "central.db")
    planted = next(sid for sid, kind in kinds.items() if kind == "planted")
    assert "duplicate_medication" in flagged[planted]
    assert set(flagged) <= {planted, f"S{i:06d}"}, {kinds[s]: t for s, t in flagged.items()}


def test_national_envelope_driver_settles_every_visit(last_month, tmp_path):
    """9001 sign-in, then 2201 / 2203 / 2204 / 2207 per visit and 2401 / 2301 per day / 2402 / 2304 per
    inpatient stay through a real agent's national envelope (with the sample rules, catalogue and
    policy): every visit settled, once, with its own number; a stay as one settlement of all its days."""
    h = HOSPITALS[2]  # a level-2 hospital: wards (level 1 has none)
    visits = last_month.for_hospital(h.code)
    first_stays = [p for p in visits if p.body["mdtrt"]["med_type"] == "21"][:3]
    wanted = [p for i, p in enumerate(visits) if i < 60 or p in first_stays]  # in visit order
    stays = [p for p in wanted if p.body["mdtrt"]["med_type"] == "21"]
    assert len(stays) >= 3 and all(len(national_visit(p.body)) >= 5 for p in stays)  # 2401, 2301…, 2402, 2304
    errors: list[tuple[Planned, str, str]] = []

    async def main() -> dict[str, str]:
        config = AgentConfig(home=tmp_path, agent_id="A1", fixmedins_code=h.code, hosp_lv=h.hosp_lv)
        outbox = Outbox(tmp_path / "agent.db", agent_id="A1", hosp_lv=h.hosp_lv)
        store = PolicyStore(tmp_path / "policy.db")
        for seq, kind in enumerate(("rules", "catalogue", "policy"), start=1):
            doc = json.loads((SAMPLES / f"{kind}.json").read_text())
            store.apply_document(BundleHeader(kind, "370200", seq, None, "2026-11-25T00:00:00Z"), doc)
        desk = DeskChecks(tmp_path / "agent.db", store, None, hosp_lv=h.hosp_lv)
        server = TestServer(create_app(config, outbox, None, TOKEN, policy=store, desk=desk))
        await server.start_server()
        try:
            subset = RealisticTraffic(
                last_month.seed, last_month.start, last_month.end, HOSPITALS, last_month.people, wanted
            )
            return await post_national(
                subset,
                {h.code: (str(server.make_url("")), TOKEN)},
                on_error=lambda p, infno, msg: errors.append((p, infno, msg)),
            )
        finally:
            await server.close()
            desk.close()
            store.close()
            outbox.close()

    ids = asyncio.run(main())
    # 2207 answers the split, so it refuses what docs/samples/policy.json has no benefits for
    uncovered = {
        p.body["his_setl_no"]
        for p in wanted
        if p.body["mdtrt"]["med_type"] in ("14", "41")
        or (p.body["psn"]["psn_type"] == "12" and p.body["mdtrt"]["med_type"] == "11")
    }
    for p, infno, msg in errors:
        assert infno == "2207" and "no benefit policy" in msg and p.body["his_setl_no"] in uncovered, msg
    assert set(ids) == {p.body["his_setl_no"] for p in wanted} - uncovered
    assert len(ids) > 20 and len(set(ids.values())) == len(ids)
    with sqlite3.connect(tmp_path / "agent.db") as db:
        assert db.execute("SELECT count(*) FROM settlements").fetchone()[0] == len(ids)
        for p in stays:  # each stay: one settlement of every line of every day
            total, n_lines = db.execute(
                "SELECT s.medfee_sumamt, count(*) FROM settlements AS s JOIN hist_lines AS h USING (setl_id) "
                "WHERE s.setl_id = ?", (ids[p.body["his_setl_no"]],)
            ).fetchone()  # fmt: skip
            assert total == int(Decimal(p.body["medfee_sumamt"]) * 100) and n_lines == len(p.body["feedetl"])
    with sqlite3.connect(tmp_path / "national.db") as db:
        held = {setl_id: (kind, json.loads(reg)) for setl_id, kind, reg in db.execute(
            "SELECT setl_id, kind, reg FROM visits WHERE state = 'settled'"
        )}  # fmt: skip
    assert Counter(kind for kind, _ in held.values()) == {"ipt": len(stays), "otp": len(ids) - len(stays)}
    for p in stays:  # the stay's length as 2402 made it: discharge date minus admission date
        assert held[ids[p.body["his_setl_no"]]][1]["ipt_days"] == p.body["mdtrt"]["ipt_days"]
