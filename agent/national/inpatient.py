"""National inpatient transactions: 2401 admission, 2403 changes, 2402 discharge, 2404 admission
cancellation, 2405 discharge cancellation; 2301/2302 fee details uploaded and cancelled over the days of
the stay; 2303 pre-settlement, 2304 settlement, 2305 settlement cancellation.

A stay is a visit of kind ``ipt`` in ``national.db``: its details are kept durably until it is settled
(a restart mid-stay loses nothing). 2304 goes through the one settlement path like 2207, so the
blacklist, the in-event rules and the benefit split (deductible per admission, ``protocol.benefit``)
are the REST API's; an admission settles once (a second 2304 is refused; the same ``msgid`` again
answers the first answer). 2305 is the one reversal path and opens the stay again for a corrected
settlement.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from typing import Any

from protocol.benefit import is_inpatient

from ..identity import CERT_TYPE_CARD
from .envelope import Envelope, National, Stored, stored_write
from .fields import Fields, NationalError
from .outpatient import (
    cancel_fee_lines,
    check_voucher,
    new_mdtrt_id,
    read_diagnoses,
    settle_input,
    upload_fee_lines,
    visit_person,
)
from .settling import (
    CERT_TYPES,
    cancellation,
    checked,
    load_visit,
    must_be_open,
    open_visit,
    person_known,
    preview_output,
    remember_person,
    settle_visit,
)

__all__ = ["INPATIENT_TRANSACTIONS", "ipt_days"]


def _local(text: str) -> dt.datetime:
    """A time as the HIS sent it (local, or with an offset) as naive local time, so two compare."""
    moment = dt.datetime.fromisoformat(text)
    return moment.astimezone().replace(tzinfo=None) if moment.tzinfo else moment


def ipt_days(begntime: str, endtime: str) -> int:
    """Days in hospital: discharge date minus admission date, at least 1 (admitted and discharged the same
    day is one day)."""
    return max(1, (_local(endtime).date() - _local(begntime).date()).days)


def _main(valid: list[dict[str, Any]]) -> tuple[str, str | None]:
    return valid[0]["diag_code"], valid[0]["diag_name"]


def _has_items(inp: Fields, name: str) -> bool:
    value = inp.obj.get(name)
    return value not in (None, "", [])


async def admit(nat: National, env: Envelope) -> Stored:
    inp = Fields(env.input, "input")
    d = inp.child("mdtrtinfo")
    if d is None:
        inp.check()
    assert d is not None
    psn_no = d.text("psn_no", hint="the person number from 1101 (baseinfo.psn_no)")
    insutype = d.text(
        "insutype", pattern=r"\d{3}", hint="3 digits, e.g. 310 employee basic, 390 resident basic"
    )
    begntime = d.date_time("begntime")
    cert_type = d.code("mdtrt_cert_type", CERT_TYPES)
    cert_no = d.text(
        "mdtrt_cert_no", hint="for 01 the baseinfo.mdtrt_cert_no 1101 returned; for 03 the card number"
    )
    med_type = d.text(
        "med_type", pattern=r"\d{2,4}", hint="an inpatient medical type, e.g. 21 general inpatient"
    )
    if med_type and not is_inpatient(med_type):
        d.add(
            "med_type",
            f"{med_type} is not an inpatient medical type (21-24, 2xxx, 52): register it with 2201",
        )
        med_type = None
    ipt_no = d.text("ipt_no", required=False) or d.text("ipt_otp_no", required=False)
    dr_codg = d.text("atddr_no", required=False)
    dept_codg = d.text("adm_dept_codg", required=False)
    d.text("adm_bed", required=False)
    d.text("medrcdno", required=False)
    d.text("adm_diag_dscr", required=False, max_len=500)
    dise_codg = d.text("dise_codg", required=False)
    dise_name = d.text("dise_name", required=False, max_len=200)
    insuplc = d.text("insuplc_admdvs", required=False, pattern=r"\d{6}", hint="a 6-digit area code")
    gend = d.code("gend", {"1": "male", "2": "female", "9": "unknown"}, required=False)
    brdy = d.date("brdy", required=False)
    psn_type = d.text("psn_type", required=False, max_len=6)
    emp_no = d.text("emp_no", required=False, hint="the employer (unit) number, extension")
    valid = read_diagnoses(inp, main_flag=True) if _has_items(inp, "diseinfo") else []
    inp.check()
    assert psn_no is not None and begntime is not None
    if valid:
        dise_codg, dise_name = _main(valid)
    check_voucher(nat, "input.mdtrtinfo.mdtrt_cert_no", cert_type, cert_no)
    facts = visit_person(nat, env, d, psn_no, gend, brdy, insuplc, emp_no)
    psn_type = psn_type or person_known(nat, psn_no)["psn_type"] or "11"
    mdtrt_id = new_mdtrt_id(env)
    reg = {
        "psn_no": psn_no,
        "insutype": insutype,
        "begntime": begntime,
        "mdtrt_cert_type": cert_type,
        "mdtrt_cert_no": cert_no,
        "med_type": med_type,
        "ipt_otp_no": ipt_no or mdtrt_id,
        "dr_codg": dr_codg,
        "dept_codg": dept_codg,
        "dise_codg": dise_codg,
        "dise_name": dise_name,
        "insuplc_admdvs": facts["insuplc_admdvs"],
        "gend": facts["gend"],
        "brdy": facts["brdy"],
        "psn_type": psn_type,
        "card_sn": facts["card_sn"] if cert_type == CERT_TYPE_CARD else None,
        "emp_no": facts["emp_no"],
        "endtime": None,
        "ipt_days": None,
    }

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        now = time.time()
        conn.execute(
            "INSERT INTO visits (mdtrt_id, psn_no, state, reg, diseinfo, created_at, updated_at, kind) "
            "VALUES (?, ?, 'open', ?, ?, ?, ?, 'ipt')",
            (mdtrt_id, psn_no, json.dumps(reg), json.dumps(valid) if valid else None, now, now),
        )
        remember_person(conn, psn_no, emp_no=emp_no, insutype=insutype, psn_type=psn_type)
        return {"result": {"mdtrt_id": mdtrt_id, "psn_no": psn_no, "ipt_otp_no": reg["ipt_otp_no"]}}

    return await stored_write(nat, env, write)


async def _update_stay(
    nat: National, env: Envelope, d: Fields, mdtrt_id: str, psn_no: str, changes: dict[str, Any],
    valid: list[dict[str, Any]],
) -> Stored:  # fmt: skip
    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        visit = load_visit(conn, d, mdtrt_id, psn_no, "ipt")
        must_be_open(visit, d)
        reg = visit["reg"]
        reg.update({k: v for k, v in changes.items() if v is not None})
        if valid:
            reg["dise_codg"], reg["dise_name"] = _main(valid)
        if reg.get("endtime"):
            if _local(reg["endtime"]) < _local(reg["begntime"]):
                raise NationalError([(d.at("endtime"), f"is before the admission time {reg['begntime']}")])
            reg["ipt_days"] = ipt_days(reg["begntime"], reg["endtime"])
        conn.execute(
            "UPDATE visits SET reg = ?, diseinfo = coalesce(?, diseinfo), updated_at = ? WHERE mdtrt_id = ?",
            (json.dumps(reg), json.dumps(valid) if valid else None, time.time(), mdtrt_id),
        )
        return {}

    return await stored_write(nat, env, write)


async def discharge(nat: National, env: Envelope) -> Stored:
    inp = Fields(env.input, "input")
    d = inp.child("dscginfo")
    if d is None:
        inp.check()
    assert d is not None
    mdtrt_id, psn_no = d.text("mdtrt_id"), d.text("psn_no")
    endtime = d.date_time("endtime", required=True)
    d.text("insutype", required=False, pattern=r"\d{3}")
    dise_codg = d.text("dise_codg", required=False)
    dise_name = d.text("dise_name", required=False, max_len=200)
    d.text("dscg_way", required=False, max_len=6)
    dept = d.text("dscg_dept_codg", required=False)
    valid = read_diagnoses(inp, main_flag=True) if _has_items(inp, "diseinfo") else []
    inp.check()
    assert mdtrt_id and psn_no
    changes = {"endtime": endtime, "dise_codg": dise_codg, "dise_name": dise_name, "dscg_dept_codg": dept}
    return await _update_stay(nat, env, d, mdtrt_id, psn_no, changes, valid)


async def change(nat: National, env: Envelope) -> Stored:
    inp = Fields(env.input, "input")
    d = inp.child("adminfo")
    if d is None:
        inp.check()
    assert d is not None
    mdtrt_id, psn_no = d.text("mdtrt_id"), d.text("psn_no")
    med_type = d.text("med_type", required=False, pattern=r"\d{2,4}")
    if med_type and not is_inpatient(med_type):
        d.add("med_type", f"{med_type} is not an inpatient medical type (21-24, 2xxx, 52)")
    changes = {
        "begntime": d.date_time("begntime", required=False),
        "insutype": d.text("insutype", required=False, pattern=r"\d{3}", hint="3 digits, e.g. 310"),
        "med_type": med_type,
        "ipt_otp_no": d.text("ipt_no", required=False),
        "dr_codg": d.text("atddr_no", required=False),
        "dept_codg": d.text("adm_dept_codg", required=False),
        "dise_codg": d.text("dise_codg", required=False),
        "dise_name": d.text("dise_name", required=False, max_len=200),
        "emp_no": d.text("emp_no", required=False),
    }
    for ignored in ("adm_bed", "medrcdno", "adm_diag_dscr", "coner_name", "tel"):
        d.text(ignored, required=False, max_len=500)
    valid = read_diagnoses(inp, main_flag=True) if _has_items(inp, "diseinfo") else []
    inp.check()
    assert mdtrt_id and psn_no
    return await _update_stay(nat, env, d, mdtrt_id, psn_no, changes, valid)


def _stay_keys(env: Envelope) -> tuple[Fields, str, str]:
    """``data{mdtrt_id, psn_no}``: the stay a 2404 or 2405 acts on (refused by field when either lacks)."""
    inp = Fields(env.input, "input")
    d = inp.child("data")
    mdtrt_id = d.text("mdtrt_id") if d else None
    psn_no = d.text("psn_no") if d else None
    inp.check()
    assert d is not None and mdtrt_id and psn_no
    return d, mdtrt_id, psn_no


async def cancel_admission(nat: National, env: Envelope) -> Stored:
    d, mdtrt_id, psn_no = _stay_keys(env)

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        visit = load_visit(conn, d, mdtrt_id, psn_no, "ipt")
        must_be_open(visit, d)  # a settled stay: cancel its settlement with 2305 first
        conn.execute(
            "UPDATE visits SET state = 'cancelled', updated_at = ? WHERE mdtrt_id = ?",
            (time.time(), mdtrt_id),
        )
        conn.execute("DELETE FROM fees WHERE mdtrt_id = ?", (mdtrt_id,))
        return {}

    return await stored_write(nat, env, write)


async def cancel_discharge(nat: National, env: Envelope) -> Stored:
    """2405: the patient stays after all (a discharge entered by mistake, or readmitted the same hour).
    The stay is open again without its discharge time, so it takes fee details again and cannot settle
    until a new 2402; a stay already settled must have its settlement cancelled (2305) first."""
    d, mdtrt_id, psn_no = _stay_keys(env)

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        visit = load_visit(conn, d, mdtrt_id, psn_no, "ipt")
        must_be_open(visit, d)
        reg = visit["reg"]
        if not reg.get("endtime"):
            raise NationalError([(d.at("mdtrt_id"), "the patient is not discharged: nothing to cancel")])
        reg.update(endtime=None, ipt_days=None, dscg_dept_codg=None)
        conn.execute(
            "UPDATE visits SET reg = ?, updated_at = ? WHERE mdtrt_id = ?",
            (json.dumps(reg), time.time(), mdtrt_id),
        )
        return {}

    return await stored_write(nat, env, write)


async def upload(nat: National, env: Envelope) -> Stored:
    return await upload_fee_lines(nat, env, "ipt")


async def cancel_upload(nat: National, env: Envelope) -> Stored:
    return await cancel_fee_lines(nat, env, "ipt")


def _stay_input(env: Envelope) -> tuple[Fields, dict[str, Any]]:
    d, got = settle_input(env, med_type_required=False)
    mid = d.code("mid_setl_flag", {"0": "at discharge", "1": "mid-stay"}, required=False)
    d.text("invono", required=False)
    for ignored in ("fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt"):
        d.money(ignored, required=False)  # the HIS's own figures: the agent computes them
    d.check()
    if mid == "1":
        raise NationalError(
            [
                (
                    d.at("mid_setl_flag"),
                    "mid-stay settlement is not supported by this agent: settle at discharge (0)",
                )
            ]
        )
    return d, got


async def pre_settle(nat: National, env: Envelope) -> dict[str, Any]:
    d, got = _stay_input(env)
    visit, fees = open_visit(nat, d, got["mdtrt_id"], got["psn_no"], "ipt")
    must_be_open(visit, d)
    if not visit["reg"].get("endtime"):  # a preview mid-stay counts the days until now
        visit["reg"]["ipt_days"] = ipt_days(visit["reg"]["begntime"], dt.datetime.now().isoformat())
    record, outcome = await checked(nat, env, d, got, visit, fees)
    return preview_output(nat, record, outcome)


async def settle(nat: National, env: Envelope) -> Stored:
    d, got = _stay_input(env)
    visit, fees = open_visit(nat, d, got["mdtrt_id"], got["psn_no"], "ipt")
    if visit["state"] == "open" and not visit["reg"].get("endtime"):
        raise NationalError([(d.at("mdtrt_id"), "the patient has not been discharged: send 2402 first")])
    return await settle_visit(nat, env, d, got, visit, fees, refuse_settled=True)


cancel_settlement = cancellation(
    "ipt", "national 2305 inpatient settlement cancellation", "the setl_id 2304 returned"
)


INPATIENT_TRANSACTIONS = {
    "2401": (admit, True),
    "2402": (discharge, True),
    "2403": (change, True),
    "2404": (cancel_admission, True),
    "2405": (cancel_discharge, True),
    "2301": (upload, True),
    "2302": (cancel_upload, True),
    "2303": (pre_settle, False),
    "2304": (settle, True),
    "2305": (cancel_settlement, True),
}
