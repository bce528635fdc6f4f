"""National transactions 3101/3102 (pre-event and in-event analysis).

3101/3102 run our rule library (``agent.checks`` → ``protocol.rules.evaluate``, the same evaluation as
``POST /v1/checks/prescription`` and the settlement's in-event check) over the platform's
``patient_dtos[]`` and answer its ``result[]`` shape.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from protocol.records import fen_to_text, line_total_fen
from protocol.rules import Bill, Line

from .envelope import Envelope, National
from .fields import Fields, NationalError
from .settling import list_type_of

__all__ = ["RULE_TRANSACTIONS", "SEV_DEG", "rule_name", "sev_deg"]

#: Our severity → ``sev_deg``. The platform's code table is not public; we chose 1 = clear violation
#: (our ``block``: the settlement is refused or moved to self-pay), 2 = suspicious (``warn``), 3 = for
#: information (``info``): the lower the number the more serious, as in the platform's other level codes.
SEV_DEG = {"block": "1", "warn": "2", "info": "3"}


def sev_deg(severity: str) -> str:
    return SEV_DEG.get(severity, "3")


def rule_name(nat: National, rule_id: str) -> str:
    if nat.desk is None:
        return rule_id
    rule = nat.desk.rule(rule_id)
    return (rule.name if rule is not None else "") or rule_id


def _bill(
    nat: National, patient: Fields, psn_no: str, gend: str, brdy: str, enc: Fields
) -> tuple[Bill | None, dict]:
    mdtrt_id = enc.text("mdtrt_id", hint="the visit's id in the HIS")
    med_type = enc.text("med_type", required=False, pattern=r"\d{2,4}") or enc.text(
        "med_mdtrt_type", required=False, pattern=r"\d{2,4}"
    )
    adm_date = enc.date_time("adm_date", required=False) or enc.date("adm_date", required=False)
    insutype = enc.text("insutype", required=False, pattern=r"\d{3}") or "310"
    diags = []
    for x in enc.items("fsi_diagnose_dtos", max_items=50):
        code = x.text("dise_codg", hint="the ICD-10 code")
        main = x.text("maindise_flag", required=False, max_len=1) == "1"
        srt = x.integer("dias_srt_no", low=0, high=99) or 99
        diags.append((0 if main else 1, srt, code))
    amounts: dict[str, int] = {}
    types: dict[str, str] = {}
    lines = []
    for x in enc.items("fsi_order_dtos", required=False, max_items=2000):
        rx_id = x.text("rx_id", hint="the order line's id")
        code = x.text("hilist_code", max_len=50, hint="the national catalogue code")
        cnt = x.decimal("cnt", 4, positive=True)
        pric = x.decimal("pric", 6)
        sumamt = x.money("sumamt", required=False)
        days = x.integer("medc_days", low=0, high=366)
        name = x.text("hosplist_name", required=False, max_len=200) or ""
        list_type = x.text("list_type", required=False, pattern=r"\d{3}")
        if rx_id and code and cnt and pric is not None:
            fen = sumamt if sumamt is not None else line_total_fen(cnt, pric)
            amounts[rx_id] = fen
            types[rx_id] = x.text("hilist_type", required=False, max_len=8) or ""
            lines.append(
                Line(
                    feedetl_sn=rx_id,
                    med_list_codg=code,
                    cnt=cnt,
                    pric=pric,
                    days=days,
                    name=name,
                    list_type=list_type or list_type_of(code),
                    amount_fen=fen,
                )
            )
    if not med_type:
        enc.add("med_type", "required: the national medical type, e.g. 11 general outpatient")
    if not adm_date:
        enc.add("adm_date", "required: the visit's date yyyy-MM-dd (or a time yyyy-MM-dd HH:mm:ss)")
    if patient.problems or not mdtrt_id or not med_type or not adm_date:
        return None, {}
    codes = tuple(c for _m, _s, c in sorted(diags) if c)
    bill = Bill(
        psn_no=psn_no,
        gend=gend,
        brdy=brdy,
        insutype=insutype,
        psn_type="11",
        med_type=med_type,
        dise_codg=codes,
        begntime=adm_date.replace(" ", "T"),
        fixmedins_code=nat.config.fixmedins_code,
        hosp_lv=enc.text("medins_lv", required=False, max_len=2) or nat.config.hosp_lv,
        dr_codg=enc.text("dr_codg", required=False),
        dept_codg=enc.text("adm_dept_codg", required=False),
        lines=tuple(lines),
    )
    return bill, {"mdtrt_id": mdtrt_id, "amounts": amounts, "types": types}


async def _analyse(nat: National, env: Envelope, moment: str) -> dict[str, Any]:
    inp = Fields(env.input, "input")
    d = inp.child("data")
    if d is None:
        inp.check()
    assert d is not None
    bills = []
    for p in d.items("patient_dtos", max_items=50):
        psn_no = p.text("patn_id", hint="the person number (psn_no)")
        gend = p.code("gend", {"1": "male", "2": "female", "9": "unknown"})
        brdy = p.date("brdy")
        p.text("patn_name", required=False, max_len=50)  # accepted, never used or stored
        for enc in p.items("fsi_encounter_dtos", max_items=20):
            if psn_no and gend and brdy:
                bill, meta = _bill(nat, p, psn_no, gend, brdy, enc)
                if bill is not None:
                    bills.append((psn_no, bill, meta))
    inp.check()
    desk = nat.desk
    if desk is None:
        raise NationalError(
            "this agent runs without the rule library (no rules bundle): analysis is unavailable"
        )
    today = dt.date.today()
    result = []
    for psn_no, bill, meta in bills:
        hits, _remote = await desk.analyse(bill, moment, today)
        for hit in hits:
            if hit.shadow:  # shadow rules are being tried out: recorded at settlement, never shown
                continue
            jr_id = f"{meta['mdtrt_id']}-{len(result) + 1:04d}"
            details = [
                {
                    "jr_detl_id": f"{jr_id}-{i + 1:03d}",
                    "jr_id": jr_id,
                    "patn_id": psn_no,
                    "mdtrt_id": meta["mdtrt_id"],
                    "rx_id": sn,
                    "vola_item_type": meta["types"].get(sn, ""),
                    "vola_amt": fen_to_text(meta["amounts"].get(sn, 0)),
                }
                for i, sn in enumerate(hit.lines)
            ]
            amount = sum(meta["amounts"].get(sn, 0) for sn in hit.lines)
            result.append(
                {
                    "jr_id": jr_id,
                    "rule_id": hit.rule_id,
                    "rule_name": rule_name(nat, hit.rule_id),
                    "vola_cont": hit.message,
                    "patn_id": psn_no,
                    "mdtrt_id": meta["mdtrt_id"],
                    "sev_deg": sev_deg(hit.severity),
                    "vola_amt": fen_to_text(amount),
                    "vola_amt_stas": "1" if hit.lines else "0",
                    "vola_evid": json.dumps([dict(e) for e in hit.evidence], ensure_ascii=False, default=str),
                    "vola_bhvr_type": hit.action,
                    "jr_type": moment,
                    "overridable": hit.overridable,
                    "judge_result_detail_dtos": details,
                }
            )
    return {"result": result}


async def pre_event(nat: National, env: Envelope) -> dict[str, Any]:
    return await _analyse(nat, env, "pre")


async def in_event(nat: National, env: Envelope) -> dict[str, Any]:
    return await _analyse(nat, env, "in")


#: infno → (handler, whether its answer is kept for msgid replay): read-only, so none is.
RULE_TRANSACTIONS = {
    "3101": (pre_event, False),
    "3102": (in_event, False),
}
