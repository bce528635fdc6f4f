"""The benefit split: who pays what of one bill, from the ``policy`` bundle.

Pure and exact: money is integer fen, ratios are at most 4 decimals and are applied in integer
arithmetic (``amount * ratio`` rounded half-up once per computed amount). The agent runs it at the
cashier's desk (``POST /v1/settlements`` and ``/preview``) and the centre runs the same code on
ingest to flag a split that differs from its own recomputation (``check_split``).

The order of the calculation (each step appends a sentence with its numbers to ``explanation``):

1. Lines of class C, lines not in the catalogue (class ``None``) and lines a rule moved to
   self-pay (``force_self_pay``) are the person's in full (``fulamt_ownpay_amt``).
2. Class B (or a line with its own ``self_pay_ratio``): the self-pay fraction first
   (``preselfpay_amt``); the rest of the line is eligible. Class A is eligible in full.
3. The eligible amount (``inscp_scp_amt``) meets the deductible first (``act_pay_dedc``): per
   admission for inpatient medical types (lower, ``deductible_later``, from the second admission of
   the year), per year otherwise (less what was met earlier in the year).
4. What is left is placed on the year's cumulative eligible amount, which the deductible also
   advances, and split by ``segments``: each piece at its segment's ``fund_ratio`` goes to the pooled
   fund (``hifp_pay``), the rest to the person (``pooled_self_pay``).
5. The pooled fund pays at most ``ceiling`` in a year. The piece that would take it over pays only
   what is left; the amount that remaining room covers is ``left / fund_ratio`` (rounded), and
   every fen of eligible amount beyond it is above the ceiling.
6. Above the ceiling, large-amount insurance pays ``large_amount_ratio`` of it, at most
   ``large_amount_ceiling`` in a year; the rest is the person's (``large_amount_self_pay``). It is
   recorded as ``hifmi_pay`` (the national code for residents' critical-illness insurance, the
   default) or ``hifob_pay`` (employees' large-amount subsidy) as the row's ``large_amount_fund`` says.
7. The person's share (``psn_part_amt`` = total - fund) is paid from the personal account where
   the row allows it (``acct_pay_allowed``), up to the balance; the rest is cash. Rounding residue
   is the person's by construction, so every split adds up exactly.

Year-to-date counters (``YearToDate``) are kept per person, year, insurance type and **benefit
pool**: the pool is the row's ``pool`` when set, else ``"inpatient"`` for inpatient medical types
and the medical type itself otherwise (``"11"``, ``"14"``…), so outpatient spending never uses up
the inpatient ceiling unless the policy says they share one. ``benefit_pool`` names it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, NamedTuple

from .document import AREA, HOSP_LEVELS, INSUTYPE, Checker
from .document import fraction as _fraction
from .document import join as _join
from .document import kind as _kind
from .errors import BenefitNotFound, FieldError, PolicyInvalid

__all__ = [
    "BenefitRow",
    "BillLine",
    "Policy",
    "Segment",
    "Split",
    "SplitInput",
    "YearToDate",
    "benefit_pool",
    "check_split",
    "compute_split",
    "is_inpatient",
    "load_policy",
    "policy_problems",
]

DEDUCTIBLE_BASES = ("admission", "year")
LARGE_AMOUNT_FUNDS = ("hifmi_pay", "hifob_pay")
MAX_MONEY = 10**12
MAX_SEGMENTS = 20
_SHOWN = 20  # problems shown in the message (``details`` has them all)
_SCALE = 10_000  # ratios are held as integer ten-thousandths
_HALF = _SCALE // 2

_CODE_2_4 = re.compile(r"^[0-9]{2,4}$")
_POOL = re.compile(r"^[a-z0-9_]{1,32}$")
_RATIO = re.compile(r"^(0(\.[0-9]{1,4})?|1(\.0{1,4})?)$")

_ROW_REQUIRED = frozenset({"year", "insutype", "psn_type", "hosp_lv", "deductible", "ceiling"})
_ROW_OPTIONAL = frozenset(
    {
        "med_type",
        "fund_ratio",
        "segments",
        "b_class_self_ratio",
        "deductible_per",
        "deductible_later",
        "large_amount_ratio",
        "large_amount_ceiling",
        "large_amount_fund",
        "acct_pay_allowed",
        "pool",
    }
)


def is_inpatient(med_type: str) -> bool:
    """Inpatient medical types (national codes 21 general, 22 injury, 23 referred, 24 from
    emergency, 21xx local subtypes, 52 maternity): the deductible is per admission."""
    return med_type.startswith("2") or med_type == "52"


# -- the policy --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """``fund_ratio`` applies to the year's cumulative eligible amount below ``up_to`` (fen) and above
    the previous segment's; ``up_to`` is None for the last, open-ended segment."""

    up_to: int | None
    fund_ratio: Decimal


@dataclass(frozen=True, slots=True)
class BenefitRow:
    """One ``benefits[i]`` of the policy document, validated; omitted optional fields filled in."""

    year: int
    insutype: str
    psn_type: str
    hosp_lv: str
    med_type: str | None  # None: every medical type without a row of its own
    deductible: int  # fen
    deductible_later: int | None  # fen; second and later admissions in a year (None: same as deductible)
    deductible_per: Literal["admission", "year"] | None  # None: by medical type (is_inpatient)
    segments: tuple[Segment, ...]  # a plain ``fund_ratio`` is one open-ended segment
    ceiling: int  # fen: the most the pooled fund pays in a year
    large_amount_ratio: Decimal | None  # None: no large-amount insurance above the ceiling
    large_amount_ceiling: int | None  # fen: the most large-amount insurance pays in a year
    large_amount_fund: Literal["hifmi_pay", "hifob_pay"]  # the record field it pays into (default hifmi_pay)
    b_class_self_ratio: Decimal  # 0 when omitted
    acct_pay_allowed: bool  # False when omitted
    pool: str | None  # None: derived (see ``pool_for``)

    def deductible_basis(self, med_type: str) -> Literal["admission", "year"]:
        if self.deductible_per is not None:
            return self.deductible_per
        return "admission" if is_inpatient(med_type) else "year"

    def pool_for(self, med_type: str) -> str:
        if self.pool is not None:
            return self.pool
        return "inpatient" if is_inpatient(med_type) else med_type


@dataclass(frozen=True, slots=True)
class Policy:
    """A validated ``policy`` document; ``find`` picks the row for a bill."""

    area: str
    name: str | None
    rows: tuple[BenefitRow, ...]
    _index: dict[tuple[int, str, str, str, str | None], BenefitRow] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        index = {(r.year, r.insutype, r.psn_type, r.hosp_lv, r.med_type): r for r in self.rows}
        object.__setattr__(self, "_index", index)

    def find(self, year: int, insutype: str, psn_type: str, hosp_lv: str, med_type: str) -> BenefitRow:
        """The row for ``med_type`` itself, else the row for every medical type; ``BenefitNotFound``."""
        row = self._index.get((year, insutype, psn_type, hosp_lv, med_type))
        if row is None:
            row = self._index.get((year, insutype, psn_type, hosp_lv, None))
        if row is None:
            raise BenefitNotFound(
                f"the policy for area {self.area} has no benefits for year {year}, insutype {insutype}, "
                f"psn_type {psn_type}, hosp_lv {hosp_lv}, med_type {med_type} (nor for every medical type): "
                "the fund share cannot be computed; ask the centre to publish a policy that covers it",
                details=[
                    {"field": name, "message": str(value)}
                    for name, value in (
                        ("year", year),
                        ("insutype", insutype),
                        ("psn_type", psn_type),
                        ("hosp_lv", hosp_lv),
                        ("med_type", med_type),
                    )
                ],
            )
        return row


# -- validation --------------------------------------------------------------------------------


class _Checker(Checker):
    """The shared document walker, keeping (path, message) pairs and checking fields by name."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []  # type: ignore[assignment]

    def add(self, path: str, message: str) -> None:
        self.problems.append((path, message))  # type: ignore[arg-type]

    def text(self, obj: dict[str, Any], name: str, path: str, *, pattern: re.Pattern[str] | None = None,
             choices: tuple[str, ...] | None = None, hint: str = "") -> None:  # fmt: skip
        if name not in obj:
            return
        value, where = obj[name], _join(path, name)
        if not isinstance(value, str):
            self.add(where, f"must be a string, found {_kind(value)}")
        elif choices is not None and value not in choices:
            self.add(where, f"{value!r} is not one of {', '.join(choices)}")
        elif pattern is not None and not pattern.fullmatch(value):
            self.add(where, f"{value!r} {hint}")
        elif pattern is None and choices is None and not 1 <= len(value) <= 200:
            self.add(where, "must be 1-200 characters")

    def integer(self, obj: dict[str, Any], name: str, path: str, lo: int, hi: int, unit: str = "") -> bool:
        """True when present and valid."""
        if name not in obj:
            return False
        value, where = obj[name], _join(path, name)
        if _fraction(value) is not None:
            self.add(where, f"{_fraction(value)} has a fraction; write an integer{unit}")
        elif not isinstance(value, int) or isinstance(value, bool):
            self.add(where, f"must be an integer{unit}, found {_kind(value)}")
        elif not lo <= value <= hi:
            self.add(where, f"{value} is outside {lo}-{hi}")
        else:
            return True
        return False

    def ratio(self, obj: dict[str, Any], name: str, path: str) -> None:
        if name not in obj:
            return
        value, where = obj[name], _join(path, name)
        if _fraction(value) is not None or (isinstance(value, int) and not isinstance(value, bool)):
            shown = _fraction(value) or value
            self.add(where, f'ratios are decimal strings: write "{shown}"')
        elif not isinstance(value, str) or not _RATIO.fullmatch(value):
            self.add(where, 'must be a decimal string from "0" to "1" with at most 4 decimals, e.g. "0.85"')

    def boolean(self, obj: dict[str, Any], name: str, path: str) -> None:
        if name in obj and not isinstance(obj[name], bool):
            self.add(_join(path, name), f"must be true or false, found {_kind(obj[name])}")


def _check_segments(c: _Checker, segments: Any, path: str) -> None:
    if not isinstance(segments, list) or not 1 <= len(segments) <= MAX_SEGMENTS:
        found = f"{len(segments)} segments" if isinstance(segments, list) else _kind(segments)
        c.add(path, f"must be a list of 1-{MAX_SEGMENTS} segments, found {found}")
        return
    previous: int | None = None
    for j, seg in enumerate(segments):
        where = f"{path}[{j}]"
        last = j == len(segments) - 1
        if c.obj(seg, where, {"fund_ratio"}, {"up_to"}) is None:
            continue
        c.ratio(seg, "fund_ratio", where)
        if last:
            if "up_to" in seg:
                c.add(
                    f"{where}.up_to",
                    "the last segment has no up_to: it covers everything above the one before",
                )
            continue
        if "up_to" not in seg:
            c.add(f"{where}.up_to", "is required (only the last segment is open-ended)")
        elif c.integer(seg, "up_to", where, 1, MAX_MONEY, " of fen"):
            up_to = seg["up_to"]
            if previous is not None and up_to <= previous:
                c.add(f"{where}.up_to", f"{up_to} is not above the previous segment's up_to {previous}")
            previous = up_to


def _check_row(c: _Checker, row: Any, path: str) -> bool:
    if c.obj(row, path, _ROW_REQUIRED, _ROW_OPTIONAL) is None:
        return False
    c.integer(row, "year", path, 2000, 2100)
    c.text(row, "insutype", path, pattern=INSUTYPE, hint="must be a 3-digit insutype")
    c.text(row, "psn_type", path, pattern=_CODE_2_4, hint="must be 2-4 digits")
    c.text(row, "hosp_lv", path, choices=HOSP_LEVELS)
    c.text(row, "med_type", path, pattern=_CODE_2_4, hint="must be 2-4 digits")
    has_ded = c.integer(row, "deductible", path, 0, MAX_MONEY, " of fen")
    c.text(row, "deductible_per", path, choices=DEDUCTIBLE_BASES)
    if c.integer(row, "deductible_later", path, 0, MAX_MONEY, " of fen"):
        later, ded = row["deductible_later"], row.get("deductible")
        basis, med_type = row.get("deductible_per"), row.get("med_type")
        per_year = basis == "year" or (
            basis is None and isinstance(med_type, str) and not is_inpatient(med_type)
        )
        if per_year:
            c.add(
                f"{path}.deductible_later",
                "applies to a deductible per admission only "
                '(an inpatient med_type or deductible_per "admission")',
            )
        elif has_ded and later > ded:
            c.add(f"{path}.deductible_later", f"{later} is above the deductible {ded} of a first admission")
    if c.integer(row, "ceiling", path, 0, MAX_MONEY, " of fen") and has_ded:
        if row["ceiling"] < row["deductible"]:
            c.add(f"{path}.ceiling", f"{row['ceiling']} is below the deductible {row['deductible']}")
    if "fund_ratio" in row and "segments" in row:
        c.add(f"{path}.segments", "give either fund_ratio (one ratio) or segments, not both")
    elif "segments" in row:
        _check_segments(c, row["segments"], f"{path}.segments")
    elif "fund_ratio" in row:
        c.ratio(row, "fund_ratio", path)
    else:
        c.add(f"{path}.fund_ratio", "is required (or segments)")
    c.ratio(row, "large_amount_ratio", path)
    c.integer(row, "large_amount_ceiling", path, 0, MAX_MONEY, " of fen")
    if "large_amount_ratio" in row and "large_amount_ceiling" not in row:
        c.add(f"{path}.large_amount_ceiling", "is required with large_amount_ratio")
    if "large_amount_ceiling" in row and "large_amount_ratio" not in row:
        c.add(f"{path}.large_amount_ratio", "is required with large_amount_ceiling")
    c.text(row, "large_amount_fund", path, choices=LARGE_AMOUNT_FUNDS)
    if "large_amount_fund" in row and "large_amount_ratio" not in row:
        c.add(f"{path}.large_amount_fund", "only with large_amount_ratio and large_amount_ceiling")
    c.ratio(row, "b_class_self_ratio", path)
    c.boolean(row, "acct_pay_allowed", path)
    c.text(row, "pool", path, pattern=_POOL, hint="must be 1-32 of a-z, 0-9, '_' (e.g. inpatient)")
    return True


def policy_problems(doc: Any) -> list[tuple[str, str]]:
    """Every problem of a ``policy`` document as (field path, message), in document order."""
    c = _Checker()
    if c.obj(doc, "", {"area", "benefits"}, {"name"}) is None:
        return [("", f"the document must be a JSON object, found {_kind(doc)}")]
    c.text(doc, "name", "")
    area = doc.get("area")
    if "area" in doc and (not isinstance(area, str) or not AREA.fullmatch(area)):
        c.add("area", f"{area!r} must be a 6-digit pooling area code like 370200")
    benefits = doc.get("benefits")
    if "benefits" not in doc:
        return c.problems
    if not isinstance(benefits, list):
        c.add("benefits", f"must be a list, found {_kind(benefits)}")
        return c.problems
    if not benefits:
        c.add("benefits", "must hold at least one entry")
    seen: dict[tuple[str, ...], int] = {}
    for i, row in enumerate(benefits):
        path = f"benefits[{i}]"
        if not _check_row(c, row, path):
            continue
        key = tuple(str(row.get(k)) for k in ("year", "insutype", "psn_type", "hosp_lv", "med_type"))
        if key in seen:
            c.add(path, f"repeats benefits[{seen[key]}] (same year, insutype, psn_type, hosp_lv, med_type)")
        else:
            seen[key] = i
    return c.problems


def load_policy(doc: Any) -> Policy:
    """Validate a ``policy`` document (the JSON object) and build the ``Policy``.

    Raises ``PolicyInvalid`` naming every problem with its place (``benefits[2].segments[1].fund_ratio:
    …``); ``exc.problems`` has them as ``"path: message"`` lines.
    """
    problems = policy_problems(doc)
    if problems:
        n, shown = len(problems), problems[:_SHOWN]
        lines = [f"the policy document is not valid ({n} problem{'s' if n != 1 else ''}):"]
        lines += [f"  - {path}: {msg}" if path else f"  - {msg}" for path, msg in shown]
        if n > len(shown):
            lines.append(f"  … and {n - len(shown)} more")
        raise PolicyInvalid(
            "\n".join(lines), details=[{"field": path, "message": message} for path, message in problems]
        )
    rows = tuple(_build_row(row) for row in doc["benefits"])
    return Policy(area=doc["area"], name=doc.get("name"), rows=rows)


def _build_row(row: dict[str, Any]) -> BenefitRow:
    if "segments" in row:
        segments = tuple(Segment(s.get("up_to"), Decimal(s["fund_ratio"])) for s in row["segments"])
    else:
        segments = (Segment(None, Decimal(row["fund_ratio"])),)
    large = row.get("large_amount_ratio")
    return BenefitRow(
        year=row["year"],
        insutype=row["insutype"],
        psn_type=row["psn_type"],
        hosp_lv=row["hosp_lv"],
        med_type=row.get("med_type"),
        deductible=row["deductible"],
        deductible_later=row.get("deductible_later"),
        deductible_per=row.get("deductible_per"),
        segments=segments,
        ceiling=row["ceiling"],
        large_amount_ratio=Decimal(large) if large is not None else None,
        large_amount_ceiling=row.get("large_amount_ceiling"),
        large_amount_fund=row.get("large_amount_fund", "hifmi_pay"),
        b_class_self_ratio=Decimal(row.get("b_class_self_ratio", "0")),
        acct_pay_allowed=row.get("acct_pay_allowed", False),
        pool=row.get("pool"),
    )


# -- the bill and the year so far --------------------------------------------------------------


class BillLine(NamedTuple):
    """One fee-detail line as the split sees it (a plain tuple in this order works too).

    ``self_pay_ratio`` is the item's own self-pay fraction from the catalogue (``"0.10"`` or a
    Decimal); None takes the row's ``b_class_self_ratio`` for class B and nothing for class A.
    """

    feedetl_sn: str
    amount_fen: int  # det_item_fee_sumamt, >= 0
    cls: Literal["A", "B", "C"] | None  # catalogue class; None = not in the catalogue
    self_pay_ratio: Decimal | str | None = None
    force_self_pay: bool = False  # a rule moved this line to self-pay


@dataclass(frozen=True, slots=True)
class SplitInput:
    """The bill: the person's insutype and psn_type, the hospital's level, the visit's med_type, the lines."""

    insutype: str
    psn_type: str
    hosp_lv: str
    med_type: str
    lines: Sequence[BillLine | tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class YearToDate:
    """One person's totals in one benefit pool (``benefit_pool``) of one year, before a bill, in fen."""

    eligible: int = 0  # cumulative eligible amount (inscp_scp_amt), deductible portions included
    fund_paid: int = 0  # pooled fund (hifp_pay) paid; counts against ``ceiling``
    large_amount_paid: int = 0  # large-amount insurance paid (hifmi_pay or hifob_pay); against its ceiling
    admissions: int = 0  # admissions settled (per-admission deductible: 0 means this is the first)
    deductible_met: int = 0  # per-year deductible met so far (per-admission deductibles do not count)


@dataclass(frozen=True, slots=True)
class Split:
    """The split of one bill. The six record fields add up; the rest says how they came about."""

    medfee_sumamt: int
    fund_pay_sumamt: int  # hifp_pay + hifmi_pay + hifob_pay
    hifp_pay: int  # pooled fund
    hifmi_pay: int  # critical-illness insurance above the ceiling (large_amount_fund "hifmi_pay")
    hifob_pay: int  # large-amount subsidy above the ceiling (large_amount_fund "hifob_pay"); else 0
    acct_pay: int  # personal account
    psn_cash_pay: int
    psn_part_amt: int  # the person's share: acct_pay + psn_cash_pay
    fulamt_ownpay_amt: int  # class C, not in the catalogue, moved to self-pay by a rule
    preselfpay_amt: int  # class B self-pay fraction first
    inscp_scp_amt: int  # eligible amount: total - fulamt_ownpay_amt - preselfpay_amt
    act_pay_dedc: int  # deductible applied to this bill
    pooled_self_pay: int  # the person's part of the segments below the ceiling
    above_ceiling_amt: int  # eligible amount above the pooled fund's annual ceiling
    large_amount_self_pay: int  # above_ceiling_amt - the large-amount pay
    line_self_pay: dict[str, int]  # feedetl_sn -> self-pay of that line (full, or the class B fraction)
    explanation: tuple[str, ...]  # one sentence per step, with its numbers, for the cashier
    ytd_after: YearToDate  # the pool's totals after this bill
    pool: str  # the benefit pool the year-to-date totals belong to
    deductible_basis: Literal["admission", "year"]
    acct_pay_allowed: bool
    row: BenefitRow

    def amounts(self) -> dict[str, int]:
        """The record's fields: ``medfee_sumamt`` and ``protocol.records.SPLIT_FIELDS``."""
        return {
            "medfee_sumamt": self.medfee_sumamt,
            "fund_pay_sumamt": self.fund_pay_sumamt,
            "hifp_pay": self.hifp_pay,
            "hifmi_pay": self.hifmi_pay,
            "hifob_pay": self.hifob_pay,
            "acct_pay": self.acct_pay,
            "psn_cash_pay": self.psn_cash_pay,
        }


# -- arithmetic --------------------------------------------------------------------------------


def _ratio_units(value: Decimal) -> int:
    """A validated ratio → integer ten-thousandths."""
    return int(value * _SCALE)


def _times(amount: int, units: int) -> int:
    """``amount * ratio`` rounded half-up to the fen (amount >= 0)."""
    return (amount * units + _HALF) // _SCALE


def _divided(amount: int, units: int) -> int:
    """``amount / ratio`` rounded half-up to the fen (amount >= 0, units > 0)."""
    return (2 * amount * _SCALE + units) // (2 * units)


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole:,}.{cents:02d}"


def _pct(units: int) -> str:
    return format((Decimal(units) / 100).normalize(), "f") + "%"


def _line_ratio(value: Decimal | str, where: str) -> int:
    if isinstance(value, str):
        if not _RATIO.fullmatch(value):
            raise FieldError(
                "a self-pay ratio is a decimal from 0 to 1 with at most 4 decimals",
                details=[{"field": where, "message": f"{value!r} is not a ratio like 0.10"}],
            )
        return _ratio_units(Decimal(value))
    if isinstance(value, Decimal) and value.is_finite() and 0 <= value <= 1:
        units = value * _SCALE
        if units == units.to_integral_value():
            return int(units)
    raise FieldError(
        "a self-pay ratio is a decimal from 0 to 1 with at most 4 decimals",
        details=[{"field": where, "message": f"{value!r} is not a ratio like Decimal('0.10')"}],
    )


def _check_count(value: Any, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FieldError(
            "amounts (integer fen) and counts are never negative",
            details=[{"field": where, "message": f"{value!r} is not a non-negative integer"}],
        )


def _lines(bill: SplitInput) -> list[BillLine]:
    lines, seen = [], set()
    for i, raw in enumerate(bill.lines):
        line = raw if isinstance(raw, BillLine) else BillLine(*raw)
        where = f"lines[{i}]"
        if not isinstance(line.feedetl_sn, str) or not line.feedetl_sn or line.feedetl_sn in seen:
            raise FieldError(
                "each line needs its own feedetl_sn",
                details=[{"field": f"{where}.feedetl_sn", "message": "missing or repeated"}],
            )
        seen.add(line.feedetl_sn)
        _check_count(line.amount_fen, f"{where}.amount_fen")
        if line.cls not in ("A", "B", "C", None):
            raise FieldError(
                "the catalogue class is A, B, C or None (not in the catalogue)",
                details=[{"field": f"{where}.cls", "message": f"{line.cls!r} is not A, B, C or None"}],
            )
        lines.append(line)
    return lines


def benefit_pool(policy: Policy, bill: SplitInput, *, year: int) -> str:
    """The benefit pool whose ``YearToDate`` ``compute_split`` needs for ``bill``."""
    row = policy.find(year, bill.insutype, bill.psn_type, bill.hosp_lv, bill.med_type)
    return row.pool_for(bill.med_type)


# -- the split ---------------------------------------------------------------------------------


def compute_split(
    policy: Policy, bill: SplitInput, ytd: YearToDate, *, year: int, acct_balance: int | None = None
) -> Split:
    """Split ``bill`` between the funds and the person (see the module's docstring for the order).

    ``ytd`` holds the person's totals in this bill's benefit pool (``benefit_pool``) before it;
    ``acct_balance`` is the personal account's balance in fen (None: unknown, the account pays
    nothing). Raises ``BenefitNotFound`` when the policy has no row for the bill and ``FieldError``
    for a malformed bill.
    """
    row = policy.find(year, bill.insutype, bill.psn_type, bill.hosp_lv, bill.med_type)
    for name in ("eligible", "fund_paid", "large_amount_paid", "admissions", "deductible_met"):
        _check_count(getattr(ytd, name), f"ytd.{name}")
    if acct_balance is not None:
        _check_count(acct_balance, "acct_balance")
    say: list[str] = []

    # 1-2. Catalogue class: self-pay in full, self-pay fraction first, eligible.
    total = fulamt = presel = 0
    line_self: dict[str, int] = {}
    b_units = _ratio_units(row.b_class_self_ratio)
    for i, line in enumerate(_lines(bill)):
        sn, amount = line.feedetl_sn, line.amount_fen
        total += amount
        if line.force_self_pay or line.cls in ("C", None):
            if line.force_self_pay:
                why = "moved to self-pay by a rule"
            else:
                why = "class C" if line.cls == "C" else "not in the catalogue"
            line_self[sn] = amount
            fulamt += amount
            say.append(f"line {sn}: {_yuan(amount)} {why}, self-pay in full")
            continue
        if line.self_pay_ratio is not None:
            units = _line_ratio(line.self_pay_ratio, f"lines[{i}].self_pay_ratio")
        else:
            units = b_units if line.cls == "B" else 0
        own = _times(amount, units)
        line_self[sn] = own
        presel += own
        if units:
            say.append(
                f"line {sn}: class {line.cls} {_yuan(amount)}, self-pay first {_pct(units)} → {_yuan(own)}"
            )
    eligible = total - fulamt - presel
    say.append(
        f"eligible amount {_yuan(eligible)} of the total {_yuan(total)} "
        f"(eligible earlier this year {_yuan(ytd.eligible)})"
    )

    # 3. Deductible.
    basis = row.deductible_basis(bill.med_type)
    if basis == "admission":
        later = ytd.admissions > 0 and row.deductible_later is not None
        due = row.deductible_later if later and row.deductible_later is not None else row.deductible
        deductible = min(due, eligible)
        which = f"admission {ytd.admissions + 1} this year" + (", the lower deductible for later admissions"
                                                              if later else "")  # fmt: skip
        say.append(f"deductible {_yuan(deductible)} of {_yuan(due)} applied ({which})")
    else:
        remaining = max(0, row.deductible - ytd.deductible_met)
        deductible = min(remaining, eligible)
        if row.deductible == 0:
            say.append("no deductible")
        elif remaining == 0:
            say.append(f"deductible {_yuan(row.deductible)} for the year already met")
        else:
            say.append(
                f"deductible {_yuan(deductible)} of {_yuan(remaining)} applied "
                f"(per year {_yuan(row.deductible)}, {_yuan(row.deductible - remaining)} met earlier)"
            )

    # 4-5. Segments on the year's cumulative eligible amount, the pooled fund up to its ceiling.
    start, end = ytd.eligible + deductible, ytd.eligible + eligible
    room = max(0, row.ceiling - ytd.fund_paid)
    hifp = pooled_self = above = 0
    capped = False
    lower = 0
    for seg in row.segments:
        upper = seg.up_to
        lo, hi = max(start, lower), end if upper is None else min(end, upper)
        if upper is not None:
            lower = upper
        if hi <= lo:
            continue
        amount = hi - lo
        if capped:
            above += amount
            continue
        units = _ratio_units(seg.fund_ratio)
        pay = _times(amount, units)
        where = f"the year's eligible amount from {_yuan(lo)} to {_yuan(hi)}"
        if pay <= room - hifp:
            hifp += pay
            pooled_self += amount - pay
            say.append(f"segment {seg.fund_ratio} on {_yuan(amount)} → {_yuan(pay)} ({where})")
            continue
        left = room - hifp
        covered = min(amount, _divided(left, units))
        hifp += left
        pooled_self += covered - left
        above += amount - covered
        capped = True
        if left:
            say.append(
                f"segment {seg.fund_ratio} on {_yuan(amount)} → {_yuan(pay)}, but only {_yuan(left)} of the "
                f"annual fund ceiling {_yuan(row.ceiling)} is left: the fund pays {_yuan(left)} "
                f"(covering {_yuan(covered)}), {_yuan(amount - covered)} is above the ceiling ({where})"
            )
        else:
            say.append(
                f"the annual fund ceiling {_yuan(row.ceiling)} is reached: "
                f"{_yuan(amount)} is above it ({where})"
            )

    # 6. Large-amount insurance above the ceiling.
    large = 0
    if above:
        if row.large_amount_ratio is not None and row.large_amount_ceiling is not None:
            units = _ratio_units(row.large_amount_ratio)
            la_room = max(0, row.large_amount_ceiling - ytd.large_amount_paid)
            want = _times(above, units)
            large = min(want, la_room)
            text = f"large-amount insurance {row.large_amount_ratio} on {_yuan(above)} → {_yuan(want)}"
            if large < want:
                text += (
                    f", limited to the {_yuan(la_room)} left of its annual ceiling "
                    f"{_yuan(row.large_amount_ceiling)}: it pays {_yuan(large)}"
                )
            say.append(text)
        else:
            say.append(
                f"{_yuan(above)} above the ceiling: no large-amount insurance for it, the person pays it"
            )
    fund = hifp + large
    hifmi, hifob = (large, 0) if row.large_amount_fund == "hifmi_pay" else (0, large)

    # 7. The person's share: personal account where allowed, up to the balance; the rest cash.
    person = total - fund
    if not row.acct_pay_allowed:
        acct = 0
        account = "the personal account may not pay for this benefit"
    elif acct_balance is None:
        acct = 0
        account = "personal account balance unknown"
    else:
        acct = min(acct_balance, person)
        account = f"personal account {_yuan(acct)} (balance {_yuan(acct_balance)})"
    cash = person - acct
    say.append(
        f"fund {_yuan(fund)} (pooled {_yuan(hifp)}, large-amount {_yuan(large)}); "
        f"person {_yuan(person)}: {account}, cash {_yuan(cash)}"
    )

    ytd_after = YearToDate(
        eligible=ytd.eligible + eligible,
        fund_paid=ytd.fund_paid + hifp,
        large_amount_paid=ytd.large_amount_paid + large,
        admissions=ytd.admissions + (1 if basis == "admission" else 0),
        deductible_met=ytd.deductible_met + (deductible if basis == "year" else 0),
    )
    return Split(
        medfee_sumamt=total,
        fund_pay_sumamt=fund,
        hifp_pay=hifp,
        hifmi_pay=hifmi,
        hifob_pay=hifob,
        acct_pay=acct,
        psn_cash_pay=cash,
        psn_part_amt=person,
        fulamt_ownpay_amt=fulamt,
        preselfpay_amt=presel,
        inscp_scp_amt=eligible,
        act_pay_dedc=deductible,
        pooled_self_pay=pooled_self,
        above_ceiling_amt=above,
        large_amount_self_pay=above - large,
        line_self_pay=line_self,
        explanation=tuple(say),
        ytd_after=ytd_after,
        pool=row.pool_for(bill.med_type),
        deductible_basis=basis,
        acct_pay_allowed=row.acct_pay_allowed,
        row=row,
    )


def check_split(record_amounts: Mapping[str, Any] | Any, split: Split, *, account_known: bool = True
                ) -> list[dict[str, Any]]:  # fmt: skip
    """Differences between a recorded split (a mapping or a record such as ``Settlement``) and ``split``,
    the recomputation; empty when they agree.

    Each difference is ``{"field", "recorded", "computed", "message"}``; a field the record leaves
    None is a difference. With ``account_known=False`` (the centre does not know the account balance
    at the time) ``acct_pay`` and ``psn_cash_pay`` are checked only together, against the person's
    share, and the account may pay only where the policy allows it.
    """

    def recorded(name: str) -> Any:
        if isinstance(record_amounts, Mapping):
            return record_amounts.get(name)
        return getattr(record_amounts, name, None)

    def show(value: Any) -> str:
        return _yuan(value) if isinstance(value, int) and not isinstance(value, bool) else "nothing"

    computed = split.amounts()
    person = ("acct_pay", "psn_cash_pay")
    names = [n for n in computed if account_known or n not in person]
    differences = []
    for name in names:
        value = recorded(name)
        if value != computed[name] or isinstance(value, bool):
            differences.append(
                {
                    "field": name,
                    "recorded": value,
                    "computed": computed[name],
                    "message": f"{name} recorded {show(value)}, recomputed {_yuan(computed[name])}",
                }
            )
    if not account_known:
        acct, cash = recorded("acct_pay"), recorded("psn_cash_pay")
        both = isinstance(acct, int) and isinstance(cash, int)
        share = acct + cash if both else None
        if share != split.psn_part_amt:
            differences.append(
                {
                    "field": "psn_part_amt",
                    "recorded": share,
                    "computed": split.psn_part_amt,
                    "message": (
                        f"personal account {show(acct)} + cash {show(cash)} is not the person's share "
                        f"{_yuan(split.psn_part_amt)}"
                    ),
                }
            )
        elif acct and not split.acct_pay_allowed:
            differences.append(
                {
                    "field": "acct_pay",
                    "recorded": acct,
                    "computed": 0,
                    "message": f"the personal account paid {_yuan(acct)} where the policy does not allow it",
                }
            )
    return differences
