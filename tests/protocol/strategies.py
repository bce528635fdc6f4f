"""Hypothesis strategies for the protocol's values and records.

Two kinds of records: ``any_settlement``/``any_reversal`` fill every field with any value
of its type (the encoders must agree on all of them, valid or not), and
``valid_settlement``/``valid_reversal`` build records whose amounts add up the way
``check_settlement``/``check_reversal`` demand, so tamper tests start from good data.
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import strategies as st

from protocol.records import (
    FeeDetail,
    Person,
    Reversal,
    Settlement,
    Visit,
    decimal_text,
    line_total_fen,
)

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1

# Values at the edges of msgpack's integer forms, where a wrong width would show.
INT_EDGES = (
    0,
    1,
    127,
    128,
    255,
    256,
    65535,
    65536,
    2**32 - 1,
    2**32,
    2**63 - 1,
    2**63,
    INT_MAX,
    -1,
    -32,
    -33,
    -128,
    -129,
    -32768,
    -32769,
    -(2**31),
    -(2**31) - 1,
    INT_MIN,
)

ints = st.one_of(st.sampled_from(INT_EDGES), st.integers(INT_MIN, INT_MAX))
# Lengths across fixstr/str8/str16 and fixarray/array16 boundaries, any Unicode.
texts = st.one_of(st.text(max_size=40), st.text(min_size=30, max_size=300))
short_texts = st.text(max_size=12)
opt_int = st.none() | ints
opt_text = st.none() | texts

scalars = st.none() | st.booleans() | ints | texts | st.binary(max_size=300)

# Arbitrary canonical-encodable values, nested to a bounded depth.
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=20) | st.dictionaries(short_texts, children, max_size=20),
    max_leaves=40,
)


def _person() -> st.SearchStrategy[Person]:
    return st.builds(
        Person,
        brdy=texts,
        card_sn=opt_text,
        emp_no=opt_text,
        gend=texts,
        insuplc_admdvs=texts,
        insutype=texts,
        psn_no=texts,
        psn_type=texts,
    )


def _visit() -> st.SearchStrategy[Visit]:
    return st.builds(
        Visit,
        begntime=texts,
        dept_codg=opt_text,
        dise_codg=texts,
        dise_name=opt_text,
        dr_codg=opt_text,
        endtime=opt_text,
        ipt_days=opt_int,
        mdtrt_id=texts,
        med_type=texts,
    )


def _fee_detail() -> st.SearchStrategy[FeeDetail]:
    return st.builds(
        FeeDetail,
        chrgitm_lv=opt_text,
        cnt=texts,
        days=opt_int,
        det_item_fee_sumamt=ints,
        dosage=opt_text,
        feedetl_sn=texts,
        list_type=texts,
        med_list_codg=texts,
        medins_list_name=texts,
        pric=texts,
    )


any_settlement = st.builds(
    Settlement,
    acct_pay=opt_int,
    feedetl=st.lists(_fee_detail(), max_size=20),
    fixmedins_code=texts,
    fund_pay_sumamt=opt_int,
    hifmi_pay=opt_int,
    hifob_pay=opt_int,
    hifp_pay=opt_int,
    his_setl_no=texts,
    mdtrt=_visit(),
    mdtrt_cert_no=opt_text,
    mdtrt_cert_type=opt_text,
    medfee_sumamt=ints,
    opter=texts,
    opter_name=opt_text,
    psn=_person(),
    psn_cash_pay=opt_int,
    setl_id=texts,
    setl_time=texts,
)

any_reversal = st.builds(
    Reversal,
    acct_pay=opt_int,
    fixmedins_code=texts,
    fund_pay_sumamt=opt_int,
    his_setl_no=opt_text,
    medfee_sumamt=ints,
    opter=texts,
    orig_setl_id=texts,
    psn_cash_pay=opt_int,
    reason=texts,
    setl_id=texts,
    setl_time=texts,
)


# --- valid records ----------------------------------------------------------------------------


def positive_decimals(max_places: int, max_units: int = 10_000) -> st.SearchStrategy[Decimal]:
    """Positive decimals with at most ``max_places`` places, as quantities and prices are."""
    return st.builds(
        lambda units, places: Decimal(units).scaleb(-places),
        st.integers(1, max_units * 10**max_places),
        st.integers(0, max_places),
    ).filter(lambda d: d > 0)


@st.composite
def fee_lines(draw: st.DrawFn, max_lines: int = 8) -> list[FeeDetail]:
    lines = []
    for i in range(draw(st.integers(1, max_lines))):
        cnt = decimal_text(draw(positive_decimals(4, 100)), 4)
        pric = decimal_text(draw(positive_decimals(6, 5_000)), 6)
        lines.append(
            FeeDetail(
                chrgitm_lv=draw(st.sampled_from([None, "A", "B", "C"])),
                cnt=cnt,
                days=draw(st.none() | st.integers(1, 90)),
                det_item_fee_sumamt=line_total_fen(cnt, pric),
                dosage=None,
                feedetl_sn=str(i + 1),
                list_type=draw(st.sampled_from(["101", "102", "201", "301"])),
                med_list_codg=draw(st.sampled_from(["XC08CAA077A001010100001", "001102000010000"])),
                medins_list_name=draw(short_texts),
                pric=pric,
            )
        )
    return lines


@st.composite
def split_of(draw: st.DrawFn, total: int) -> dict[str, int | None]:
    """Either no split (all None) or one that adds up to ``total`` (which may be negative)."""
    if draw(st.booleans()):
        return dict.fromkeys(
            ("fund_pay_sumamt", "hifp_pay", "hifmi_pay", "hifob_pay", "acct_pay", "psn_cash_pay")
        )
    sign = -1 if total < 0 else 1
    magnitude = abs(total)
    fund = draw(st.integers(0, magnitude))
    acct = draw(st.integers(0, magnitude - fund))
    cash = magnitude - fund - acct
    hifp = draw(st.integers(0, fund))
    hifmi = draw(st.integers(0, fund - hifp))
    hifob = fund - hifp - hifmi
    return {
        "fund_pay_sumamt": sign * fund,
        "hifp_pay": sign * hifp,
        "hifmi_pay": sign * hifmi,
        "hifob_pay": sign * hifob,
        "acct_pay": sign * acct,
        "psn_cash_pay": sign * cash,
    }


@st.composite
def valid_settlement(draw: st.DrawFn, *, setl_id: str | None = None) -> Settlement:
    lines = draw(fee_lines())
    total = sum(line.det_item_fee_sumamt for line in lines)
    split = draw(split_of(total))
    return Settlement(
        feedetl=lines,
        fixmedins_code="H37021100001",
        his_setl_no=draw(st.from_regex(r"HIS-2026112[0-9]-[0-9]{6}", fullmatch=True)),
        mdtrt=Visit(
            begntime="2026-11-23T09:12:00+08:00",
            dise_codg=draw(st.sampled_from(["I10.x00", "E11.900", "J06.900"])),
            mdtrt_id=draw(st.from_regex(r"MDT-[0-9]{6}", fullmatch=True)),
            med_type=draw(st.sampled_from(["11", "14", "21", "41"])),
        ),
        medfee_sumamt=total,
        opter="C0007",
        psn=Person(
            brdy="1958-04-02",
            gend=draw(st.sampled_from(["1", "2"])),
            insuplc_admdvs="370211",
            insutype=draw(st.sampled_from(["310", "390"])),
            psn_no=draw(st.from_regex(r"[0-9]{17}[0-9X]", fullmatch=True)),
            psn_type="11",
        ),
        setl_id=setl_id or draw(st.from_regex(r"S[0-9]{8}", fullmatch=True)),
        setl_time="2026-11-23T09:30:00+08:00",
        **split,
    )


@st.composite
def valid_reversal(draw: st.DrawFn) -> Reversal:
    total = -draw(st.integers(0, 10**9))
    split = draw(split_of(total))
    return Reversal(
        acct_pay=split["acct_pay"],
        fixmedins_code="H37021100001",
        fund_pay_sumamt=split["fund_pay_sumamt"],
        his_setl_no=draw(st.none() | st.just("HIS-20261123-000123")),
        medfee_sumamt=total,
        opter="C0007",
        orig_setl_id="S00000001",
        psn_cash_pay=split["psn_cash_pay"],
        reason=draw(st.sampled_from(["refund", "wrong item charged"])),
        setl_id=draw(st.from_regex(r"R[0-9]{8}", fullmatch=True)),
        setl_time="2026-11-23T10:00:00+08:00",
    )


valid_record = st.one_of(valid_settlement(), valid_reversal())
