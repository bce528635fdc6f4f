"""HIS settlement JSON → a validated ``protocol.records.Settlement``.

The HIS speaks JSON with money as decimal strings or JSON numbers. Both are decoded
straight to ``Decimal`` (msgspec reads the number's text; a float never exists), then to
integer fen. Decoding is two-phase: msgspec checks shape and types (unknown and missing
fields, wrong types) and stops at the first problem, with its JSON path; then every
semantic problem (dates, scales, signs, totals) is collected so the HIS sees all of them
at once.

ID numbers and names (``certno``, ``psn_name``) are accepted, because many HIS products
send them, and dropped here: the agent never stores them.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from protocol.chain import encode_body
from protocol.errors import ValidationFailed
from protocol.records import (
    FeeDetail,
    Override,
    Person,
    Settlement,
    Visit,
    decimal_text,
    settlement_problems,
    to_fen,
)

from .errors import OverrideDoctorMismatch, OverrideNeedsDoctor
from .users import Principal

__all__ = [
    "ReversalRequest",
    "account_balance",
    "new_setl_id",
    "now_iso",
    "parse_reversal",
    "parse_settlement",
]

Code = Annotated[str, Meta(min_length=1, max_length=64)]
Digits3 = Annotated[str, Meta(pattern=r"^\d{3}$")]
Digits6 = Annotated[str, Meta(pattern=r"^\d{6}$")]
Text = Annotated[str, Meta(max_length=200)]


class _PsnIn(msgspec.Struct, forbid_unknown_fields=True):
    psn_no: Code
    insutype: Digits3
    insuplc_admdvs: Digits6
    psn_type: Annotated[str, Meta(min_length=1, max_length=6)]
    gend: Annotated[str, Meta(pattern=r"^[129]$")]
    brdy: str
    card_sn: Code | None = None
    emp_no: Code | None = None
    certno: str | None = None  # accepted and dropped: never stored
    psn_name: str | None = None  # accepted and dropped: never stored


class _MdtrtIn(msgspec.Struct, forbid_unknown_fields=True):
    mdtrt_id: Code
    med_type: Annotated[str, Meta(pattern=r"^\d{2,4}$")]
    begntime: str
    dise_codg: Code
    endtime: str | None = None
    dise_name: Text | None = None
    dept_codg: Code | None = None
    dr_codg: Code | None = None
    ipt_days: int | None = None


class _LineIn(msgspec.Struct, forbid_unknown_fields=True):
    feedetl_sn: Code
    list_type: Digits3
    med_list_codg: Annotated[str, Meta(min_length=1, max_length=50)]
    medins_list_name: Text
    cnt: Decimal
    pric: Decimal
    det_item_fee_sumamt: Decimal
    days: int | None = None
    dosage: Text | None = None
    chrgitm_lv: Annotated[str, Meta(pattern=r"^[ABC]$")] | None = None
    fee_ocur_time: str | None = None


class _OverrideIn(msgspec.Struct, forbid_unknown_fields=True):
    rule_id: Annotated[str, Meta(min_length=1, max_length=64)]
    reason: Annotated[str, Meta(min_length=2, max_length=200)]
    #: Kept for HIS products that send it: must be the signed-in doctor's code, which the agent records.
    dr_codg: Code | None = None


class _SettlementIn(msgspec.Struct, forbid_unknown_fields=True):
    fixmedins_code: Code
    his_setl_no: Code
    psn: _PsnIn
    mdtrt: _MdtrtIn
    feedetl: Annotated[list[_LineIn], Meta(min_length=1, max_length=2000)]
    medfee_sumamt: Decimal
    opter: Code
    opter_name: Text | None = None
    mdtrt_cert_type: Annotated[str, Meta(pattern=r"^0[1-3]$")] | None = None
    mdtrt_cert_no: Code | None = None
    #: The person's personal-account balance as the HIS read it from the platform (yuan); lets the
    #: account pay the person's share where the policy allows. Used for the split, not stored.
    acct_balance: Decimal | None = None
    #: A doctor's overrides of rules that allow one (recorded with the settlement).
    overrides: Annotated[list[_OverrideIn], Meta(max_length=50)] = []
    fund_pay_sumamt: Decimal | None = None
    hifp_pay: Decimal | None = None
    hifmi_pay: Decimal | None = None
    hifob_pay: Decimal | None = None
    acct_pay: Decimal | None = None
    psn_cash_pay: Decimal | None = None


class ReversalRequest(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, Meta(min_length=1, max_length=200)]
    opter: Code
    his_setl_no: Code | None = None


_settlement_decoder = msgspec.json.Decoder(_SettlementIn)
_reversal_decoder = msgspec.json.Decoder(ReversalRequest)


def _shape_error(exc: msgspec.MsgspecError) -> ValidationFailed:
    text = str(exc)
    field = "$"
    if " - at `" in text:
        text, _, path = text.partition(" - at `")
        field = path.rstrip("`")
    return ValidationFailed(
        "request body does not match the settlement schema; correct the listed field",
        details=[{"field": field, "message": text}],
    )


def now_iso() -> str:
    """Local wall-clock time with its UTC offset, to the second (what the HIS shows)."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def new_setl_id(fixmedins_code: str) -> str:
    """Unique, time-ordered settlement id: institution, epoch milliseconds, 32 random bits."""
    return f"{fixmedins_code}-{int(time.time() * 1000):013d}-{secrets.token_hex(4)}"


def _timestamp(value: str, field: str, problems: list[dict[str, str]]) -> str:
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:  # the national interface sends local time without an offset
            # in the agent's zone; 0001-01-01T00:00 east of UTC has no UTC instant (was a 500)
            parsed = parsed.astimezone()
    except (ValueError, OverflowError):
        problems.append({"field": field, "message": "not a date-time such as 2026-11-23T09:12:00+08:00"})
        return value
    return parsed.isoformat(timespec="seconds")


def _fen(value: Decimal | None, field: str, problems: list[dict[str, str]]) -> int | None:
    if value is None:
        return None
    try:
        return to_fen(value)
    except (ValueError, InvalidOperation):
        problems.append({"field": field, "message": "an amount in yuan with at most 2 decimals"})
        return 0


def _dec(value: Decimal, places: int, field: str, problems: list[dict[str, str]]) -> str:
    try:
        return decimal_text(value, places)
    except (ValueError, InvalidOperation):
        problems.append({"field": field, "message": f"a finite decimal with at most {places} decimals"})
        return "0"


def signed_overrides(given: list[_OverrideIn], caller: Principal | None) -> list[Override]:
    """The overrides as the signed-in doctor's, or a refusal: an override is a doctor's decision, so only
    a request made with that doctor's own token may carry one, and it carries the doctor's own code.

    ``caller`` None is a settlement no one signed in for (a drop-folder file).
    """
    if not given:
        return []
    if caller is None or caller.role != "doctor" or not caller.dr_codg:
        how = (
            "a drop-folder file cannot carry overrides, because no doctor signs a file: send this settlement "
            "to POST /v1/settlements with the overriding doctor's own token, or drop it without overrides"
            if caller is None
            else f"this request was made with {caller.describe()}: the doctor must sign in with their own "
            "token (yibao-agent users add --role doctor) and send the settlement with it, or send it "
            "without overrides"
        )
        raise OverrideNeedsDoctor(f"an override of a rule needs the overriding doctor's own sign-in; {how}")
    wrong = [
        {"field": f"overrides[{i}].dr_codg", "message": f"{o.dr_codg} is not the signed-in doctor's code"}
        for i, o in enumerate(given)
        if o.dr_codg is not None and o.dr_codg != caller.dr_codg
    ]
    if wrong:
        raise OverrideDoctorMismatch(
            f"an override names another doctor than the one signed in ({caller.name}, {caller.dr_codg}): a "
            "doctor overrides only in their own name; leave dr_codg out (the agent records the signed-in "
            "doctor's) or have the doctor named sign in with their own token",
            details=wrong,
        )
    return [Override(dr_codg=caller.dr_codg, reason=o.reason, rule_id=o.rule_id) for o in given]


def parse_settlement(
    body: bytes, *, fixmedins_code: str | None = None, caller: Principal | None = None
) -> tuple[Settlement, bytes]:
    """Validate a HIS request made by ``caller``; return the record and a digest of its content.

    The digest ignores ``setl_id`` and ``setl_time`` (assigned here), so a retry of the
    same settlement has the same digest and a different one under the same ``his_setl_no``
    does not. Overrides are the signed-in doctor's (``signed_overrides``) and count in the digest;
    a user's name recorded as ``opter_name`` does not, so a retry from another desk is the same
    settlement, not a conflict.
    """
    try:
        src = _settlement_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise _shape_error(exc) from exc
    overrides = signed_overrides(src.overrides, caller)  # before anything else: who may send this
    problems: list[dict[str, str]] = []
    if fixmedins_code and src.fixmedins_code != fixmedins_code:
        problems.append({"field": "fixmedins_code", "message": f"this agent serves {fixmedins_code} only"})
    psn = src.psn
    try:
        brdy = date.fromisoformat(psn.brdy).isoformat()
    except ValueError:
        problems.append({"field": "psn.brdy", "message": "not a date such as 1958-04-02"})
        brdy = psn.brdy
    md = src.mdtrt
    begntime = _timestamp(md.begntime, "mdtrt.begntime", problems)
    endtime = _timestamp(md.endtime, "mdtrt.endtime", problems) if md.endtime else None
    if md.ipt_days is not None and md.ipt_days < 0:
        problems.append({"field": "mdtrt.ipt_days", "message": "must not be negative"})
    lines = []
    for i, ln in enumerate(src.feedetl):
        where = f"feedetl[{i}]"
        lines.append(
            FeeDetail(
                chrgitm_lv=ln.chrgitm_lv,
                cnt=_dec(ln.cnt, 4, f"{where}.cnt", problems),
                days=ln.days,
                det_item_fee_sumamt=_fen(ln.det_item_fee_sumamt, f"{where}.det_item_fee_sumamt", problems)
                or 0,
                dosage=ln.dosage,
                fee_ocur_time=(
                    _timestamp(ln.fee_ocur_time, f"{where}.fee_ocur_time", problems)
                    if ln.fee_ocur_time
                    else None
                ),
                feedetl_sn=ln.feedetl_sn,
                list_type=ln.list_type,
                med_list_codg=ln.med_list_codg,
                medins_list_name=ln.medins_list_name,
                pric=_dec(ln.pric, 6, f"{where}.pric", problems),
            )
        )
    record = Settlement(
        acct_pay=_fen(src.acct_pay, "acct_pay", problems),
        feedetl=lines,
        fixmedins_code=src.fixmedins_code,
        fund_pay_sumamt=_fen(src.fund_pay_sumamt, "fund_pay_sumamt", problems),
        hifmi_pay=_fen(src.hifmi_pay, "hifmi_pay", problems),
        hifob_pay=_fen(src.hifob_pay, "hifob_pay", problems),
        hifp_pay=_fen(src.hifp_pay, "hifp_pay", problems),
        his_setl_no=src.his_setl_no,
        mdtrt=Visit(
            begntime=begntime,
            dept_codg=md.dept_codg,
            dise_codg=md.dise_codg,
            dise_name=md.dise_name,
            dr_codg=md.dr_codg,
            endtime=endtime,
            ipt_days=md.ipt_days,
            mdtrt_id=md.mdtrt_id,
            med_type=md.med_type,
        ),
        mdtrt_cert_no=src.mdtrt_cert_no,
        mdtrt_cert_type=src.mdtrt_cert_type,
        medfee_sumamt=_fen(src.medfee_sumamt, "medfee_sumamt", problems) or 0,
        opter=src.opter,
        opter_name=src.opter_name,
        overrides=overrides,
        psn=Person(
            brdy=brdy,
            card_sn=psn.card_sn,
            emp_no=psn.emp_no,
            gend=psn.gend,
            insuplc_admdvs=psn.insuplc_admdvs,
            insutype=psn.insutype,
            psn_no=psn.psn_no,
            psn_type=psn.psn_type,
        ),
        psn_cash_pay=_fen(src.psn_cash_pay, "psn_cash_pay", problems),
        setl_id="",
        setl_time="",
    )
    if not problems:
        problems.extend(settlement_problems(record))
    if problems:
        raise ValidationFailed("settlement does not validate; correct the listed fields", details=problems)
    digest = hashlib.sha256(encode_body(record)).digest()
    if caller is not None and caller.role != "his":
        record.opter_name = caller.name  # who signed in, not what the HIS wrote
    record.setl_id = new_setl_id(record.fixmedins_code)
    record.setl_time = now_iso()
    return record, digest


class _BalanceIn(msgspec.Struct):
    acct_balance: Decimal | None = None


def account_balance(body: bytes) -> int | None:
    """The ``acct_balance`` of a settlement request in fen (the body was already validated)."""
    try:
        value = msgspec.json.decode(body, type=_BalanceIn).acct_balance
        return to_fen(value) if value is not None and value >= 0 else None
    except (msgspec.MsgspecError, ValueError):
        return None


def parse_reversal(body: bytes) -> ReversalRequest:
    try:
        return _reversal_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise _shape_error(exc) from exc


def problems_of(exc: ValidationFailed) -> list[dict[str, Any]]:
    return exc.details
