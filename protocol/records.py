"""Record types: the settlement, the reversal and the card log, in the national field codes.

Invariants (``check_settlement`` and ``check_reversal`` enforce them; both sides call them):

- Money is integer fen. Unit price ``pric`` and quantity ``cnt`` are canonical decimal text
  (no exponent, no trailing zeros), because the national interface carries them with up to
  6 and 4 decimals.
- Every line total equals ``cnt * pric`` rounded half-up to the fen, and the line totals add
  up to ``medfee_sumamt`` exactly.
- The benefit split, when present, adds up: ``fund_pay_sumamt + acct_pay + psn_cash_pay ==
  medfee_sumamt`` and ``hifp_pay + hifmi_pay + hifob_pay == fund_pay_sumamt``. A settlement
  whose split is not yet computed carries ``None`` in all six fields.
- A reversal is a record of its own that names the settlement it cancels and carries that
  settlement's amounts negated; nothing is ever deleted.
- A card log (``CardLog``, ``check_card_log``) says what happened to a social-security card at the
  desk (used, failed authentication, reported lost) or that the agent applied a blacklist bundle. It
  travels in the same signed chain as settlements, so the centre can prove an institution *logged*
  a lost card's blacklist entry, not only that it was sent one. It carries the card identification
  code ``card_sn`` and never the holder's name or ID number.

Struct fields are declared in sorted key order so that msgspec's encoder emits canonical
msgpack (see ``protocol.canonical``). ID numbers and names are not fields: ``psn_no``
identifies the person and personal data is minimised at the edge.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from .errors import ValidationFailed

__all__ = [
    "CARD_EVENTS",
    "CERT_TYPES",
    "SPLIT_FIELDS",
    "CardLog",
    "FeeDetail",
    "Override",
    "Person",
    "Reversal",
    "RuleHit",
    "Settlement",
    "Visit",
    "check_card_log",
    "check_reversal",
    "check_settlement",
    "decimal_text",
    "fen_to_text",
    "line_total_fen",
    "scaled",
    "to_fen",
]

SPLIT_FIELDS = ("fund_pay_sumamt", "hifp_pay", "hifmi_pay", "hifob_pay", "acct_pay", "psn_cash_pay")

_FEN = Decimal("0.01")


class Person(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    brdy: str
    card_sn: str | None = None
    emp_no: str | None = None  # employer (unit) number, for employer blacklists
    gend: str
    insuplc_admdvs: str
    insutype: str
    psn_no: str
    psn_type: str


class Visit(msgspec.Struct, kw_only=True):
    begntime: str
    dept_codg: str | None = None
    dise_codg: str
    dise_name: str | None = None
    dr_codg: str | None = None
    endtime: str | None = None
    ipt_days: int | None = None
    mdtrt_id: str
    med_type: str


class FeeDetail(msgspec.Struct, kw_only=True):
    chrgitm_lv: str | None = None
    cnt: str
    days: int | None = None
    det_item_fee_sumamt: int
    dosage: str | None = None
    #: When the item was given or done (national name; ISO-8601 with offset, as the HIS sent it).
    #: Its local date is ``hist_lines.fee_date`` (bed-hanging: the days a stay had treatment).
    fee_ocur_time: str | None = None
    feedetl_sn: str
    #: Wholly self-paid part of the line (fen): class C, not in the catalogue, or moved to self-pay
    #: by an in-event rule. National name; None until the split is computed.
    fulamt_ownpay_amt: int | None = None
    list_type: str
    med_list_codg: str
    medins_list_name: str
    #: Class B "paid first by the person" part (fen), national name; None until computed.
    preselfpay_amt: int | None = None
    pric: str


class Override(msgspec.Struct, kw_only=True):
    """A doctor's override of a rule that allows one, carried to the centre with the settlement."""

    dr_codg: str
    reason: str
    rule_id: str


class RuleHit(msgspec.Struct, kw_only=True):
    """What a rule found at the desk, recorded with the settlement (enforced, shadow or overridden)."""

    action: str
    lines: list[str] = []
    mode: str
    outcome: str  # refused | self_pay | prompted | overridden | shadow
    rule_id: str
    rule_version: int


class Settlement(msgspec.Struct, kw_only=True):
    acct_pay: int | None = None
    feedetl: list[FeeDetail]
    fixmedins_code: str
    fund_pay_sumamt: int | None = None
    hifmi_pay: int | None = None
    hifob_pay: int | None = None
    hifp_pay: int | None = None
    his_setl_no: str
    mdtrt: Visit
    mdtrt_cert_no: str | None = None
    mdtrt_cert_type: str | None = None
    medfee_sumamt: int
    opter: str
    opter_name: str | None = None
    overrides: list[Override] = []
    psn: Person
    psn_cash_pay: int | None = None
    rule_hits: list[RuleHit] = []
    setl_id: str
    setl_time: str


#: ``mdtrt_cert_type`` code values (national): how the person was identified at the desk.
CERT_TYPES = {"01": "e-voucher", "02": "resident ID card", "03": "social-security card"}


class Reversal(msgspec.Struct, kw_only=True):
    acct_pay: int | None = None
    fixmedins_code: str
    fund_pay_sumamt: int | None = None
    his_setl_no: str | None = None
    medfee_sumamt: int
    opter: str
    orig_setl_id: str
    psn_cash_pay: int | None = None
    reason: str
    setl_id: str
    setl_time: str


def to_fen(value: Decimal) -> int:
    """Exact yuan → fen; refuses sub-fen amounts rather than rounding money silently."""
    if not value.is_finite() or value.adjusted() >= _MAX_WHOLE_DIGITS + 2:
        raise ValueError("amount is not a finite number of reasonable size")
    fen = value * 100
    if fen != fen.to_integral_value():
        raise ValueError("amount has more than 2 decimals")
    return int(fen)


def fen_to_text(fen: int) -> str:
    """Fen → the decimal yuan text people and HIS vendors read ("12.30")."""
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}{fen // 100}.{fen % 100:02d}"


def decimal_text(value: Decimal, max_places: int) -> str:
    """Canonical decimal text: fixed-point, no exponent, no trailing zeros."""
    if not value.is_finite():
        raise ValueError("not a finite number")
    normal = value.normalize()
    exponent = normal.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > max_places:
        raise ValueError(f"more than {max_places} decimals")
    if normal == 0:
        return "0"
    if normal.adjusted() >= _MAX_WHOLE_DIGITS:
        raise ValueError(f"more than {_MAX_WHOLE_DIGITS} digits before the decimal point")
    return format(normal, "f")


_MAX_WHOLE_DIGITS = 12
_CNT_PLACES, _PRIC_PLACES = 4, 6
_HALF = 10 ** (_CNT_PLACES + _PRIC_PLACES - 2) // 2


def scaled(text: str, places: int) -> int:
    """Canonical decimal text → integer count of ``10**-places``; ``ValueError`` if not one.

    Integer arithmetic on the hot path: the centre checks every line of every record, and
    ``Decimal`` costs several times more than ``int`` for the same exact result.
    """
    body = text[1:] if text.startswith("-") else text
    whole, dot, frac = body.partition(".")
    if (
        not whole.isascii()
        or not whole.isdigit()
        or len(whole) > _MAX_WHOLE_DIGITS
        or len(frac) > places
        or (frac and not (frac.isascii() and frac.isdigit()))
    ):
        raise ValueError(f"{text!r} is not decimal text with at most {places} decimals")
    # Canonical form only: one number, one text ("2", never "2.0", "02", "2." or "-0").
    if (
        (len(whole) > 1 and whole[0] == "0")
        or (dot and (not frac or frac[-1] == "0"))
        or (body is not text and body.strip("0.") == "")
    ):
        raise ValueError(f"{text!r} is not canonical decimal text (no trailing or leading zeros)")
    value = int(whole) * 10**places + (int(frac.ljust(places, "0")) if frac else 0)
    return -value if body is not text else value


def line_total_fen(cnt: str, pric: str) -> int:
    """``cnt * pric`` rounded half-up (away from zero) to the fen, the national rule."""
    return _product_fen(scaled(cnt, _CNT_PLACES) * scaled(pric, _PRIC_PLACES))


def _product_fen(product: int) -> int:
    fen, rest = divmod(abs(product), 2 * _HALF)
    if rest >= _HALF:
        fen += 1
    return fen if product >= 0 else -fen


def _split_problems(rec: Any, total: int) -> list[dict[str, str]]:
    problems: list[dict[str, str]] = []
    fund, acct, cash = rec.fund_pay_sumamt, rec.acct_pay, rec.psn_cash_pay
    present = [f for f in ("fund_pay_sumamt", "acct_pay", "psn_cash_pay") if getattr(rec, f) is not None]
    if not present:
        return problems
    if len(present) != 3:
        missing = sorted({"fund_pay_sumamt", "acct_pay", "psn_cash_pay"} - set(present))
        for name in missing:
            problems.append({"field": name, "message": "required when any part of the split is given"})
        return problems
    if fund + acct + cash != total:
        problems.append(
            {
                "field": "psn_cash_pay",
                "message": (
                    f"fund {fen_to_text(fund)} + account {fen_to_text(acct)} + cash "
                    f"{fen_to_text(cash)} does not add up to the total {fen_to_text(total)}"
                ),
            }
        )
    parts = [getattr(rec, f, None) for f in ("hifp_pay", "hifmi_pay", "hifob_pay")]
    if any(p is not None for p in parts):
        fund_parts = sum(p or 0 for p in parts)
        if fund_parts != fund:
            problems.append(
                {
                    "field": "fund_pay_sumamt",
                    "message": (
                        f"pooled {fen_to_text(parts[0] or 0)} + critical-illness "
                        f"{fen_to_text(parts[1] or 0)} + large-amount {fen_to_text(parts[2] or 0)} "
                        f"does not add up to the fund share {fen_to_text(fund)}"
                    ),
                }
            )
    return problems


def _cert_problems(rec: Settlement) -> list[dict[str, str]]:
    kind, number = rec.mdtrt_cert_type, rec.mdtrt_cert_no
    if kind is None:
        if number is not None:
            return [{"field": "mdtrt_cert_type", "message": "required with mdtrt_cert_no (01, 02 or 03)"}]
        return []
    if kind not in CERT_TYPES:
        return [{"field": "mdtrt_cert_type", "message": "01 e-voucher, 02 resident ID card or 03 card"}]
    if not number or len(number) > 64:
        return [{"field": "mdtrt_cert_no", "message": "the voucher nonce or card number (1-64 characters)"}]
    return []


def settlement_problems(rec: Settlement) -> list[dict[str, str]]:
    """Every field-level problem of a settlement record, in document order."""
    problems: list[dict[str, str]] = []
    if not rec.feedetl:
        problems.append({"field": "feedetl", "message": "a settlement needs at least one detail line"})
    seen: set[str] = set()
    total = 0
    for i, line in enumerate(rec.feedetl):
        where = f"feedetl[{i}]"
        if line.feedetl_sn in seen:
            problems.append({"field": f"{where}.feedetl_sn", "message": "duplicate detail number"})
        seen.add(line.feedetl_sn)
        try:
            cnt, pric = scaled(line.cnt, _CNT_PLACES), scaled(line.pric, _PRIC_PLACES)
        except ValueError:
            problems.append(
                {"field": where, "message": "cnt (≤4 decimals) and pric (≤6 decimals) must be decimal text"}
            )
            continue
        if cnt <= 0:
            problems.append({"field": f"{where}.cnt", "message": "quantity must be positive"})
        if pric < 0:
            problems.append({"field": f"{where}.pric", "message": "unit price must not be negative"})
        if line.days is not None and line.days <= 0:
            problems.append({"field": f"{where}.days", "message": "days of supply must be positive"})
        expected = _product_fen(cnt * pric)
        if expected != line.det_item_fee_sumamt:
            problems.append(
                {
                    "field": f"{where}.det_item_fee_sumamt",
                    "message": (
                        f"line total {fen_to_text(line.det_item_fee_sumamt)} is not cnt × pric = "
                        f"{fen_to_text(expected)}"
                    ),
                }
            )
        for part in ("fulamt_ownpay_amt", "preselfpay_amt"):
            value = getattr(line, part)
            if value is not None and not 0 <= value <= line.det_item_fee_sumamt:
                problems.append(
                    {"field": f"{where}.{part}", "message": "must be between 0 and the line total"}
                )
        total += line.det_item_fee_sumamt
    problems.extend(_cert_problems(rec))
    if rec.medfee_sumamt < 0:
        problems.append({"field": "medfee_sumamt", "message": "total must not be negative"})
    elif total != rec.medfee_sumamt and rec.feedetl:
        problems.append(
            {
                "field": "medfee_sumamt",
                "message": (
                    f"total {fen_to_text(rec.medfee_sumamt)} is not the sum of the detail lines "
                    f"{fen_to_text(total)}"
                ),
            }
        )
    for name in SPLIT_FIELDS:
        value = getattr(rec, name)
        if value is not None and value < 0:
            problems.append({"field": name, "message": "amount must not be negative"})
    problems.extend(_split_problems(rec, rec.medfee_sumamt))
    return problems


def check_settlement(rec: Settlement) -> Settlement:
    """Raise ``ValidationFailed`` listing every problem, or return the record unchanged."""
    problems = settlement_problems(rec)
    if problems:
        raise ValidationFailed("settlement does not validate; correct the listed fields", details=problems)
    return rec


def check_reversal(rec: Reversal) -> Reversal:
    """A reversal carries the cancelled amounts negated, and its split adds up too."""
    problems: list[dict[str, str]] = []
    if rec.medfee_sumamt > 0:
        problems.append({"field": "medfee_sumamt", "message": "a reversal carries the amount negated"})
    if rec.orig_setl_id == rec.setl_id:
        problems.append({"field": "orig_setl_id", "message": "a reversal cannot cancel itself"})
    if not rec.reason.strip():
        problems.append({"field": "reason", "message": "a reversal needs a reason"})
    problems.extend(_split_problems(rec, rec.medfee_sumamt))
    if problems:
        raise ValidationFailed("reversal does not validate; correct the listed fields", details=problems)
    return rec


#: What a card log records. ``used``: the card was read and proved genuine at the desk;
#: ``auth_failed``: it was read but refused (``code`` says why: failed internal authentication,
#: expired, blacklisted); ``lost``: the cashier reported it lost (``reason`` is the holder's account);
#: ``blacklist_applied``: the agent applied blacklist bundle ``bundle_seq`` of its area, so every card
#: entry up to that bundle is enforced here (the replacement gate counts it).
CARD_EVENTS = ("used", "auth_failed", "lost", "blacklist_applied")
_CARD_SN_MAX = 32
_CODE_MAX = 64
_REASON_MAX = 200


class CardLog(msgspec.Struct, kw_only=True):
    """One card event at an institution (fields in canonical key order; no personal data)."""

    area: str | None = None  # the pooling area of a blacklist_applied bundle
    at: str  # ISO-8601 with offset, when it happened at the desk
    bundle_seq: int | None = None
    card_sn: str | None = None
    code: str | None = None  # the error code an auth_failed answered (card_auth_failed…)
    event: str
    fixmedins_code: str
    log_id: str
    opter: str
    reason: str | None = None


def card_log_problems(rec: CardLog) -> list[dict[str, str]]:
    """Every field-level problem of a card log; each event carries exactly the fields it needs."""
    from datetime import datetime

    problems: list[dict[str, str]] = []
    if rec.event not in CARD_EVENTS:
        problems.append({"field": "event", "message": f"one of {', '.join(CARD_EVENTS)}"})
    if not rec.log_id or len(rec.log_id) > 64:
        problems.append({"field": "log_id", "message": "1-64 characters"})
    if not rec.opter or len(rec.opter) > 64:
        problems.append({"field": "opter", "message": "1-64 characters"})
    try:
        if datetime.fromisoformat(rec.at).utcoffset() is None:
            raise ValueError
    except ValueError:
        problems.append({"field": "at", "message": "ISO-8601 time with its offset"})
    applied = rec.event == "blacklist_applied"
    if applied:
        if rec.bundle_seq is None or not 0 < rec.bundle_seq < 2**63:
            problems.append({"field": "bundle_seq", "message": "the applied bundle's seq (positive)"})
        if rec.area is None or len(rec.area) != 6 or not rec.area.isdigit():
            problems.append({"field": "area", "message": "the bundle's 6-digit pooling area"})
        if rec.card_sn is not None:
            problems.append({"field": "card_sn", "message": "a bundle log names no card"})
    else:
        if rec.bundle_seq is not None or rec.area is not None:
            problems.append({"field": "bundle_seq", "message": "only a blacklist_applied log names a bundle"})
        sn = rec.card_sn
        if not sn or len(sn) > _CARD_SN_MAX or not (sn.isascii() and sn.isalnum()):
            message = f"the card identification code (1-{_CARD_SN_MAX} letters or digits)"
            problems.append({"field": "card_sn", "message": message})
    if rec.event == "auth_failed":
        if not rec.code or len(rec.code) > _CODE_MAX:
            problems.append({"field": "code", "message": "the error code the desk answered"})
    elif rec.code is not None:
        problems.append({"field": "code", "message": "only an auth_failed log carries a code"})
    if rec.event == "lost":
        if not rec.reason or not rec.reason.strip() or len(rec.reason) > _REASON_MAX:
            message = f"why the card is reported lost (1-{_REASON_MAX} characters)"
            problems.append({"field": "reason", "message": message})
    elif rec.reason is not None and len(rec.reason) > _REASON_MAX:
        problems.append({"field": "reason", "message": f"at most {_REASON_MAX} characters"})
    return problems


def check_card_log(rec: CardLog) -> CardLog:
    """Raise ``ValidationFailed`` listing every problem, or return the record unchanged."""
    problems = card_log_problems(rec)
    if problems:
        raise ValidationFailed("card log does not validate; correct the listed fields", details=problems)
    return rec
