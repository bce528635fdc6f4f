"""The benefit split, from worked examples a cashier could check by hand.

Every example writes its arithmetic in the comments, in yuan; the assertions are in fen. The policy
below is the test's own (the sample in ``docs/samples`` may change without breaking the arithmetic).
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from protocol.benefit import (
    BillLine,
    Policy,
    SplitInput,
    YearToDate,
    benefit_pool,
    check_split,
    compute_split,
    load_policy,
)
from protocol.errors import BenefitNotFound, FieldError, PolicyInvalid, ProtocolError

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"

EMPLOYEE_INPATIENT = {
    "year": 2026, "insutype": "310", "psn_type": "11", "hosp_lv": "3", "med_type": "21",
    "deductible": 120000,            # 1,200.00 for the first admission of the year
    "deductible_later": 60000,       # 600.00 from the second admission
    "segments": [
        {"up_to": 1000000, "fund_ratio": "0.85"},   # year's eligible amount up to 10,000.00
        {"up_to": 5000000, "fund_ratio": "0.90"},   # 10,000.00 to 50,000.00
        {"fund_ratio": "0.95"},                     # above 50,000.00
    ],
    "ceiling": 40000000,             # the pooled fund pays at most 400,000.00 a year
    "large_amount_ratio": "0.90",    # large-amount insurance pays 90% above that ...
    "large_amount_ceiling": 50000000,  # ... at most 500,000.00 a year
    "b_class_self_ratio": "0.10",
    "acct_pay_allowed": True,
}  # fmt: skip
EMPLOYEE_OUTPATIENT = {
    "year": 2026, "insutype": "310", "psn_type": "11", "hosp_lv": "3", "med_type": "11",
    "deductible": 80000,             # 800.00 per year
    "fund_ratio": "0.60", "ceiling": 500000, "acct_pay_allowed": True, "pool": "outpatient",
}  # fmt: skip
RESIDENT_ANY = {  # the format before segments: one ratio, no med_type (every medical type)
    "year": 2026, "insutype": "390", "psn_type": "21", "hosp_lv": "3",
    "deductible": 100000, "ceiling": 20000000, "fund_ratio": "0.60", "b_class_self_ratio": "0.15",
}  # fmt: skip


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(
        {"area": "370200", "benefits": [EMPLOYEE_INPATIENT, EMPLOYEE_OUTPATIENT, RESIDENT_ANY]}
    )


def employee(med_type: str, *lines: tuple) -> SplitInput:
    return SplitInput(insutype="310", psn_type="11", hosp_lv="3", med_type=med_type, lines=list(lines))


def resident(med_type: str, *lines: tuple) -> SplitInput:
    return SplitInput(insutype="390", psn_type="21", hosp_lv="3", med_type=med_type, lines=list(lines))


def parts(split) -> tuple[int, ...]:
    return (split.fund_pay_sumamt, split.hifp_pay, split.hifmi_pay, split.acct_pay, split.psn_cash_pay)


def adds_up(split) -> None:
    assert split.hifp_pay + split.hifmi_pay + split.hifob_pay == split.fund_pay_sumamt
    assert split.fund_pay_sumamt + split.acct_pay + split.psn_cash_pay == split.medfee_sumamt


# -- deductible --------------------------------------------------------------------------------


def test_first_admission_meets_the_deductible_then_the_first_segment(policy: Policy) -> None:
    # One class A line of 5,000.00, nothing earlier this year.
    #   eligible 5,000.00; deductible 1,200.00 (first admission)
    #   segment 0.85 on 5,000.00 - 1,200.00 = 3,800.00 → 3,230.00
    #   person 5,000.00 - 3,230.00 = 1,770.00, all cash (account balance unknown)
    split = compute_split(policy, employee("21", ("1", 500000, "A")), YearToDate(), year=2026)
    assert parts(split) == (323000, 323000, 0, 0, 177000)
    assert (split.act_pay_dedc, split.inscp_scp_amt, split.pooled_self_pay) == (120000, 500000, 57000)
    # Per-admission deductibles are not carried in deductible_met (only a per-year one is).
    assert split.ytd_after == YearToDate(eligible=500000, fund_paid=323000, admissions=1)
    assert split.pool == "inpatient" and split.deductible_basis == "admission"
    assert "deductible 1,200.00 of 1,200.00 applied (admission 1 this year)" in split.explanation
    assert any(s.startswith("segment 0.85 on 3,800.00 → 3,230.00") for s in split.explanation)
    adds_up(split)


def test_a_later_admission_has_the_lower_deductible(policy: Policy) -> None:
    # Second admission: 5,000.00 eligible and one admission earlier this year.
    # Bill 3,000.00 class A.
    #   deductible 600.00 (later admission); the year's eligible amount runs 5,600.00 → 8,000.00
    #   segment 0.85 on 2,400.00 → 2,040.00; person 3,000.00 - 2,040.00 = 960.00
    ytd = YearToDate(eligible=500000, fund_paid=323000, admissions=1)
    split = compute_split(policy, employee("21", ("1", 300000, "A")), ytd, year=2026)
    assert parts(split) == (204000, 204000, 0, 0, 96000)
    assert split.act_pay_dedc == 60000
    assert split.ytd_after == YearToDate(eligible=800000, fund_paid=527000, admissions=2)
    assert any("the lower deductible for later admissions" in s for s in split.explanation)


def test_a_bill_below_the_deductible_is_all_the_persons(policy: Policy) -> None:
    # 800.00 eligible < 1,200.00 deductible: deductible 800.00, fund 0.00.
    split = compute_split(policy, employee("21", ("1", 80000, "A")), YearToDate(), year=2026)
    assert parts(split) == (0, 0, 0, 0, 80000) and split.act_pay_dedc == 80000
    assert "deductible 800.00 of 1,200.00 applied (admission 1 this year)" in split.explanation


def test_outpatient_deductible_is_per_year_and_carries_over_between_bills(policy: Policy) -> None:
    # Outpatient (med_type 11): 800.00 per year, 0.60 above it, its own pool.
    # Bill 1: 500.00 → deductible 500.00 of 800.00, fund 0.00, person 500.00.
    first = compute_split(policy, employee("11", ("1", 50000, "A")), YearToDate(), year=2026)
    assert parts(first) == (0, 0, 0, 0, 50000) and first.act_pay_dedc == 50000
    assert first.pool == "outpatient" and first.deductible_basis == "year"
    assert first.ytd_after == YearToDate(eligible=50000, deductible_met=50000)  # no admission counted
    # Bill 2: 500.00 → the remaining 300.00 of the deductible, then 0.60 × 200.00 = 120.00.
    #   person 500.00 - 120.00 = 380.00
    second = compute_split(policy, employee("11", ("1", 50000, "A")), first.ytd_after, year=2026)
    assert parts(second) == (12000, 12000, 0, 0, 38000) and second.act_pay_dedc == 30000
    assert "deductible 300.00 of 300.00 applied (per year 800.00, 500.00 met earlier)" in second.explanation
    # Bill 3: 300.00 with the deductible met → 0.60 × 300.00 = 180.00, person 120.00.
    third = compute_split(policy, employee("11", ("1", 30000, "A")), second.ytd_after, year=2026)
    assert parts(third) == (18000, 18000, 0, 0, 12000) and third.act_pay_dedc == 0
    assert "deductible 800.00 for the year already met" in third.explanation


# -- segments, ceiling, large-amount insurance ---------------------------------------------------


def test_one_bill_crosses_two_segment_boundaries(policy: Policy) -> None:
    # Second admission, 9,000.00 eligible earlier this year. Bill 50,000.00 class A.
    #   deductible 600.00 → the year's eligible amount runs 9,600.00 → 59,000.00
    #   9,600.00 → 10,000.00:     400.00 × 0.85 =    340.00
    #   10,000.00 → 50,000.00: 40,000.00 × 0.90 = 36,000.00
    #   50,000.00 → 59,000.00:  9,000.00 × 0.95 =  8,550.00
    #   fund 44,890.00; person 50,000.00 - 44,890.00 = 5,110.00 (600 + 60 + 4,000 + 450)
    ytd = YearToDate(eligible=900000, fund_paid=500000, admissions=1)
    split = compute_split(policy, employee("21", ("1", 5000000, "A")), ytd, year=2026)
    assert parts(split) == (4489000, 4489000, 0, 0, 511000)
    assert split.pooled_self_pay == 6000 + 400000 + 45000
    steps = [s.split(" (")[0] for s in split.explanation if s.startswith("segment")]
    assert steps == [
        "segment 0.85 on 400.00 → 340.00",
        "segment 0.90 on 40,000.00 → 36,000.00",
        "segment 0.95 on 9,000.00 → 8,550.00",
    ]


def test_the_annual_ceiling_and_large_amount_insurance_above_it(policy: Policy) -> None:
    # Third admission; 450,000.00 eligible and 399,000.00 paid by the pooled fund this year,
    # so 1,000.00 of the 400,000.00 ceiling is left. Bill 20,000.00 class A.
    #   deductible 600.00; the rest, 19,400.00, lies above 50,000.00: ratio 0.95 → 18,430.00,
    #   more than the 1,000.00 left: the fund pays 1,000.00, which covers 1,000.00 / 0.95 =
    #   1,052.63 (1,052.631… rounded), so 19,400.00 - 1,052.63 = 18,347.37 is above the ceiling.
    #   large-amount 0.90 × 18,347.37 = 16,512.633 → 16,512.63
    #   fund 1,000.00 + 16,512.63 = 17,512.63; person 20,000.00 - 17,512.63 = 2,487.37
    #     = deductible 600.00 + 52.63 (1,052.63 - 1,000.00) + 1,834.74 (18,347.37 - 16,512.63)
    ytd = YearToDate(eligible=45000000, fund_paid=39900000, admissions=2)
    split = compute_split(policy, employee("21", ("1", 2000000, "A")), ytd, year=2026)
    assert parts(split) == (1751263, 100000, 1651263, 0, 248737)
    assert (split.above_ceiling_amt, split.pooled_self_pay, split.large_amount_self_pay) == (
        1834737,
        5263,
        183474,
    )
    assert split.ytd_after.fund_paid == 40000000  # exactly the ceiling, never above
    assert split.ytd_after.large_amount_paid == 1651263
    assert any("covering 1,052.63" in s for s in split.explanation)
    assert "large-amount insurance 0.90 on 18,347.37 → 16,512.63" in split.explanation
    adds_up(split)


def test_large_amount_pays_into_the_field_the_policy_names(policy: Policy) -> None:
    # Same bill and year as above, with the employees' large-amount subsidy recorded as hifob_pay
    # (national code) instead of hifmi_pay (residents' critical-illness insurance, the default).
    row = {**EMPLOYEE_INPATIENT, "large_amount_fund": "hifob_pay"}
    employees = load_policy({"area": "370200", "benefits": [row]})
    ytd = YearToDate(eligible=45000000, fund_paid=39900000, admissions=2)
    split = compute_split(employees, employee("21", ("1", 2000000, "A")), ytd, year=2026)
    assert (split.fund_pay_sumamt, split.hifp_pay, split.hifmi_pay, split.hifob_pay) == (
        1751263,
        100000,
        0,
        1651263,
    )
    assert split.ytd_after.large_amount_paid == 1651263
    adds_up(split)


def test_large_amount_insurance_stops_at_its_own_ceiling(policy: Policy) -> None:
    # The pooled fund's ceiling was reached earlier; large-amount has paid 490,000.00 of its
    # 500,000.00. Bill 20,000.00 class A, a later admission.
    #   deductible 600.00; 19,400.00 above the ceiling; 0.90 × 19,400.00 = 17,460.00,
    #   limited to the 10,000.00 left → hifmi 10,000.00; person 20,000.00 - 10,000.00 = 10,000.00
    ytd = YearToDate(eligible=50000000, fund_paid=40000000, large_amount_paid=49000000, admissions=3)
    split = compute_split(policy, employee("21", ("1", 2000000, "A")), ytd, year=2026)
    assert parts(split) == (1000000, 0, 1000000, 0, 1000000)
    assert any(s.startswith("the annual fund ceiling 400,000.00 is reached") for s in split.explanation)
    assert any(
        "limited to the 10,000.00 left of its annual ceiling 500,000.00" in s for s in split.explanation
    )


def test_without_large_amount_insurance_the_person_pays_above_the_ceiling(policy: Policy) -> None:
    # Resident row: no large-amount insurance. 199,900.00 of the 200,000.00 ceiling paid.
    # Bill 2,000.00 class A, second admission (no deductible_later: 1,000.00 again).
    #   0.60 × 1,000.00 = 600.00 > 100.00 left: fund 100.00 covers 100.00 / 0.60 = 166.67,
    #   1,000.00 - 166.67 = 833.33 above the ceiling, the person's.
    #   person 2,000.00 - 100.00 = 1,900.00
    ytd = YearToDate(eligible=40000000, fund_paid=19990000, admissions=1)
    split = compute_split(policy, resident("21", ("1", 200000, "A")), ytd, year=2026)
    assert parts(split) == (10000, 10000, 0, 0, 190000)
    assert (split.act_pay_dedc, split.above_ceiling_amt, split.large_amount_self_pay) == (
        100000,
        83333,
        83333,
    )
    assert any("no large-amount insurance" in s for s in split.explanation)


# -- catalogue classes ---------------------------------------------------------------------------


def test_class_b_pays_its_self_pay_fraction_first(policy: Policy) -> None:
    # First admission. Lines:
    #   1  class A 1,000.00                      → eligible 1,000.00
    #   2  class B 1,234.55, row's 0.10 → 123.455 → 123.46 first (half-up) → eligible 1,111.09
    #   3  class B   500.00, its own 0.20 → 100.00 first                    → eligible   400.00
    #   total 2,734.55; self-pay first 223.46; eligible 2,511.09
    #   deductible 1,200.00; segment 0.85 on 1,311.09 = 1,114.4265 → 1,114.43
    #   person 2,734.55 - 1,114.43 = 1,620.12 (= 223.46 + 1,200.00 + 196.66)
    bill = employee("21", ("1", 100000, "A"), ("2", 123455, "B"), BillLine("3", 50000, "B", Decimal("0.20")))
    split = compute_split(policy, bill, YearToDate(), year=2026)
    assert parts(split) == (111443, 111443, 0, 0, 162012)
    assert (split.preselfpay_amt, split.inscp_scp_amt, split.fulamt_ownpay_amt) == (22346, 251109, 0)
    assert split.line_self_pay == {"1": 0, "2": 12346, "3": 10000}
    assert "line 2: class B 1,234.55, self-pay first 10% → 123.46" in split.explanation
    assert "line 3: class B 500.00, self-pay first 20% → 100.00" in split.explanation
    # Resident row: class B self-pay 0.15 (old format field).
    #   class B 1,000.00 → 150.00 first; eligible 850.00 < deductible 1,000.00: fund 0.00
    split = compute_split(policy, resident("21", ("1", 100000, "B")), YearToDate(), year=2026)
    assert (split.preselfpay_amt, split.act_pay_dedc, split.fund_pay_sumamt) == (15000, 85000, 0)


def test_class_c_not_in_catalogue_and_rule_moved_lines_are_self_pay_in_full(policy: Policy) -> None:
    # First admission. Lines:
    #   1 class A 2,000.00 (eligible)
    #   2 class C 300.00, 3 not in the catalogue 150.00,
    #   4 class A 80.00 and 5 class B 100.00 moved to self-pay by a rule → 630.00 self-pay in full
    #   eligible 2,000.00: deductible 1,200.00, segment 0.85 on 800.00 → 680.00
    #   total 2,630.00; person 2,630.00 - 680.00 = 1,950.00 (= 630.00 + 1,200.00 + 120.00)
    bill = employee(
        "21",
        ("1", 200000, "A"),
        ("2", 30000, "C"),
        ("3", 15000, None),
        ("4", 8000, "A", None, True),
        ("5", 10000, "B", None, True),
    )
    split = compute_split(policy, bill, YearToDate(), year=2026)
    assert parts(split) == (68000, 68000, 0, 0, 195000)
    assert split.fulamt_ownpay_amt == 63000 and split.preselfpay_amt == 0
    assert split.line_self_pay == {"1": 0, "2": 30000, "3": 15000, "4": 8000, "5": 10000}
    assert "line 2: 300.00 class C, self-pay in full" in split.explanation
    assert "line 3: 150.00 not in the catalogue, self-pay in full" in split.explanation
    assert "line 5: 100.00 moved to self-pay by a rule, self-pay in full" in split.explanation


# -- personal account ------------------------------------------------------------------------------


def test_the_personal_account_pays_the_persons_share_up_to_its_balance(policy: Policy) -> None:
    # Outpatient, deductible met: bill 1,000.00 class A → fund 0.60 × 1,000.00 = 600.00,
    # person 400.00.
    met = YearToDate(eligible=100000, deductible_met=80000)
    bill = employee("11", ("1", 100000, "A"))
    #   balance 250.00: account 250.00, cash 150.00
    split = compute_split(policy, bill, met, year=2026, acct_balance=25000)
    assert parts(split) == (60000, 60000, 0, 25000, 15000)
    assert split.explanation[-1] == (
        "fund 600.00 (pooled 600.00, large-amount 0.00); person 400.00: personal account 250.00 "
        "(balance 250.00), cash 150.00"
    )
    #   balance 1,000.00: account 400.00, cash 0.00
    split = compute_split(policy, bill, met, year=2026, acct_balance=100000)
    assert (split.acct_pay, split.psn_cash_pay) == (40000, 0)
    #   balance unknown: cash 400.00
    split = compute_split(policy, bill, met, year=2026)
    assert (split.acct_pay, split.psn_cash_pay) == (0, 40000)
    # Residents' row does not allow the account: all cash whatever the balance.
    split = compute_split(
        policy, resident("11", ("1", 100000, "A")), YearToDate(), year=2026, acct_balance=10**6
    )
    assert split.acct_pay == 0 and split.psn_cash_pay == split.psn_part_amt
    assert any("the personal account may not pay" in s for s in split.explanation)


# -- finding the row -----------------------------------------------------------------------------


def test_a_med_type_row_comes_first_then_the_generic_one(policy: Policy) -> None:
    assert policy.find(2026, "310", "11", "3", "21").med_type == "21"
    generic = policy.find(2026, "390", "21", "3", "21")
    assert generic.med_type is None and generic is policy.find(2026, "390", "21", "3", "14")
    # The generic row decides the deductible basis and the pool by the bill's medical type.
    #   resident inpatient 3,000.00: deductible 1,000.00 per admission, 0.60 × 2,000.00 = 1,200.00
    split = compute_split(policy, resident("21", ("1", 300000, "A")), YearToDate(), year=2026)
    assert (split.fund_pay_sumamt, split.deductible_basis, split.pool) == (120000, "admission", "inpatient")
    #   resident outpatient (14): per year, its own pool "14"
    bill = resident("14", ("1", 300000, "A"))
    assert benefit_pool(policy, bill, year=2026) == "14"
    assert compute_split(policy, bill, YearToDate(), year=2026).deductible_basis == "year"


def test_no_row_is_a_clear_error(policy: Policy) -> None:
    with pytest.raises(BenefitNotFound) as err:
        compute_split(policy, employee("21", ("1", 100, "A")), YearToDate(), year=2027)
    assert err.value.code == "benefit_not_found" and isinstance(err.value, ProtocolError)
    assert "no benefits for year 2027, insutype 310, psn_type 11, hosp_lv 3, med_type 21" in err.value.message
    with pytest.raises(BenefitNotFound):
        policy.find(2026, "310", "11", "2", "21")


def test_malformed_bills_are_refused_with_the_field(policy: Policy) -> None:
    cases = [
        (employee("21", ("1", -5, "A")), "lines[0].amount_fen"),
        (employee("21", ("1", 5, "A"), ("1", 5, "A")), "lines[1].feedetl_sn"),
        (employee("21", ("1", 5, "D")), "lines[0].cls"),
        (employee("21", ("1", 5, "B", "0.123456")), "lines[0].self_pay_ratio"),
        (employee("21", ("1", 5, "B", Decimal("1.5"))), "lines[0].self_pay_ratio"),
    ]
    for bill, where in cases:
        with pytest.raises(FieldError) as err:
            compute_split(policy, bill, YearToDate(), year=2026)
        assert err.value.details[0]["field"] == where
    with pytest.raises(FieldError) as err:
        compute_split(policy, employee("21"), YearToDate(fund_paid=-1), year=2026)
    assert err.value.details[0]["field"] == "ytd.fund_paid"
    with pytest.raises(FieldError):
        compute_split(policy, employee("21"), YearToDate(), year=2026, acct_balance=-1)


def test_an_empty_bill_splits_into_zeros(policy: Policy) -> None:
    split = compute_split(policy, employee("21"), YearToDate(), year=2026, acct_balance=100)
    assert split.amounts() == dict.fromkeys(split.amounts(), 0)


# -- the centre's recomputation ------------------------------------------------------------------


def test_check_split_names_each_difference(policy: Policy) -> None:
    split = compute_split(
        policy, employee("11", ("1", 100000, "A")), YearToDate(), year=2026, acct_balance=5000
    )
    # 1,000.00: deductible 800.00, 0.60 × 200.00 = 120.00; person 880.00: account 50.00, cash 830.00
    assert split.amounts() == {
        "medfee_sumamt": 100000, "fund_pay_sumamt": 12000, "hifp_pay": 12000, "hifmi_pay": 0, "hifob_pay": 0,
        "acct_pay": 5000, "psn_cash_pay": 83000,
    }  # fmt: skip
    assert check_split(split.amounts(), split) == []
    tampered = {**split.amounts(), "hifp_pay": 20000, "fund_pay_sumamt": 20000, "psn_cash_pay": 75000}
    found = check_split(tampered, split)
    assert [d["field"] for d in found] == ["fund_pay_sumamt", "hifp_pay", "psn_cash_pay"]
    assert found[1] == {"field": "hifp_pay", "recorded": 20000, "computed": 12000,
                        "message": "hifp_pay recorded 200.00, recomputed 120.00"}  # fmt: skip
    # The centre may not know the balance: the account and cash are checked together.
    other_balance = {**split.amounts(), "acct_pay": 0, "psn_cash_pay": 88000}
    assert [d["field"] for d in check_split(other_balance, split)] == ["acct_pay", "psn_cash_pay"]
    assert check_split(other_balance, split, account_known=False) == []
    short = {**split.amounts(), "psn_cash_pay": 82999}
    assert [d["field"] for d in check_split(short, split, account_known=False)] == ["psn_part_amt"]
    # A record without a split (None) differs in every field.
    assert len(check_split(dict.fromkeys(split.amounts()), split)) == 7
    # The account may not pay for residents.
    res = compute_split(policy, resident("11", ("1", 100000, "A")), YearToDate(), year=2026)
    paid_by_account = {**res.amounts(), "acct_pay": 100, "psn_cash_pay": res.psn_cash_pay - 100}
    assert [d["field"] for d in check_split(paid_by_account, res, account_known=False)] == ["acct_pay"]


def test_check_split_reads_a_settlement_record(policy: Policy) -> None:
    class Record:  # any object with the record's attributes, e.g. protocol.records.Settlement
        medfee_sumamt, fund_pay_sumamt, hifp_pay, hifmi_pay, hifob_pay = 300000, 120000, 120000, 0, 0
        acct_pay, psn_cash_pay = 0, 180000

    split = compute_split(policy, resident("21", ("1", 300000, "A")), YearToDate(), year=2026)
    assert check_split(Record(), split) == []


# -- the policy document -------------------------------------------------------------------------


def _doc(**changes: object) -> dict:
    row = {k: v for k, v in {**EMPLOYEE_INPATIENT, **changes}.items() if v is not None}
    return {"area": "370200", "benefits": [row]}


class _Fraction:
    """What ``central.policy.documents.load_json_document`` reads a JSON number with a fraction into."""

    def __init__(self, text: str) -> None:
        self.text = text


def _segs(*bounds_and_ratios: tuple) -> list[dict]:
    """Segments from (up_to, fund_ratio) pairs; an up_to of None is left out."""
    return [{"fund_ratio": r} if u is None else {"up_to": u, "fund_ratio": r} for u, r in bounds_and_ratios]


ROW_PROBLEMS = [  # (changes to benefits[0], the problem with its path after "benefits[0].")
    ({"segments": _segs((1000000, "0.85"), (None, 0.9))},
     'segments[1].fund_ratio: ratios are decimal strings: write "0.9"'),
    ({"segments": _segs((1000000, "0.85"), (None, "0.12345"))},
     'segments[1].fund_ratio: must be a decimal string from "0" to "1" with at most 4 decimals'),
    ({"segments": _segs((5, "0.8"), (5, "0.9"), (None, "1"))},
     "segments[1].up_to: 5 is not above the previous segment's up_to 5"),
    ({"segments": _segs((None, "0.8"), (None, "0.9"))},
     "segments[0].up_to: is required (only the last segment is open-ended)"),
    ({"segments": _segs((5, "0.8"))}, "segments[0].up_to: the last segment has no up_to"),
    ({"segments": [{"up_to": 5, "fund_ratio": "0.8", "note": "x"}, {"fund_ratio": "0.9"}]},
     "segments[0].note: is not a known field"),
    ({"segments": []}, "segments: must be a list of 1-20 segments, found 0 segments"),
    ({"segments": _segs((1.5, "0.8"), (None, "0.9"))},
     "segments[0].up_to: 1.5 has a fraction; write an integer"),
    ({"segments": _segs((_Fraction("2.5"), "0.8"), (None, "0.9"))},
     "segments[0].up_to: 2.5 has a fraction; write an integer of fen"),
    ({"fund_ratio": "0.85"}, "segments: give either fund_ratio (one ratio) or segments, not both"),
    ({"segments": None}, "fund_ratio: is required (or segments)"),
    ({"deductible_later": 130000}, "deductible_later: 130000 is above the deductible 120000"),
    ({"deductible_per": "year"}, "deductible_later: applies to a deductible per admission only"),
    ({"med_type": "11"}, "deductible_later: applies to a deductible per admission only"),
    ({"deductible_per": "stay"}, "deductible_per: 'stay' is not one of admission, year"),
    ({"large_amount_ceiling": None}, "large_amount_ceiling: is required with large_amount_ratio"),
    ({"large_amount_ratio": None}, "large_amount_ratio: is required with large_amount_ceiling"),
    ({"large_amount_ratio": "1.5"}, "large_amount_ratio: must be a decimal string"),
    ({"large_amount_fund": "maf_pay"}, "large_amount_fund: 'maf_pay' is not one of hifmi_pay, hifob_pay"),
    ({"large_amount_ratio": None, "large_amount_ceiling": None, "large_amount_fund": "hifob_pay"},
     "large_amount_fund: only with large_amount_ratio and large_amount_ceiling"),
    ({"acct_pay_allowed": "yes"}, "acct_pay_allowed: must be true or false, found a string"),
    ({"pool": "In Patient"}, "pool: 'In Patient' must be 1-32 of a-z, 0-9, '_'"),
    ({"ceiling": -1}, "ceiling: -1 is outside 0-1000000000000"),
    ({"ceiling": 100}, "ceiling: 100 is below the deductible 120000"),
    ({"deductible": 1200.5}, "deductible: 1200.5 has a fraction"),
    ({"hosp_lv": "4"}, "hosp_lv: '4' is not one of 0, 1, 2, 3"),
    ({"insutype": "31"}, "insutype: '31' must be a 3-digit insutype"),
    ({"b_class_self_ratio": "0.1\n"}, "b_class_self_ratio: must be a decimal string"),
    ({"color": "red"}, "color: is not a known field"),
    ({"year": True}, "year: must be an integer, found true/false"),
]  # fmt: skip
DOCUMENT_PROBLEMS = [
    ({"area": "370200"}, "benefits: is required"),
    ({"area": "370200", "benefits": []}, "benefits: must hold at least one entry"),
    ({"area": "370200", "benefits": {}}, "benefits: must be a list, found an object"),
    ({"area": "370200", "benefits": [[]]}, "benefits[0]: must be an object, found a list"),
    ({"area": "37020", "benefits": _doc()["benefits"]}, "area: '37020' must be a 6-digit"),
    ({"benefits": _doc()["benefits"]}, "area: is required"),
    ({"area": "370200", "benefits": _doc()["benefits"] * 2}, "benefits[1]: repeats benefits[0]"),
    ([], "the document must be a JSON object, found a list"),
]


@pytest.mark.parametrize(
    ("doc", "problem"),
    [(_doc(**changes), f"benefits[0].{problem}") for changes, problem in ROW_PROBLEMS] + DOCUMENT_PROBLEMS,
)
def test_policy_documents_are_checked_field_by_field(doc, problem: str) -> None:
    with pytest.raises(PolicyInvalid) as err:
        load_policy(doc)
    assert err.value.code == "policy_invalid" and err.value.http_status == 422
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems
    where = problem.split(": ")[0] if ": " in problem else ""
    assert where in {d["field"] for d in err.value.details}


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    doc = {"area": "370200", "benefits": [
        EMPLOYEE_OUTPATIENT,
        {**EMPLOYEE_INPATIENT, "hosp_lv": "2", "segments": [
            {"up_to": 1000000, "fund_ratio": "0.85"}, {"up_to": 900000, "fund_ratio": "2"},
            {"fund_ratio": "0.9"}]},
        {**RESIDENT_ANY, "fund_ratio": 0.6, "ceiling": "lots"},
    ]}  # fmt: skip
    with pytest.raises(PolicyInvalid) as err:
        load_policy(doc)
    assert err.value.problems == [
        "benefits[1].segments[1].fund_ratio: "
        'must be a decimal string from "0" to "1" with at most 4 decimals, e.g. "0.85"',
        "benefits[1].segments[1].up_to: 900000 is not above the previous segment's up_to 1000000",
        "benefits[2].ceiling: must be an integer of fen, found a string",
        'benefits[2].fund_ratio: ratios are decimal strings: write "0.6"',
    ]
    assert err.value.message.startswith("the policy document is not valid (4 problems):\n  - benefits[1]")


def test_the_format_before_segments_still_loads() -> None:
    # The format central/policy/documents.py has documented since the policy bundle shipped.
    old = {"area": "370200", "name": "old", "benefits": [
        {"year": 2026, "insutype": "310", "psn_type": "11", "hosp_lv": "3", "med_type": "21",
         "deductible": 120000, "ceiling": 40000000, "fund_ratio": "0.85",
         "b_class_self_ratio": "0.10"}]}  # fmt: skip
    (row,) = load_policy(old).rows
    assert [(s.up_to, s.fund_ratio) for s in row.segments] == [(None, Decimal("0.85"))]
    assert (row.deductible_later, row.large_amount_ratio, row.acct_pay_allowed, row.pool) == (
        None,
        None,
        False,
        None,
    )
    assert row.b_class_self_ratio == Decimal("0.10")


def test_the_sample_policy_loads_and_splits() -> None:
    doc = json.loads((SAMPLES / "policy.json").read_text(encoding="utf-8"))
    assert "sample, not authoritative" in doc["name"]
    policy = load_policy(doc)
    assert policy.area == "370200" and len(policy.rows) == len(doc["benefits"])
    assert any(len(r.segments) > 1 for r in policy.rows) and any(r.large_amount_ratio for r in policy.rows)
    # An employee in service at a tertiary hospital, first admission, 30,000.00 of which 2,000.00 class B
    # and 500.00 class C; the split adds up whatever the sample's values.
    bill = SplitInput("310", "11", "3", "21", [("1", 2750000, "A"), ("2", 200000, "B"), ("3", 50000, "C")])
    split = compute_split(policy, bill, YearToDate(), year=2026, acct_balance=100000)
    adds_up(split)
    assert split.hifp_pay > 0 and split.acct_pay == 100000
    # At the ceiling, the employees' large-amount subsidy pays, recorded as hifob_pay.
    capped = compute_split(policy, bill, YearToDate(fund_paid=40000000), year=2026)
    assert capped.hifp_pay == 0 and capped.hifob_pay > 0 and capped.hifmi_pay == 0
    adds_up(capped)
    # Ungraded clinic: the generic row, outpatient pool shared with the graded outpatient rows.
    clinic = SplitInput("310", "11", "0", "11", [("1", 10000, "A")])
    assert benefit_pool(policy, clinic, year=2026) == "outpatient"
    assert benefit_pool(policy, SplitInput("310", "11", "2", "11", []), year=2026) == "outpatient"
