"""Properties of the benefit split over any valid policy, bill and year so far.

Whatever the numbers: the split adds up exactly, no part is negative, the pooled fund never goes
above its annual ceiling nor large-amount insurance above its own, the account never pays more than
its balance or where it may not, and the breakdown explains every fen.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.benefit import BillLine, SplitInput, YearToDate, check_split, compute_split, load_policy

MED_TYPES = ("11", "14", "21", "41", "52")
money = st.integers(0, 10**9)  # up to 10 million yuan


def ratio_text(units: int) -> str:
    """Ten-thousandths → the document's decimal string ("0.85", "1", "0")."""
    if units == 10_000:
        return "1"
    return "0" if units == 0 else f"0.{units:04d}".rstrip("0")


ratios = st.integers(0, 10_000).map(ratio_text)


@st.composite
def benefit_rows(draw: st.DrawFn) -> dict:
    row = {
        "year": 2026, "insutype": "310", "psn_type": "11", "hosp_lv": "3",
        "deductible": draw(st.integers(0, 500_000)),
        "ceiling": draw(st.integers(500_000, 50_000_000)),
    }  # fmt: skip
    med_type = draw(st.none() | st.sampled_from(MED_TYPES))
    if med_type is not None:
        row["med_type"] = med_type
    if draw(st.booleans()):
        row["fund_ratio"] = draw(ratios)
    else:
        bounds = sorted(draw(st.sets(st.integers(1, 60_000_000), min_size=0, max_size=4)))
        row["segments"] = [{"up_to": b, "fund_ratio": draw(ratios)} for b in bounds]
        row["segments"].append({"fund_ratio": draw(ratios)})
    per = draw(st.sampled_from([None, "admission", "year"]))
    if per is not None:
        row["deductible_per"] = per
    admission = per == "admission" or (per is None and med_type in (None, "21", "52"))
    if admission and draw(st.booleans()):
        row["deductible_later"] = draw(st.integers(0, row["deductible"]))
    if draw(st.booleans()):
        row["large_amount_ratio"] = draw(ratios)
        row["large_amount_ceiling"] = draw(st.integers(0, 60_000_000))
        fund = draw(st.sampled_from([None, "hifmi_pay", "hifob_pay"]))
        if fund is not None:
            row["large_amount_fund"] = fund
    if draw(st.booleans()):
        row["b_class_self_ratio"] = draw(ratios)
    row["acct_pay_allowed"] = draw(st.booleans())
    return row


@st.composite
def bills(draw: st.DrawFn, med_type: str) -> SplitInput:
    lines = []
    for n in range(draw(st.integers(0, 25))):
        amount = draw(st.one_of(st.integers(0, 100), st.integers(0, 5_000_000), st.integers(0, 200_000_000)))
        cls = draw(st.sampled_from(["A", "B", "C", None]))
        own = draw(st.none() | ratios) if cls in ("A", "B") else None
        lines.append(BillLine(str(n + 1), amount, cls, own, draw(st.booleans())))
    return SplitInput("310", "11", "3", med_type, lines)


year_so_far = st.builds(
    YearToDate,
    eligible=money,
    fund_paid=st.integers(0, 60_000_000),
    large_amount_paid=st.integers(0, 70_000_000),
    admissions=st.integers(0, 10),
    deductible_met=st.integers(0, 600_000),
)


@settings(max_examples=400, deadline=None)
@given(data=st.data(), row=benefit_rows(), ytd=year_so_far, balance=st.none() | money)
def test_every_split_adds_up_exactly_within_every_limit(data, row: dict, ytd: YearToDate, balance) -> None:
    policy = load_policy({"area": "370200", "benefits": [row]})
    med_type = row.get("med_type") or data.draw(st.sampled_from(MED_TYPES))
    bill = data.draw(bills(med_type))
    if data.draw(st.booleans()):  # often near the ceiling, where the fund stops and large-amount starts
        ytd = replace(ytd, fund_paid=max(0, row["ceiling"] - data.draw(st.integers(0, 2_000_000))))
    s = compute_split(policy, bill, ytd, year=2026, acct_balance=balance)
    total = sum(line.amount_fen for line in bill.lines)

    # It adds up, exactly.
    assert s.medfee_sumamt == total
    assert s.hifp_pay + s.hifmi_pay + s.hifob_pay == s.fund_pay_sumamt
    assert s.fund_pay_sumamt + s.acct_pay + s.psn_cash_pay == s.medfee_sumamt
    assert s.acct_pay + s.psn_cash_pay == s.psn_part_amt
    amounts = s.amounts()
    assert all(type(v) is int and v >= 0 for v in amounts.values()), amounts
    parts = (s.fulamt_ownpay_amt, s.preselfpay_amt, s.inscp_scp_amt, s.act_pay_dedc, s.pooled_self_pay,
             s.above_ceiling_amt, s.large_amount_self_pay)  # fmt: skip
    assert all(v >= 0 for v in parts), parts

    # Every fen is accounted for: the person's share is its causes, the eligible amount its uses.
    assert s.fulamt_ownpay_amt + s.preselfpay_amt + s.inscp_scp_amt == total
    assert s.inscp_scp_amt == s.act_pay_dedc + s.pooled_self_pay + s.hifp_pay + s.above_ceiling_amt
    assert s.above_ceiling_amt == s.hifmi_pay + s.hifob_pay + s.large_amount_self_pay
    assert s.hifmi_pay == 0 or s.hifob_pay == 0  # large-amount insurance pays into one field
    assert s.psn_part_amt == (s.fulamt_ownpay_amt + s.preselfpay_amt + s.act_pay_dedc + s.pooled_self_pay
                              + s.large_amount_self_pay)  # fmt: skip
    assert sum(s.line_self_pay.values()) == s.fulamt_ownpay_amt + s.preselfpay_amt

    # Limits: the ceilings, the deductible, the account.
    r = s.row
    assert s.hifp_pay <= max(0, r.ceiling - ytd.fund_paid)  # never above the annual ceiling
    assert ytd.fund_paid + s.hifp_pay <= max(r.ceiling, ytd.fund_paid)
    if r.large_amount_ceiling is None:
        assert s.hifmi_pay == s.hifob_pay == 0
    else:
        assert s.hifmi_pay + s.hifob_pay <= max(0, r.large_amount_ceiling - ytd.large_amount_paid)
    assert s.act_pay_dedc <= max(r.deductible, r.deductible_later or 0)
    assert s.hifp_pay <= s.inscp_scp_amt - s.act_pay_dedc
    if balance is None or not r.acct_pay_allowed:
        assert s.acct_pay == 0
    else:
        assert s.acct_pay == min(balance, s.psn_part_amt)
    if all(line.force_self_pay or line.cls in ("C", None) for line in bill.lines):
        assert s.fund_pay_sumamt == 0

    # The year so far moves by exactly this bill.
    after = s.ytd_after
    assert after.eligible - ytd.eligible == s.inscp_scp_amt
    assert after.fund_paid - ytd.fund_paid == s.hifp_pay
    assert after.admissions - ytd.admissions == (1 if s.deductible_basis == "admission" else 0)
    assert after.deductible_met - ytd.deductible_met == (
        s.act_pay_dedc if s.deductible_basis == "year" else 0
    )
    assert after.large_amount_paid - ytd.large_amount_paid == s.hifmi_pay + s.hifob_pay

    # The centre's recomputation agrees with itself, and the explanation ends with the totals.
    assert check_split(amounts, s) == [] and check_split(amounts, s, account_known=False) == []
    assert s.explanation and s.explanation[-1].startswith("fund ")


@settings(max_examples=200, deadline=None)
@given(row=benefit_rows(), amounts=st.lists(st.integers(0, 3_000_000), min_size=1, max_size=8))
def test_the_fund_ceiling_holds_over_a_year_of_bills(row: dict, amounts: list[int]) -> None:
    """Bill after bill, carrying the year so far: the fund never passes its ceiling in total."""
    policy = load_policy({"area": "370200", "benefits": [row]})
    med_type = row.get("med_type") or "21"
    ytd = YearToDate()
    fund = large = 0
    for i, amount in enumerate(amounts):
        s = compute_split(
            policy, SplitInput("310", "11", "3", med_type, [(str(i), amount, "A")]), ytd, year=2026
        )
        fund += s.hifp_pay
        large += s.hifmi_pay + s.hifob_pay
        ytd = s.ytd_after
    assert fund == ytd.fund_paid <= row["ceiling"]
    assert large == ytd.large_amount_paid <= row.get("large_amount_ceiling", 0)
    assert ytd.eligible == sum(amounts)
