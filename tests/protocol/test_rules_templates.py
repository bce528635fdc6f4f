"""Templates 1-12, each with a hit and a near miss at its threshold, on the sample knowledge base.

Real SQLite throughout: the sample catalogue installed with ``install_knowledge``, history in
``hist_lines``, the bill checked by ``evaluate`` (which fills the TEMP ``cur_lines``).
"""

from __future__ import annotations

import pytest

from protocol.rules import Blacklisted, Line, blacklist_hit

from .rules_kit import (
    ACARBOSE,
    AIRCON,
    AMLODIPINE,
    AMOXICILLIN,
    ASPIRIN,
    CALCIUM_GLUCONATE,
    CEFTRIAXONE,
    CELECOXIB,
    CLOPIDOGREL,
    GENERAL_CONSULT,
    HBA1C,
    HOSP,
    IBUPROFEN,
    INSULIN,
    NIFEDIPINE,
    OMEPRAZOLE,
    PAED_PARACETAMOL,
    PANTOPRAZOLE_INJ,
    PROGESTERONE,
    PSA,
    ROSUVASTATIN,
    SPECIALIST_CONSULT,
    TODAY,
    WARD_ROUND,
    add_history,
    bill,
    check,
    connect,
    days_ago,
    line,
    one,
)

# -- 1 duplicate medication --------------------------------------------------------------------


def test_duplicate_medication_the_same_drug_from_another_hospital() -> None:
    conn = connect()
    add_history(conn, "S1", "2026-11-10", [(AMLODIPINE, 1, 28)], hosp="H37021100002")
    b = bill(line("1", AMLODIPINE, "1", "19.60", days=28))
    (hit,) = check(conn, one("duplicate_medication", params={"match": "code", "min_overlap_days": 14}), b)
    assert hit.message == (
        "Amlodipine besylate tablets 5mg x 28 was dispensed at H37021100002 on 2026-11-10 for 28 days "
        "(until 2026-12-08); this prescription overlaps by 14 days."
    )
    assert hit.lines == ("1",) and hit.template == "duplicate_medication" and hit.setl_id == "CURRENT"
    assert hit.evidence == (
        {
            "setl_date": "2026-11-10",
            "fixmedins_code": "H37021100002",
            "med_list_codg": AMLODIPINE,
            "name": "amlodipine besylate tablets 5mg x 28",
            "days": 28,
            "supply_until": "2026-12-08",
            "value": 14,
            "threshold": 14,
        },
    )
    # one day less of overlap than the threshold asks: nothing
    assert check(conn, one("duplicate_medication", params={"match": "code", "min_overlap_days": 15}), b) == []


def test_duplicate_medication_overlap_is_counted_to_the_day() -> None:
    conn = connect()
    rules = one("duplicate_medication", params={"match": "code", "min_overlap_days": 1})
    b = bill(line("1", AMLODIPINE, days=28))
    add_history(conn, "S1", days_ago(28), [(AMLODIPINE, 1, 28)])  # supply ends today: no overlap
    assert check(conn, rules, b) == []
    add_history(conn, "S2", days_ago(27), [(AMLODIPINE, 1, 28)])  # one day left
    (hit,) = check(conn, rules, b)
    assert hit.evidence[0]["value"] == 1 and hit.evidence[0]["supply_until"] == days_ago(-1)
    # a short new prescription overlaps by its own length at most
    (hit,) = check(
        conn, one("duplicate_medication", params={"match": "code"}), bill(line("1", AMLODIPINE, days=1))
    )
    assert hit.evidence[0]["value"] == 1


def test_duplicate_medication_window_and_person() -> None:
    conn = connect()
    add_history(conn, "S1", days_ago(60), [(AMLODIPINE, 3, 84)])
    add_history(conn, "S2", days_ago(1), [(AMLODIPINE, 1, 28)], psn_no="P2")  # someone else
    b = bill(line("1", AMLODIPINE, days=28))
    assert check(conn, one("duplicate_medication", window_days=59, params={"match": "code"}), b) == []
    (hit,) = check(conn, one("duplicate_medication", window_days=60, params={"match": "code"}), b)
    assert [e["setl_date"] for e in hit.evidence] == [days_ago(60)]


def test_duplicate_medication_by_class() -> None:
    conn = connect()
    add_history(conn, "S1", "2026-11-10", [(AMLODIPINE, 1, 28)])
    b = bill(line("1", NIFEDIPINE, "4", days=28))
    assert check(conn, one("duplicate_medication", params={"match": "code"}), b) == []
    (hit,) = check(conn, one("duplicate_medication", params={"match": "class", "min_overlap_days": 14}), b)
    assert "of the same drug class (C08CA) as nifedipine extended-release tablets 30mg x 7" in hit.message
    assert (
        check(conn, one("duplicate_medication", params={"match": "class", "min_overlap_days": 15}), b) == []
    )


# -- 2 over-quantity ---------------------------------------------------------------------------


def test_over_quantity_days_acute_and_chronic() -> None:
    conn = connect()
    rules = one("over_quantity")
    assert check(conn, rules, bill(line("1", AMOXICILLIN, "2", days=7))) == []
    (hit,) = check(conn, rules, bill(line("1", AMOXICILLIN, "2", days=8)))
    assert hit.message == (
        "Amoxicillin capsules 0.25g x 24 is prescribed for 8 days; "
        "the limit outside chronic-disease care is 7 days."
    )
    assert hit.evidence[0] == {"med_list_codg": AMOXICILLIN, "kind": "days", "value": 8, "threshold": 7}
    chronic = {"med_type": "14"}
    assert check(conn, rules, bill(line("1", AMOXICILLIN, "4", days=14), **chronic)) == []
    (hit,) = check(conn, rules, bill(line("1", AMOXICILLIN, "4", days=15), **chronic))
    assert "the limit for a chronic-disease prescription is 14 days" in hit.message
    # which med_types count as chronic is the rule's parameter
    assert (
        check(
            conn,
            one("over_quantity", params={"chronic_med_types": ["11"]}),
            bill(line("1", AMOXICILLIN, days=14)),
        )
        == []
    )


def test_over_quantity_per_day() -> None:
    conn = connect()
    rules = one("over_quantity")
    assert check(conn, rules, bill(line("1", ACARBOSE, "60", "0.4567", days=10))) == []
    (hit,) = check(conn, rules, bill(line("1", ACARBOSE, "60.5", "0.4567", days=10)))
    assert hit.message == (
        "Acarbose tablets 50mg (per tablet) quantity 60.5 for 10 days is more than the limit of 6 a day "
        "(60 for 10 days)."
    )


# -- 3 frequency limit -------------------------------------------------------------------------


def test_frequency_per_visit() -> None:
    conn = connect()
    rules = one("frequency_limit")
    assert check(conn, rules, bill(line("1", GENERAL_CONSULT))) == []
    (hit,) = check(conn, rules, bill(line("1", GENERAL_CONSULT), line("2", GENERAL_CONSULT)))
    assert set(hit.lines) == {"1", "2"}
    assert (
        hit.message
        == "General outpatient consultation is billed 2 times in this visit; the limit is 1 per visit."
    )


def test_frequency_per_day_over_an_inpatient_stay() -> None:
    conn = connect()
    rules = one("frequency_limit")
    stay = {"med_type": "21", "begntime": f"{days_ago(10)}T08:00:00+08:00"}  # 10 days
    assert check(conn, rules, bill(line("1", WARD_ROUND, "10", "15"), **stay)) == []
    (hit,) = check(conn, rules, bill(line("1", WARD_ROUND, "11", "15"), **stay))
    assert hit.message == (
        f"Inpatient consultation (per day) is billed 11 times for 10 days ({days_ago(10)} to {TODAY}); "
        "the limit is 1 a day (10)."
    )
    # an outpatient bill on a day when the same item was already billed elsewhere
    add_history(conn, "S1", TODAY.isoformat(), [(WARD_ROUND, 1, None)], hosp="H2")
    (hit,) = check(conn, rules, bill(line("1", WARD_ROUND)))
    assert hit.evidence[1] == {
        "setl_date": TODAY.isoformat(),
        "fixmedins_code": "H2",
        "med_list_codg": WARD_ROUND,
        "value": 1.0,
    }


def test_frequency_per_period_reaches_back_n_days() -> None:
    conn = connect()
    rules = one("frequency_limit")
    add_history(conn, "S1", days_ago(90), [(HBA1C, 1, None)])  # outside the 90 days ending today
    assert check(conn, rules, bill(line("1", HBA1C, "1", "45"))) == []
    add_history(conn, "S2", days_ago(89), [(HBA1C, 1, None)], hosp="H37020300002")
    (hit,) = check(conn, rules, bill(line("1", HBA1C, "1", "45")))
    assert hit.message == (
        f"HbA1c is billed 2 times in the 90 days up to {TODAY}; the limit is 1 per 90 days. "
        f"Earlier: {days_ago(89)} at H37020300002."
    )


# -- 4 repeated charge -------------------------------------------------------------------------


def test_repeated_charge_flags_the_included_item() -> None:
    conn = connect()
    rules = one("repeated_charge", action="self_pay")
    assert check(conn, rules, bill(line("1", SPECIALIST_CONSULT))) == []
    assert check(conn, rules, bill(line("1", GENERAL_CONSULT))) == []
    (hit,) = check(conn, rules, bill(line("1", SPECIALIST_CONSULT), line("2", GENERAL_CONSULT)))
    assert hit.lines == ("2",) and hit.action == "self_pay"
    assert hit.message == (
        "General outpatient consultation is included in specialist outpatient consultation (line 1) "
        "and must not be charged separately."
    )
    # the main item in another settlement is not a repeated charge of this bill
    add_history(conn, "S1", TODAY.isoformat(), [(SPECIALIST_CONSULT, 1, None)])
    assert check(conn, rules, bill(line("1", GENERAL_CONSULT))) == []


# -- 5 gender, 6 age ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "gend", "hit"),
    [
        (PROGESTERONE, "1", True),
        (PROGESTERONE, "2", False),
        (PSA, "2", True),
        (PSA, "1", False),
        (PSA, "9", False),
        (AMLODIPINE, "2", False),
    ],
)
def test_gender_restricted(code: str, gend: str, hit: bool) -> None:
    hits = check(connect(), one("gender_restricted"), bill(line("1", code), gend=gend))
    assert len(hits) == hit
    if hit:
        who = "female" if code == PROGESTERONE else "male"
        assert hits[0].message.endswith(f"is for {who} patients only (catalogue restriction).")


@pytest.mark.parametrize(
    ("code", "brdy", "hit"),
    [
        (ROSUVASTATIN, "2008-11-24", False),  # 18 today
        (ROSUVASTATIN, "2008-11-25", True),  # 18 tomorrow
        (PAED_PARACETAMOL, "2013-11-25", False),  # 12, 13 tomorrow
        (PAED_PARACETAMOL, "2013-11-24", True),  # 13 today
        (ROSUVASTATIN, "2008-02-29", False),  # a leap-day birthday: 18 since 1 March
        (PAED_PARACETAMOL, "2016-02-29", False),  # aged 10
    ],
)
def test_age_restricted_at_the_birthday(code: str, brdy: str, hit: bool) -> None:
    hits = check(connect(), one("age_restricted"), bill(line("1", code), brdy=brdy))
    assert len(hits) == hit
    if hits and code == ROSUVASTATIN:
        assert hits[0].message == (
            "Rosuvastatin calcium tablets 10mg x 28 is for patients aged 18 or over (catalogue restriction); "
            "this patient is younger."
        )
        assert hits[0].evidence[0]["value"] == 17


def test_age_is_taken_at_the_start_of_the_visit() -> None:
    # admitted at 17, 18 by the time of settlement: the age at admission counts
    b = bill(
        line("1", ROSUVASTATIN), brdy="2008-11-20", begntime=f"{days_ago(6)}T10:00:00+08:00", med_type="21"
    )
    assert len(check(connect(), one("age_restricted"), b)) == 1


# -- 7 restricted indication -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("diagnoses", "hit"),
    [
        (("E11.900",), False),
        (("E10.901",), False),
        (("I10.x00",), True),
        (("I10.x00", "E11.900"), False),
        (("E12.000",), True),
    ],
)
def test_restricted_indication(diagnoses: tuple[str, ...], hit: bool) -> None:
    hits = check(connect(), one("restricted_indication"), bill(line("1", INSULIN), dise_codg=diagnoses))
    assert len(hits) == hit
    if hit:
        assert hits[0].message == (
            "Insulin glargine injection 3ml:300IU is reimbursed only with a diagnosis of E10 or E11; "
            "none of this visit's diagnoses matches."
        )
        assert hits[0].evidence[0]["threshold"] == ["E10", "E11"]


# -- 8 price above the ceiling -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pric", "hosp_lv", "tolerance", "hit"),
    [
        ("49.50", "3", 0, False),
        ("49.51", "3", 0, True),
        ("49.504", "3", 0, False),
        ("49.505", "3", 0, True),
        ("49.51", "3", 1, False),
        ("49.52", "3", 1, True),
        ("45.00", "1", 0, False),
        ("45.01", "1", 0, True),
    ],
)
def test_price_over_ceiling(pric: str, hosp_lv: str, tolerance: int, hit: bool) -> None:
    rules = one("price_over_ceiling", params={"tolerance_fen": tolerance})
    hits = check(connect(), rules, bill(line("1", HBA1C, "1", pric), hosp_lv=hosp_lv))
    assert len(hits) == hit
    if hits and pric == "49.51" and not tolerance:
        assert (
            hits[0].message
            == "HbA1c is priced 49.51 yuan; the catalogue ceiling at a level-3 hospital is 49.50 yuan."
        )


# -- 9 not in the catalogue / class C ----------------------------------------------------------


def test_not_in_catalogue_and_class_c() -> None:
    conn = connect()
    b = bill(line("1", GENERAL_CONSULT), line("2", AIRCON), line("3", "XZ9999999999"))
    (hit,) = check(conn, one("not_in_catalogue"), b)
    assert hit.lines == ("3",) and hit.evidence[0]["kind"] == "not_in_catalogue"
    assert hit.message == (
        "Item XZ9999999999 is not in the area's medical-insurance catalogue; the fund does not pay for it."
    )
    class_c, _unknown = check(conn, one("not_in_catalogue", params={"class_c": True}), b)
    assert class_c.lines == ("2",) and class_c.message == (
        "Ward air conditioning surcharge (per day) is class C (not covered); the patient pays for it."
    )
    named = Line(feedetl_sn="1", med_list_codg="XZ9999999999", cnt="1", name="herbal tonic")
    (hit,) = check(conn, one("not_in_catalogue"), bill(named))
    assert hit.message.startswith("Herbal tonic (XZ9999999999) is not in")


# -- 10 drug interaction -----------------------------------------------------------------------


def test_interaction_within_the_bill_is_one_hit_on_both_lines() -> None:
    conn = connect()
    (hit,) = check(
        conn, one("drug_interaction"), bill(line("1", CLOPIDOGREL, days=28), line("2", OMEPRAZOLE, days=14))
    )
    assert hit.lines == ("1", "2")
    assert hit.message.startswith(
        "Clopidogrel bisulfate tablets 75mg x 7 with omeprazole enteric-coated capsules 20mg x 14 "
        "(major interaction): "
        "omeprazole blocks the activation of clopidogrel"
    )
    # pantoprazole is of the same class as omeprazole but the pair names omeprazole itself
    assert (
        check(conn, one("drug_interaction"), bill(line("1", CLOPIDOGREL), line("2", PANTOPRAZOLE_INJ))) == []
    )
    # two drugs of one class (a class paired with itself)
    (hit,) = check(conn, one("drug_interaction"), bill(line("1", CELECOXIB), line("2", IBUPROFEN)))
    assert "two NSAIDs together" in hit.message and hit.lines == ("1", "2")


def test_interaction_with_history_in_the_window() -> None:
    conn = connect()
    add_history(conn, "S1", days_ago(31), [(OMEPRAZOLE, 1, 14)])
    rules = one("drug_interaction", window_days=30)
    assert check(conn, rules, bill(line("1", CLOPIDOGREL, days=28))) == []
    add_history(conn, "S2", days_ago(30), [(OMEPRAZOLE, 1, 14)], hosp="H37020300002")
    (hit,) = check(conn, rules, bill(line("1", CLOPIDOGREL, days=28)))
    assert hit.lines == ("1",)
    assert hit.message.endswith(
        f"Omeprazole enteric-coated capsules 20mg x 14 was dispensed at H37020300002 on {days_ago(30)}."
    )
    # the other way round: omeprazole now, clopidogrel before
    add_history(conn, "S3", days_ago(3), [(CLOPIDOGREL, 4, 28)])
    (hit,) = check(conn, rules, bill(line("1", OMEPRAZOLE, days=14)))
    assert hit.evidence[0]["with"] == CLOPIDOGREL and hit.evidence[0]["setl_date"] == days_ago(3)


def test_interaction_minimum_severity() -> None:
    conn = connect()
    b = bill(line("1", CELECOXIB), line("2", ASPIRIN))  # moderate
    assert len(check(conn, one("drug_interaction", params={"min_severity": "moderate"}), b)) == 1
    assert check(conn, one("drug_interaction", params={"min_severity": "major"}), b) == []
    b = bill(line("1", CEFTRIAXONE), line("2", CALCIUM_GLUCONATE))
    (hit,) = check(conn, one("drug_interaction", params={"min_severity": "contraindicated"}), b)
    assert "(contraindicated interaction)" in hit.message


# -- 11 frequent visits ------------------------------------------------------------------------


def test_frequent_visits_counts_this_visit_and_the_window() -> None:
    conn = connect()
    rules = one("frequent_visits", med_types=["11"], params={"max_visits": 4, "days": 7})
    add_history(conn, "S0", days_ago(7), [(GENERAL_CONSULT, 1, None)])  # outside 7 days
    add_history(conn, "S1", days_ago(6), [(GENERAL_CONSULT, 1, None)], hosp="H2")
    add_history(conn, "S2", days_ago(3), [(GENERAL_CONSULT, 1, None)], hosp="H3")
    add_history(conn, "S3", days_ago(1), [(GENERAL_CONSULT, 1, None), (AMLODIPINE, 1, 28)])
    add_history(conn, "S4", days_ago(1), [(WARD_ROUND, 1, None)], med_type="21")  # not counted: med_type
    b = bill(line("1", GENERAL_CONSULT))
    assert check(conn, rules, b) == []  # 3 earlier + this one = 4
    add_history(conn, "S5", TODAY.isoformat(), [(GENERAL_CONSULT, 1, None)], hosp="H4")
    (hit,) = check(conn, rules, b)
    assert hit.lines == () and hit.evidence[0] == {"value": 5, "threshold": 4, "days": 7}
    assert hit.message == (
        f"This is visit 5 in 7 days at 4 hospitals; the limit is 4 visits in 7 days. Earlier: {TODAY} at H4, "
        f"{days_ago(1)} at {HOSP}, {days_ago(3)} at H3 and 1 more."
    )


# -- 12 blacklisted ----------------------------------------------------------------------------


def test_blacklisted_from_the_callers_lookup() -> None:
    conn = connect()
    rules = one("blacklisted", severity="block", action="refuse", moments=["in"])
    b = bill(line("1", GENERAL_CONSULT))
    lost = Blacklisted("card", "reported lost", 12)
    (hit,) = check(conn, rules, b, "in", blacklist=[lost])
    assert hit.template == "blacklisted" and hit.action == "refuse" and hit.lines == ()
    assert hit.message == (
        "The social-security card is on the blacklist (reason: reported lost; list version 12); "
        "the medical-insurance fund cannot be used."
    )
    assert hit.evidence == ({"list_type": "card", "reason": "reported lost", "list_version": 12},)
    assert check(conn, rules, b, "in") == []  # nothing found by the lookup
    employers_only = one(
        "blacklisted", severity="block", action="refuse", params={"list_types": ["employer"]}
    )
    assert check(conn, employers_only, b, "in", blacklist=[lost]) == []
    assert len(check(conn, employers_only, b, "in", blacklist=[Blacklisted("employer", "suspended", 3)])) == 1


def test_blacklist_hit_needs_a_blacklisted_rule() -> None:
    rule = one("gender_restricted").rules[0]
    with pytest.raises(ValueError, match="not blacklisted"):
        blacklist_hit(rule, Blacklisted("card", "lost"))
