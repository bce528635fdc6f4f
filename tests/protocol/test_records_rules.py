"""Record validation and the money helpers.

A HIS vendor fixes what the ``details`` name, so every refusal must point at the field
that is wrong; and money must survive every conversion exactly, refusing what it cannot
represent instead of rounding it away.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from protocol.errors import ValidationFailed
from protocol.records import (
    SPLIT_FIELDS,
    check_reversal,
    check_settlement,
    decimal_text,
    fen_to_text,
    line_total_fen,
    to_fen,
)

from .strategies import positive_decimals, valid_reversal, valid_settlement

replace = msgspec.structs.replace


def fields_of(exc: pytest.ExceptionInfo[ValidationFailed]) -> set[str]:
    assert exc.value.code == "validation_failed"
    return {d["field"] for d in exc.value.details}


def with_split(rec, **amounts):
    values = dict.fromkeys(SPLIT_FIELDS)
    values.update(amounts)
    return replace(rec, **values)


# --- settlements ------------------------------------------------------------------------------


@given(valid_settlement())
def test_a_consistent_settlement_passes(rec):
    assert check_settlement(rec) is rec


@given(valid_settlement(), st.data())
def test_a_wrong_line_total_names_that_line(rec, data):
    i = data.draw(st.integers(0, len(rec.feedetl) - 1))
    delta = data.draw(st.integers(-1000, 1000).filter(bool))
    lines = list(rec.feedetl)
    lines[i] = replace(lines[i], det_item_fee_sumamt=lines[i].det_item_fee_sumamt + delta)
    # Keep the total equal to the (wrong) lines so only the line itself is at fault.
    bad = replace(rec, feedetl=lines, medfee_sumamt=rec.medfee_sumamt + delta)
    assume(bad.medfee_sumamt >= 0)
    with pytest.raises(ValidationFailed) as exc:
        check_settlement(bad)
    assert f"feedetl[{i}].det_item_fee_sumamt" in fields_of(exc)
    assert "medfee_sumamt" not in fields_of(exc)


@given(valid_settlement(), st.integers(-1000, 1000).filter(bool))
def test_a_total_that_is_not_the_sum_of_its_lines_names_medfee_sumamt(rec, delta):
    assume(rec.medfee_sumamt + delta >= 0 and rec.fund_pay_sumamt is None)
    with pytest.raises(ValidationFailed) as exc:
        check_settlement(replace(rec, medfee_sumamt=rec.medfee_sumamt + delta))
    assert fields_of(exc) == {"medfee_sumamt"}


@given(valid_settlement(), st.integers(1, 1000))
def test_a_split_that_does_not_add_up_to_the_total_names_psn_cash_pay(rec, delta):
    total = rec.medfee_sumamt
    bad = with_split(rec, fund_pay_sumamt=total, hifp_pay=total, acct_pay=0, psn_cash_pay=delta)
    with pytest.raises(ValidationFailed) as exc:
        check_settlement(bad)
    assert "psn_cash_pay" in fields_of(exc)


@given(valid_settlement(), st.integers(1, 1000))
def test_fund_parts_that_do_not_add_up_to_the_fund_share_name_fund_pay_sumamt(rec, delta):
    total = rec.medfee_sumamt
    bad = with_split(rec, fund_pay_sumamt=total, hifp_pay=total + delta, acct_pay=0, psn_cash_pay=0)
    with pytest.raises(ValidationFailed) as exc:
        check_settlement(bad)
    assert fields_of(exc) == {"fund_pay_sumamt"}


@given(valid_settlement(), st.sampled_from(["fund_pay_sumamt", "acct_pay", "psn_cash_pay"]))
def test_a_partial_split_names_the_missing_parts(rec, given_field):
    bad = with_split(rec, **{given_field: rec.medfee_sumamt})
    with pytest.raises(ValidationFailed) as exc:
        check_settlement(bad)
    assert fields_of(exc) == {"fund_pay_sumamt", "acct_pay", "psn_cash_pay"} - {given_field}


@given(valid_settlement(), st.sampled_from(SPLIT_FIELDS))
def test_negative_split_amounts_are_refused(rec, name):
    values = {f: 0 for f in ("fund_pay_sumamt", "acct_pay")}
    values["psn_cash_pay"] = rec.medfee_sumamt
    values[name] = -1
    with pytest.raises(ValidationFailed) as exc:
        check_settlement(with_split(rec, **values))
    assert name in fields_of(exc)


@given(valid_settlement())
def test_every_problem_is_listed_at_once(rec):
    lines = list(rec.feedetl)
    lines[0] = replace(lines[0], cnt="0", det_item_fee_sumamt=0)
    lines.append(replace(lines[0], pric="-1"))
    bad = replace(rec, feedetl=lines, medfee_sumamt=-1)
    with pytest.raises(ValidationFailed) as exc:
        check_settlement(bad)
    assert {
        "feedetl[0].cnt",
        f"feedetl[{len(lines) - 1}].feedetl_sn",
        f"feedetl[{len(lines) - 1}].pric",
        "medfee_sumamt",
    } <= fields_of(exc)


@given(valid_settlement(), st.sampled_from(["feedetl", "feedetl[0].days", "feedetl[0]"]))
def test_line_problems_name_their_fields(rec, field):
    line = rec.feedetl[0]
    bad = {
        "feedetl": lambda: replace(rec, feedetl=[], medfee_sumamt=0),
        "feedetl[0].days": lambda: replace(rec, feedetl=[replace(line, days=0), *rec.feedetl[1:]]),
        "feedetl[0]": lambda: replace(rec, feedetl=[replace(line, cnt="two"), *rec.feedetl[1:]]),
    }[field]()
    with pytest.raises(ValidationFailed) as exc:
        check_settlement(bad)
    assert field in fields_of(exc)


def test_line_totals_round_half_up_to_the_fen():
    assert line_total_fen("1", "0.005") == 1
    assert line_total_fen("1", "0.0049") == 0
    assert line_total_fen("3", "0.335") == 101  # 1.005 → 1.01, where binary floats give 1.00
    assert line_total_fen("0.5", "19.61") == 981  # 9.805 → 9.81
    assert line_total_fen("54", "0.4567") == 2466


# --- reversals --------------------------------------------------------------------------------


@given(valid_reversal())
def test_a_consistent_reversal_passes(rec):
    assert check_reversal(rec) is rec


@given(valid_reversal(), st.integers(1, 10**6))
def test_a_reversal_with_a_positive_amount_is_refused(rec, amount):
    bad = replace(rec, medfee_sumamt=amount, fund_pay_sumamt=None, acct_pay=None, psn_cash_pay=None)
    with pytest.raises(ValidationFailed) as exc:
        check_reversal(bad)
    assert fields_of(exc) == {"medfee_sumamt"}


@given(valid_reversal())
def test_a_reversal_cannot_cancel_itself_or_lack_a_reason(rec):
    with pytest.raises(ValidationFailed) as exc:
        check_reversal(replace(rec, orig_setl_id=rec.setl_id, reason="  "))
    assert fields_of(exc) == {"orig_setl_id", "reason"}


@given(valid_reversal(), st.integers(1, 1000))
def test_a_reversal_split_that_does_not_add_up_is_refused(rec, delta):
    total = rec.medfee_sumamt
    bad = replace(rec, fund_pay_sumamt=total, acct_pay=0, psn_cash_pay=-delta)
    with pytest.raises(ValidationFailed) as exc:
        check_reversal(bad)
    assert fields_of(exc) == {"psn_cash_pay"}


# --- money helpers ----------------------------------------------------------------------------


fens = st.integers(-(10**15), 10**15)


@given(fens)
def test_fen_text_and_back_are_exact(fen):
    text = fen_to_text(fen)
    assert Decimal(text) * 100 == fen
    assert text.count(".") == 1 and len(text.split(".")[1]) == 2
    assert to_fen(Decimal(text)) == fen
    assert to_fen(Decimal(fen).scaleb(-2)) == fen


@given(fens, st.integers(1, 9))
def test_trailing_zeros_do_not_change_the_fen(fen, extra):
    padded = Decimal(fen_to_text(fen) + "0" * extra)
    assert to_fen(padded) == fen


@given(st.integers(-(10**12), 10**12), st.integers(3, 8))
def test_sub_fen_amounts_are_refused_not_rounded(units, places):
    value = Decimal(units).scaleb(-places)
    assume(value * 100 != (value * 100).to_integral_value())
    with pytest.raises(ValueError):
        to_fen(value)


def test_to_fen_refuses_a_tenth_of_a_fen():
    with pytest.raises(ValueError):
        to_fen(Decimal("0.001"))
    assert to_fen(Decimal("0.010")) == 1
    assert to_fen(Decimal("-12.30")) == -1230
    assert fen_to_text(-5) == "-0.05"
    assert fen_to_text(0) == "0.00"


@given(st.integers(-(10**12) + 1, 10**12 - 1), st.integers(0, 6), st.integers(0, 4))
def test_decimal_text_is_canonical_and_exact(units, places, padding):
    value = Decimal(units).scaleb(-places)
    # The same number written with trailing zeros gives the same text.
    padded = value.quantize(Decimal(1).scaleb(-(places + padding)))
    text = decimal_text(value, 6)
    assert decimal_text(padded, 6) == text
    assert Decimal(text) == value
    assert "E" not in text and "e" not in text
    if "." in text:
        assert not text.endswith("0") and not text.endswith(".")
    assert decimal_text(Decimal(text), 6) == text


def test_decimal_text_refuses_absurd_magnitudes_and_non_numbers():
    for bad in ("1E+12", "-1234567890123", "NaN", "Infinity", "1E+400"):
        with pytest.raises(ValueError):
            decimal_text(Decimal(bad), 6)


@given(
    st.integers(-(10**8), 10**8).map(lambda v: Decimal(v).scaleb(-4)),
    st.integers(0, 10**9).map(lambda v: Decimal(v).scaleb(-6)),
)
def test_integer_line_total_equals_decimal_half_up(cnt, pric):
    from decimal import ROUND_HALF_UP

    from protocol.records import line_total_fen

    c, p = decimal_text(cnt, 4), decimal_text(pric, 6)
    expected = int((cnt * pric * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert line_total_fen(c, p) == expected


def _settlement_with_line(line):
    from protocol.records import Person, Settlement, Visit

    return Settlement(
        feedetl=[line],
        fixmedins_code="H1",
        his_setl_no="N1",
        mdtrt=Visit(begntime="2026-11-23T09:00:00+08:00", dise_codg="I10", mdtrt_id="M1", med_type="11"),
        medfee_sumamt=line.det_item_fee_sumamt,
        opter="C1",
        psn=Person(
            brdy="1958-04-02", gend="1", insuplc_admdvs="370211", insutype="310", psn_no="P", psn_type="11"
        ),
        setl_id="S1",
        setl_time="2026-11-23T09:30:00+08:00",
    )


@pytest.mark.parametrize("cnt", ["NaN", "Infinity", "1e5", "1.23456", "٣"])
def test_non_decimal_text_in_a_record_is_a_field_problem_not_a_crash(cnt):
    from protocol.records import FeeDetail, settlement_problems

    rec = _settlement_with_line(
        FeeDetail(
            cnt=cnt,
            det_item_fee_sumamt=100,
            feedetl_sn="1",
            list_type="101",
            med_list_codg="X",
            medins_list_name="x",
            pric="1",
        )
    )
    problems = settlement_problems(rec)
    assert any(p["field"] == "feedetl[0]" for p in problems)


@given(positive_decimals(4, 100))
def test_decimal_text_keeps_quantities_within_their_places(cnt):
    assert Decimal(decimal_text(cnt, 4)) == cnt


@given(st.integers(1, 10**6), st.integers(1, 4))
def test_decimal_text_refuses_more_places_than_allowed(units, extra):
    value = Decimal(units * 10 + 1).scaleb(-(4 + extra))  # last digit non-zero: 4+extra places
    with pytest.raises(ValueError):
        decimal_text(value, 4)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_decimal_text_refuses_non_finite_numbers(text):
    with pytest.raises(ValueError):
        decimal_text(Decimal(text), 6)


def test_decimal_text_examples():
    assert decimal_text(Decimal("19.60"), 6) == "19.6"
    assert decimal_text(Decimal("100"), 6) == "100"
    assert decimal_text(Decimal("1E+2"), 6) == "100"
    assert decimal_text(Decimal("-0.000"), 6) == "0"
    assert decimal_text(Decimal("0.5000"), 4) == "0.5"


@given(valid_settlement())
def test_identification_fields_are_checked_together(rec):
    check_settlement(replace(rec, mdtrt_cert_type="03", mdtrt_cert_no="A12345678"))
    check_settlement(replace(rec, mdtrt_cert_type="01", mdtrt_cert_no="0f" * 16))
    with pytest.raises(ValidationFailed) as exc:
        check_settlement(replace(rec, mdtrt_cert_type="03"))
    assert fields_of(exc) == {"mdtrt_cert_no"}
    with pytest.raises(ValidationFailed) as exc:
        check_settlement(replace(rec, mdtrt_cert_type="09", mdtrt_cert_no="x"))
    assert fields_of(exc) == {"mdtrt_cert_type"}
    with pytest.raises(ValidationFailed) as exc:
        check_settlement(replace(rec, mdtrt_cert_no="A12345678"))
    assert fields_of(exc) == {"mdtrt_cert_type"}
