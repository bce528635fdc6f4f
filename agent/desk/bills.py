"""Pending bills: what the HIS hands the desk, and the settlement body the desk builds from one.

Why the desk holds bills at all: the HIS knows the visit and its lines; the cashier's screen knows who
is at the counter (the card or voucher read here) and the doctor's page knows which prompts the doctor
overrode. A bill joins the three until the cashier settles it through the one settlement path
(``agent.settle``). Bills live in memory (at most ``MAX_BILLS``, ``BILL_TTL_S``): the durable record is
the settlement; a bill lost in a restart is posted again by the HIS (same ``his_setl_no``, so a bill
that was settled just before answers its first receipt).

A bill is a settlement body without the person's identity: ``psn`` carries what the HIS knows
(``insutype``, ``psn_type``, optionally ``psn_no`` — the patient the bill is for — ``emp_no``, ``gend``,
``brdy``); the card or voucher fills in the rest. It is validated when posted, with a placeholder
person, so a bad line is refused then and not at the counter.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from agent.config import AgentConfig
from agent.identity import Identity
from agent.intake import parse_settlement
from agent.users import Principal
from protocol.errors import ValidationFailed

from .errors import BillNotFound, PatientMismatch

__all__ = ["BILL_TTL_S", "MAX_BILLS", "Bill", "Bills", "mask_id", "mask_name", "parse_bill", "walk_in_bill"]

MAX_BILLS = 5_000
BILL_TTL_S = 24 * 3600
#: Stands in for the person while a posted bill is validated (never stored anywhere).
_PLACEHOLDER = {"psn_no": "0", "insuplc_admdvs": "000000", "gend": "9", "brdy": "1900-01-01"}
_PSN_FROM_HIS = ("psn_no", "insutype", "psn_type", "emp_no", "gend", "brdy", "insuplc_admdvs")


@dataclass
class Bill:
    """One visit waiting at the desk (memory only)."""

    id: str
    body: dict[str, Any]
    created: float
    identity: Identity | None = None
    preview: dict[str, Any] | None = None
    #: What the held ``cards`` bundle says of the card read: ``correction`` (or None) and ``notices``.
    card_notes: dict[str, Any] | None = None
    #: The prompts the doctor was last shown (rule id → prompt), so an override names a shown one.
    prompts: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: rule id → {rule_id, reason, dr_codg, doctor, at}: the doctor's overrides, in their own name.
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The doctor who overrode (their identity from their own sign-in); one doctor per bill.
    doctor: Principal | None = None
    receipt: dict[str, Any] | None = None

    @property
    def his_setl_no(self) -> str:
        return str(self.body["his_setl_no"])

    @property
    def expected_psn_no(self) -> str | None:
        return self.body.get("psn", {}).get("psn_no")

    def lines(self) -> list[dict[str, Any]]:
        return list(self.body["feedetl"])

    def patient_psn(self) -> dict[str, Any]:
        """The person as far as known: the HIS's fields, overlaid by the card's or voucher's."""
        psn = dict(self.body.get("psn", {}))
        ident = self.identity
        if ident is not None:
            psn["psn_no"], psn["insuplc_admdvs"] = ident.psn_no, ident.insuplc_admdvs
            for name in ("gend", "brdy", "card_sn"):
                if getattr(ident, name):
                    psn[name] = getattr(ident, name)
        return psn

    def set_identity(self, identity: Identity) -> None:
        """The person at the counter; refused when the HIS's bill names somebody else."""
        if self.expected_psn_no and identity.psn_no != self.expected_psn_no:
            raise PatientMismatch(
                "this card or code belongs to another person than the patient of this bill: check who is at "
                "the counter, or have the HIS post the bill for this patient"
            )
        self.identity, self.preview, self.card_notes = identity, None, None

    def settlement_body(self) -> bytes:
        """The body the one settlement path parses: the bill, the person read here, the overrides."""
        body = copy.deepcopy(self.body)
        ident = self.identity
        if ident is not None:
            body["psn"] = self.patient_psn()
            body["mdtrt_cert_type"], body["mdtrt_cert_no"] = ident.mdtrt_cert_type, ident.mdtrt_cert_no
        if self.overrides:
            body["overrides"] = [
                {"rule_id": o["rule_id"], "reason": o["reason"]} for o in self.overrides.values()
            ]
        return json.dumps(body).encode()

    def prescription(self) -> bytes:
        """The bill as a doctor's prescription check request (``DeskChecks.prescription``)."""
        psn, md = self.patient_psn(), self.body["mdtrt"]
        lines = [
            {k: x[k] for k in ("feedetl_sn", "med_list_codg", "cnt", "pric", "list_type", "days",
                               "medins_list_name") if x.get(k) is not None}
            for x in self.body["feedetl"]
        ]  # fmt: skip
        return json.dumps({
            "psn": {k: psn[k] for k in ("psn_no", "gend", "brdy", "insutype", "psn_type") if psn.get(k)},
            "mdtrt": {k: md[k] for k in ("med_type", "dise_codg", "begntime", "dr_codg", "dept_codg")
                      if md.get(k)},
            "lines": [{**x, "cnt": str(x["cnt"]), "pric": str(x["pric"])} for x in lines],
            "fixmedins_code": self.body["fixmedins_code"],
        }).encode()  # fmt: skip


class Bills:
    """The pending bills by id; oldest dropped first beyond ``MAX_BILLS``, none older than the TTL."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._by_id: OrderedDict[str, Bill] = OrderedDict()
        self._clock = clock

    def add(self, body: dict[str, Any]) -> Bill:
        now = self._clock()
        for key in [k for k, b in self._by_id.items() if now - b.created > BILL_TTL_S]:
            del self._by_id[key]
        while len(self._by_id) >= MAX_BILLS:
            self._by_id.popitem(last=False)
        bill = Bill(secrets.token_urlsafe(16), body, now)
        self._by_id[bill.id] = bill
        return bill

    def get(self, bill_id: str) -> Bill:
        bill = self._by_id.get(bill_id)
        if bill is None or self._clock() - bill.created > BILL_TTL_S:
            raise BillNotFound(
                "no pending bill with this id at this agent (it was never posted, expired, or the agent "
                "restarted): open the bill again from the HIS"
            )
        return bill


def parse_bill(raw: bytes, config: AgentConfig) -> dict[str, Any]:
    """A posted bill, validated as a settlement with a placeholder person; ``ValidationFailed`` else."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("psn", {}), dict):
        raise ValidationFailed(
            "the bill must be a JSON object: a settlement body whose psn holds what the HIS knows",
            details=[{"field": "$", "message": "not a JSON object"}],
        )
    body.setdefault("fixmedins_code", config.fixmedins_code)
    psn = body.setdefault("psn", {})
    unknown = sorted(set(psn) - set(_PSN_FROM_HIS))
    problems = [{"field": f"psn.{k}", "message": "the desk reads this from the card, or it is not stored"}
                for k in unknown]  # fmt: skip
    if "overrides" in body:
        problems.append({"field": "overrides", "message": "overrides are made on the doctor's desk page"})
    if problems:
        raise ValidationFailed("the bill does not validate; correct the listed fields", details=problems)
    trial = {**body, "psn": {**_PLACEHOLDER, **{k: v for k, v in psn.items() if k != "psn_no"}}}
    parse_settlement(json.dumps(trial).encode(), fixmedins_code=config.fixmedins_code or None)
    return body


def walk_in_bill(form: Any, cashier: Principal, config: AgentConfig) -> dict[str, Any]:
    """A bill the cashier types in for a patient the HIS sent none for (up to ``WALK_IN_LINES`` lines)."""
    lines, total = [], Decimal(0)
    for i in range(WALK_IN_LINES):
        code = (form.get(f"code{i}") or "").strip()
        if not code:
            continue
        cnt, pric = (form.get(f"cnt{i}") or "").strip(), (form.get(f"pric{i}") or "").strip()
        try:
            amount = Decimal(cnt) * Decimal(pric)
        except InvalidOperation:
            amount = Decimal(0)
        total += amount
        lines.append({
            "feedetl_sn": str(i + 1), "list_type": (form.get(f"type{i}") or "101").strip(),
            "med_list_codg": code, "medins_list_name": (form.get(f"name{i}") or code).strip(),
            "cnt": cnt, "pric": pric, "det_item_fee_sumamt": str(amount),
        })  # fmt: skip
    if not lines:
        raise ValidationFailed(
            "a bill needs at least one line", details=[{"field": "code0", "message": "enter an item code"}]
        )
    stamp = dt.datetime.now().astimezone()
    no = f"DESK-{stamp:%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
    body = {
        "fixmedins_code": config.fixmedins_code, "his_setl_no": no, "opter": cashier.name,
        "psn": {"insutype": (form.get("insutype") or "310").strip(),
                "psn_type": (form.get("psn_type") or "11").strip()},
        "mdtrt": {"mdtrt_id": no, "med_type": (form.get("med_type") or "11").strip(),
                  "begntime": stamp.isoformat(timespec="seconds"),
                  "dise_codg": (form.get("dise_codg") or "").strip() or "Z00.0"},
        "feedetl": lines, "medfee_sumamt": str(total),
    }  # fmt: skip
    return parse_bill(json.dumps(body).encode(), config)


WALK_IN_LINES = 3


def mask_name(name: str | None) -> str:
    """A cashier screen's name: the surname, the rest as stars (张** for 张三丰)."""
    if not name:
        return ""
    return name[0] + "*" * max(1, len(name) - 1)


def mask_id(number: str | None) -> str:
    """An ID or person number with only its first four and last four characters shown."""
    if not number:
        return ""
    if len(number) <= 8:
        return number[:1] + "*" * (len(number) - 1)
    return number[:4] + "*" * (len(number) - 8) + number[-4:]
