"""Inpatient through the national envelope over real HTTP: 2401 admission, 2301/2302 fee details over
the days of a stay, 2403 changes, 2402 discharge, 2303 pre-settlement, 2304 settlement (once), 2305
cancellation, 2404 admission cancellation, 2405 discharge cancellation; and a stay that survives the
agent process being killed.

Bodies are shaped like the national specification's examples (``mdtrtinfo`` + ``diseinfo[]``,
``feedetail[]``, ``dscginfo``, ``adminfo``, ``data``), with the empty strings real HIS send for the
optional fields they do not fill.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from agent.store import Outbox
from simulators.evoucher import Issuer
from tests.agent.test_national import AREA, PSN, ROOT, TOKEN, Client, rows, run, step

TODAY = dt.date.today()
DAY = [TODAY - dt.timedelta(days=2 - i) for i in range(3)]  # admission day, day 2, discharge day


def fen(text: str) -> int:
    return int(text.replace(".", "").replace("-", "")) * (-1 if text.startswith("-") else 1)


def admission(nonce: str, **over: Any) -> dict[str, Any]:
    mdtrtinfo = {
        "psn_no": PSN,
        "insutype": "310",
        "coner_name": "",
        "tel": "",
        "begntime": f"{DAY[0]} 08:00:00",
        "mdtrt_cert_type": "01",
        "mdtrt_cert_no": nonce,
        "med_type": "21",
        "ipt_no": "ZY2026112501",
        "medrcdno": "BA0001",
        "atddr_no": "D0002",
        "chfpdr_name": "Dr Zhao",
        "adm_diag_dscr": "acute appendicitis",
        "adm_dept_codg": "W03",
        "adm_dept_name": "General surgery",
        "adm_bed": "12",
        "dscg_maindiag_code": "",
        "dscg_maindiag_name": "",
        "main_cond_dscr": "",
        "dise_codg": "K35.8",
        "dise_name": "Acute appendicitis",
        "oprn_oprt_code": "",
        "oprn_oprt_name": "",
        "fpsc_no": "",
        "matn_type": "",
        "birctrl_type": "",
        "latechb_flag": "",
        "geso_val": "",
        "fetts": "",
        "fetus_cnt": "",
        "pret_flag": "",
        "birctrl_matn_date": "",
        "dise_type_code": "",
        "insuplc_admdvs": AREA,
        "gend": "1",
        "brdy": "1958-04-02",
    }
    mdtrtinfo.update(over)
    return {
        "mdtrtinfo": mdtrtinfo,
        "diseinfo": [
            {
                "psn_no": PSN,
                "diag_type": "1",
                "maindiag_flag": "1",
                "diag_srt_no": "1",
                "diag_code": "K35.8",
                "diag_name": "Acute appendicitis",
                "adm_cond": "1",
                "diag_dept": "W03",
                "dise_dor_no": "D0002",
                "dise_dor_name": "Dr Zhao",
                "diag_time": f"{DAY[0]} 08:30:00",
            },
        ],
    }


#: The stay's fee details by day: (feedetl_sn, code, cnt, pric). All class A, under the ceilings.
DETAILS = [
    [
        ("0001", "001109000010000", "1", "49.50"),
        ("0002", "001201000020000", "1", "30.80"),
        ("0003", "002501010150000", "1", "22.00"),
    ],
    [
        ("0004", "003310030010000", "1", "1375.00"),
        ("0005", "003301000030000", "1", "946.00"),
        ("0006", "001109000010000", "1", "49.50"),
        ("0007", "C1401020100000012210", "2", "3.20"),
    ],
    [
        ("0008", "001109000010000", "1", "49.50"),
        ("0009", "XA02BCA211A010010102134", "1", "6.90"),
        ("0010", "002501020350000", "1", "11.00"),
    ],
]
#: After 2302 cancels 0010: 2535.60 yuan.
TOTAL_FEN = 253560


def feedetail(mdtrt_id: str, day: int) -> dict[str, Any]:
    lines = []
    for sn, code, cnt, pric in DETAILS[day]:
        total = (int(cnt) * int(pric.replace(".", ""))) / 100
        lines.append(
            {
                "feedetl_sn": sn,
                "init_feedetl_sn": "",
                "mdtrt_id": mdtrt_id,
                "drord_no": f"YZ{sn}",
                "psn_no": PSN,
                "med_type": "21",
                "fee_ocur_time": f"{DAY[day]} 09:{int(sn) % 60:02d}:00",
                "med_list_codg": code,
                "medins_list_codg": f"H-{code[:8]}",
                "det_item_fee_sumamt": f"{total:.2f}",
                "cnt": cnt,
                "pric": pric,
                "bilg_dept_codg": "W03",
                "bilg_dept_name": "General surgery",
                "bilg_dr_codg": "D0002",
                "bilg_dr_name": "Dr Zhao",
                "acord_dept_codg": "",
                "acord_dept_name": "",
                "orders_dr_code": "",
                "orders_dr_name": "",
                "hosp_appr_flag": "",
                "tcmdrug_used_way": "",
                "etip_flag": "",
                "etip_hosp_code": "",
                "dscg_tkdrug_flag": "",
                "matn_fee_flag": "",
                "memo": "",
                "prd_days": "7" if code.startswith("X") else "",
            }
        )
    return {"feedetail": lines}


def stay_data(mdtrt_id: str, nonce: str, total: str, **over: Any) -> dict[str, Any]:
    data = {
        "psn_no": PSN,
        "mdtrt_cert_type": "01",
        "mdtrt_cert_no": nonce,
        "medfee_sumamt": total,
        "psn_setlway": "01",
        "mdtrt_id": mdtrt_id,
        "insutype": "310",
        "acct_used_flag": "0",
        "mid_setl_flag": "0",
        "invono": "",
        "fulamt_ownpay_amt": "",
        "overlmt_selfpay": "",
        "preselfpay_amt": "",
        "inscp_scp_amt": "",
    }
    data.update(over)
    return {"data": data}


def discharge(mdtrt_id: str) -> dict[str, Any]:
    return {
        "dscginfo": {
            "mdtrt_id": mdtrt_id,
            "psn_no": PSN,
            "insutype": "310",
            "endtime": f"{DAY[2]} 10:00:00",
            "dise_codg": "K35.8",
            "dise_name": "Acute appendicitis",
            "oprn_oprt_code": "",
            "oprn_oprt_name": "",
            "fpsc_no": "",
            "matn_type": "",
            "birctrl_type": "",
            "latechb_flag": "",
            "geso_val": "",
            "fetts": "",
            "fetus_cnt": "",
            "pret_flag": "",
            "birctrl_matn_date": "",
            "cop_flag": "",
            "dscg_dept_codg": "W03",
            "dscg_dept_name": "General surgery",
            "dscg_bed": "12",
            "dscg_way": "1",
            "die_date": "",
        },
        "diseinfo": [
            {
                "mdtrt_id": mdtrt_id,
                "psn_no": PSN,
                "diag_type": "1",
                "maindiag_flag": "1",
                "diag_srt_no": "1",
                "diag_code": "K35.8",
                "diag_name": "Acute appendicitis",
                "diag_dept": "W03",
                "dise_dor_no": "D0002",
                "dise_dor_name": "Dr Zhao",
                "diag_time": f"{DAY[2]} 09:00:00",
            },
        ],
    }


async def admit(c: Client) -> str:
    await c.sign_in()
    out = await c.ok("1101", step("1101")["input"])
    c.vars["nonce"] = out["baseinfo"]["mdtrt_cert_no"]
    out = await c.ok("2401", admission(c.vars["nonce"]))
    assert out["result"]["psn_no"] == PSN and out["result"]["ipt_otp_no"] == "ZY2026112501"
    c.vars["mdtrt_id"] = out["result"]["mdtrt_id"]
    return c.vars["mdtrt_id"]


# Employee basic (310), in-service (11), level-3 hospital, inpatient (21) in docs/samples/policy.json:
# deductible 1200.00 per (first) admission, then 85% up to 10,000 yuan of the year's eligible amount.
DEDUCTIBLE, RATIO = 120000, (85, 100)
FUND_FEN = (TOTAL_FEN - DEDUCTIBLE) * RATIO[0] // RATIO[1]  # 113526: exact, no rounding needed


def test_a_full_inpatient_stay_through_the_envelope_settles_once(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        db, nat_db = home / "agent.db", home / "national.db"
        mdtrt_id = await admit(c)
        for day in range(3):  # details uploaded over the days of the stay
            out = await c.ok("2301", feedetail(mdtrt_id, day))
            assert [r["feedetl_sn"] for r in out["result"]] == [d[0] for d in DETAILS[day]]
        # the urinalysis was charged by mistake: cancelled by its feedetl_sn
        await c.ok("2302", {"data": {"feedetl_sn": "0010", "mdtrt_id": mdtrt_id, "psn_no": PSN}})
        # the doctor in charge changes mid-stay
        await c.ok(
            "2403",
            {
                "adminfo": {
                    "mdtrt_id": mdtrt_id,
                    "psn_no": PSN,
                    "atddr_no": "D0003",
                    "adm_bed": "14",
                    "ipt_no": "",
                    "dise_codg": "",
                    "begntime": "",
                }
            },
        )
        # nothing settles before discharge
        await c.error("2304", stay_data(mdtrt_id, c.vars["nonce"], "2535.60"), "not been discharged", "2402")
        await c.ok("2402", discharge(mdtrt_id))
        ((reg,),) = rows(nat_db, "SELECT reg FROM visits")
        reg = json.loads(reg)
        assert reg["ipt_days"] == 2 and reg["dr_codg"] == "D0003" and reg["endtime"] == f"{DAY[2]} 10:00:00"
        assert outbox.last_seq == 0

        pre = await c.ok("2303", stay_data(mdtrt_id, c.vars["nonce"], "2535.60"))
        p = pre["setlinfo"]
        assert p["setl_id"] is None and p["med_type"] == "21"
        assert fen(p["medfee_sumamt"]) == TOTAL_FEN and fen(p["inscp_scp_amt"]) == TOTAL_FEN
        assert fen(p["fund_pay_sumamt"]) == FUND_FEN == 113526
        assert fen(p["psn_cash_pay"]) == TOTAL_FEN - FUND_FEN and fen(p["acct_pay"]) == 0
        assert outbox.last_seq == 0  # a pre-settlement stores nothing

        body = c.envelope("2304", c.fill(stay_data(mdtrt_id, c.vars["nonce"], "2535.60")))
        first = await c.post(body)
        assert first["infcode"] == 0, first["err_msg"]
        s = first["output"]["setlinfo"]
        assert s == {**p, "setl_id": s["setl_id"], "setl_time": s["setl_time"]}
        assert first["output"]["setldetail"] == [
            {
                "fund_pay_type": "310100",
                "fund_pay_type_name": "employee basic medical insurance pooled fund",
                "fund_payamt": "1135.26",
            }
        ]
        # exactly one settlement in the outbox, with every line of the stay and the amounts to the fen
        assert outbox.last_seq == 1
        assert rows(db, "SELECT kind, setl_id FROM outbox") == [("setl", s["setl_id"])]
        assert rows(
            db, "SELECT his_setl_no, medfee_sumamt, fund_pay_sumamt, acct_pay, psn_cash_pay FROM settlements"
        ) == [(f"{mdtrt_id}-0", TOTAL_FEN, FUND_FEN, 0, TOTAL_FEN - FUND_FEN)]
        assert rows(db, "SELECT count(*) FROM hist_lines") == [(9,)]

        # the same msgid again (a lost answer): the same answer, byte for byte, nothing new
        assert await c.post(body) == first and outbox.last_seq == 1
        # a second 2304 for the same admission: refused, nothing new
        await c.error("2304", stay_data(mdtrt_id, c.vars["nonce"], "2535.60"), "already settled", "2305")
        # a settled stay takes no more details and cannot be cancelled as an admission
        await c.error("2301", feedetail(mdtrt_id, 0), "settled", "2305")
        await c.error("2404", {"data": {"mdtrt_id": mdtrt_id, "psn_no": PSN}}, "settled", "2305")
        assert outbox.last_seq == 1

        # 2305: the reversal path, amounts negated; the stay is open again
        rev = await c.ok("2305", {"data": {"mdtrt_id": mdtrt_id, "setl_id": s["setl_id"], "psn_no": PSN}})
        r = rev["setlinfo"]
        assert r["orig_setl_id"] == s["setl_id"] and fen(r["medfee_sumamt"]) == -TOTAL_FEN
        assert fen(r["fund_pay_sumamt"]) == -FUND_FEN
        assert rows(db, "SELECT kind FROM outbox ORDER BY seq") == [("setl",), ("revs",)]
        assert rows(nat_db, "SELECT state, settle_round FROM visits") == [("open", 1)]
        # the corrected stay settles again, as a new settlement
        again = await c.ok("2304", stay_data(mdtrt_id, c.vars["nonce"], "2535.60"))
        assert again["setlinfo"]["setl_id"] != s["setl_id"] and outbox.last_seq == 3
        assert rows(db, "SELECT his_setl_no FROM settlements ORDER BY seq") == [
            (f"{mdtrt_id}-0",),
            (f"{mdtrt_id}-1",),
        ]

    run(tmp_path, scenario)


def test_2404_cancels_an_admission_without_settlement_and_bad_input_changes_nothing(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        nat_db = home / "national.db"
        mdtrt_id = await admit(c)
        await c.ok("2301", feedetail(mdtrt_id, 0))
        snapshot = (rows(nat_db, "SELECT * FROM visits"), rows(nat_db, "SELECT * FROM fees"))
        msgs = rows(nat_db, "SELECT count(*) FROM msgs")
        # each malformed request is refused by field, and changes nothing
        bad = feedetail(mdtrt_id, 1)
        bad["feedetail"][0]["det_item_fee_sumamt"] = "1375.01"
        await c.error("2301", bad, "input.feedetail[0].det_item_fee_sumamt", "cnt × pric = 1375.00")
        bad = feedetail(mdtrt_id, 1)
        bad["feedetail"][1]["cnt"] = "two"
        await c.error("2301", bad, "input.feedetail[1].cnt", "is not a decimal number")
        changed = feedetail(mdtrt_id, 0)
        changed["feedetail"][0]["pric"], changed["feedetail"][0]["det_item_fee_sumamt"] = "50.00", "50.00"
        await c.error("2301", changed, "input.feedetail[0].feedetl_sn", "other content", "2302")
        await c.error(
            "2302", {"data": {"feedetl_sn": "9999", "mdtrt_id": mdtrt_id, "psn_no": PSN}}, "no uploaded line"
        )
        await c.error(
            "2402",
            {"dscginfo": {"mdtrt_id": mdtrt_id, "psn_no": PSN, "endtime": "tomorrow"}},
            "input.dscginfo.endtime",
        )
        await c.error(
            "2402",
            {"dscginfo": {"mdtrt_id": mdtrt_id, "psn_no": PSN, "endtime": f"{DAY[0]} 07:00:00"}},
            "input.dscginfo.endtime",
            "before the admission",
        )
        await c.error("2403", {"adminfo": {"mdtrt_id": mdtrt_id, "psn_no": "OTHER"}}, "input.adminfo.psn_no")
        await c.error("2401", admission(c.vars["nonce"], med_type="11"), "input.mdtrtinfo.med_type", "2201")
        await c.error("2401", admission(c.vars["nonce"], begntime=""), "input.mdtrtinfo.begntime: required")
        await c.error(
            "2303", stay_data(mdtrt_id, c.vars["nonce"], "100.00"), "input.data.medfee_sumamt", "102.30"
        )
        await c.error("2303", stay_data(mdtrt_id, c.vars["nonce"], "102.30", mid_setl_flag="1"), "mid-stay")
        await c.error("2304", stay_data("NOSUCHSTAY", c.vars["nonce"], "102.30"), "no admission", "2401")
        await c.error("2404", {"data": {"mdtrt_id": mdtrt_id}}, "input.data.psn_no: required")
        assert (rows(nat_db, "SELECT * FROM visits"), rows(nat_db, "SELECT * FROM fees")) == snapshot
        assert rows(nat_db, "SELECT count(*) FROM msgs") == msgs and outbox.last_seq == 0
        # an outpatient visit's mdtrt_id is not an admission (and the other way round)
        out = await c.ok("2201", step("2201")["input"])
        await c.error("2301", feedetail(out["data"]["mdtrt_id"], 0), "no admission", "2401")
        await c.error("2204", feedetail(mdtrt_id, 0), "no visit", "2201")

        await c.ok("2404", {"data": {"mdtrt_id": mdtrt_id, "psn_no": PSN}})
        assert rows(nat_db, f"SELECT state FROM visits WHERE mdtrt_id = '{mdtrt_id}'") == [("cancelled",)]
        assert rows(nat_db, f"SELECT count(*) FROM fees WHERE mdtrt_id = '{mdtrt_id}'") == [(0,)]
        await c.error("2301", feedetail(mdtrt_id, 1), "cancelled (2404)", "2401")
        assert outbox.last_seq == 0

    run(tmp_path, scenario)


def test_2405_takes_a_discharge_back_and_the_stay_goes_on_until_a_new_2402(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        nat_db = home / "national.db"
        mdtrt_id = await admit(c)
        stay = {"data": {"mdtrt_id": mdtrt_id, "psn_no": PSN}}
        await c.ok("2301", feedetail(mdtrt_id, 0))
        await c.error("2405", stay, "not discharged", "nothing to cancel")
        await c.ok("2402", discharge(mdtrt_id))
        # bad input is refused by field and changes nothing
        snapshot = rows(nat_db, "SELECT * FROM visits")
        await c.error("2405", {"data": {"mdtrt_id": mdtrt_id}}, "input.data.psn_no: required")
        await c.error("2405", {"data": {"mdtrt_id": mdtrt_id, "psn_no": "OTHER"}}, "input.data.psn_no")
        await c.error("2405", {"data": {"mdtrt_id": "NOSUCHSTAY", "psn_no": PSN}}, "no admission", "2401")
        assert rows(nat_db, "SELECT * FROM visits") == snapshot

        body = c.envelope("2405", stay)
        first = await c.post(body)
        assert first["infcode"] == 0, first["err_msg"]
        assert await c.post(body) == first  # the same msgid again: the first answer
        ((reg,),) = rows(nat_db, "SELECT reg FROM visits")
        reg = json.loads(reg)
        assert reg["endtime"] is None and reg["ipt_days"] is None and reg["begntime"] == f"{DAY[0]} 08:00:00"
        # the patient stays: no settlement until a new discharge, and the stay takes details again
        await c.error("2304", stay_data(mdtrt_id, c.vars["nonce"], "102.30"), "not been discharged", "2402")
        await c.ok("2301", feedetail(mdtrt_id, 1))
        assert rows(nat_db, "SELECT count(*) FROM fees") == [(7,)]
        await c.ok("2402", discharge(mdtrt_id))
        s = (await c.ok("2304", stay_data(mdtrt_id, c.vars["nonce"], "2479.20")))["setlinfo"]
        assert fen(s["medfee_sumamt"]) == 247920 and outbox.last_seq == 1
        # a settled stay's discharge is not taken back before its settlement is cancelled
        await c.error("2405", stay, "settled", "2305")
        assert outbox.last_seq == 1

    run(tmp_path, scenario)


def test_a_blacklisted_employer_s_staff_are_refused_at_2304(tmp_path):
    from protocol.bundles import BlacklistEntry

    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await c.sign_in()
        out = await c.ok("1101", step("1101")["input"])
        c.vars["nonce"] = out["baseinfo"]["mdtrt_cert_no"]
        out = await c.ok("2401", admission(c.vars["nonce"], emp_no="E370211000123"))
        mdtrt_id = out["result"]["mdtrt_id"]
        for day in range(3):
            await c.ok("2301", feedetail(mdtrt_id, day))
        await c.ok("2402", discharge(mdtrt_id))
        msg = await c.error(
            "2304", stay_data(mdtrt_id, c.vars["nonce"], "2546.60"), "blacklisted", "employer"
        )
        assert "E370211000123" not in msg
        await c.error("2303", stay_data(mdtrt_id, c.vars["nonce"], "2546.60"), "blacklisted", "employer")
        assert outbox.last_seq == 0

    entry = BlacklistEntry("+", "employer", "E370211000123", "arrears", "test", "")
    run(tmp_path, scenario, blacklist=[entry])


# ---- a real agent process, killed mid-stay ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Agent:
    def __init__(self, home: Path, issuer: Issuer) -> None:
        self.home, self.issuer, self.port = home, issuer, _free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.agent.national.serve",
                str(self.home),
                str(self.port),
                json.dumps(self.issuer.issuers_config()),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=open(self.home / "agent.log", "ab"),
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == b"ready", (self.home / "agent.log").read_text()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def test_a_stay_survives_the_agent_process_killed_between_2301_and_2304(tmp_path):
    issuer = Issuer.generate()
    agent = Agent(tmp_path, issuer)

    async def session(work) -> Any:
        async with aiohttp.ClientSession(
            base_url=f"http://127.0.0.1:{agent.port}", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as http:
            return await work(http)

    c: Client | None = None

    async def before(http: aiohttp.ClientSession) -> None:
        nonlocal c
        c = Client(http, issuer)
        c.vars["voucher"] = issuer.issue(PSN, insuplc_admdvs=AREA, ttl_s=300)
        mdtrt_id = await admit(c)
        await c.ok("2301", feedetail(mdtrt_id, 0))
        await c.ok("2301", feedetail(mdtrt_id, 1))

    async def after(http: aiohttp.ClientSession) -> dict[str, Any]:
        assert c is not None
        c.http = http
        mdtrt_id = c.vars["mdtrt_id"]
        await c.ok("2301", feedetail(mdtrt_id, 2))  # the sign-in survived too
        await c.ok("2302", {"data": {"feedetl_sn": "0010", "mdtrt_id": mdtrt_id, "psn_no": PSN}})
        await c.ok("2402", discharge(mdtrt_id))
        return await c.ok("2304", stay_data(mdtrt_id, c.vars["nonce"], "2535.60"))

    agent.start()
    try:
        asyncio.run(session(before))
        agent.kill9()  # mid-stay: no clean shutdown
        agent.start()
        out = asyncio.run(session(after))
    finally:
        agent.stop()
    s = out["setlinfo"]
    assert fen(s["medfee_sumamt"]) == TOTAL_FEN and fen(s["fund_pay_sumamt"]) == FUND_FEN
    assert rows(tmp_path / "agent.db", "SELECT medfee_sumamt, fund_pay_sumamt FROM settlements") == [
        (TOTAL_FEN, FUND_FEN)
    ]
    assert rows(tmp_path / "agent.db", "SELECT count(*) FROM hist_lines") == [(9,)]
