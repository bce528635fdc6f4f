"""The national transaction envelope over real loopback HTTP: the agent's app (create_app) with a real
outbox, policy store (sample rules, catalogue and benefit policy), rule checks and e-voucher ledger.

The requests of the full flow are ``tests/agent/national/flow.json``; ``YIBAO_NATIONAL_DOC=1`` makes the
flow test rewrite the examples section of docs/NATIONAL.md from what it posted and was answered.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from agent.api import create_app
from agent.checks import DeskChecks
from agent.config import AgentConfig
from agent.evoucher import open_verifier
from agent.national import NATIONAL_PATH
from agent.policy_store import PolicyStore
from agent.store import Outbox
from agent.users import UserStore
from protocol.bundles import BlacklistEntry, BundleHeader
from protocol.chain import decode_body, decode_entry
from simulators.evoucher import Issuer

TOKEN = "his-secret-token"
CODE = "H37021100001"
PSN = "37021119580402123X"
AREA = "370211"
ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "docs" / "samples"
FLOW = json.loads((Path(__file__).parent / "national" / "flow.json").read_text())["steps"]
DOC = ROOT / "docs" / "NATIONAL.md"


class Client:
    """A HIS speaking the envelope: numbers its msgids, carries the sign_no, fills ${...} placeholders."""

    def __init__(self, http: aiohttp.ClientSession, issuer: Issuer) -> None:
        self.http = http
        self.issuer = issuer
        self.seq = 0
        self.vars: dict[str, str] = {"psn_no": PSN, "today": dt.date.today().isoformat(), "sign_no": ""}
        self.transcript: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    def msgid(self) -> str:
        self.seq += 1
        return f"{CODE}{dt.datetime.now():%Y%m%d%H%M%S}{self.seq:04d}"

    def envelope(self, infno: str, input_: Any, **over: Any) -> dict[str, Any]:
        env = {
            "infno": infno,
            "msgid": self.msgid(),
            "mdtrtarea_admvs": AREA,
            "insuplc_admdvs": AREA,
            "recer_sys_code": "FSI_LOCAL",
            "dev_no": "",
            "dev_safe_info": "",
            "cainfo": "",
            "signtype": "",
            "infver": "V1.0",
            "opter_type": "1",
            "opter": "C0007",
            "opter_name": "Cashier Li",
            "inf_time": f"{dt.datetime.now():%Y-%m-%d %H:%M:%S}",
            "fixmedins_code": CODE,
            "fixmedins_name": "Qingdao Central Hospital",
            "sign_no": self.vars["sign_no"],
            "input": input_,
        }
        env.update(over)
        return env

    def fill(self, value: Any) -> Any:
        if isinstance(value, str):
            return re.sub(r"\$\{(\w+)\}", lambda m: self.vars[m.group(1)], value)
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        return value

    async def post(self, body: Any, *, raw: bytes | None = None) -> dict[str, Any]:
        kwargs = {"data": raw} if raw is not None else {"json": body}
        async with self.http.post(NATIONAL_PATH, **kwargs) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def call(self, infno: str, input_: Any, **over: Any) -> dict[str, Any]:
        return await self.post(self.envelope(infno, self.fill(input_), **over))

    async def ok(self, infno: str, input_: Any, title: str = "", **over: Any) -> dict[str, Any]:
        body = self.envelope(infno, self.fill(input_), **over)
        answer = await self.post(body)
        assert answer["infcode"] == 0, answer["err_msg"]
        assert answer["err_msg"] is None and len(answer["inf_refmsgid"]) == 30
        assert re.fullmatch(r"\d{17}", answer["refmsg_time"]) and re.fullmatch(
            r"\d{17}", answer["respond_time"]
        )
        self.transcript.append((title or infno, body, answer))
        return answer["output"]

    async def error(self, infno: str, input_: Any, *fragments: str, **over: Any) -> str:
        answer = await self.call(infno, input_, **over)
        assert answer["infcode"] == -1 and answer["output"] is None, answer
        for fragment in fragments:
            assert fragment in answer["err_msg"], (fragment, answer["err_msg"])
        return answer["err_msg"]

    async def sign_in(self) -> str:
        out = await self.ok("9001", step("9001")["input"], step("9001")["title"])
        self.vars["sign_no"] = out["signinoutb"]["sign_no"]
        return self.vars["sign_no"]


def step(infno: str) -> dict[str, Any]:
    return next(s for s in FLOW if s["infno"] == infno)


Scenario = Callable[[Client, Outbox, Path], Awaitable[None]]


def run(
    tmp_path: Path,
    scenario: Scenario,
    *,
    with_desk: bool = True,
    blacklist: list | None = None,
    hosp_lv: str = "3",
    kinds: tuple[str, ...] = ("rules", "catalogue", "policy"),
) -> None:
    issuer = Issuer.generate()
    config = AgentConfig(
        home=tmp_path,
        agent_id="H1-01",
        fixmedins_code=CODE,
        hosp_lv=hosp_lv,
        evoucher_issuers=issuer.issuers_config(),
        evoucher_skew_s=30,
    )

    async def main() -> None:
        outbox = Outbox(tmp_path / "agent.db", agent_id="H1-01", hosp_lv=hosp_lv)
        store = PolicyStore(tmp_path / "policy.db")
        desk = None
        if with_desk:
            for seq, kind in enumerate(("rules", "catalogue", "policy"), start=1):
                if store.held_seq(kind) or kind not in kinds:  # a restart of the same home
                    continue
                doc = json.loads((SAMPLES / f"{kind}.json").read_text())
                store.apply_document(BundleHeader(kind, "370200", seq, None, "2026-11-25T00:00:00Z"), doc)
            desk = DeskChecks(tmp_path / "agent.db", store, None, hosp_lv=hosp_lv)
        if blacklist:
            store.apply_blacklist(
                BundleHeader("blacklist", "370200", 1, None, "2026-11-25T00:00:00Z"), blacklist
            )
        with open_verifier(config) as vouchers:
            app = create_app(config, outbox, None, TOKEN, vouchers=vouchers, policy=store, desk=desk)
            server = TestServer(app)
            await server.start_server()
            try:
                async with aiohttp.ClientSession(
                    base_url=str(server.make_url("/")), headers={"Authorization": f"Bearer {TOKEN}"}
                ) as http:
                    client = Client(http, issuer)
                    client.vars["voucher"] = issuer.issue(PSN, insuplc_admdvs=AREA, ttl_s=300)
                    await scenario(client, outbox, tmp_path)
            finally:
                await server.close()
                if desk is not None:
                    desk.close()
                store.close()
                outbox.close()

    asyncio.run(main())


def rows(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def register_visit(c: Client) -> None:
    """9001 → 1101 (e-voucher) → 2201 → 2203 → 2204, keeping the answers' ids in ``c.vars``."""
    await c.sign_in()
    out = await c.ok("1101", step("1101")["input"], step("1101")["title"])
    c.vars["nonce"] = out["baseinfo"]["mdtrt_cert_no"]
    out = await c.ok("2201", step("2201")["input"], step("2201")["title"])
    c.vars["mdtrt_id"] = out["data"]["mdtrt_id"]
    await c.ok("2203", step("2203")["input"], step("2203")["title"])
    await c.ok("2204", step("2204")["input"], step("2204")["title"])


# ---- the full flow ---------------------------------------------------------------------------------


def test_full_flow_from_sign_in_to_reconciliation(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await register_visit(c)
        db, nat_db = home / "agent.db", home / "national.db"
        assert outbox.last_seq == 0  # registration, diagnoses and fees are held, not settled
        pre = await c.ok("2206", step("2206")["input"], step("2206")["title"])
        info = pre["setlinfo"]
        assert info["setl_id"] is None and info["medfee_sumamt"] == "19.30"
        assert info["fulamt_ownpay_amt"] == "5.50"  # the class C service is wholly self-paid
        assert [p["rule_id"] for p in pre["rule_prompts"]] == ["class_c_not_covered"]
        assert pre["rule_prompts"][0]["sev_deg"] == "1"
        assert outbox.last_seq == 0  # a pre-settlement writes nothing

        settled = await c.ok("2207", step("2207")["input"], step("2207")["title"])
        s = settled["setlinfo"]
        assert s["setl_id"].startswith(CODE) and s == {
            **info,
            "setl_id": s["setl_id"],
            "setl_time": s["setl_time"],
        }
        fen = {k: int(s[k].replace(".", "")) for k in ("fund_pay_sumamt", "acct_pay", "psn_cash_pay")}
        assert sum(fen.values()) == 1930 and int(s["hifp_pay"].replace(".", "")) == fen["fund_pay_sumamt"]
        assert settled["setldetail"] == [
            {
                "fund_pay_type": "310100",
                "fund_pay_type_name": "employee basic medical insurance pooled fund",
                "fund_payamt": s["hifp_pay"],
            }
        ]
        # the settlement reached the outbox, with the visit's lines and the national identification
        assert outbox.last_seq == 1
        ((kind, setl_id),) = rows(db, "SELECT kind, setl_id FROM outbox")
        assert kind == "setl" and setl_id == s["setl_id"]
        ((his_setl_no, fund),) = rows(db, "SELECT his_setl_no, fund_pay_sumamt FROM settlements")
        assert his_setl_no == f"{c.vars['mdtrt_id']}-0" and fund == fen["fund_pay_sumamt"]
        assert rows(db, "SELECT count(*) FROM hist_lines") == [(2,)]
        c.vars["setl_id"] = s["setl_id"]

        # the HIS asks again under a new msgid: the settlement it has, nothing new
        again = await c.ok("2207", step("2207")["input"])
        assert again == settled and outbox.last_seq == 1

        # reconciliation while settled: the HIS's totals agree with the agent's
        recon = step("3201")["input"]["data"] | {
            "medfee_sumamt": "19.30",
            "fund_pay_sumamt": s["fund_pay_sumamt"],
            "acct_pay": s["acct_pay"],
            "fixmedins_setl_cnt": 1,
        }
        out = await c.ok("3201", {"data": recon})
        assert out["stmtinfo"]["stmt_rslt"] == "0", out
        wrong = recon | {"medfee_sumamt": "20.30", "fixmedins_setl_cnt": 2}
        out = await c.ok("3201", {"data": wrong})
        assert out["stmtinfo"]["stmt_rslt"] == "1"
        assert (
            out["stmtinfo"]["stmt_rslt_dscr"]
            == "medfee_sumamt: HIS 20.30, agent 19.30; fixmedins_setl_cnt: HIS 2, agent 1"
        )

        rev = await c.ok("2208", step("2208")["input"], step("2208")["title"])
        r = rev["setlinfo"]
        assert (
            r["orig_setl_id"] == s["setl_id"]
            and r["medfee_sumamt"] == "-19.30"
            and r["setl_id"] != s["setl_id"]
        )
        assert outbox.last_seq == 2
        assert rows(db, "SELECT kind FROM outbox ORDER BY seq") == [("setl",), ("revs",)]
        assert rows(nat_db, "SELECT state, settle_round FROM visits") == [("open", 1)]

        out = await c.ok("3201", step("3201")["input"], step("3201")["title"])  # settled and cancelled: 0
        assert out["stmtinfo"]["stmt_rslt"] == "0" and out["agent_totals"]["fixmedins_setl_cnt"] == 0

        analysis = await c.ok("3101", step("3101")["input"], step("3101")["title"])
        hits = {h["rule_id"]: h for h in analysis["result"]}
        gender = hits["gender_restriction"]
        assert gender["sev_deg"] == "1" and gender["vola_amt"] == "21.50" and gender["rule_name"]
        assert gender["patn_id"] == PSN and gender["mdtrt_id"] == "MZ20261125002"
        assert [d["rx_id"] for d in gender["judge_result_detail_dtos"]] == ["RX1"]
        # a male patient (gend 1) given a female-only drug (catalogue gender 2)
        assert json.loads(gender["vola_evid"]) == [
            {"med_list_codg": "XG03DAP078B002010100156", "value": "1", "threshold": "2"}
        ]
        await c.ok("9002", step("9002")["input"], step("9002")["title"])
        await c.error("1101", step("1101")["input"], "sign_no", "signed out")

        if os.environ.get("YIBAO_NATIONAL_DOC"):
            write_doc_examples(c.transcript)

    run(tmp_path, scenario)


def write_doc_examples(transcript: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> None:
    """Replace the generated examples section of docs/NATIONAL.md with this run's requests and answers."""
    order = [s["title"] for s in FLOW]
    seen: dict[str, tuple[dict, dict]] = {}
    for title, body, answer in transcript:
        if title in order and title not in seen:
            seen[title] = (body, answer)
    parts = ["<!-- examples: generated by YIBAO_NATIONAL_DOC=1 pytest tests/agent/test_national.py -->\n"]
    for title in order:
        if title not in seen:
            continue
        body, answer = seen[title]
        parts.append(
            f"### {title}\n\nRequest:\n\n```json\n{json.dumps(body, indent=2, ensure_ascii=False)}\n```\n\n"
            f"Answer:\n\n```json\n{json.dumps(answer, indent=2, ensure_ascii=False)}\n```\n"
        )
    parts.append("<!-- end of examples -->")
    text = DOC.read_text()
    start, end = (
        text.index("<!-- examples:"),
        text.index("<!-- end of examples -->") + len("<!-- end of examples -->"),
    )
    DOC.write_text(text[:start] + "\n".join(parts) + text[end:])


# ---- errors ------------------------------------------------------------------------------------------


def test_envelope_errors_name_the_field_and_write_nothing(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await c.sign_in()
        before = rows(home / "national.db", "SELECT count(*) FROM msgs")
        msg = await c.error("9999", {}, "infno", "9999 is not supported", "2207")
        assert "supported: 1101, 1301" in msg and "2401" in msg and "3202" in msg
        body = c.envelope("1101", {})
        for name in ("msgid", "opter", "fixmedins_code", "inf_time"):
            del body[name]
        answer = await c.post(body)
        assert answer["infcode"] == -1
        for name in ("msgid: required", "opter: required", "fixmedins_code: required", "inf_time: required"):
            assert name in answer["err_msg"]
        await c.error("9001", {}, "msgid", "30 characters", msgid="H3702110000120261325")
        await c.error("9001", {}, "msgid", "not a time", msgid=f"{CODE}202613250000000001")
        await c.error(
            "9001", {}, "msgid", "must begin with the institution code", msgid=f"H99999999999{'2' * 14}0001"
        )
        await c.error("9001", {}, "fixmedins_code", f"serves {CODE} only", fixmedins_code="H99999999999")
        await c.error("9001", {}, "opter_type", "unknown code '7'", opter_type="7")
        await c.error("9001", {}, "inf_time", "yyyy-MM-dd HH:mm:ss", inf_time="25/11/2026")
        await c.error("9001", {}, "mdtrtarea_admvs", "6-digit", mdtrtarea_admvs="37")
        await c.error("9001", {}, "input.signIn: required")
        answer = await c.post(None, raw=b"{not json")
        assert answer["infcode"] == -1 and "not JSON" in answer["err_msg"]
        # bad values inside input: every problem at once, with its path and what is expected
        msg = await c.error(
            "2201",
            {
                "mdtrtinfo": {
                    "psn_no": PSN,
                    "insutype": "31",
                    "begntime": "yesterday",
                    "mdtrt_cert_type": "05",
                    "mdtrt_cert_no": "x",
                    "med_type": "11",
                }
            },
            "input.mdtrtinfo.insutype: 3 digits",
            "input.mdtrtinfo.begntime",
            "input.mdtrtinfo.mdtrt_cert_type: unknown code '05'",
        )
        assert PSN not in msg
        await c.error(
            "2201", {"mdtrtinfo": {"psn_no": PSN}}, "input.mdtrtinfo.insutype: required", "med_type: required"
        )
        await c.error(
            "2204",
            {
                "feedetail": [
                    {
                        "mdtrt_id": "M1",
                        "psn_no": PSN,
                        "feedetl_sn": "1",
                        "fee_ocur_time": "2026-11-25 09:00:00",
                        "med_list_codg": "X1",
                        "medins_list_codg": "H1",
                        "cnt": "2",
                        "pric": "6.90",
                        "det_item_fee_sumamt": "13.79",
                    }
                ]
            },
            "input.feedetail[0].det_item_fee_sumamt",
            "13.80",
        )
        await c.error(
            "2204",
            {
                "feedetail": [
                    {
                        "mdtrt_id": "M1",
                        "psn_no": PSN,
                        "feedetl_sn": "1",
                        "fee_ocur_time": "2026-11-25 09:00:00",
                        "med_list_codg": "X1",
                        "medins_list_codg": "H1",
                        "cnt": "1",
                        "pric": "6.90",
                        "det_item_fee_sumamt": "6.90",
                    }
                ]
            },
            "input.feedetail[0].mdtrt_id",
            "register it with 2201",
        )
        await c.error(
            "2207",
            step("2207")["input"] | {"data": {"psn_no": PSN}},
            "input.data.mdtrt_id: required",
            "input.data.medfee_sumamt: required",
            "input.data.psn_setlway",
        )
        await c.error(
            "3201",
            {
                "data": {
                    "stmt_begndate": "2026-11-31",
                    "stmt_enddate": "2026-11-01",
                    "medfee_sumamt": "1.001",
                    "fund_pay_sumamt": "0",
                    "acct_pay": "0",
                }
            },
            "stmt_begndate",
            "at most 2 decimals",
            "fixmedins_setl_cnt: required",
        )
        assert rows(home / "national.db", "SELECT count(*) FROM msgs") == before
        assert rows(home / "national.db", "SELECT count(*) FROM visits") == [(0,)]
        assert outbox.last_seq == 0

    run(tmp_path, scenario)


def test_sign_no_missing_unknown_signed_out_or_expired_is_refused(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await c.error("1101", step("1101")["input"], "sign_no: required", "9001")
        await c.error("1101", step("1101")["input"], "unknown sign_no", sign_no="nope")
        sign_no = await c.sign_in()
        ((expires_at, signed_in_at),) = rows(
            home / "national.db", "SELECT expires_at, signed_in_at FROM signins"
        )
        assert 23 * 3600 < expires_at - signed_in_at <= 24 * 3600
        await c.ok("9002", {"signOut": {"sign_no": sign_no, "opter_no": "C0007"}})
        await c.error("1101", step("1101")["input"], "signed out")
        await c.sign_in()
        conn = sqlite3.connect(home / "national.db")
        with conn:
            conn.execute("UPDATE signins SET expires_at = ?", (time.time() - 1,))
        conn.close()
        await c.error("1101", step("1101")["input"], "expired", "sign in again with 9001")

    run(tmp_path, scenario)


def test_sign_in_survives_a_restart(tmp_path):
    held: dict[str, str] = {}

    async def first(c: Client, outbox: Outbox, home: Path) -> None:
        held["sign_no"] = await c.sign_in()

    async def second(c: Client, outbox: Outbox, home: Path) -> None:
        c.vars["sign_no"] = held["sign_no"]
        c.seq = 1000  # the first run numbered its msgids from 1 in the same second
        out = await c.ok("1101", step("1101")["input"])
        assert out["baseinfo"]["psn_no"] == PSN

    run(tmp_path, first)
    run(tmp_path, second)


def test_msgid_replay_answers_the_first_answer_and_a_reused_msgid_is_refused(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await c.sign_in()
        body = c.envelope("1101", c.fill(step("1101")["input"]))
        first = await c.post(body)
        assert first["infcode"] == 0
        again = await c.post(body)  # the voucher is spent, yet the retry gets the first answer
        assert again == first
        c.vars["nonce"] = first["output"]["baseinfo"]["mdtrt_cert_no"]
        reg = c.envelope("2201", c.fill(step("2201")["input"]))
        one, two = await c.post(reg), await c.post(reg)
        assert one == two and rows(home / "national.db", "SELECT count(*) FROM visits") == [(1,)]
        other = dict(reg, input={"mdtrtinfo": {**reg["input"]["mdtrtinfo"], "med_type": "14"}})
        answer = await c.post(other)
        assert answer["infcode"] == -1 and "msgid: already used for a different request" in answer["err_msg"]
        # a fresh voucher scan under a new msgid is a new identification: the spent one is refused
        msg = await c.error("1101", step("1101")["input"], "evoucher_replayed")
        assert PSN not in msg

    run(tmp_path, scenario)


def test_visit_pieces_cancellations_and_settled_visit_guards(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await register_visit(c)
        mdtrt_id = c.vars["mdtrt_id"]
        nat_db = home / "national.db"
        # the same line again is fine (a retry); other content under its number is refused
        await c.ok("2204", step("2204")["input"])
        changed = c.fill(step("2204")["input"])
        changed["feedetail"][0] |= {"cnt": "1", "det_item_fee_sumamt": "6.90"}
        await c.error("2204", changed, "input.feedetail[0].feedetl_sn", "2205")
        await c.error(
            "2205", {"data": {"feedetl_sn": "9999", "mdtrt_id": mdtrt_id, "psn_no": PSN}}, "no uploaded line"
        )
        await c.ok("2205", {"data": {"feedetl_sn": "0001", "mdtrt_id": mdtrt_id, "psn_no": PSN}})
        assert rows(nat_db, "SELECT feedetl_sn FROM fees") == [("0002",)]
        await c.error("2207", step("2207")["input"], "medfee_sumamt", "add up to 5.50, not 19.30")
        await c.ok("2204", changed)
        await c.ok("2205", {"data": {"feedetl_sn": "0000", "mdtrt_id": mdtrt_id, "psn_no": PSN}})
        await c.error("2206", step("2206")["input"], "no fee lines", "2204")
        await c.ok("2204", step("2204")["input"] | {})
        await c.error(
            "2207",
            step("2207")["input"] | {"data": {**c.fill(step("2207")["input"])["data"], "psn_no": "X"}},
            "input.data.psn_no",
            "not the person",
        )
        await c.ok("2207", step("2207")["input"])
        await c.error("2204", step("2204")["input"], "settled", "2208")
        await c.error("2202", {"data": {"mdtrt_id": mdtrt_id, "psn_no": PSN}}, "settled", "2208")
        settled = rows(nat_db, "SELECT setl_id FROM visits")[0][0]
        c.vars["setl_id"] = settled
        await c.ok("2208", step("2208")["input"])
        again = await c.ok("2208", step("2208")["input"])  # a second cancellation answers the first
        assert again["setlinfo"]["orig_setl_id"] == settled and outbox.last_seq == 2
        await c.ok("2202", {"data": {"mdtrt_id": mdtrt_id, "psn_no": PSN}})
        await c.error("2203", step("2203")["input"], "cancelled (2202)")
        assert rows(nat_db, "SELECT count(*) FROM fees") == [(0,)]

    run(tmp_path, scenario)


def test_blacklisted_person_is_shown_at_1101_and_refused_at_2207(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await c.sign_in()
        out = await c.ok("1101", step("1101")["input"])
        assert out["blacklist"]["list_type"] == "person" and out["blacklist"]["reason"] == "moved away"
        assert out["insuinfo"][0]["psn_insu_stas"] == "2" and "self-pay" in out["blacklist"]["action"]
        c.vars["nonce"] = out["baseinfo"]["mdtrt_cert_no"]
        c.vars["mdtrt_id"] = (await c.ok("2201", step("2201")["input"]))["data"]["mdtrt_id"]
        await c.ok("2203", step("2203")["input"])
        await c.ok("2204", step("2204")["input"])
        msg = await c.error("2207", step("2207")["input"], "blacklisted", "insured person", "moved away")
        assert PSN not in msg and outbox.last_seq == 0

    run(tmp_path, scenario, blacklist=[BlacklistEntry("+", "person", PSN, "moved away", "test", "")])


def test_without_a_benefit_policy_a_settlement_is_refused_clearly(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await register_visit(c)
        no_policy = "no benefit policy has reached this agent yet"
        await c.error("2207", step("2207")["input"], no_policy, "POST /v1/settlements")
        await c.error("3101", step("3101")["input"], "without the rule library")
        assert outbox.last_seq == 0

    run(tmp_path, scenario, with_desk=False)


def test_1101_by_card_without_a_reader_is_a_clear_error(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await c.sign_in()
        await c.error(
            "1101",
            {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": "A12345678", "card_sn": "1"}},
            "no card reader",
            "e-voucher",
        )
        await c.error(
            "1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": "x"}}, "02 (resident ID card)"
        )

    run(tmp_path, scenario)


def test_wrong_token_is_401_like_the_rest_of_the_api(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        async with c.http.post(
            NATIONAL_PATH, json=c.envelope("9001", {}), headers={"Authorization": "Bearer x"}
        ) as r:
            assert r.status == 401 and (await r.json())["error"]["code"] == "unauthorized"

    run(tmp_path, scenario)


def test_no_override_enters_through_the_envelope_whoever_sends_it(tmp_path):
    """2206/2207 are built from the visit, never from a body's overrides: an override needs a doctor's own
    sign-in on POST /v1/settlements, so one sent in the envelope is refused (even with a doctor's token),
    nothing is written, and the settlement made afterwards carries none."""

    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        with UserStore(home / "users.db") as users:
            doctor = users.add("dr.wang", "doctor", dr_codg="D0001")
        await register_visit(c)
        override = [{"rule_id": "gender_restriction", "dr_codg": "D0001", "reason": "on HRT"}]
        data = c.fill(step("2207")["input"])["data"]
        for infno in ("2206", "2207"):
            await c.error(infno, {"data": data | {"overrides": override}}, "input.data.overrides",
                          "POST /v1/settlements", "doctor's own token")  # fmt: skip
            await c.error(infno, {"data": data, "overrides": override}, "input.overrides")
        body = c.envelope("2207", {"data": data | {"overrides": override}})
        async with c.http.post(NATIONAL_PATH, json=body, headers={"Authorization": f"Bearer {doctor}"}) as r:
            answer = await r.json()
        assert r.status == 200 and answer["infcode"] == -1 and "input.data.overrides" in answer["err_msg"]
        assert outbox.last_seq == 0
        await c.ok("2207", step("2207")["input"])
        [pending] = outbox.read_pending(0, 10, 1 << 30)
        record = decode_body(decode_entry(pending.raw))
        assert record.overrides == [] and outbox.last_seq == 1

    run(tmp_path, scenario)


def test_3102_in_event_analysis_uses_the_in_event_rules(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await c.sign_in()
        data = c.fill(step("3101")["input"])
        order = data["data"]["patient_dtos"][0]["fsi_encounter_dtos"][0]["fsi_order_dtos"][1]
        order |= {"pric": "9.90", "sumamt": "9.90"}  # above the ceiling: an in-event rule
        out = await c.ok("3102", data)
        rules = {h["rule_id"] for h in out["result"]}
        assert "price_over_ceiling" in rules and "gender_restriction" in rules
        out = await c.ok("3101", data)
        assert "price_over_ceiling" not in {h["rule_id"] for h in out["result"]}  # an in-event rule only

    run(tmp_path, scenario)


def test_the_doc_shows_every_request_of_the_flow_with_its_answer():
    """docs/NATIONAL.md's examples come from this module's flow (regenerate: YIBAO_NATIONAL_DOC=1)."""
    text = DOC.read_text()
    examples = text[text.index("<!-- examples:") : text.index("<!-- end of examples -->")]
    for s in FLOW:
        assert f"### {s['title']}\n" in examples, s["title"]
        section = examples.split(f"### {s['title']}\n", 1)[1].split("\n### ", 1)[0]
        request = json.loads(section.split("```json\n", 2)[1].split("\n```", 1)[0])
        assert request["infno"] == s["infno"] and set(request["input"]) == set(s["input"])
        answer = json.loads(section.split("```json\n", 2)[2].split("\n```", 1)[0])
        assert answer["infcode"] == 0 and answer["output"] is not None


def test_a_2207_interrupted_after_the_outbox_is_answered_from_it_never_settled_twice(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await register_visit(c)
        first = await c.ok("2207", step("2207")["input"])
        # as if the agent stopped after the outbox's commit and before national.db marked the visit
        conn = sqlite3.connect(home / "national.db")
        with conn:
            conn.execute("UPDATE visits SET state = 'open', setl_id = NULL, setlinfo = NULL")
            conn.execute("DELETE FROM msgs WHERE infno = '2207'")
        conn.close()
        again = await c.ok("2207", step("2207")["input"])
        assert again["setlinfo"]["setl_id"] == first["setlinfo"]["setl_id"] and outbox.last_seq == 1
        for name in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay"):
            assert again["setlinfo"][name] == first["setlinfo"][name]
        assert rows(home / "national.db", "SELECT state FROM visits") == [("settled",)]

    run(tmp_path, scenario)


def test_no_person_number_in_the_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)

    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await register_visit(c)
        await c.error("2201", {"mdtrtinfo": {"psn_no": PSN, "insutype": "3"}}, "insutype")
        await c.ok("2207", step("2207")["input"])
        await c.error("2204", step("2204")["input"], "settled")

    run(tmp_path, scenario)
    assert caplog.records and PSN not in caplog.text


def test_an_unexpected_failure_is_still_an_infcode_answer(tmp_path, monkeypatch, caplog):
    import agent.national.reconcile as national_reconcile

    def broken(*_args: Any) -> str:
        raise KeyError(PSN)

    monkeypatch.setattr(national_reconcile, "_local_date", broken)

    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await register_visit(c)
        await c.ok("2207", step("2207")["input"])
        msg = await c.error(
            "3201", step("3201")["input"], "internal error in the agent (KeyError)", "same msgid"
        )
        assert PSN not in msg

    run(tmp_path, scenario)
    assert "KeyError at" in caplog.text and PSN not in caplog.text
