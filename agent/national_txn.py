"""National transactions 9001/9002 (sign-in/out), 1101 (person) and 2201-2208 (visit to settlement).

An open visit (registration, diagnoses, fee lines) is kept in the agent database (``visits``,
``fees``) until it is settled: the national HIS uploads a visit in pieces, while our settlement
record is whole. 2206 and 2207 assemble the pieces into the request ``POST /v1/settlements`` takes and
run it through the same ``agent.intake`` validation, blacklist check, ``agent.checks`` rules and split,
and the outbox — 2207 in one writer transaction with the visit's new state and the stored answer, so a
crash leaves either all of it or none.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import sqlite3
import time
from typing import Any

from protocol.records import Settlement, fen_to_text, line_total_fen

from .identity import CERT_TYPE_CARD, CERT_TYPE_EVOUCHER, Identity
from .intake import ReversalRequest, parse_settlement
from .national import Envelope, Fields, National, NationalError, Stored

__all__ = ["TRANSACTIONS", "list_type_of"]

#: ``mdtrt_cert_type`` code values the agent accepts (national table; 02 only where the HIS checked the ID).
CERT_TYPES = {"01": "e-voucher", "02": "resident ID card", "03": "social-security card"}
#: ``psn_setlway``: 01 settle by item, 02 settle by fixed amount (we settle by item only).
SETL_WAYS = {"01": "by item", "02": "fixed amount"}


def list_type_of(med_list_codg: str) -> str:
    """Our ``list_type`` from the national catalogue code's shape, which the 2204 line does not carry.

    National codes: western drugs begin with X, Chinese patent drugs with Z, herbal pieces with T,
    consumables with C, service items with digits. A HIS may send ``list_type`` itself (extension)."""
    head = med_list_codg[:1].upper()
    return {"X": "101", "Z": "102", "T": "103", "C": "301"}.get(head, "201")


async def _stored_write(nat: National, env: Envelope, fn) -> Stored:
    """Run ``fn(conn) -> output`` in one writer transaction that also keeps the answer (``msgid`` replay)."""

    def run(conn: sqlite3.Connection) -> Stored:
        held = nat.held_answer(conn, env)
        if held is not None:
            return Stored(held)
        answer = nat.answer(env, fn(conn))
        nat.store_answer(conn, env, answer)
        return Stored(answer)

    return await nat.write(run)


# ---- 9001 / 9002 ---------------------------------------------------------------------------------


async def sign_in(nat: National, env: Envelope) -> Stored:
    inp = Fields(env.input, "input")
    s = inp.child("signIn")
    opter_no = s.text("opter_no", hint="the operator's code") if s else None
    if s:
        s.text("mac", required=False, max_len=64)
        s.text("ip", required=False, max_len=64)
    inp.check()
    sign_no = secrets.token_hex(12)
    now = time.time()
    sign_time = dt.datetime.fromtimestamp(now).strftime("%Y-%m-%d %H:%M:%S")

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        conn.execute(
            "INSERT INTO signins (sign_no, opter, fixmedins_code, signed_in_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (sign_no, opter_no, env.fixmedins_code, now, now + nat.sign_ttl_s),
        )
        return {"signinoutb": {"sign_time": sign_time, "sign_no": sign_no}}

    return await _stored_write(nat, env, write)


async def sign_out(nat: National, env: Envelope) -> Stored:
    inp = Fields(env.input, "input")
    s = inp.child("signOut")
    sign_no = s.text("sign_no", hint="the sign_no to sign out") if s else None
    if s:
        s.text("opter_no", hint="the operator's code")
    inp.check()

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        done = conn.execute(
            "UPDATE signins SET signed_out_at = ? WHERE sign_no = ? AND signed_out_at IS NULL "
            "AND fixmedins_code = ?",
            (time.time(), sign_no, env.fixmedins_code),
        ).rowcount
        if not done:
            raise NationalError([("input.signOut.sign_no", "not a signed-in sign_no of this institution")])
        return {"signoutoutb": {"sign_time": dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")}}

    return await _stored_write(nat, env, write)


# ---- 1101 ----------------------------------------------------------------------------------------


def _age(brdy: str | None) -> int | None:
    if not brdy:
        return None
    born, today = dt.date.fromisoformat(brdy), dt.date.today()
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def _blacklist_json(nat: National, identity: Identity) -> dict[str, Any] | None:
    if nat.policy is None:
        return None
    hit = nat.policy.is_blacklisted(card_sn=identity.card_sn, psn_no=identity.psn_no)
    if hit is None:
        return None
    from .settle import BLACKLIST_ACTIONS

    return {
        "list_type": hit.list_type,
        "reason": hit.reason,
        "list_version": hit.list_version,
        "action": BLACKLIST_ACTIONS.get(hit.list_type, ""),
    }


async def person_info(nat: National, env: Envelope) -> Stored | dict[str, Any]:
    inp = Fields(env.input, "input")
    d = inp.child("data")
    if d is None:
        inp.check()
    assert d is not None
    cert_type = d.code("mdtrt_cert_type", CERT_TYPES)
    cert_no = d.text(
        "mdtrt_cert_no", max_len=4096, hint="the card number (03) or the scanned e-voucher text (01)"
    )
    card_sn = d.text("card_sn", required=False)
    for ignored in ("begntime", "psn_cert_type", "certno", "psn_name"):  # accepted; never stored
        d.text(ignored, required=False, max_len=200)
    inp.check()
    if cert_type == "02":
        raise NationalError(
            [
                (
                    "input.data.mdtrt_cert_type",
                    "02 (resident ID card) needs the platform's person "
                    "register; this agent identifies by 03 social-security card or 01 e-voucher",
                )
            ]
        )
    if cert_type == CERT_TYPE_EVOUCHER:
        if nat.vouchers is None:
            raise NationalError(
                "this agent runs without an e-voucher verifier (no trusted issuer keys); use the "
                "social-security card (mdtrt_cert_type 03) or call IT"
            )
        identity = await asyncio.to_thread(nat.vouchers.verify, cert_no or "")
    else:
        if nat.card_reader is None:
            raise NationalError(
                "no card reader on this agent (started with card reading off): identify the "
                "patient by e-voucher (mdtrt_cert_type 01) or call IT"
            )
        identity = await asyncio.to_thread(nat.card_reader.identify, 0.0)
        if identity.mdtrt_cert_no != cert_no or (card_sn and identity.card_sn != card_sn):
            raise NationalError(
                [
                    (
                        "input.data.mdtrt_cert_no",
                        "the card in the reader is not the card named "
                        "(mdtrt_cert_no / card_sn): insert that card or send the number it shows",
                    )
                ]
            )
    blacklist = _blacklist_json(nat, identity)
    output = {
        "baseinfo": {
            "psn_no": identity.psn_no,
            "psn_cert_type": None,
            "certno": None,
            "psn_name": identity.psn_name,
            "gend": identity.gend,
            "brdy": identity.brdy,
            "naty": identity.naty,
            "age": _age(identity.brdy),
            "mdtrt_cert_type": identity.mdtrt_cert_type,
            "mdtrt_cert_no": identity.mdtrt_cert_no,
            "card_sn": identity.card_sn,
            "authenticated": identity.authenticated,
            "expires": identity.expires,
        },
        "insuinfo": [
            {
                "insuplc_admdvs": identity.insuplc_admdvs,
                "insutype": None,
                "psn_type": None,
                "balc": None,
                "psn_insu_stas": "2" if blacklist else "1",
                "paus_insu_date": None,
            }
        ],
        "idetinfo": [],
        "blacklist": blacklist,
    }

    def remember(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO persons (psn_no, gend, brdy, insuplc_admdvs, card_sn, at) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (psn_no) DO UPDATE SET gend = coalesce(excluded.gend, gend), "
            "brdy = coalesce(excluded.brdy, brdy), insuplc_admdvs = excluded.insuplc_admdvs, "
            "card_sn = coalesce(excluded.card_sn, card_sn), at = excluded.at",
            (
                identity.psn_no,
                identity.gend,
                identity.brdy,
                identity.insuplc_admdvs,
                identity.card_sn,
                time.time(),
            ),
        )

    if cert_type == CERT_TYPE_EVOUCHER:
        # The voucher's nonce is spent: a retry of this msgid must get this answer (it holds no name).
        def write(conn: sqlite3.Connection) -> dict[str, Any]:
            remember(conn)
            return output

        return await _stored_write(nat, env, write)
    await nat.write(remember)  # a card answer (it has the name) is not stored: a retry reads the card again
    return output


# ---- visits ----------------------------------------------------------------------------------------


def _visit(conn: sqlite3.Connection, where: Fields, mdtrt_id: str, psn_no: str) -> dict[str, Any]:
    row = conn.execute(
        "SELECT psn_no, state, reg, diseinfo, settle_round, setl_id, setlinfo FROM visits WHERE mdtrt_id = ?",
        (mdtrt_id,),
    ).fetchone()
    if row is None:
        raise NationalError(
            [
                (
                    where.at("mdtrt_id"),
                    "no visit with this mdtrt_id here: register it with 2201 and "
                    "use the mdtrt_id it returned",
                )
            ]
        )
    if row[0] != psn_no:
        raise NationalError([(where.at("psn_no"), "is not the person this visit was registered for")])
    return {
        "state": row[1],
        "reg": json.loads(row[2]),
        "diseinfo": json.loads(row[3]) if row[3] else [],
        "settle_round": row[4],
        "setl_id": row[5],
        "setlinfo": json.loads(row[6]) if row[6] else None,
    }


def _must_be_open(visit: dict[str, Any], where: Fields) -> None:
    if visit["state"] == "settled":
        raise NationalError(
            [
                (
                    where.at("mdtrt_id"),
                    f"this visit is settled ({visit['setl_id']}): cancel the settlement with 2208 first",
                )
            ]
        )
    if visit["state"] == "cancelled":
        raise NationalError(
            [
                (
                    where.at("mdtrt_id"),
                    "this visit's registration was cancelled (2202): register a new visit with 2201",
                )
            ]
        )


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
    psn_type = d.text("psn_type", required=False, max_len=6) or "11"
    inp.check()
    assert psn_no is not None
    if cert_type == CERT_TYPE_EVOUCHER and not (
        nat.vouchers is not None and nat.vouchers.ledger.seen(cert_no or "")
    ):
        raise NationalError(
            [
                (
                    "input.mdtrtinfo.mdtrt_cert_no",
                    "this agent has not accepted an e-voucher with this "
                    "number: run 1101 with the scanned code first and send the baseinfo.mdtrt_cert_no "
                    "it returned",
                )
            ]
        )
    person = nat.read("SELECT gend, brdy, insuplc_admdvs, card_sn FROM persons WHERE psn_no = ?", (psn_no,))
    known = person[0] if person else (None, None, None, None)
    gend, brdy, insuplc = gend or known[0], brdy or known[1], insuplc or env.insuplc_admdvs or known[2]
    missing = [
        (f"{d.at(n)}", hint)
        for n, v, hint in (
            (
                "gend",
                gend,
                "1 male / 2 female (our extension: an e-voucher does not carry it; a card read by 1101 does)",
            ),
            ("brdy", brdy, "the birth date yyyy-MM-dd (our extension: an e-voucher does not carry it)"),
            ("insuplc_admdvs", insuplc, "the 6-digit insured area (here or in the envelope)"),
        )
        if not v
    ]
    if missing:
        raise NationalError(missing)
    ms = int(time.time() * 1000)
    mdtrt_id = f"{env.fixmedins_code}{ms:013d}{secrets.token_hex(3)}"
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
        "insuplc_admdvs": insuplc,
        "gend": gend,
        "brdy": brdy,
        "psn_type": psn_type,
        "card_sn": known[3] if cert_type == CERT_TYPE_CARD else None,
    }

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        now = time.time()
        conn.execute(
            "INSERT INTO visits (mdtrt_id, psn_no, state, reg, created_at, updated_at) "
            "VALUES (?, ?, 'open', ?, ?, ?)",
            (mdtrt_id, psn_no, json.dumps(reg), now, now),
        )
        return {"data": {"mdtrt_id": mdtrt_id, "psn_no": psn_no, "ipt_otp_no": reg["ipt_otp_no"]}}

    return await _stored_write(nat, env, write)


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
        visit = _visit(conn, d, mdtrt_id, psn_no)
        _must_be_open(visit, d)
        conn.execute(
            "UPDATE visits SET state = 'cancelled', updated_at = ? WHERE mdtrt_id = ?",
            (time.time(), mdtrt_id),
        )
        conn.execute("DELETE FROM fees WHERE mdtrt_id = ?", (mdtrt_id,))
        return {}

    return await _stored_write(nat, env, write)


async def diagnoses(nat: National, env: Envelope) -> Stored:
    inp = Fields(env.input, "input")
    m = inp.child("mdtrtinfo")
    mdtrt_id = m.text("mdtrt_id") if m else None
    psn_no = m.text("psn_no") if m else None
    med_type = (
        m.text("med_type", required=False, pattern=r"\d{2,4}", hint="national code, e.g. 11") if m else None
    )
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
        }
        diags.append(item)
    inp.check()
    assert m is not None and mdtrt_id and psn_no
    valid = sorted((x for x in diags if x["vali_flag"] == "1"), key=lambda x: x["diag_srt_no"])
    if not valid:
        raise NationalError(
            [
                (
                    "input.diseinfo",
                    "at least one valid diagnosis (vali_flag 1); diag_srt_no 1 is the main diagnosis",
                )
            ]
        )

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        visit = _visit(conn, m, mdtrt_id, psn_no)
        _must_be_open(visit, m)
        reg = visit["reg"]
        if med_type:
            reg["med_type"] = med_type
        reg["dise_codg"], reg["dise_name"] = valid[0]["diag_code"], valid[0]["diag_name"]
        conn.execute(
            "UPDATE visits SET reg = ?, diseinfo = ?, updated_at = ? WHERE mdtrt_id = ?",
            (json.dumps(reg), json.dumps(valid), time.time(), mdtrt_id),
        )
        return {}

    return await _stored_write(nat, env, write)


async def upload_fees(nat: National, env: Envelope) -> Stored:
    inp = Fields(env.input, "input")
    lines: list[dict[str, Any]] = []
    ids: set[tuple[str, str]] = set()
    for x in inp.items("feedetail", max_items=2000):
        line = {
            "mdtrt_id": x.text("mdtrt_id"),
            "psn_no": x.text("psn_no"),
            "feedetl_sn": x.text("feedetl_sn", max_len=30, hint="the line's number, unique in the visit"),
            "fee_ocur_time": x.date_time("fee_ocur_time"),
            "med_list_codg": x.text("med_list_codg", max_len=50, hint="the national catalogue code"),
            "medins_list_codg": x.text("medins_list_codg", max_len=50, hint="the hospital's own item code"),
            "medins_list_name": x.text("medins_list_name", required=False, max_len=200),
            "cnt": x.decimal("cnt", 4, positive=True),
            "pric": x.decimal("pric", 6),
            "det_item_fee_sumamt": x.money("det_item_fee_sumamt"),
            "days": x.integer("prd_days", low=0, high=366),
            "list_type": x.text(
                "list_type", required=False, pattern=r"\d{3}", hint="3 digits, e.g. 101 drug"
            ),
            "dr_codg": x.text("bilg_dr_codg", required=False),
            "dept_codg": x.text("bilg_dept_codg", required=False),
            "chrg_bchno": x.text("chrg_bchno", required=False),
        }
        if line["cnt"] and line["pric"] is not None and line["det_item_fee_sumamt"] is not None:
            expected = line_total_fen(line["cnt"], line["pric"])
            if expected != line["det_item_fee_sumamt"]:
                x.add(
                    "det_item_fee_sumamt",
                    f"cnt × pric = {fen_to_text(expected)} (rounded half-up to the fen), "
                    f"not {fen_to_text(line['det_item_fee_sumamt'])}",
                )
        key = (line["mdtrt_id"], line["feedetl_sn"])
        if key in ids:
            x.add("feedetl_sn", "repeats a line of this request")
        ids.add(key)
        lines.append(line)
    inp.check()
    visits = {(ln["mdtrt_id"], ln["psn_no"]) for ln in lines}
    if len(visits) != 1:
        raise NationalError(
            [("input.feedetail", "all lines of one 2204 belong to one visit (mdtrt_id, psn_no)")]
        )
    mdtrt_id, psn_no = visits.pop()
    for ln in lines:
        ln["list_type"] = ln["list_type"] or list_type_of(ln["med_list_codg"])
        ln["medins_list_name"] = ln["medins_list_name"] or ln["medins_list_codg"]
    where = Fields({}, "input.feedetail[0]")

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        visit = _visit(conn, where, mdtrt_id, psn_no)
        _must_be_open(visit, where)
        for i, ln in enumerate(lines):
            text = json.dumps(ln, sort_keys=True)
            held = conn.execute(
                "SELECT line FROM fees WHERE mdtrt_id = ? AND feedetl_sn = ?",
                (mdtrt_id, ln["feedetl_sn"]),
            ).fetchone()
            if held is not None and held[0] != text:
                raise NationalError(
                    [
                        (
                            f"input.feedetail[{i}].feedetl_sn",
                            "this line was uploaded with other "
                            "content: cancel it with 2205 first, or use a new feedetl_sn",
                        )
                    ]
                )
            if held is None:
                conn.execute(
                    "INSERT INTO fees (mdtrt_id, feedetl_sn, line) VALUES (?, ?, ?)",
                    (mdtrt_id, ln["feedetl_sn"], text),
                )
        return {
            "result": [
                {
                    "feedetl_sn": ln["feedetl_sn"],
                    "det_item_fee_sumamt": fen_to_text(ln["det_item_fee_sumamt"]),
                    "cnt": ln["cnt"],
                    "pric": ln["pric"],
                    "med_chrgitm_type": None,
                    "chrgitm_lv": None,
                    "memo": "",
                }
                for ln in lines
            ]
        }

    return await _stored_write(nat, env, write)


async def cancel_fees(nat: National, env: Envelope) -> Stored:
    inp = Fields(env.input, "input")
    d = inp.child("data")
    sn = d.text("feedetl_sn", hint="the line to cancel, or 0000 for all lines of the visit") if d else None
    mdtrt_id = d.text("mdtrt_id") if d else None
    psn_no = d.text("psn_no") if d else None
    inp.check()
    assert d is not None and mdtrt_id and psn_no

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        visit = _visit(conn, d, mdtrt_id, psn_no)
        _must_be_open(visit, d)
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

    return await _stored_write(nat, env, write)


# ---- 2206 / 2207 / 2208 -------------------------------------------------------------------------------


def _settle_input(env: Envelope) -> tuple[Fields, dict[str, Any]]:
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
        "med_type": d.text("med_type", pattern=r"\d{2,4}", hint="national code, e.g. 11 general outpatient"),
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


def _build(
    nat: National, env: Envelope, d: Fields, got: dict[str, Any], visit: dict[str, Any], fees: list[dict]
) -> tuple[Settlement, bytes, bytes]:
    reg = visit["reg"]
    for name in ("mdtrt_cert_type", "mdtrt_cert_no"):
        if got[name] != reg[name]:
            raise NationalError([(d.at(name), f"differs from the registration (2201): {reg[name]}")])
    if not fees:
        raise NationalError(
            [("input.data.mdtrt_id", "this visit has no fee lines: upload them with 2204 first")]
        )
    if not reg.get("dise_codg"):
        raise NationalError(
            [
                (
                    "input.data.mdtrt_id",
                    "this visit has no diagnosis: upload it with 2203 (or send dise_codg at 2201)",
                )
            ]
        )
    total = sum(ln["det_item_fee_sumamt"] for ln in fees)
    if got["medfee_sumamt"] != total:
        raise NationalError(
            [
                (
                    d.at("medfee_sumamt"),
                    f"the uploaded fee lines add up to {fen_to_text(total)}, not "
                    f"{fen_to_text(got['medfee_sumamt'])}: send their sum, or correct the lines "
                    "(2205, 2204)",
                )
            ]
        )
    body = {
        "fixmedins_code": env.fixmedins_code,
        "his_setl_no": _his_setl_no(got["mdtrt_id"], visit["settle_round"]),
        "psn": {
            "psn_no": reg["psn_no"],
            "insutype": got["insutype"] or reg["insutype"],
            "insuplc_admdvs": reg["insuplc_admdvs"],
            "psn_type": reg["psn_type"],
            "gend": reg["gend"],
            "brdy": reg["brdy"],
            "card_sn": reg.get("card_sn"),
        },
        "mdtrt": {
            "mdtrt_id": got["mdtrt_id"],
            "med_type": got["med_type"],
            "begntime": reg["begntime"],
            "dise_codg": reg["dise_codg"],
            "dise_name": reg.get("dise_name"),
            "dept_codg": reg.get("dept_codg"),
            "dr_codg": reg.get("dr_codg") or next((ln["dr_codg"] for ln in fees if ln.get("dr_codg")), None),
        },
        "feedetl": [
            {
                "feedetl_sn": ln["feedetl_sn"],
                "list_type": ln["list_type"],
                "med_list_codg": ln["med_list_codg"],
                "medins_list_name": ln["medins_list_name"],
                "cnt": ln["cnt"],
                "pric": ln["pric"],
                "det_item_fee_sumamt": fen_to_text(ln["det_item_fee_sumamt"]),
                "days": ln.get("days") or None,
                "fee_ocur_time": ln.get("fee_ocur_time"),
            }
            for ln in fees
        ],
        "medfee_sumamt": fen_to_text(total),
        "opter": env.opter,
        "opter_name": env.opter_name or None,
        "mdtrt_cert_type": reg["mdtrt_cert_type"],
        "mdtrt_cert_no": reg["mdtrt_cert_no"],
    }
    if got["acct_used_flag"] == "1" and got["acct_balance"] is not None:
        body["acct_balance"] = fen_to_text(got["acct_balance"])
    raw = json.dumps(body).encode()
    # caller None: nobody signed in as a doctor, so the body (which has no overrides) may carry none.
    record, digest = parse_settlement(raw, fixmedins_code=nat.config.fixmedins_code or None, caller=None)
    if record.mdtrt_cert_type == CERT_TYPE_EVOUCHER and not (
        nat.vouchers is not None and nat.vouchers.ledger.seen(record.mdtrt_cert_no or "")
    ):
        raise NationalError(
            [(d.at("mdtrt_cert_no"), "this agent has not accepted an e-voucher with this number")]
        )
    return record, digest, raw


def _his_setl_no(mdtrt_id: str, settle_round: int) -> str:
    """The settlement's ``his_setl_no``: the visit and how many times it was settled and cancelled before, so
    a retry is the same settlement (the outbox's idempotency) and a settlement after a 2208 a new one."""
    return f"{mdtrt_id}-{settle_round}"


def _open_visit(nat: National, d: Fields, got: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with nat._lock:
        visit = _visit(nat._db, d, got["mdtrt_id"], got["psn_no"])
        fees = [
            json.loads(r[0])
            for r in nat._db.execute(
                "SELECT line FROM fees WHERE mdtrt_id = ? ORDER BY rowid", (got["mdtrt_id"],)
            )
        ]
    return visit, fees


def _fund_type(insutype: str, field: str) -> tuple[str, str]:
    """National ``fund_pay_type`` of our split fields (setldetail)."""
    resident = insutype.startswith("39")
    return {
        "hifp_pay": ("390100", "resident basic medical insurance fund")
        if resident
        else ("310100", "employee basic medical insurance pooled fund"),
        "hifmi_pay": ("390200", "residents' critical-illness insurance"),
        "hifob_pay": ("330200", "employees' large-amount medical subsidy"),
    }[field]


def _setlinfo(record: Settlement, setl_id: str | None) -> dict[str, Any]:
    def money(v: int | None) -> str:
        return fen_to_text(v or 0)

    fulamt = sum(ln.fulamt_ownpay_amt or 0 for ln in record.feedetl)
    preself = sum(ln.preselfpay_amt or 0 for ln in record.feedetl)
    info = {
        "setl_id": setl_id,
        "mdtrt_id": record.mdtrt.mdtrt_id,
        "psn_no": record.psn.psn_no,
        "insutype": record.psn.insutype,
        "psn_type": record.psn.psn_type,
        "med_type": record.mdtrt.med_type,
        "mdtrt_cert_type": record.mdtrt_cert_type,
        "setl_time": record.setl_time[:19].replace("T", " "),
        "medfee_sumamt": money(record.medfee_sumamt),
        "fulamt_ownpay_amt": money(fulamt),
        "preselfpay_amt": money(preself),
        "inscp_scp_amt": money(record.medfee_sumamt - fulamt - preself),
        "hifp_pay": money(record.hifp_pay),
        "hifmi_pay": money(record.hifmi_pay),
        "hifob_pay": money(record.hifob_pay),
        "fund_pay_sumamt": money(record.fund_pay_sumamt),
        "acct_pay": money(record.acct_pay),
        "psn_cash_pay": money(record.psn_cash_pay),
        "psn_part_amt": money((record.acct_pay or 0) + (record.psn_cash_pay or 0)),
    }
    return info


def _setldetail(record: Settlement) -> list[dict[str, Any]]:
    out = []
    for name in ("hifp_pay", "hifmi_pay", "hifob_pay"):
        amount = getattr(record, name) or 0
        if amount or name == "hifp_pay":  # the pooled fund always shows, even when it pays nothing
            code, label = _fund_type(record.psn.insutype, name)
            out.append(
                {"fund_pay_type": code, "fund_pay_type_name": label, "fund_payamt": fen_to_text(amount)}
            )
    return out


def _prompts(nat: National, outcome: Any) -> list[dict[str, Any]]:
    if outcome is None:
        return []
    from .national_rules import rule_name, sev_deg

    return [
        {
            "rule_id": h.rule_id,
            "rule_name": rule_name(nat, h.rule_id),
            "sev_deg": sev_deg(h.severity),
            "vola_cont": h.message,
            "outcome": r.outcome,
            "lines": list(h.lines),
        }
        for h, r in zip(outcome.hits, outcome.recorded, strict=True)
    ]


async def _checked(
    nat: National,
    env: Envelope,
    d: Fields,
    got: dict[str, Any],
    visit: dict,
    fees: list,
) -> tuple[Settlement, bytes, Any]:
    """The record as POST /v1/settlements/preview checks it: blacklist, in-event rules, split (2206)."""
    record, digest, _raw = _build(nat, env, d, got, visit, fees)
    from .settle import refuse_blacklisted

    refuse_blacklisted(nat.policy, record)
    outcome = None
    if nat.desk is not None:
        outcome = await nat.desk.settle(record, acct_balance=_acct_balance(got))
    _require_split(record)
    return record, digest, outcome


def _acct_balance(got: dict[str, Any]) -> int | None:
    return got["acct_balance"] if got["acct_used_flag"] == "1" else None


def _require_split(record: Settlement) -> None:
    """The platform answers 2206/2207 with the fund's share; without a policy row there is none."""
    if record.fund_pay_sumamt is None:
        raise NationalError(
            "the fund's share cannot be computed: either no benefit policy has reached this agent yet "
            "(GET /v1/status shows the policy bundle), or the policy has no row for this visit's year, "
            f"insutype {record.psn.insutype}, psn_type {record.psn.psn_type}, hospital level and med_type "
            f"{record.mdtrt.med_type} (ask the medical-insurance bureau to publish one); meanwhile settle "
            "through POST /v1/settlements with the split from the platform"
        )


async def pre_settle(nat: National, env: Envelope) -> dict[str, Any]:
    d, got = _settle_input(env)
    visit, fees = _open_visit(nat, d, got)
    _must_be_open(visit, d)
    record, _digest, outcome = await _checked(nat, env, d, got, visit, fees)
    return {
        "setlinfo": _setlinfo(record, None),
        "setldetail": _setldetail(record),
        "rule_prompts": _prompts(nat, outcome),
    }


async def settle(nat: National, env: Envelope) -> Stored:
    d, got = _settle_input(env)
    visit, fees = _open_visit(nat, d, got)
    if visit["state"] == "settled":  # the HIS asks again under a new msgid: the settlement it has
        held = visit["setlinfo"]
        return await _stored_write(nat, env, lambda conn: held)
    _must_be_open(visit, d)
    # The REST path's checks and durable append. Held in the outbox but not marked here (the agent
    # stopped between the two writes): like a retry of POST /v1/settlements, answered from the outbox.
    from .settle import settle_record

    record, digest, _raw = _build(nat, env, d, got, visit, fees)
    receipt, outcome = await settle_record(
        record, digest, nat.outbox, policy=nat.policy, desk=nat.desk, acct_balance=_acct_balance(got),
        before_append=_require_split,
    )  # fmt: skip
    if receipt.duplicate:
        (fund, acct, cash), *_ = nat.read_agent(
            "SELECT fund_pay_sumamt, acct_pay, psn_cash_pay FROM settlements WHERE setl_id = ?",
            (receipt.setl_id,),
        )
        record.fund_pay_sumamt, record.acct_pay, record.psn_cash_pay = fund, acct, cash
        record.hifp_pay, record.hifmi_pay, record.hifob_pay = fund, 0, 0
    output = {
        "setlinfo": _setlinfo(record, receipt.setl_id),
        "setldetail": _setldetail(record),
        "rule_prompts": _prompts(nat, outcome),
    }

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        now = _visit(conn, d, got["mdtrt_id"], got["psn_no"])
        if now["state"] == "settled":
            return now["setlinfo"]
        conn.execute(
            "UPDATE visits SET state = 'settled', setl_id = ?, setlinfo = ?, updated_at = ? "
            "WHERE mdtrt_id = ?",
            (receipt.setl_id, json.dumps(output), time.time(), got["mdtrt_id"]),
        )
        return output

    return await _stored_write(nat, env, write)


async def cancel_settlement(nat: National, env: Envelope) -> Stored:
    inp = Fields(env.input, "input")
    d = inp.child("data")
    setl_id = d.text("setl_id", hint="the setl_id 2207 returned") if d else None
    mdtrt_id = d.text("mdtrt_id") if d else None
    psn_no = d.text("psn_no") if d else None
    inp.check()
    assert d is not None and setl_id and mdtrt_id and psn_no
    with nat._lock:
        visit = _visit(nat._db, d, mdtrt_id, psn_no)
    rows = nat.read_agent(
        "SELECT medfee_sumamt, fund_pay_sumamt, acct_pay, psn_cash_pay FROM settlements WHERE setl_id = ?",
        (setl_id,),
    )
    if visit["setl_id"] != setl_id or not rows:
        raise NationalError([(d.at("setl_id"), "no settlement with this setl_id for this visit")])
    total, fund, acct, cash = rows[0]
    # The REST reversal path: a record of its own; a second cancellation answers the first.
    receipt = await nat.outbox.append_reversal(
        setl_id,
        ReversalRequest(reason="national 2208 settlement cancellation", opter=env.opter),
        env.fixmedins_code,
    )
    output = {
        "setlinfo": {
            "setl_id": receipt.setl_id,
            "orig_setl_id": setl_id,
            "mdtrt_id": mdtrt_id,
            "psn_no": psn_no,
            "medfee_sumamt": fen_to_text(-total),
            "fund_pay_sumamt": fen_to_text(-(fund or 0)),
            "acct_pay": fen_to_text(-(acct or 0)),
            "psn_cash_pay": fen_to_text(-(cash or 0)),
        }
    }

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        # the visit is open again (fees kept), to be corrected and settled anew under the next his_setl_no
        conn.execute(
            "UPDATE visits SET state = 'open', settle_round = settle_round + 1, setlinfo = NULL, "
            "updated_at = ? "
            "WHERE mdtrt_id = ? AND state = 'settled' AND setl_id = ?",
            (time.time(), mdtrt_id, setl_id),
        )
        return output

    return await _stored_write(nat, env, write)


#: infno → (handler, whether its answer is kept for msgid replay).
TRANSACTIONS = {
    "9001": (sign_in, True),
    "9002": (sign_out, True),
    "1101": (person_info, True),
    "2201": (register, True),
    "2202": (cancel_registration, True),
    "2203": (diagnoses, True),
    "2204": (upload_fees, True),
    "2205": (cancel_fees, True),
    "2206": (pre_settle, False),
    "2207": (settle, True),
    "2208": (cancel_settlement, True),
}
