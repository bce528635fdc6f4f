"""National drug-store (定点药店) transactions: 2101 purchase pre-settlement, 2102 settlement, 2103
settlement cancellation.

A purchase comes whole (``data`` and ``drugdetail[]`` in one request), with no registration first. Its
``mdtrt_id`` is derived from what identifies the purchase (institution, person, purchase time, line
numbers, ``chrg_bchno``), so a 2102 retried under a new ``msgid`` after a lost answer is the same
purchase and is answered, never settled twice (the outbox's ``his_setl_no`` idempotency, as 2207).
It is kept as a visit of kind ``drug`` only once settled (in the same write as the stored answer): a
refused purchase leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from typing import Any

from ..identity import CERT_TYPE_CARD
from .envelope import Envelope, National, Stored
from .fields import Fields, NationalError
from .outpatient import check_voucher, visit_person
from .settling import (
    CERT_TYPES,
    KINDS,
    SETL_WAYS,
    cancellation,
    checked,
    fee_lines,
    finish_lines,
    person_known,
    preview_output,
    remember_person,
    settle_visit,
    store_fees,
    visit_fees,
)

__all__ = ["DEFAULT_DISE_CODG", "PHARMACY_TRANSACTIONS"]

#: A purchase without a diagnosis is recorded with ICD-10 Z76.0 "issue of repeat prescription": our
#: settlement record needs a diagnosis, and this one claims no indication a rule could rely on.
DEFAULT_DISE_CODG = "Z76.0"
#: ``med_type`` 41: purchase at a designated drug store (national code).
DRUG_STORE_MED_TYPE = "41"


def _purchase(nat: National, env: Envelope) -> tuple[Fields, dict[str, Any], dict[str, Any], list[dict]]:
    inp = Fields(env.input, "input")
    d = inp.child("data")
    if d is None:
        inp.check()
    assert d is not None
    psn_no = d.text("psn_no", hint="the person number from 1101 (baseinfo.psn_no)")
    cert_type = d.code("mdtrt_cert_type", CERT_TYPES)
    cert_no = d.text(
        "mdtrt_cert_no", hint="for 01 the baseinfo.mdtrt_cert_no 1101 returned; for 03 the card number"
    )
    begntime = d.date_time("begntime")
    got = {
        "psn_no": psn_no,
        "mdtrt_cert_type": cert_type,
        "mdtrt_cert_no": cert_no,
        "medfee_sumamt": d.money("medfee_sumamt"),
        "psn_setlway": d.code("psn_setlway", SETL_WAYS),
        "insutype": d.text("insutype", pattern=r"\d{3}", hint="3 digits, e.g. 310 employee basic"),
        "med_type": d.text("med_type", required=False, pattern=r"\d{2,4}") or DRUG_STORE_MED_TYPE,
        "acct_used_flag": d.code("acct_used_flag", {"0": "no", "1": "yes"}, required=False),
        "acct_balance": d.money("balc", required=False),
    }
    chrg_bchno = d.text("chrg_bchno", required=False)
    dise_codg = d.text("dise_codg", required=False)
    dise_name = d.text("dise_name", required=False, max_len=200)
    insuplc = d.text("insuplc_admdvs", required=False, pattern=r"\d{6}", hint="a 6-digit area code")
    gend = d.code("gend", {"1": "male", "2": "female", "9": "unknown"}, required=False)
    brdy = d.date("brdy", required=False)
    psn_type = d.text("psn_type", required=False, max_len=6)
    emp_no = d.text("emp_no", required=False, hint="the employer (unit) number, extension")
    dr_codg = d.text("prsc_dr_codg", required=False) or d.text("atddr_no", required=False)
    for ignored in ("fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt"):
        d.money(ignored, required=False)  # the HIS's own figures: the agent computes them
    for where in (inp, d):
        if "overrides" in where.obj:
            where.add("overrides", "the national envelope carries no doctor overrides")
    lines = fee_lines(inp, "drugdetail", visit_fields=False)
    inp.check()
    assert psn_no and begntime and cert_type
    if got["psn_setlway"] != "01":
        raise NationalError([(d.at("psn_setlway"), "this agent settles by item only (01)")])
    check_voucher(nat, "input.data.mdtrt_cert_no", cert_type, cert_no)
    facts = visit_person(nat, env, d, psn_no, gend, brdy, insuplc, emp_no)
    finish_lines(lines)
    key = "|".join(
        [env.fixmedins_code, psn_no, begntime, chrg_bchno or "", *sorted(ln["feedetl_sn"] for ln in lines)]
    )
    mdtrt_id = f"{env.fixmedins_code}D{hashlib.sha256(key.encode()).hexdigest()[:20]}"
    got["mdtrt_id"] = mdtrt_id
    reg = {
        "psn_no": psn_no,
        "insutype": got["insutype"],
        "begntime": begntime,
        "mdtrt_cert_type": cert_type,
        "mdtrt_cert_no": cert_no,
        "med_type": got["med_type"],
        "ipt_otp_no": chrg_bchno or mdtrt_id,
        "dr_codg": dr_codg,
        "dept_codg": None,
        "dise_codg": dise_codg or DEFAULT_DISE_CODG,
        "dise_name": dise_name,
        "insuplc_admdvs": facts["insuplc_admdvs"],
        "gend": facts["gend"],
        "brdy": facts["brdy"],
        "psn_type": psn_type or person_known(nat, psn_no)["psn_type"] or "11",
        "card_sn": facts["card_sn"] if cert_type == CERT_TYPE_CARD else None,
        "emp_no": facts["emp_no"],
    }
    with nat._lock:
        row = nat._db.execute(
            "SELECT state, settle_round, setl_id, setlinfo, kind FROM visits WHERE mdtrt_id = ?", (mdtrt_id,)
        ).fetchone()
    visit = {
        "mdtrt_id": mdtrt_id,
        "state": row[0] if row else "open",
        "reg": reg,
        "diseinfo": [],
        "settle_round": row[1] if row else 0,
        "setl_id": row[2] if row else None,
        "setlinfo": json.loads(row[3]) if row and row[3] else None,
        "kind": "drug",
    }
    return d, got, visit, lines


async def pre_settle(nat: National, env: Envelope) -> dict[str, Any]:
    d, got, visit, lines = _purchase(nat, env)
    record, outcome = await checked(nat, env, d, got, visit, lines)
    return preview_output(nat, record, outcome)


async def settle(nat: National, env: Envelope) -> Stored:
    d, got, visit, lines = _purchase(nat, env)

    def keep(conn: sqlite3.Connection) -> None:
        """The purchase, kept with its settlement (a settled purchase again is answered, not re-kept)."""
        now = time.time()
        conn.execute(
            "INSERT INTO visits (mdtrt_id, psn_no, state, reg, created_at, updated_at, kind) "
            "VALUES (?, ?, 'open', ?, ?, ?, 'drug') ON CONFLICT (mdtrt_id) DO UPDATE SET reg = excluded.reg",
            (visit["mdtrt_id"], got["psn_no"], json.dumps(visit["reg"]), now, now),
        )
        if [ln["feedetl_sn"] for ln in visit_fees(conn, visit["mdtrt_id"])] != [
            ln["feedetl_sn"] for ln in lines
        ]:
            conn.execute("DELETE FROM fees WHERE mdtrt_id = ?", (visit["mdtrt_id"],))
        store_fees(conn, visit["mdtrt_id"], lines, "input.drugdetail", KINDS["drug"])
        remember_person(conn, got["psn_no"], emp_no=visit["reg"]["emp_no"], insutype=got["insutype"])

    return await settle_visit(nat, env, d, got, visit, lines, before_mark=keep)


cancel_settlement = cancellation(
    "drug",
    "national 2103 drug-store settlement cancellation",
    "the setl_id 2102 returned",
    "the mdtrt_id 2102 returned in setlinfo",
)


PHARMACY_TRANSACTIONS = {
    "2101": (pre_settle, False),
    "2102": (settle, True),
    "2103": (cancel_settlement, True),
}
