"""National reconciliation against the agent's own record: 3201 (totals for a period) and 3202 (the
settlements one by one, naming each that differs).

Both read the agent database's ``settlements`` table, the record of what was made durable here
(settlements through the REST API and the drop folder count as well as the envelope's). A
settlement counts on the local day it was made, its reversal on the day the reversal was made.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from protocol.records import fen_to_text

from .envelope import Envelope, National
from .fields import Fields, NationalError

__all__ = ["RECONCILE_TRANSACTIONS"]

_AMOUNTS = ("medfee_sumamt", "fund_pay_sumamt", "acct_pay")


def _local_date(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch).date().isoformat()


async def reconcile(nat: National, env: Envelope) -> dict[str, Any]:
    inp = Fields(env.input, "input")
    d = inp.child("data")
    if d is None:
        inp.check()
    assert d is not None
    d.text("insutype", required=False, pattern=r"\d{3}")
    d.text("clr_type", required=False, max_len=6)
    optins = d.text("setl_optins", required=False, pattern=r"\d{6}", hint="the 6-digit clearing area")
    begin, end = d.date("stmt_begndate"), d.date("stmt_enddate")
    his = {
        "medfee_sumamt": d.money("medfee_sumamt"),
        "fund_pay_sumamt": d.money("fund_pay_sumamt"),
        "acct_pay": d.money("acct_pay"),
        "fixmedins_setl_cnt": d.integer("fixmedins_setl_cnt", required=True, low=-(10**9), high=10**9),
    }
    inp.check()
    assert begin and end
    if end < begin:
        raise NationalError([("input.data.stmt_enddate", "must not be before stmt_begndate")])
    ours = {"medfee_sumamt": 0, "fund_pay_sumamt": 0, "acct_pay": 0, "fixmedins_setl_cnt": 0}
    rows = await asyncio.to_thread(
        nat.read_agent,
        "SELECT created_at, medfee_sumamt, fund_pay_sumamt, acct_pay, reversal_setl_id FROM settlements",
    )
    for created_at, total, fund, acct, reversal_setl_id in rows:
        signs = []
        if begin <= _local_date(created_at) <= end:
            signs.append(1)
        if reversal_setl_id:  # the reversal's time is in its id: institution-epoch ms-random
            parts = str(reversal_setl_id).rsplit("-", 2)
            if len(parts) == 3 and parts[1].isdigit() and begin <= _local_date(int(parts[1]) / 1000) <= end:
                signs.append(-1)
        for sign in signs:
            ours["medfee_sumamt"] += sign * total
            ours["fund_pay_sumamt"] += sign * (fund or 0)
            ours["acct_pay"] += sign * (acct or 0)
            ours["fixmedins_setl_cnt"] += sign
    differences = []
    for name, value in ours.items():
        if his[name] != value:
            show = (lambda v: str(v)) if name == "fixmedins_setl_cnt" else fen_to_text
            differences.append(f"{name}: HIS {show(his[name])}, agent {show(value)}")
    return {
        "stmtinfo": {
            "setl_optins": optins,
            "stmt_rslt": "1" if differences else "0",
            "stmt_rslt_dscr": "; ".join(differences) if differences else f"totals agree for {begin} to {end}",
        },
        "agent_totals": {k: (v if k == "fixmedins_setl_cnt" else fen_to_text(v)) for k, v in ours.items()},
    }


async def _agent_rows(nat: National, begin: str, end: str) -> dict[str, dict[str, Any]]:
    """setl_id → the agent's row for the period: a settlement with its amounts, a reversal negated."""
    rows = await asyncio.to_thread(
        nat.read_agent,
        "SELECT setl_id, his_setl_no, created_at, medfee_sumamt, fund_pay_sumamt, acct_pay, reversal_setl_id "
        "FROM settlements",
    )
    out: dict[str, dict[str, Any]] = {}
    for setl_id, his_setl_no, created_at, total, fund, acct, reversal_setl_id in rows:
        amounts = {"medfee_sumamt": total, "fund_pay_sumamt": fund or 0, "acct_pay": acct or 0}
        if begin <= _local_date(created_at) <= end:
            out[setl_id] = {**amounts, "refd_setl_flag": "0", "his_setl_no": his_setl_no}
        if reversal_setl_id:
            parts = str(reversal_setl_id).rsplit("-", 2)
            if len(parts) == 3 and parts[1].isdigit() and begin <= _local_date(int(parts[1]) / 1000) <= end:
                out[reversal_setl_id] = {
                    **{k: -v for k, v in amounts.items()},
                    "refd_setl_flag": "1",
                    "orig_setl_id": setl_id,
                    "his_setl_no": his_setl_no,
                }
    return out


def _shown(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: fen_to_text(row[k]) for k in _AMOUNTS} | {"refd_setl_flag": row["refd_setl_flag"]}


async def reconcile_detail(nat: National, env: Envelope) -> dict[str, Any]:
    """3202: the HIS's list of settlements for a period against the agent's, by ``setl_id``.

    The platform takes the list as a file uploaded with 9101 and named by ``file_qury_no``; the agent
    takes it inline as ``input.detail[]`` (9101 is not served). Each difference is named: ``1`` the agent
    has no such settlement in the period, ``2`` the HIS did not list one the agent made, ``3`` the
    amounts differ (each figure shown)."""
    inp = Fields(env.input, "input")
    d = inp.child("data")
    if d is None:
        inp.check()
    assert d is not None
    optins = d.text("setl_optins", required=False, pattern=r"\d{6}", hint="the 6-digit clearing area")
    d.text("clr_type", required=False, max_len=6)
    d.text("insutype", required=False, pattern=r"\d{3}")
    d.integer("fixmedins_setl_cnt", low=-(10**9), high=10**9)
    for name in ("medfee_sumamt", "fund_pay_sumamt", "cash_payamt", "acct_pay"):
        d.money(name, required=False)
    file_qury_no = d.text("file_qury_no", required=False, max_len=200)
    begin, end = d.date("stmt_begndate"), d.date("stmt_enddate")
    listed = inp.obj.get("detail") if isinstance(inp.obj, dict) else None
    if file_qury_no and not listed:
        inp.add(
            "detail",
            "required: this agent does not serve the 9101 file upload that file_qury_no names; send the "
            "settlements inline as input.detail[] (setl_id, medfee_sumamt, fund_pay_sumamt, acct_pay, "
            "refd_setl_flag)",
        )
    his: dict[str, dict[str, Any]] = {}
    for x in inp.items("detail", required=not file_qury_no, max_items=100_000):
        setl_id = x.text("setl_id", hint="the settlement's setl_id as the agent answered it")
        x.text("mdtrt_id", required=False)
        x.text("psn_no", required=False)
        refd = x.code("refd_setl_flag", {"0": "settlement", "1": "reversal"}, required=False) or "0"
        amounts = {
            "medfee_sumamt": x.money("medfee_sumamt"),
            "fund_pay_sumamt": x.money("fund_pay_sumamt"),
            "acct_pay": x.money("acct_pay", required=False) or 0,
        }
        if setl_id in his:
            x.add("setl_id", "listed twice")
        if setl_id and None not in amounts.values():
            if refd == "1":  # a reversal: negative as 2208/2305 answer it, whichever sign the HIS sent
                amounts = {k: -abs(v) for k, v in amounts.items()}
            his[setl_id] = {**amounts, "refd_setl_flag": refd}
    inp.check()
    assert begin and end
    if end < begin:
        raise NationalError([("input.data.stmt_enddate", "must not be before stmt_begndate")])
    ours = await _agent_rows(nat, begin, end)
    differences = []
    for setl_id in sorted(set(his) | set(ours)):
        a, h = ours.get(setl_id), his.get(setl_id)
        if a is None:
            kind, dscr = "1", f"the agent made no settlement {setl_id} from {begin} to {end}"
        elif h is None:
            what = "reversal" if a["refd_setl_flag"] == "1" else "settlement"
            kind, dscr = "2", f"the HIS did not list the agent's {what} {setl_id}"
        else:
            diffs = [
                f"{k}: HIS {fen_to_text(h[k])}, agent {fen_to_text(a[k])}" for k in _AMOUNTS if h[k] != a[k]
            ]
            if h["refd_setl_flag"] != a["refd_setl_flag"]:
                diffs.append(f"refd_setl_flag: HIS {h['refd_setl_flag']}, agent {a['refd_setl_flag']}")
            if not diffs:
                continue
            kind, dscr = "3", "; ".join(diffs)
        differences.append(
            {"setl_id": setl_id, "diff_type": kind, "diff_dscr": dscr, "his": _shown(h), "agent": _shown(a)}
        )
    return {
        "stmtinfo": {
            "setl_optins": optins,
            "stmt_rslt": "1" if differences else "0",
            "stmt_rslt_dscr": f"{len(differences)} settlements differ from {begin} to {end}"
            if differences
            else f"all {len(ours)} settlements agree from {begin} to {end}",
            "his_cnt": len(his),
            "agent_cnt": len(ours),
        },
        "diff": differences,
    }


#: infno → (handler, whether its answer is kept for msgid replay): read-only, so none is.
RECONCILE_TRANSACTIONS = {"3201": (reconcile, False), "3202": (reconcile_detail, False)}
