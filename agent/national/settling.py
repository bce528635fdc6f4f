"""From a visit held in ``national.db`` to a settlement, shared by outpatient (2206/2207/2208), inpatient
(2303/2304/2305) and drug-store (2101/2102/2103) transactions.

Why one module: each kind of visit is collected differently (a registration and fee uploads, an
admission and days of fee details, one purchase), but all end in the same record, checked and made
durable by the one settlement path (``agent.settle.settle_record``: blacklist, in-event rules and
split, outbox with ``his_setl_no`` idempotency) and cancelled by the one reversal path
(``Outbox.append_reversal``). Writing that twice would let the doors disagree.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from protocol.records import Settlement, fen_to_text, line_total_fen

from ..identity import CERT_TYPE_EVOUCHER
from ..intake import ReversalRequest, parse_settlement
from .envelope import Envelope, National, Stored, stored_write
from .fields import Fields, NationalError

__all__ = [
    "CERT_TYPES",
    "KINDS",
    "SETL_WAYS",
    "Kind",
    "build",
    "cancel_settled",
    "checked",
    "fee_lines",
    "list_type_of",
    "load_visit",
    "must_be_open",
    "open_visit",
    "person_known",
    "preview_output",
    "settle_visit",
]

#: ``mdtrt_cert_type`` code values the agent accepts (national table; 02 only where the HIS checked the ID).
CERT_TYPES = {"01": "e-voucher", "02": "resident ID card", "03": "social-security card"}
#: ``psn_setlway``: 01 settle by item, 02 settle by fixed amount (we settle by item only).
SETL_WAYS = {"01": "by item", "02": "fixed amount"}


@dataclass(frozen=True)
class Kind:
    """The transactions of one kind of visit, named in the messages that tell the HIS what to send."""

    code: str  # visits.kind
    register: str
    fees: str
    cancel_fees: str
    diagnosis: str
    cancel_settlement: str


KINDS = {
    "otp": Kind("otp", "2201", "2204", "2205", "2203 (or send dise_codg at 2201)", "2208"),
    "ipt": Kind("ipt", "2401", "2301", "2302", "2401 diseinfo or 2403", "2305"),
    "drug": Kind("drug", "2101", "2101 drugdetail", "2101", "2101", "2103"),
}


def list_type_of(med_list_codg: str) -> str:
    """Our ``list_type`` from the national catalogue code's shape, which the fee line does not carry.

    National codes: western drugs begin with X, Chinese patent drugs with Z, herbal pieces with T,
    consumables with C, service items with digits. A HIS may send ``list_type`` itself (extension)."""
    head = med_list_codg[:1].upper()
    return {"X": "101", "Z": "102", "T": "103", "C": "301"}.get(head, "201")


def person_known(nat: National, psn_no: str) -> dict[str, str | None]:
    """What earlier transactions learnt of the person (1101's card, a visit's extension fields)."""
    rows = nat.read(
        "SELECT gend, brdy, insuplc_admdvs, card_sn, emp_no, insutype, psn_type FROM persons "
        "WHERE psn_no = ?",
        (psn_no,),
    )
    names = ("gend", "brdy", "insuplc_admdvs", "card_sn", "emp_no", "insutype", "psn_type")
    return dict(zip(names, rows[0], strict=True)) if rows else dict.fromkeys(names)


def remember_person(conn: sqlite3.Connection, psn_no: str, **facts: str | None) -> None:
    """Keep what the HIS told of the person (never a name or ID number); a given value replaces the old."""
    names = ("gend", "brdy", "insuplc_admdvs", "card_sn", "emp_no", "insutype", "psn_type")
    values = [facts.get(n) for n in names]
    conn.execute(
        f"INSERT INTO persons (psn_no, {', '.join(names)}, at) VALUES (?, {', '.join('?' * len(names))}, ?) "
        "ON CONFLICT (psn_no) DO UPDATE SET "
        + ", ".join(f"{n} = coalesce(excluded.{n}, {n})" for n in names)
        + ", at = excluded.at",
        (psn_no, *values, time.time()),
    )


def load_visit(
    conn: sqlite3.Connection, where: Fields, mdtrt_id: str, psn_no: str, kind: str | None = None
) -> dict[str, Any]:
    row = conn.execute(
        "SELECT psn_no, state, reg, diseinfo, settle_round, setl_id, setlinfo, kind FROM visits "
        "WHERE mdtrt_id = ?",
        (mdtrt_id,),
    ).fetchone()
    want = KINDS[kind or "otp"]
    if row is None or (kind is not None and row[7] != kind):
        raise NationalError(
            [
                (
                    where.at("mdtrt_id"),
                    f"no {'admission' if want.code == 'ipt' else 'visit'} with this mdtrt_id here: register "
                    f"it with {want.register} and use the mdtrt_id it returned",
                )
            ]
        )
    if row[0] != psn_no:
        raise NationalError([(where.at("psn_no"), "is not the person this visit was registered for")])
    return {
        "mdtrt_id": mdtrt_id,
        "state": row[1],
        "reg": json.loads(row[2]),
        "diseinfo": json.loads(row[3]) if row[3] else [],
        "settle_round": row[4],
        "setl_id": row[5],
        "setlinfo": json.loads(row[6]) if row[6] else None,
        "kind": row[7],
    }


def must_be_open(visit: dict[str, Any], where: Fields) -> None:
    kind = KINDS[visit["kind"]]
    if visit["state"] == "settled":
        raise NationalError(
            [
                (
                    where.at("mdtrt_id"),
                    f"this visit is settled ({visit['setl_id']}): cancel the settlement with "
                    f"{kind.cancel_settlement} first",
                )
            ]
        )
    if visit["state"] == "cancelled":
        what = "admission was cancelled (2404)" if kind.code == "ipt" else "registration was cancelled (2202)"
        raise NationalError(
            [(where.at("mdtrt_id"), f"this visit's {what}: register a new visit with {kind.register}")]
        )


def visit_fees(conn: sqlite3.Connection, mdtrt_id: str) -> list[dict[str, Any]]:
    return [
        json.loads(r[0])
        for r in conn.execute("SELECT line FROM fees WHERE mdtrt_id = ? ORDER BY rowid", (mdtrt_id,))
    ]


def open_visit(
    nat: National, where: Fields, mdtrt_id: str, psn_no: str, kind: str | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with nat._lock:
        visit = load_visit(nat._db, where, mdtrt_id, psn_no, kind)
        fees = visit_fees(nat._db, mdtrt_id)
    return visit, fees


def fee_lines(
    inp: Fields, name: str, *, visit_fields: bool = True, max_items: int = 2000
) -> list[dict[str, Any]]:
    """The fee lines of a 2204 / 2301 ``feedetail[]`` or a 2101/2102 ``drugdetail[]``: each line's
    ``cnt × pric`` must equal its total (half-up to the fen); a ``feedetl_sn`` may not repeat."""
    lines: list[dict[str, Any]] = []
    ids: set[tuple[str | None, str | None]] = set()
    for x in inp.items(name, max_items=max_items):
        line = {
            "mdtrt_id": x.text("mdtrt_id") if visit_fields else None,
            "psn_no": x.text("psn_no") if visit_fields else None,
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
    return lines


def finish_lines(lines: list[dict[str, Any]]) -> None:
    for ln in lines:
        ln["list_type"] = ln["list_type"] or list_type_of(ln["med_list_codg"])
        ln["medins_list_name"] = ln["medins_list_name"] or ln["medins_list_codg"]


def store_fees(
    conn: sqlite3.Connection, mdtrt_id: str, lines: list[dict[str, Any]], where: str, kind: Kind
) -> None:
    """Keep uploaded lines; the same line again is a retry, the same ``feedetl_sn`` with other content an
    error (cancel it first)."""
    for i, ln in enumerate(lines):
        text = json.dumps(ln, sort_keys=True)
        held = conn.execute(
            "SELECT line FROM fees WHERE mdtrt_id = ? AND feedetl_sn = ?", (mdtrt_id, ln["feedetl_sn"])
        ).fetchone()
        if held is not None and held[0] != text:
            raise NationalError(
                [
                    (
                        f"{where}[{i}].feedetl_sn",
                        f"this line was uploaded with other content: cancel it with {kind.cancel_fees} "
                        "first, or use a new feedetl_sn",
                    )
                ]
            )
        if held is None:
            conn.execute(
                "INSERT INTO fees (mdtrt_id, feedetl_sn, line) VALUES (?, ?, ?)",
                (mdtrt_id, ln["feedetl_sn"], text),
            )


def fee_result(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
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


# ---- the settlement record -----------------------------------------------------------------------


def build(
    nat: National, env: Envelope, d: Fields, got: dict[str, Any], visit: dict[str, Any], fees: list[dict]
) -> tuple[Settlement, bytes, bytes]:
    """The request ``POST /v1/settlements`` takes, assembled from the visit's pieces, parsed by
    ``agent.intake`` exactly as a REST body is."""
    reg = visit["reg"]
    kind = KINDS[visit["kind"]]
    for name in ("mdtrt_cert_type", "mdtrt_cert_no"):
        if got.get(name) and got[name] != reg[name]:
            raise NationalError(
                [(d.at(name), f"differs from the registration ({kind.register}): {reg[name]}")]
            )
    if not fees:
        raise NationalError(
            [(d.at("mdtrt_id"), f"this visit has no fee lines: upload them with {kind.fees} first")]
        )
    if not reg.get("dise_codg"):
        raise NationalError(
            [(d.at("mdtrt_id"), f"this visit has no diagnosis: upload it with {kind.diagnosis}")]
        )
    total = sum(ln["det_item_fee_sumamt"] for ln in fees)
    if got["medfee_sumamt"] != total:
        raise NationalError(
            [
                (
                    d.at("medfee_sumamt"),
                    f"the uploaded fee lines add up to {fen_to_text(total)}, not "
                    f"{fen_to_text(got['medfee_sumamt'])}: send their sum, or correct "
                    + (
                        "drugdetail[]"
                        if kind.code == "drug"
                        else f"the lines ({kind.cancel_fees}, {kind.fees})"
                    ),
                )
            ]
        )
    mdtrt = {
        "mdtrt_id": visit["mdtrt_id"],
        "med_type": got.get("med_type") or reg["med_type"],
        "begntime": reg["begntime"],
        "dise_codg": reg["dise_codg"],
        "dise_name": reg.get("dise_name"),
        "dept_codg": reg.get("dept_codg"),
        "dr_codg": reg.get("dr_codg") or next((ln["dr_codg"] for ln in fees if ln.get("dr_codg")), None),
    }
    if reg.get("endtime"):
        mdtrt["endtime"] = reg["endtime"]
    if reg.get("ipt_days") is not None:
        mdtrt["ipt_days"] = reg["ipt_days"]
    body = {
        "fixmedins_code": env.fixmedins_code,
        "his_setl_no": his_setl_no(visit["mdtrt_id"], visit["settle_round"]),
        "psn": {
            "psn_no": reg["psn_no"],
            "insutype": got.get("insutype") or reg["insutype"],
            "insuplc_admdvs": reg["insuplc_admdvs"],
            "psn_type": reg["psn_type"],
            "gend": reg["gend"],
            "brdy": reg["brdy"],
            "card_sn": reg.get("card_sn"),
            "emp_no": reg.get("emp_no"),
        },
        "mdtrt": mdtrt,
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
    if got.get("acct_used_flag") == "1" and got.get("acct_balance") is not None:
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


def his_setl_no(mdtrt_id: str, settle_round: int) -> str:
    """The settlement's ``his_setl_no``: the visit and how many times it was settled and cancelled before, so
    a retry is the same settlement (the outbox's idempotency) and a settlement after a cancellation a new
    one."""
    return f"{mdtrt_id}-{settle_round}"


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


def setlinfo(record: Settlement, setl_id: str | None) -> dict[str, Any]:
    def money(v: int | None) -> str:
        return fen_to_text(v or 0)

    fulamt = sum(ln.fulamt_ownpay_amt or 0 for ln in record.feedetl)
    preself = sum(ln.preselfpay_amt or 0 for ln in record.feedetl)
    return {
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


def setldetail(record: Settlement) -> list[dict[str, Any]]:
    out = []
    for name in ("hifp_pay", "hifmi_pay", "hifob_pay"):
        amount = getattr(record, name) or 0
        if amount or name == "hifp_pay":  # the pooled fund always shows, even when it pays nothing
            code, label = _fund_type(record.psn.insutype, name)
            out.append(
                {"fund_pay_type": code, "fund_pay_type_name": label, "fund_payamt": fen_to_text(amount)}
            )
    return out


def prompts(nat: National, outcome: Any) -> list[dict[str, Any]]:
    if outcome is None:
        return []
    from .rules import rule_name, sev_deg

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


def acct_balance(got: dict[str, Any]) -> int | None:
    return got.get("acct_balance") if got.get("acct_used_flag") == "1" else None


def require_split(record: Settlement) -> None:
    """The platform answers a (pre-)settlement with the fund's share; without a policy row there is none."""
    if record.fund_pay_sumamt is None:
        raise NationalError(
            "the fund's share cannot be computed: either no benefit policy has reached this agent yet "
            "(GET /v1/status shows the policy bundle), or the policy has no row for this visit's year, "
            f"insutype {record.psn.insutype}, psn_type {record.psn.psn_type}, hospital level and med_type "
            f"{record.mdtrt.med_type} (ask the medical-insurance bureau to publish one); meanwhile settle "
            "through POST /v1/settlements with the split from the platform"
        )


async def checked(
    nat: National, env: Envelope, d: Fields, got: dict[str, Any], visit: dict, fees: list
) -> tuple[Settlement, Any]:
    """The record as POST /v1/settlements/preview checks it: blacklist, in-event rules, split; nothing
    is written (2206, 2303, 2101)."""
    record, _digest, _raw = build(nat, env, d, got, visit, fees)
    from ..settle import refuse_blacklisted

    refuse_blacklisted(nat.policy, record)
    outcome = None
    if nat.desk is not None:
        outcome = await nat.desk.settle(record, acct_balance=acct_balance(got))
    require_split(record)
    return record, outcome


def preview_output(nat: National, record: Settlement, outcome: Any) -> dict[str, Any]:
    return {
        "setlinfo": setlinfo(record, None),
        "setldetail": setldetail(record),
        "rule_prompts": prompts(nat, outcome),
    }


async def settle_visit(
    nat: National,
    env: Envelope,
    d: Fields,
    got: dict[str, Any],
    visit: dict[str, Any],
    fees: list[dict[str, Any]],
    *,
    refuse_settled: bool = False,
    before_mark: Callable[[sqlite3.Connection], None] | None = None,
) -> Stored:
    """Settle a held visit through the one settlement path, then mark it settled with the answer.

    A visit already settled answers its settlement (2207, 2102: the HIS asks again after a lost answer)
    or, with ``refuse_settled`` (2304: one settlement per admission), is refused. A settlement held in
    the outbox but not marked here (the agent stopped between the two writes) is answered from the
    outbox, like a retry of POST /v1/settlements. ``before_mark`` writes the visit itself in the same
    transaction (2102: a purchase is kept only once settled)."""
    if visit["state"] == "settled":
        if refuse_settled:
            raise NationalError(
                [
                    (
                        d.at("mdtrt_id"),
                        f"this admission is already settled ({visit['setl_id']}); a stay settles once: "
                        f"cancel that settlement with {KINDS[visit['kind']].cancel_settlement} to settle "
                        "it again",
                    )
                ]
            )
        held = visit["setlinfo"]
        return await stored_write(nat, env, lambda conn: held)
    must_be_open(visit, d)
    from ..settle import settle_record

    record, digest, _raw = build(nat, env, d, got, visit, fees)
    receipt, outcome = await settle_record(
        record, digest, nat.outbox, policy=nat.policy, desk=nat.desk, acct_balance=acct_balance(got),
        before_append=require_split,
    )  # fmt: skip
    if receipt.duplicate:
        (fund, acct, cash), *_ = nat.read_agent(
            "SELECT fund_pay_sumamt, acct_pay, psn_cash_pay FROM settlements WHERE setl_id = ?",
            (receipt.setl_id,),
        )
        record.fund_pay_sumamt, record.acct_pay, record.psn_cash_pay = fund, acct, cash
        record.hifp_pay, record.hifmi_pay, record.hifob_pay = fund, 0, 0
    output = {
        "setlinfo": setlinfo(record, receipt.setl_id),
        "setldetail": setldetail(record),
        "rule_prompts": prompts(nat, outcome),
    }

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        if (
            before_mark is not None
            and conn.execute(
                "SELECT 1 FROM visits WHERE mdtrt_id = ? AND state = 'settled'", (visit["mdtrt_id"],)
            ).fetchone()
            is None
        ):
            before_mark(conn)
        now = load_visit(conn, d, visit["mdtrt_id"], visit["reg"]["psn_no"], visit["kind"])
        if now["state"] == "settled":
            if refuse_settled and now["setl_id"] != receipt.setl_id:
                raise NationalError(
                    [(d.at("mdtrt_id"), f"this admission is already settled ({now['setl_id']})")]
                )
            return now["setlinfo"]
        conn.execute(
            "UPDATE visits SET state = 'settled', setl_id = ?, setlinfo = ?, updated_at = ? "
            "WHERE mdtrt_id = ?",
            (receipt.setl_id, json.dumps(output), time.time(), visit["mdtrt_id"]),
        )
        return output

    return await stored_write(nat, env, write)


def cancellation(
    kind: str, reason: str, setl_hint: str, mdtrt_hint: str = ""
) -> Callable[[National, Envelope], Awaitable[Stored]]:
    """The handler of a settlement-cancellation transaction (2208, 2305, 2103): they differ only in
    the visit kind they reverse, the reason the reversal records and the hints their errors give."""

    async def cancel_settlement(nat: National, env: Envelope) -> Stored:
        inp = Fields(env.input, "input")
        d = inp.child("data")
        setl_id = d.text("setl_id", hint=setl_hint) if d else None
        mdtrt_id = d.text("mdtrt_id", hint=mdtrt_hint) if d else None
        psn_no = d.text("psn_no") if d else None
        inp.check()
        assert d is not None and setl_id and mdtrt_id and psn_no
        return await cancel_settled(nat, env, d, setl_id, mdtrt_id, psn_no, kind, reason)

    return cancel_settlement


async def cancel_settled(
    nat: National, env: Envelope, d: Fields, setl_id: str, mdtrt_id: str, psn_no: str, kind: str, reason: str
) -> Stored:
    """Cancel a visit's settlement through the REST reversal path (a record of its own; a second
    cancellation answers the first) and open the visit again, lines kept, under the next settle round."""
    with nat._lock:
        visit = load_visit(nat._db, d, mdtrt_id, psn_no, kind)
    rows = nat.read_agent(
        "SELECT medfee_sumamt, fund_pay_sumamt, acct_pay, psn_cash_pay FROM settlements WHERE setl_id = ?",
        (setl_id,),
    )
    if visit["setl_id"] != setl_id or not rows:
        raise NationalError([(d.at("setl_id"), "no settlement with this setl_id for this visit")])
    total, fund, acct, cash = rows[0]
    receipt = await nat.outbox.append_reversal(
        setl_id, ReversalRequest(reason=reason, opter=env.opter), env.fixmedins_code
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
        conn.execute(
            "UPDATE visits SET state = 'open', settle_round = settle_round + 1, setlinfo = NULL, "
            "updated_at = ? WHERE mdtrt_id = ? AND state = 'settled' AND setl_id = ?",
            (time.time(), mdtrt_id, setl_id),
        )
        return output

    return await stored_write(nat, env, write)
