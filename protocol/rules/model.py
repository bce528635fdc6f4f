"""What is checked (``Bill`` of ``Line``s) and what a check finds (``Hit``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ..records import Settlement
from .tables import CURRENT_SETL_ID, date_of, join_diagnoses, pric_fen

__all__ = ["Bill", "Hit", "Line", "bill_from_settlement"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Line:
    """One detail line of the bill being checked (proposed at prescribing, or being settled)."""

    feedetl_sn: str
    med_list_codg: str
    cnt: str | Decimal  # quantity, decimal text ("2", "0.5")
    pric: str | Decimal = "0"  # unit price in yuan, decimal text (up to 6 decimals)
    list_type: str = ""
    days: int | None = None  # days of supply (drugs)
    amount_fen: int | None = None  # line total; None = cnt × pric rounded half-up
    name: str = ""  # the HIS's name, used in messages when the catalogue has none
    fee_ocur_time: str | None = None  # when the item was given (ISO-8601); its date is ``fee_date``


@dataclass(frozen=True, slots=True, kw_only=True)
class Bill:
    """The person, the visit and the lines being checked. Dates are ISO (``begntime`` may carry a time)."""

    psn_no: str
    gend: str
    brdy: str
    insutype: str
    psn_type: str
    med_type: str
    dise_codg: tuple[str, ...]  # every diagnosis of the visit (ICD-10), primary first
    begntime: str
    fixmedins_code: str
    hosp_lv: str
    dr_codg: str | None = None
    dept_codg: str | None = None
    lines: tuple[Line, ...] = ()

    def __post_init__(self) -> None:
        # one text ("I10.x00,E11.900") or a list: normalised to distinct stripped codes, primary first
        codes = join_diagnoses(self.dise_codg)
        object.__setattr__(self, "dise_codg", tuple(codes.split(",")) if codes else ())
        date.fromisoformat(self.brdy[:10])
        date.fromisoformat(self.begntime[:10])
        sns = [line.feedetl_sn for line in self.lines]
        if len(set(sns)) != len(sns):
            raise ValueError("every line of a bill needs its own feedetl_sn")

    def rows(self, today: date, setl_id: str = CURRENT_SETL_ID) -> list[tuple]:
        """The bill as ``cur_lines`` rows (``CURRENT_COLUMNS`` order), settled ``today``."""
        setl_date = today.isoformat()
        diagnoses = join_diagnoses(self.dise_codg)
        rows = []
        for line in self.lines:
            cnt, pric = Decimal(line.cnt), Decimal(line.pric)
            amount = line.amount_fen
            if amount is None:
                amount = int((cnt * pric * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
            rows.append(
                (
                    self.psn_no, self.fixmedins_code, setl_id, setl_date, self.begntime[:10],
                    self.med_type, diagnoses, self.dr_codg, self.dept_codg, self.hosp_lv, line.feedetl_sn,
                    line.med_list_codg, line.list_type, float(cnt), pric_fen(line.pric), amount, line.days,
                    date_of(line.fee_ocur_time), self.gend, self.brdy, self.insutype, self.psn_type,
                )
            )  # fmt: skip
        return rows


def bill_from_settlement(record: Settlement, hosp_lv: str) -> Bill:
    """The bill of a settlement record (what the cashier settles), for the in-event check."""
    md, psn = record.mdtrt, record.psn
    return Bill(
        psn_no=psn.psn_no, gend=psn.gend, brdy=psn.brdy, insutype=psn.insutype, psn_type=psn.psn_type,
        med_type=md.med_type, dise_codg=tuple(join_diagnoses(md.dise_codg).split(",")), begntime=md.begntime,
        fixmedins_code=record.fixmedins_code, hosp_lv=hosp_lv, dr_codg=md.dr_codg, dept_codg=md.dept_codg,
        lines=tuple(
            Line(
                feedetl_sn=x.feedetl_sn, med_list_codg=x.med_list_codg, cnt=x.cnt, pric=x.pric,
                list_type=x.list_type, days=x.days, amount_fen=x.det_item_fee_sumamt, name=x.medins_list_name,
                fee_ocur_time=x.fee_ocur_time,
            )
            for x in record.feedetl
        ),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Hit:
    """One finding of one rule about one bill (``setl_id``; ``"CURRENT"`` at the agent).

    ``message`` is a sentence a doctor or cashier understands and holds no personal data;
    ``lines`` are the ``feedetl_sn`` of the checked bill it concerns (empty for a visit or person
    finding); ``evidence`` lists what was found (earlier dispensing, threshold, value…).
    """

    rule_id: str
    rule_version: int
    template: str
    severity: str
    mode: str
    action: str
    overridable: bool
    message: str
    lines: tuple[str, ...]
    evidence: tuple[Mapping[str, Any], ...]
    psn_no: str = ""
    setl_id: str = CURRENT_SETL_ID

    @property
    def shadow(self) -> bool:
        """A shadow-mode hit is recorded but never changes an outcome."""
        return self.mode == "shadow"

    def to_dict(self) -> dict[str, Any]:
        """The contract's fields, as JSON-ready values (no person number or settlement id)."""
        return {
            "rule_id": self.rule_id,
            "rule_version": self.rule_version,
            "template": self.template,
            "severity": self.severity,
            "mode": self.mode,
            "action": self.action,
            "overridable": self.overridable,
            "message": self.message,
            "lines": list(self.lines),
            "evidence": [dict(e) for e in self.evidence],
        }
