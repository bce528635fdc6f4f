"""National outpatient transactions 2201-2208: a visit registered, its diagnoses and fee lines uploaded
in pieces, pre-settled, settled and cancelled.

An open visit (registration, diagnoses, fee lines) is kept in ``national.db`` (``visits``, ``fees``)
until it is settled: the national HIS uploads a visit in pieces, while our settlement record is
whole. 2206 and 2207 assemble the pieces (``agent.national.settling``) and run them through the one
settlement path, 2207 in one writer transaction with the visit's new state and the stored answer.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from typing import Any

from ..identity import CERT_TYPE_CARD, CERT_TYPE_EVOUCHER
from .envelope import Envelope, National, Stored, stored_write
from .fields import Fields, NationalError
from .settling import (
    CERT_TYPES,
    KINDS,
    SETL_WAYS,
    cancellation,
    checked,
    fee_lines,
    fee_result,
    finish_lines,
    load_visit,
    must_be_open,
    open_visit,
    person_known,
    preview_output,
    remember_person,
    settle_visit,
    store_fees,
)

__all__ = [
    "OUTPATIENT_TRANSACTIONS",
    "check_voucher",
    "new_mdtrt_id",
    "read_diagnoses",
    "settle_input",
    "visit_person",
]


def visit_person(
    nat: National,
    env: Envelope,
    d: Fields,
    psn_no: str,
    gend: str | None,
    brdy: str | None,
    insuplc: str | None,
    emp_no: str | None,
) -> dict[str, str | None]:
    """The person's facts a visit's settlement needs, from the visit's input, else from what the agent was
    told before (1101, an earlier visit); refused field by field when still unknown."""  # fmt: skip
    known = person_known(nat, psn_no)
    facts = {
        "gend": gend or known["gend"],
        "brdy": brdy or known["brdy"],
        "insuplc_admdvs": insuplc or env.insuplc_admdvs or known["insuplc_admdvs"],
        "emp_no": emp_no or known["emp_no"],
        "card_sn": known["card_sn"],
    }
    missing = [
        (d.at(n), hint)
        for n, hint in (
            ("gend", "1 male / 2 female (our extension: an e-voucher does not carry it; a card read by 1101 "
                     "does)"),
            ("brdy", "the birth date yyyy-MM-dd (our extension: an e-voucher does not carry it)"),
            ("insuplc_admdvs", "the 6-digit insured area (here or in the envelope)"),
        )
        if not facts[n]
    ]  # fmt: skip
    if missing:
        raise NationalError(missing)
    return facts


def check_voucher(nat: National, where: str, cert_type: str | None, cert_no: str | None) -> None:
    if cert_type == CERT_TYPE_EVOUCHER and not (
        nat.vouchers is not None and nat.vouchers.ledger.seen(cert_no or "")
    ):
        raise NationalError(
            [
                (
                    where,
                    "this agent has not accepted an e-voucher with this number: run 1101 with the scanned "
                    "code first and send the baseinfo.mdtrt_cert_no it returned",
                )
            ]
        )


def new_mdtrt_id(env: Envelope) -> str:
    ms = int(time.time() * 1000)
    return f"{env.fixmedins_code}{ms:013d}{secrets.token_hex(3)}"


# ---- 2201-2205 -----------------------------------------------------------------------------------------


async def register(nat: National, env: Envelope) -> Stored:
    inp = Fields(env.input, "input")
    d = inp.child("mdtrtinfo") if isinstance(inp.obj, dict) and "mdtrtinfo" in inp.obj else inp.child("data")
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
        "med_type", pattern=r"\d{2,4}", hint="national code, e.g. 11 general outpatient, 21 inpatient"
    )
    ipt_otp_no = d.text("ipt_otp_no", required=False) or d.text("ipt_no", required=False)
    dr_codg = d.text("atddr_no", required=False)
    dept_codg = d.text("dept_code", required=False)
    dise_codg = d.text("dise_codg", required=False)
    dise_name = d.text("dise_name", required=False, max_len=200)
    insuplc = d.text("insuplc_admdvs", required=False, pattern=r"\d{6}", hint="a 6-digit area code")
    gend = d.code("gend", {"1": "male", "2": "female", "9": "unknown"}, required=False)
    brdy = d.date("brdy", required=False)
    psn_type = d.text("psn_type", required=False, max_len=6)
    emp_no = d.text("emp_no", required=False, hint="the employer (unit) number, extension")
    inp.check()
    assert psn_no is not None
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
        "ipt_otp_no": ipt_otp_no or mdtrt_id,
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
    }

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        now = time.time()
        conn.execute(
            "INSERT INTO visits (mdtrt_id, psn_no, state, reg, created_at, updated_at, kind) "
            "VALUES (?, ?, 'open', ?, ?, ?, 'otp')",
            (mdtrt_id, psn_no, json.dumps(reg), now, now),
        )
        remember_person(conn, psn_no, emp_no=emp_no, insutype=insutype, psn_type=psn_type)
        return {"data": {"mdtrt_id": mdtrt_id, "psn_no": psn_no, "ipt_otp_no": reg["ipt_otp_no"]}}

    return await stored_write(nat, env, write)


async def cancel_registration(nat: National, env: Envelope) -> Stored:
    inp = Fields(env.input, "input")
    d = inp.child("data")
    mdtrt_id = d.text("mdtrt_id", max_len=64) if d else None
    psn_no = d.text("psn_no") if d else None
    if d:
        d.text("ipt_otp_no", required=False)
    inp.check()
    assert d is not None and mdtrt_id and psn_no

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        visit = load_visit(conn, d, mdtrt_id, psn_no, "otp")
        must_be_open(visit, d)
        conn.execute(
            "UPDATE visits SET state = 'cancelled', updated_at = ? WHERE mdtrt_id = ?",
            (time.time(), mdtrt_id),
        )
        conn.execute("DELETE FROM fees WHERE mdtrt_id = ?", (mdtrt_id,))
        return {}

    return await stored_write(nat, env, write)


def read_diagnoses(inp: Fields, *, main_flag: bool = False) -> list[dict[str, Any]]:
    """``diseinfo[]``: the valid ones, the main diagnosis first (``maindiag_flag`` 1 where the transaction
    has it, as 2401/2403 do, then ``diag_srt_no``)."""
    diags = []
    for x in inp.items("diseinfo", max_items=50):
        item = {
            "diag_type": x.text("diag_type", hint="1 western, 2 TCM main disease, 3 TCM syndrome", max_len=3),
            "diag_srt_no": x.integer("diag_srt_no", required=True, low=1, high=99),
            "diag_code": x.text("diag_code", hint="the ICD-10 code, e.g. K21.9"),
            "diag_name": x.text("diag_name", required=False, max_len=200),
            "diag_dept": x.text("diag_dept", required=False),
            "dise_dor_no": x.text("dise_dor_no", required=False),
            "diag_time": x.date_time("diag_time", required=False),
            "vali_flag": x.code("vali_flag", {"1": "valid", "0": "not valid"}, required=False) or "1",
            "maindiag_flag": x.code("maindiag_flag", {"1": "main", "0": "other"}, required=False)
            if main_flag
            else None,
        }
        diags.append(item)
    inp.check()
    valid = sorted(
        (x for x in diags if x["vali_flag"] == "1"),
        key=lambda x: (0 if x["maindiag_flag"] == "1" else 1, x["diag_srt_no"]),
    )
    if not valid:
        raise NationalError(
            [
                (
                    "input.diseinfo",
                    "at least one valid diagnosis (vali_flag 1); diag_srt_no 1 is the main diagnosis",
                )
            ]
        )
    return valid


async def diagnoses(nat: National, env: Envelope) -> Stored:
    inp = Fields(env.input, "input")
    m = inp.child("mdtrtinfo")
    mdtrt_id = m.text("mdtrt_id") if m else None
    psn_no = m.text("psn_no") if m else None
    med_type = (
        m.text("med_type", required=False, pattern=r"\d{2,4}", hint="national code, e.g. 11") if m else None
    )
    valid = read_diagnoses(inp)
    assert m is not None and mdtrt_id and psn_no

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        visit = load_visit(conn, m, mdtrt_id, psn_no, "otp")
        must_be_open(visit, m)
        reg = visit["reg"]
        if med_type:
            reg["med_type"] = med_type
        reg["dise_codg"], reg["dise_name"] = valid[0]["diag_code"], valid[0]["diag_name"]
        conn.execute(
            "UPDATE visits SET reg = ?, diseinfo = ?, updated_at = ? WHERE mdtrt_id = ?",
            (json.dumps(reg), json.dumps(valid), time.time(), mdtrt_id),
        )
        return {}

    return await stored_write(nat, env, write)


async def upload_fee_lines(nat: National, env: Envelope, kind: str) -> Stored:
    """2204 / 2301: the lines of one visit, kept until it is settled."""
    inp = Fields(env.input, "input")
    lines = fee_lines(inp, "feedetail")
    inp.check()
    visits = {(ln["mdtrt_id"], ln["psn_no"]) for ln in lines}
    if len(visits) != 1:
        raise NationalError(
            [
                (
                    "input.feedetail",
                    f"all lines of one {KINDS[kind].fees} belong to one visit (mdtrt_id, psn_no)",
                )
            ]
        )
    mdtrt_id, psn_no = visits.pop()
    finish_lines(lines)
    where = Fields({}, "input.feedetail[0]")

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        visit = load_visit(conn, where, mdtrt_id, psn_no, kind)
        must_be_open(visit, where)
        store_fees(conn, mdtrt_id, lines, "input.feedetail", KINDS[kind])
        return {"result": fee_result(lines)}

    return await stored_write(nat, env, write)


async def upload_fees(nat: National, env: Envelope) -> Stored:
    return await upload_fee_lines(nat, env, "otp")


async def cancel_fee_lines(nat: National, env: Envelope, kind: str) -> Stored:
    """2205 / 2302: one line by ``feedetl_sn``, or ``0000`` for every line of the visit."""
    inp = Fields(env.input, "input")
    d = inp.child("data")
    sn = d.text("feedetl_sn", hint="the line to cancel, or 0000 for all lines of the visit") if d else None
    mdtrt_id = d.text("mdtrt_id") if d else None
    psn_no = d.text("psn_no") if d else None
    inp.check()
    assert d is not None and mdtrt_id and psn_no

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        visit = load_visit(conn, d, mdtrt_id, psn_no, kind)
        must_be_open(visit, d)
        if sn == "0000":
            conn.execute("DELETE FROM fees WHERE mdtrt_id = ?", (mdtrt_id,))
        elif not conn.execute(
            "DELETE FROM fees WHERE mdtrt_id = ? AND feedetl_sn = ?", (mdtrt_id, sn)
        ).rowcount:
            raise NationalError(
                [
                    (
                        d.at("feedetl_sn"),
                        "no uploaded line with this feedetl_sn in this visit (0000 cancels all)",
                    )
                ]
            )
        return {}

    return await stored_write(nat, env, write)


async def cancel_fees(nat: National, env: Envelope) -> Stored:
    return await cancel_fee_lines(nat, env, "otp")


# ---- 2206 / 2207 / 2208 -------------------------------------------------------------------------------


def settle_input(env: Envelope, *, med_type_required: bool = True) -> tuple[Fields, dict[str, Any]]:
    """The (pre-)settlement input of 2206/2207 and 2303/2304 (inpatient: ``med_type`` from the admission)."""
    inp = Fields(env.input, "input")
    d = inp.child("data")
    if d is None:
        inp.check()
    assert d is not None
    got = {
        "psn_no": d.text("psn_no"),
        "mdtrt_id": d.text("mdtrt_id"),
        "mdtrt_cert_type": d.code("mdtrt_cert_type", CERT_TYPES),
        "mdtrt_cert_no": d.text("mdtrt_cert_no"),
        "med_type": d.text(
            "med_type",
            required=med_type_required,
            pattern=r"\d{2,4}",
            hint="national code, e.g. 11 general outpatient",
        ),
        "medfee_sumamt": d.money("medfee_sumamt"),
        "psn_setlway": d.code("psn_setlway", SETL_WAYS),
        "insutype": d.text("insutype", required=False, pattern=r"\d{3}", hint="3 digits, e.g. 310"),
        "acct_used_flag": d.code("acct_used_flag", {"0": "no", "1": "yes"}, required=False),
        "acct_balance": d.money("balc", required=False),
        "chrg_bchno": d.text("chrg_bchno", required=False),
    }
    # No override enters here: the envelope's opter is whatever the HIS wrote, not a signed-in doctor
    # (agent.users), and the settlement built from the visit never carries one. Refused, not ignored, so a
    # HIS that sends one learns where it belongs instead of seeing the rule applied without a word.
    for where in (inp, d):
        if "overrides" in where.obj:
            where.add(
                "overrides",
                "the national envelope carries no doctor overrides: an override needs the overriding "
                "doctor's own sign-in, so send this settlement to POST /v1/settlements with the doctor's "
                "own token",
            )
    inp.check()
    if got["psn_setlway"] != "01":
        raise NationalError([(d.at("psn_setlway"), "this agent settles by item only (01)")])
    return d, got


async def pre_settle(nat: National, env: Envelope) -> dict[str, Any]:
    d, got = settle_input(env)
    visit, fees = open_visit(nat, d, got["mdtrt_id"], got["psn_no"], "otp")
    must_be_open(visit, d)
    record, outcome = await checked(nat, env, d, got, visit, fees)
    return preview_output(nat, record, outcome)


async def settle(nat: National, env: Envelope) -> Stored:
    d, got = settle_input(env)
    visit, fees = open_visit(nat, d, got["mdtrt_id"], got["psn_no"], "otp")
    return await settle_visit(nat, env, d, got, visit, fees)


cancel_settlement = cancellation("otp", "national 2208 settlement cancellation", "the setl_id 2207 returned")


#: infno → (handler, whether its answer is kept for msgid replay).
OUTPATIENT_TRANSACTIONS = {
    "2201": (register, True),
    "2202": (cancel_registration, True),
    "2203": (diagnoses, True),
    "2204": (upload_fees, True),
    "2205": (cancel_fees, True),
    "2206": (pre_settle, False),
    "2207": (settle, True),
    "2208": (cancel_settlement, True),
}
