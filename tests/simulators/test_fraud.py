"""The labelled fraud generator: deterministic, every pattern with its truth, valid bodies, and look-alikes
that really are on the safe side of each threshold (the quantities are recomputed from the bodies, not
read from the truth's own ``detail``). The last test screens a small labelled set with the centre's
screening engine in process (real SQLite) and asserts each pattern is found and no look-alike is."""

from __future__ import annotations

import json
import sqlite3
import statistics
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from agent.intake import parse_settlement
from protocol.rules import load_ruleset
from simulators.fraud import (
    HOSPITALS,
    IDLE_CODES,
    PATTERNS,
    RULE_PARAMS,
    Case,
    Traffic,
    default_knowledge,
    generate_traffic,
    km_between,
    score_detection,
)

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"
TODAY = date(2026, 11, 25)
KB = default_knowledge()
RANK = {"minor": 0, "moderate": 1, "major": 2, "contraindicated": 3}


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return generate_traffic(5, size=900, today=TODAY)


def bodies_of(traffic: Traffic, case: Case) -> list[dict]:
    wanted = set(case.his_setl_nos)
    return [p.body for p in traffic.planned if p.body["his_setl_no"] in wanted]


def cases(traffic: Traffic, template: str, label: str) -> list[Case]:
    found = [c for c in traffic.cases if c.pattern == template and c.label == label]
    assert found, f"no {label} case of {template}"
    return found


def day(text: str) -> date:
    return datetime.fromisoformat(text).date()


# --- determinism and coverage ----------------------------------------------------------------


def test_the_same_seed_gives_the_same_traffic_and_truth():
    a = generate_traffic(11, size=400, today=TODAY)
    b = generate_traffic(11, size=400, today=TODAY)
    assert [p.body for p in a.planned] == [p.body for p in b.planned]
    assert a.truth_lines() == b.truth_lines() and a.deaths_csv() == b.deaths_csv()
    c = generate_traffic(12, size=400, today=TODAY)
    assert [p.body for p in a.planned] != [p.body for p in c.planned]


def test_every_pattern_has_fraud_cases_and_lookalikes_with_their_truth(traffic):
    kinds = Counter((c.pattern, c.label) for c in traffic.cases)
    for template in PATTERNS:
        assert kinds[(template, "fraud")] >= 1, template
        assert kinds[(template, "honest_lookalike")] >= 1, template
    mixtures = [c for c in traffic.cases if c.pattern == "mixture"]
    assert mixtures and all(len(c.templates) == 2 and c.label == "fraud" for c in mixtures)
    planned = {p.body["his_setl_no"]: p for p in traffic.planned}
    for c in traffic.cases:
        row = json.loads(json.dumps(c.to_json()))
        assert row["his_setl_nos"] and all(no in planned for no in row["his_setl_nos"])
        assert row["object_id"] and row["template_numbers"] == [PATTERNS[t] for t in row["templates"]]
        assert all(planned[no].case == c.case_id for no in c.his_setl_nos)
        assert {planned[no].hospital for no in c.his_setl_nos} == set(c.hospitals)
    assert len(planned) == len(traffic.planned), "his_setl_no repeats"
    deaths = {row[0] for row in traffic.deaths}
    assert deaths == {c.object_id for c in traffic.cases if c.pattern == "care_after_death"}


def test_every_body_passes_the_agents_intake(traffic):
    for p in traffic.planned:
        record, _digest = parse_settlement(json.dumps(p.body).encode(), fixmedins_code=p.hospital)
        assert record.medfee_sumamt == sum(line.det_item_fee_sumamt for line in record.feedetl)


def test_background_persons_are_seen_once(traffic):
    in_cases = {p.body["psn"]["psn_no"] for p in traffic.planned if p.case is not None}
    background = Counter(p.body["psn"]["psn_no"] for p in traffic.planned if p.case is None)
    assert not {psn for psn, n in background.items() if n > 1}
    assert not in_cases & set(background)


def test_the_rules_document_matches_the_generators_thresholds():
    doc = json.loads((SAMPLES / "monitoring_rules.json").read_text())
    ruleset = load_ruleset(doc)
    by_template = {r.template: r for r in ruleset.rules}
    assert set(by_template) == set(PATTERNS)
    for rule in ruleset.rules:
        assert rule.moments == ("post",) and rule.mode == "enforce", rule.id
    for template, params in RULE_PARAMS.items():
        rule = next(r for r in doc["rules"] if r["template"] == template)
        for name, value in params.items():
            if name == "window_days":
                assert rule["window_days"] == value
            elif name == "med_types":
                assert rule["med_types"] == value
            else:
                assert rule["params"][name] == value, (template, name)
    assert by_template["peer_outlier"].object == "doctor"


def test_hospitals_two_close_one_far():
    h1, h2, h3 = HOSPITALS
    limit = RULE_PARAMS["impersonation_distance"]["min_km"]
    assert km_between(h1, h2) < 5 < limit < km_between(h1, h3) and km_between(h2, h3) > limit


# --- look-alikes on the safe side, fraud on the other -----------------------------------------


def drug_lines(body: dict) -> list[dict]:
    return [ln for ln in body["feedetl"] if "days" in ln]


def test_duplicate_medication_overlap(traffic):
    need = RULE_PARAMS["duplicate_medication"]["min_overlap_days"]
    for label in ("fraud", "honest_lookalike"):
        for c in cases(traffic, "duplicate_medication", label):
            a, b = (drug_lines(x) for x in bodies_of(traffic, c))
            classes = {KB.items[ln["med_list_codg"]].drug_class for ln in a}
            same = [(x, y) for x in a for y in b if KB.items[y["med_list_codg"]].drug_class in classes]
            assert same
            overlap = max(min(x["days"], y["days"]) for x, y in same)  # both settled the same day
            assert (overlap >= need) if label == "fraud" else (overlap == need - 1), c.case_id


def test_over_quantity_days(traffic):
    chronic = RULE_PARAMS["over_quantity"]["chronic_med_types"]
    for label in ("fraud", "honest_lookalike"):
        for c in cases(traffic, "over_quantity", label):
            (body,) = bodies_of(traffic, c)
            (line,) = drug_lines(body)
            item = KB.items[line["med_list_codg"]]
            limit = item.max_days_chronic if body["mdtrt"]["med_type"] in chronic else item.max_days_acute
            assert (line["days"] > limit) if label == "fraud" else (line["days"] == limit), c.case_id


def test_frequency_counts(traffic):
    for label in ("fraud", "honest_lookalike"):
        for c in cases(traffic, "frequency_limit", label):
            (body,) = bodies_of(traffic, c)
            totals: Counter[str] = Counter()
            for ln in body["feedetl"]:
                totals[ln["med_list_codg"]] += Decimal(ln["cnt"])
            span = max(1, (TODAY - day(body["mdtrt"]["begntime"])).days)  # settled today
            over = []
            for code, total in totals.items():
                freq = KB.items[code].frequency
                if freq is None:
                    continue
                per, limit = freq
                allowed = limit * span if per == "day" else limit
                assert total <= allowed or label == "fraud", (c.case_id, code)
                over.append(total > allowed)
            assert any(over) if label == "fraud" else not any(over), c.case_id


def test_repeated_charge_pairs(traffic):
    pairs = set(KB.exclusive_pairs)
    for label in ("fraud", "honest_lookalike"):
        for c in cases(traffic, "repeated_charge", label):
            together = [
                any((m, i) in pairs for m in codes for i in codes)
                for codes in ({ln["med_list_codg"] for ln in b["feedetl"]} for b in bodies_of(traffic, c))
            ]
            assert any(together) if label == "fraud" else not any(together), c.case_id


def test_gender_age_indication_price_catalogue(traffic):
    for label in ("fraud", "honest_lookalike"):
        fraud = label == "fraud"
        for c in cases(traffic, "gender_restricted", label):
            (body,) = bodies_of(traffic, c)
            wrong = [
                ln
                for ln in body["feedetl"]
                if (KB.items[ln["med_list_codg"]].gender or body["psn"]["gend"]) != body["psn"]["gend"]
            ]
            assert bool(wrong) == fraud, c.case_id
        for c in cases(traffic, "age_restricted", label):
            (body,) = bodies_of(traffic, c)
            begun, born = day(body["mdtrt"]["begntime"]), date.fromisoformat(body["psn"]["brdy"])
            age = begun.year - born.year - ((begun.month, begun.day) < (born.month, born.day))
            bound = min(KB.items[ln["med_list_codg"]].age_max or 200 for ln in body["feedetl"])
            assert (age > bound) if fraud else (age == bound), c.case_id
        for c in cases(traffic, "restricted_indication", label):
            (body,) = bodies_of(traffic, c)
            dises = body["mdtrt"]["dise_codg"].split(",")
            missing = [
                ln
                for ln in body["feedetl"]
                if KB.items[ln["med_list_codg"]].indications
                and not any(d.startswith(p) for d in dises for p in KB.items[ln["med_list_codg"]].indications)
            ]
            assert bool(missing) == fraud, c.case_id
        for c in cases(traffic, "price_over_ceiling", label):
            (body,) = bodies_of(traffic, c)
            lv = next(h.hosp_lv for h in HOSPITALS if h.code == body["fixmedins_code"])
            over = [
                ln
                for ln in body["feedetl"]
                if round(Decimal(ln["pric"]) * 100) > KB.items[ln["med_list_codg"]].price_ceiling[lv]
            ]
            at = [
                ln
                for ln in body["feedetl"]
                if round(Decimal(ln["pric"]) * 100) == KB.items[ln["med_list_codg"]].price_ceiling[lv]
                and ln["med_list_codg"] == c.detail.get("item", ln["med_list_codg"])
            ]
            assert bool(over) == fraud and (fraud or at), c.case_id
        for c in cases(traffic, "not_in_catalogue", label):
            (body,) = bodies_of(traffic, c)
            unknown = [ln for ln in body["feedetl"] if ln["med_list_codg"] not in KB.items]
            assert bool(unknown) == fraud, c.case_id
            if not fraud:
                assert any(KB.items[ln["med_list_codg"]].item_class == "C" for ln in body["feedetl"])


def test_interaction_severity(traffic):
    need = RANK[RULE_PARAMS["drug_interaction"]["min_severity"]]

    def worst(lines: list[dict]) -> int:
        sides = [{ln["med_list_codg"], KB.items[ln["med_list_codg"]].drug_class} for ln in lines]
        found = -1
        for x in KB.interactions:
            for i, a in enumerate(sides):
                for b in sides[i + 1 :]:
                    if (x.a in a and x.b in b) or (x.b in a and x.a in b):
                        found = max(found, RANK[x.severity])
        return found

    for label in ("fraud", "honest_lookalike"):
        for c in cases(traffic, "drug_interaction", label):
            lines = [ln for b in bodies_of(traffic, c) for ln in drug_lines(b)]
            assert (worst(lines) >= need) if label == "fraud" else (0 <= worst(lines) < need), c.case_id


def test_frequent_visit_counts(traffic):
    limit = RULE_PARAMS["frequent_visits"]["max_visits"]
    for label in ("fraud", "honest_lookalike"):
        for c in cases(traffic, "frequent_visits", label):
            visits = [b for b in bodies_of(traffic, c) if b["mdtrt"]["med_type"] == "11"]
            assert (len(visits) > limit) if label == "fraud" else (len(visits) == limit), c.case_id


def test_readmission_gap(traffic):
    within = RULE_PARAMS["readmission"]["within_days"]
    for label in ("fraud", "honest_lookalike"):
        for c in cases(traffic, "readmission", label):
            first, second = sorted(bodies_of(traffic, c), key=lambda b: b["mdtrt"]["begntime"])
            gap = (day(second["mdtrt"]["begntime"]) - day(first["mdtrt"]["endtime"])).days
            related = first["mdtrt"]["dise_codg"][:3] == second["mdtrt"]["dise_codg"][:3]
            if label == "fraud":
                assert 0 <= gap <= within and related, c.case_id
            else:
                assert (gap == within + 2 and related) or (not related and gap <= within), c.case_id


def test_impersonation_distance(traffic):
    by_code = {h.code: h for h in HOSPITALS}
    limit = RULE_PARAMS["impersonation_distance"]["min_km"]
    for label in ("fraud", "honest_lookalike"):
        for c in cases(traffic, "impersonation_distance", label):
            a, b = (by_code[x["fixmedins_code"]] for x in bodies_of(traffic, c))
            km = km_between(a, b)
            assert (km >= limit) if label == "fraud" else (km < limit / 10), c.case_id


def test_care_after_death(traffic):
    deaths = {psn: date.fromisoformat(d) for psn, d, _src in traffic.deaths}
    grace = RULE_PARAMS["care_after_death"]["grace_days"]
    for label in ("fraud", "honest_lookalike"):
        for c in cases(traffic, "care_after_death", label):
            (body,) = bodies_of(traffic, c)
            after = (day(body["mdtrt"]["begntime"]) - deaths[body["psn"]["psn_no"]]).days
            assert (after > grace) if label == "fraud" else (after == grace), c.case_id


def test_bed_hanging_idle_days(traffic):
    need = RULE_PARAMS["bed_hanging"]["min_idle_days"]
    for label in ("fraud", "honest_lookalike"):
        for c in cases(traffic, "bed_hanging", label):
            (body,) = bodies_of(traffic, c)
            days = max(1, (day(body["mdtrt"]["endtime"]) - day(body["mdtrt"]["begntime"])).days)
            treated = {
                day(ln["fee_ocur_time"]) for ln in body["feedetl"] if ln["med_list_codg"] not in IDLE_CODES
            }
            idle = days - len(treated)
            assert (idle >= need) if label == "fraud" else (idle == need - 1), c.case_id
    for p in traffic.planned:  # no honest stay comes near it
        if p.case is None and p.body["mdtrt"]["med_type"] == "21":
            m = p.body["mdtrt"]
            treated = {
                day(ln["fee_ocur_time"]) for ln in p.body["feedetl"] if ln["med_list_codg"] not in IDLE_CODES
            }
            assert max(1, (day(m["endtime"]) - day(m["begntime"])).days) - len(treated) < need


def test_excessive_cost_over_both_limits_or_under_both(traffic):
    p = RULE_PARAMS["excessive_cost"]
    ratio, cap = Decimal(p["peer_ratio"]), Decimal(p["max_fen"]) / 100
    lv = {h.code: h.hosp_lv for h in HOSPITALS}
    peers: dict[tuple, list[Decimal]] = defaultdict(list)  # visits of the days before today
    for pl in traffic.planned:
        m = pl.body["mdtrt"]
        if day(m["endtime"]) < TODAY:
            peers[(m["dise_codg"][:3], lv[pl.hospital], m["med_type"])].append(
                Decimal(pl.body["medfee_sumamt"])
            )

    def by_peers(body: dict) -> Decimal | None:
        """``peer_ratio`` × the median of the visit's peers, None when they are too few to judge."""
        m = body["mdtrt"]
        group = peers[(m["dise_codg"][:3], lv[body["fixmedins_code"]], m["med_type"])]
        return ratio * statistics.median(group) if len(group) >= p["min_peers"] else None

    judged = 0
    for label in ("fraud", "honest_lookalike"):
        for c in cases(traffic, "excessive_cost", label):
            (body,) = bodies_of(traffic, c)
            cost, limit = Decimal(body["medfee_sumamt"]), by_peers(body)
            judged += limit is not None
            if label == "fraud":
                assert cost > cap and (limit is None or cost > limit * Decimal("1.1")), c.case_id
            else:
                assert cost < min(cap, limit or cap) * Decimal("0.9"), c.case_id
    assert judged, "no excessive-cost case has enough peers on the days before"
    for pl in traffic.planned:  # no honest general outpatient visit of today near either limit
        if pl.case is None and pl.body["mdtrt"]["med_type"] in p["med_types"]:
            cost = Decimal(pl.body["medfee_sumamt"])
            assert cost < cap * Decimal("0.9")
            limit = by_peers(pl.body) if day(pl.body["mdtrt"]["endtime"]) == TODAY else None
            assert limit is None or cost < limit * Decimal("0.9"), pl.body["his_setl_no"]


def test_peer_outlier_visits_per_patient(traffic):
    p = RULE_PARAMS["peer_outlier"]
    ratio = Decimal(p["ratio"])
    per_doctor: dict[str, list[str]] = defaultdict(list)
    for pl in traffic.planned:
        per_doctor[pl.body["mdtrt"]["dr_codg"]].append(pl.body["psn"]["psn_no"])
    for label in ("fraud", "honest_lookalike"):
        for c in cases(traffic, "peer_outlier", label):
            visits = per_doctor[c.object_id]
            value = Decimal(len(visits)) / len(set(visits))
            assert len(visits) >= p["min_visits"]
            assert (value >= ratio) if label == "fraud" else (value == ratio * Decimal("0.8")), c.case_id
            dept = bodies_of(traffic, c)[0]["mdtrt"]["dept_codg"]
            peers = [
                Decimal(len(v)) / len(set(v))
                for d, v in per_doctor.items()
                if d != c.object_id
                and len(v) >= p["min_visits"]
                and any(
                    b.body["mdtrt"]["dr_codg"] == d and b.body["mdtrt"]["dept_codg"] == dept
                    for b in traffic.planned
                )
            ]
            assert statistics.median(peers) == 1


# --- scoring ---------------------------------------------------------------------------------


def test_scoring_matches_by_settlement_and_object(traffic):
    ids = {p.body["his_setl_no"]: f"S{i}" for i, p in enumerate(traffic.planned)}
    fraud = next(c for c in traffic.cases if c.pattern == "over_quantity" and c.label == "fraud")
    look = next(c for c in traffic.cases if c.pattern == "over_quantity" and c.label != "fraud")
    doctor = next(c for c in traffic.cases if c.pattern == "peer_outlier" and c.label == "fraud")
    background = next(p for p in traffic.planned if p.case is None)
    suspicions = [
        {
            "template": "over_quantity",
            "object_type": "person",
            "object_id": fraud.object_id,
            "setl_ids": [ids[fraud.his_setl_nos[0]]],
        },
        {
            "template": "over_quantity",
            "object_type": "person",
            "object_id": look.object_id,
            "setl_ids": [ids[look.his_setl_nos[0]]],
        },
        {
            "template": "over_quantity",
            "object_type": "person",
            "object_id": "x",
            "setl_ids": [ids[background.body["his_setl_no"]]],
        },
        {"template": "peer_outlier", "object_type": "doctor", "object_id": doctor.object_id, "setl_ids": []},
    ]
    got = score_detection(traffic.cases, ids, suspicions)["templates"]
    oq = got["over_quantity"]
    assert (oq["true_positives"], oq["fp_lookalike"], oq["fp_background"]) == (1, 1, 1)
    assert oq["precision"] == pytest.approx(1 / 3) and oq["found"] == 1 and oq["cases"] > 1
    assert got["peer_outlier"]["found"] == 1 and got["peer_outlier"]["precision"] == 1
    assert got["readmission"]["precision"] is None and got["readmission"]["recall"] == 0


# --- through the centre's screening engine ---------------------------------------------------


def _screening_db(traffic: Traffic, path: Path, stamping: str) -> dict[str, str]:
    """A database with the centre's screening tables, filled from the traffic as ingest fills them.

    ``stamping``: ``run`` — every settlement stamped today, a second apart in plan order (what the
    benchmark's agents do); ``visit_end`` — stamped at the visit's end (an agent settling as the
    visit closes: stays on their discharge day, the week's clinics on their days).
    """
    from central.intake.visits import INSERT_VISIT, visit_row
    from protocol import rules as rl
    from protocol.rules import tables

    conn = sqlite3.connect(path)
    for ddl in (rl.HISTORY_DDL, tables.VISITS_DDL, tables.DEATHS_DDL, tables.HOSPITALS_GEO_DDL):
        conn.executescript(ddl)
    lv = {h.code: h.hosp_lv for h in traffic.hospitals}
    ids = {}
    start = datetime(2026, 11, 25, 14, 0, tzinfo=datetime.now().astimezone().tzinfo)
    for i, p in enumerate(sorted(traffic.planned, key=lambda p: p.wave)):
        rec, _ = parse_settlement(json.dumps(p.body).encode())
        rec.setl_id = f"S{i:06d}"
        if stamping == "run":
            rec.setl_time = (start + timedelta(seconds=i)).isoformat()
        else:
            rec.setl_time = p.body["mdtrt"]["endtime"]
        ids[p.body["his_setl_no"]] = rec.setl_id
        setl_date = day(rec.setl_time).isoformat()
        conn.executemany(
            rl.HISTORY_INSERT, rl.history_rows_from_settlement(rec, lv[p.hospital], setl_date=setl_date)
        )
        conn.execute(INSERT_VISIT, visit_row(rec, area="370200", hosp_lv=lv[p.hospital], setl_date=setl_date))
    conn.executemany("INSERT INTO deaths VALUES (?, ?, ?, 'test')", traffic.deaths)
    for h in traffic.hospitals:
        x, y = h.plane()
        conn.execute(
            "INSERT INTO hospitals (fixmedins_code, hosp_lv, name, lat, lon, x_km, y_km) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (h.code, h.hosp_lv, h.name, h.lat, h.lon, x, y),
        )
    conn.commit()
    conn.close()
    return ids


@pytest.mark.parametrize("stamping", ["run", "visit_end"])
def test_screening_finds_every_pattern_and_no_lookalike(traffic, tmp_path, stamping):
    from central.monitoring.screening import ChunkResult, Screener, load_area_rules
    from central.monitoring.suspicions import fact_key

    ids = _screening_db(traffic, tmp_path / "central.db", stamping)
    rules = load_area_rules(
        json.loads((SAMPLES / "monitoring_rules.json").read_text()),
        json.loads((SAMPLES / "catalogue.json").read_text()),
    )
    screener = Screener(tmp_path / "central.db")
    result = ChunkResult("370200", "2026-11-01", "2026-11-30")
    screener.conn.execute("BEGIN")
    screener.fill_range("370200", "2026-11-01", "2026-11-30")
    screener.run(rules, result)
    screener.conn.execute("COMMIT")
    screener.close()
    suspicions = {  # one suspicion per fact, as record_findings keeps them
        fact_key(f): {
            "template": f.hit.template, "object_type": f.object_type, "object_id": f.object_id,
            "setl_ids": list(f.setl_ids),
        }
        for f in result.findings
    }  # fmt: skip
    got = score_detection(traffic.cases, ids, suspicions.values())["templates"]
    problems = []
    for template, st in got.items():
        if st["missed"]:
            problems.append(f"{template}: missed {st['missed']}")
        if st["false_positives"]:
            problems.append(
                f"{template}: {st['false_positives']} false positives (look-alikes {st['fp_lookalike']}, "
                f"background {st['fp_background']}, other cases {st['fp_other_case']})"
            )
    assert not problems, "\n".join(problems)
