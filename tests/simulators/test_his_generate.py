"""Generated settlements are what a real HIS would send, and valid by the protocol's rules.

If the generator produced an inconsistent amount, every agent refusal in a demo or a
benchmark would be noise; so each body is held to exact ``Decimal`` arithmetic and then
converted into a ``protocol.records.Settlement`` and checked the way agent and centre do.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.chain import GENESIS, decode_body, decode_entry, encode_body, encode_entry
from protocol.records import check_settlement
from simulators import _catalogue as cat
from simulators.his import (
    CST,
    DEFAULT_HOSPITAL,
    default_population,
    generate_settlement,
    id_check_digit,
    make_population,
)

from .standin import as_record

EXAMPLE = Path(__file__).resolve().parents[3] / "shared" / "examples" / "settlement-outpatient.json"
DRUG_TYPES = {cat.WESTERN_DRUG, cat.CHINESE_PATENT_DRUG}
FEN = Decimal("0.01")


def places(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def bodies(seed: int, count: int, **kwargs) -> list[dict]:
    rng = random.Random(seed)
    return [generate_settlement(rng, DEFAULT_HOSPITAL, n, **kwargs) for n in range(1, count + 1)]


# --- amounts ----------------------------------------------------------------------------------


@settings(max_examples=60)
@given(st.integers(0, 2**32), st.integers(1, 10**6))
def test_amounts_are_exact_and_add_up(seed, n):
    body = generate_settlement(random.Random(seed), DEFAULT_HOSPITAL, n)
    total = Decimal(0)
    for ln in body["feedetl"]:
        cnt, pric, amount = Decimal(ln["cnt"]), Decimal(ln["pric"]), Decimal(ln["det_item_fee_sumamt"])
        assert amount == (cnt * pric).quantize(FEN, rounding=ROUND_HALF_UP)
        assert places(ln["det_item_fee_sumamt"]) == 2
        assert 2 <= places(ln["pric"]) <= 4
        assert cnt > 0 and (cnt == cnt.to_integral_value() or ln["cnt"] == "0.5")
        total += amount
    assert Decimal(body["medfee_sumamt"]) == total
    assert places(body["medfee_sumamt"]) == 2


@settings(max_examples=60)
@given(st.integers(0, 2**32), st.integers(1, 10**6))
def test_a_generated_settlement_validates_by_the_protocols_rules(seed, n):
    body = generate_settlement(random.Random(seed), DEFAULT_HOSPITAL, n)
    rec = check_settlement(as_record(body))
    raw = encode_entry("H1-01", 1, GENESIS, "setl", encode_body(rec))
    assert decode_body(decode_entry(raw)) == rec


def test_a_day_of_traffic_validates():
    for body in bodies(7, 400):
        check_settlement(as_record(body))
        json.dumps(body)  # plain JSON types only


# --- shape ------------------------------------------------------------------------------------


def test_the_body_has_the_shape_of_the_shared_example():
    example = json.loads(EXAMPLE.read_text()) if EXAMPLE.exists() else None
    top = {"fixmedins_code", "his_setl_no", "psn", "mdtrt", "feedetl", "medfee_sumamt", "opter", "opter_name"}
    psn = {"psn_no", "card_sn", "insutype", "insuplc_admdvs", "psn_type", "gend", "brdy"}
    mdtrt = {"mdtrt_id", "med_type", "begntime", "endtime", "dise_codg", "dise_name", "dept_codg", "dr_codg"}
    line = {
        "feedetl_sn",
        "list_type",
        "med_list_codg",
        "medins_list_name",
        "cnt",
        "pric",
        "det_item_fee_sumamt",
    }
    if example is not None:
        assert set(example) == top and set(example["psn"]) == psn and set(example["mdtrt"]) == mdtrt
    for body in bodies(3, 300):
        assert set(body) == top
        assert set(body["psn"]) == psn
        assert set(body["mdtrt"]) - {"ipt_days"} == mdtrt
        assert ("ipt_days" in body["mdtrt"]) == (body["mdtrt"]["med_type"] == "21")
        for ln in body["feedetl"]:
            drug = ln["list_type"] in DRUG_TYPES
            assert set(ln) - {"chrgitm_lv", "days", "dosage"} == line
            assert ("days" in ln and "dosage" in ln) == drug
            assert ln.get("chrgitm_lv") in (None, "A", "B", "C")
            assert ln["list_type"] in {"101", "102", "201", "301"}
            assert cat.ALL_ITEMS[ln["med_list_codg"]].name == ln["medins_list_name"]
        numbers = [ln["feedetl_sn"] for ln in body["feedetl"]]
        assert numbers == [str(i) for i in range(1, len(numbers) + 1)]
        assert len({ln["med_list_codg"] for ln in body["feedetl"]}) == len(body["feedetl"])


def test_the_same_seed_gives_the_same_traffic_and_another_seed_other_traffic():
    assert bodies(11, 50) == bodies(11, 50)
    assert bodies(11, 50) != bodies(12, 50)


def test_his_setl_no_is_unique_per_serial_and_carries_the_run_tag():
    day = bodies(5, 500, run_tag="a1b2c3")
    numbers = [b["his_setl_no"] for b in day]
    assert len(set(numbers)) == len(numbers)
    assert numbers[0] == "HIS-20261123-a1b2c3-000001"
    assert len({b["mdtrt"]["mdtrt_id"] for b in day}) == len(day)


def test_the_mix_of_medical_types_looks_like_a_general_hospital():
    day = bodies(9, 1000)
    mix = Counter(b["mdtrt"]["med_type"] for b in day)
    assert set(mix) == {"11", "14", "21", "41"}
    assert mix["11"] > mix["14"] + mix["21"] + mix["41"]
    lines = {t: sum(len(b["feedetl"]) for b in day if b["mdtrt"]["med_type"] == t) / mix[t] for t in mix}
    assert lines["21"] > 3 * lines["11"]
    pharmacy = [b for b in day if b["mdtrt"]["med_type"] == "41"]
    assert all(ln["list_type"] in DRUG_TYPES for b in pharmacy for ln in b["feedetl"])


# --- clinical coherence -----------------------------------------------------------------------


def test_drugs_match_the_diagnosis():
    by_code = {c.dise_codg: c for c in cat.CONDITIONS}
    for body in bodies(13, 500):
        cond = by_code[body["mdtrt"]["dise_codg"]]
        assert body["mdtrt"]["dise_name"] == cond.dise_name
        for ln in body["feedetl"]:
            if ln["list_type"] in DRUG_TYPES:
                assert ln["med_list_codg"] in cond.drugs or ln["med_list_codg"] == "XB05BBS011B002010100076"
                assert ln["days"] >= 1


def test_visit_times_are_coherent():
    for body in bodies(17, 400):
        md = body["mdtrt"]
        begin, end = datetime.fromisoformat(md["begntime"]), datetime.fromisoformat(md["endtime"])
        assert begin < end and end.utcoffset() == CST.utcoffset(None)
        assert body["his_setl_no"].startswith(f"HIS-{end:%Y%m%d}-")
        if md["med_type"] == "21":
            assert 3 <= md["ipt_days"] <= 14
            assert (end.date() - begin.date()).days == md["ipt_days"]
            bed = next(ln for ln in body["feedetl"] if ln["med_list_codg"] == "001109000010000")
            assert bed["cnt"] == str(md["ipt_days"])
        else:
            assert begin.date() == end.date()


def test_a_given_time_is_the_end_of_the_visit():
    when = datetime(2027, 1, 5, 14, 30, 15, 123456, tzinfo=CST)
    body = generate_settlement(random.Random(1), DEFAULT_HOSPITAL, 1, when=when)
    assert body["mdtrt"]["endtime"] == "2027-01-05T14:30:15+08:00"
    assert body["his_setl_no"] == "HIS-20270105-000001"


# --- people -----------------------------------------------------------------------------------


def test_social_security_numbers_are_valid_and_match_birth_date_and_sex():
    people = make_population(random.Random(4), 300, "370211").persons
    assert len({p.psn_no for p in people}) == 300
    for p in people:
        assert len(p.psn_no) == 18 and p.psn_no[:17].isdigit()
        assert p.psn_no[17] == id_check_digit(p.psn_no[:17])
        assert p.psn_no[:6] == p.insuplc_admdvs and len(p.insuplc_admdvs) == 6
        assert p.psn_no[6:14] == p.brdy.replace("-", "")
        assert p.gend == ("1" if int(p.psn_no[16]) % 2 else "2")
        assert p.insutype in {"310", "390"}
        assert len(p.card_sn) == 9 and p.card_sn[1:].isdigit()
        age = p.age_on(datetime(2026, 11, 23).date())
        assert p.psn_type == ("21" if age >= (60 if p.gend == "1" else 55) else "11")
        if age < 18:
            assert p.insutype == "390"


def test_check_digit_of_a_known_number():
    # The worked example of GB 11643: 11010519491231002X.
    assert id_check_digit("11010519491231002") == "X"


def test_most_patients_are_local_and_patients_come_back():
    pop = default_population("370211")
    local = sum(p.insuplc_admdvs == "370211" for p in pop.persons)
    assert local > 0.75 * len(pop.persons)
    seen = Counter(b["psn"]["psn_no"] for b in bodies(21, 1000))
    assert seen.most_common(1)[0][1] > 1
    assert all(p.age_on(datetime(2026, 11, 23).date()) >= 45 for p in pop.older)


def test_the_hospital_code_sets_the_home_area():
    body = generate_settlement(random.Random(2), "H44030500007", 1)
    assert body["fixmedins_code"] == "H44030500007"
    assert body["mdtrt"]["dr_codg"].startswith("D440305")
