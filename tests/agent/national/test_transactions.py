"""Drug-store 2101-2103, detail reconciliation 3202, catalogue downloads 1301-1319, the employer number
(1101 → 2201 → the employer blacklist) and the field variants real HIS send, through the envelope over
real HTTP with spec-shaped bodies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.store import Outbox
from protocol.bundles import BlacklistEntry
from tests.agent.test_national import AREA, PSN, SAMPLES, Client, register_visit, rows, run, step

EMP = "E370211000123"


def fen(text: str) -> int:
    negative = text.startswith("-")
    return (-1 if negative else 1) * int(text.lstrip("-").replace(".", ""))


async def identify(c: Client, **extra: Any) -> dict[str, Any]:
    await c.sign_in()
    data = step("1101")["input"]["data"] | extra
    out = await c.ok("1101", {"data": data})
    c.vars["nonce"] = out["baseinfo"]["mdtrt_cert_no"]
    return out


# ---- 2101-2103 ---------------------------------------------------------------------------------------


def purchase(nonce: str, total: str = "923.00", **over: Any) -> dict[str, Any]:
    data = {
        "psn_no": PSN,
        "mdtrt_cert_type": "01",
        "mdtrt_cert_no": nonce,
        "begntime": "2026-11-25 10:00:00",
        "medfee_sumamt": total,
        "psn_setlway": "01",
        "insutype": "310",
        "acct_used_flag": "0",
        "fulamt_ownpay_amt": "",
        "overlmt_selfpay": "",
        "preselfpay_amt": "",
        "inscp_scp_amt": "",
        "dise_codg": "E11.9",
        "gend": "1",
        "brdy": "1958-04-02",
        "insuplc_admdvs": AREA,
    }
    data.update(over)
    return {
        "data": data,
        "drugdetail": [
            {
                "feedetl_sn": "1",
                "rxno": "",
                "rx_circ_flag": "0",
                "fee_ocur_time": "2026-11-25 10:00:00",
                "med_list_codg": "XA10AEG067B002010183412",
                "medins_list_codg": "YP-0001",
                "det_item_fee_sumamt": "873.60",
                "cnt": "12",
                "pric": "72.80",
                "sin_dos_dscr": "",
                "used_frqu_dscr": "",
                "prd_days": "30",
                "medc_way_dscr": "",
                "bilg_dr_codg": "",
                "tcmdrug_used_way": "",
                "etip_flag": "",
                "etip_hosp_code": "",
                "dscg_tkdrug_flag": "",
                "matn_fee_flag": "",
            },
            {
                "feedetl_sn": "2",
                "fee_ocur_time": "2026-11-25 10:00:00",
                "med_list_codg": "XA10BAE056A001010101953",
                "medins_list_codg": "YP-0002",
                "det_item_fee_sumamt": "49.40",
                "cnt": "4",
                "pric": "12.35",
                "prd_days": "30",
            },
        ],
    }


def test_drug_store_purchase_pre_settles_settles_once_and_cancels(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        db, nat_db = home / "agent.db", home / "national.db"
        await identify(c)
        pre = await c.ok("2101", purchase(c.vars["nonce"]))
        p = pre["setlinfo"]
        assert p["setl_id"] is None and p["med_type"] == "41" and p["medfee_sumamt"] == "923.00"
        # insulin, class B: 10% first (87.36); eligible 786.24 + 49.40; the yearly deductible 800.00 at a
        # drug store (level 0) in the sample policy, then 60%: (835.64 - 800.00) x 0.60 = 21.384 -> 21.38
        assert p["preselfpay_amt"] == "87.36" and p["inscp_scp_amt"] == "835.64"
        assert p["fund_pay_sumamt"] == "21.38" and p["psn_cash_pay"] == "901.62"
        assert outbox.last_seq == 0 and rows(nat_db, "SELECT count(*) FROM visits") == [(0,)]

        out = await c.ok("2102", purchase(c.vars["nonce"]))
        s = out["setlinfo"]
        assert s == {**p, "setl_id": s["setl_id"], "setl_time": s["setl_time"], "mdtrt_id": s["mdtrt_id"]}
        assert rows(db, "SELECT medfee_sumamt, fund_pay_sumamt, psn_cash_pay FROM settlements") == [
            (92300, 2138, 90162)
        ]
        # the same purchase again under a new msgid (the answer was lost): answered, not settled twice
        again = await c.ok("2102", purchase(c.vars["nonce"]))
        assert again == out and outbox.last_seq == 1

        cancel = {"data": {"setl_id": s["setl_id"], "mdtrt_id": s["mdtrt_id"], "psn_no": PSN}}
        rev = await c.ok("2103", cancel)
        assert (
            rev["setlinfo"]["orig_setl_id"] == s["setl_id"] and rev["setlinfo"]["medfee_sumamt"] == "-923.00"
        )
        assert rows(db, "SELECT kind FROM outbox ORDER BY seq") == [("setl",), ("revs",)]
        assert (await c.ok("2103", cancel)) == rev  # the second cancellation answers the first
        assert outbox.last_seq == 2

        # bad input: named, nothing kept
        bad = purchase(c.vars["nonce"])
        bad["drugdetail"][1]["det_item_fee_sumamt"] = "49.41"
        await c.error("2102", bad, "input.drugdetail[1].det_item_fee_sumamt", "cnt × pric = 49.40")
        await c.error("2102", purchase(c.vars["nonce"], total="900.00"), "input.data.medfee_sumamt", "923.00")
        await c.error("2102", purchase(c.vars["nonce"], insutype=""), "input.data.insutype: required")
        await c.error("2103", {"data": {"setl_id": "X", "mdtrt_id": s["mdtrt_id"], "psn_no": PSN}}, "setl_id")
        assert outbox.last_seq == 2 and rows(nat_db, "SELECT count(*) FROM visits") == [(1,)]

    run(tmp_path, scenario, hosp_lv="0")


def test_drug_store_purchase_by_a_blacklisted_employer_s_staff_is_refused(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await identify(c)
        await c.error("2101", purchase(c.vars["nonce"], emp_no=EMP), "blacklisted", "employer")
        await c.error("2102", purchase(c.vars["nonce"], emp_no=EMP), "blacklisted", "employer")
        assert outbox.last_seq == 0 and rows(home / "national.db", "SELECT count(*) FROM visits") == [(0,)]

    run(tmp_path, scenario, hosp_lv="0", blacklist=[BlacklistEntry("+", "employer", EMP, "arrears", "t", "")])


# ---- employer number: 1101 → 2201 → the employer blacklist --------------------------------------------


def test_employer_number_reaches_the_settlement_and_its_blacklist_refuses(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        out = await identify(c, emp_no=EMP)
        (insu,) = out["insuinfo"]
        assert insu["emp_no"] == EMP and insu["psn_insu_stas"] == "2"
        assert out["blacklist"]["list_type"] == "employer" and "employer" in out["blacklist"]["action"]
        # 2201 without emp_no: the agent carries the one 1101 was told
        reg = await c.ok("2201", step("2201")["input"])
        c.vars["mdtrt_id"] = reg["data"]["mdtrt_id"]
        await c.ok("2203", step("2203")["input"])
        await c.ok("2204", step("2204")["input"])
        msg = await c.error("2207", step("2207")["input"], "blacklisted", "employer", "self-pay")
        assert EMP not in msg
        await c.error("2206", step("2206")["input"], "blacklisted", "employer")
        assert outbox.last_seq == 0
        # and 1101 again answers what the agent knows: the employer and the insurance type from 2201
        (insu,) = (await identify_again(c))["insuinfo"]
        assert insu["emp_no"] == EMP and insu["insutype"] == "310" and insu["psn_type"] == "11"

    async def identify_again(c: Client) -> dict[str, Any]:
        c.vars["voucher"] = c.issuer.issue(PSN, insuplc_admdvs=AREA, ttl_s=300)
        return await c.ok("1101", step("1101")["input"])

    run(tmp_path, scenario, blacklist=[BlacklistEntry("+", "employer", EMP, "arrears", "test", "")])


def test_an_employer_not_on_the_blacklist_settles(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await identify(c, emp_no="E370211000999")
        reg = await c.ok("2201", step("2201")["input"])
        c.vars["mdtrt_id"] = reg["data"]["mdtrt_id"]
        await c.ok("2203", step("2203")["input"])
        await c.ok("2204", step("2204")["input"])
        await c.ok("2207", step("2207")["input"])
        assert outbox.last_seq == 1

    run(tmp_path, scenario, blacklist=[BlacklistEntry("+", "employer", EMP, "arrears", "test", "")])


# ---- field variants ------------------------------------------------------------------------------------


def test_field_variants_real_his_send_are_accepted_and_malformed_required_fields_named(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await identify(c)
        reg = json.loads(json.dumps(step("2201")["input"]))
        m = reg["mdtrtinfo"]
        m.update(
            insutype=310,  # a number where the spec has text
            med_type=11,
            dept_code=" K01 ",  # padded by a fixed-width table
            dise_codg="",  # "" for optional fields
            dise_name="",
            insuplc_admdvs="",
            psn_type="",
            emp_no="",
            vendor_extra={"anything": [1, 2]},  # unknown fields are ignored
        )
        m["mdtrt_cert_no"] = c.vars["nonce"]
        c.vars["psn_no"] = PSN
        # malformed required fields first: refused by name, nothing written
        bad = json.loads(json.dumps(reg)) | {"mdtrtinfo": m | {"insutype": ""}}
        await c.error("2201", bad, "input.mdtrtinfo.insutype: required")
        bad = {"mdtrtinfo": m | {"begntime": "25/11/2026 09:05"}}
        await c.error("2201", bad, "input.mdtrtinfo.begntime")
        assert rows(home / "national.db", "SELECT count(*) FROM visits") == [(0,)]
        out = await c.ok("2201", reg)
        c.vars["mdtrt_id"] = out["data"]["mdtrt_id"]
        diag = json.loads(json.dumps(step("2203")["input"]))
        diag["diseinfo"][0].update(diag_srt_no="1", diag_dept="", diag_time="", unknown_flag="x")
        await c.ok("2203", diag)
        fees = json.loads(json.dumps(step("2204")["input"]), parse_float=str)
        line = fees["feedetail"][0]
        # JSON numbers for amounts and counts, a day count as text, "" for optional fields
        raw = json.dumps(fees).replace('"cnt": "2"', '"cnt": 2').replace('"pric": "6.90"', '"pric": 6.9')
        raw = raw.replace('"det_item_fee_sumamt": "13.80"', '"det_item_fee_sumamt": 13.8')
        raw = raw.replace('"prd_days": 14', '"prd_days": "14"').replace(
            '"bilg_dept_codg": "K01"', '"bilg_dept_codg": ""'
        )
        assert (
            line["cnt"] == "2" and '"cnt": 2,' in raw and '"pric": 6.9,' in raw and '"prd_days": "14"' in raw
        )
        fees = json.loads(raw)
        bad = json.loads(raw)
        bad["feedetail"][1]["cnt"] = "abc"
        await c.error("2204", bad, "input.feedetail[1].cnt", "'abc' is not a decimal number")
        bad = json.loads(raw)
        bad["feedetail"][1]["det_item_fee_sumamt"] = "5.505"
        await c.error("2204", bad, "input.feedetail[1].det_item_fee_sumamt", "at most 2 decimals")
        assert rows(home / "national.db", "SELECT count(*) FROM fees") == [(0,)]
        out = await c.ok("2204", fees)
        assert out["result"][0]["cnt"] == "2" and out["result"][0]["det_item_fee_sumamt"] == "13.80"
        settle = json.loads(json.dumps(step("2207")["input"]))
        settle["data"].update(medfee_sumamt=19.3, insutype="", chrg_bchno="", extra_field="ignored")
        body = json.dumps(c.envelope("2207", c.fill(settle)) | {"unknown_envelope_field": 1})
        answer = await c.post(None, raw=body.replace('"medfee_sumamt": 19.3', '"medfee_sumamt": 19.30'))
        assert answer["infcode"] == 0, answer["err_msg"]
        assert answer["output"]["setlinfo"]["medfee_sumamt"] == "19.30" and outbox.last_seq == 1

    run(tmp_path, scenario)


# ---- 3202 ---------------------------------------------------------------------------------------------


def detail_input(c: Client, detail: list[dict[str, Any]]) -> dict[str, Any]:
    today = c.vars["today"]
    data = {
        "setl_optins": AREA,
        "file_qury_no": "",
        "stmt_begndate": today,
        "stmt_enddate": today,
        "medfee_sumamt": "19.30",
        "fund_pay_sumamt": "0.00",
        "cash_payamt": "",
        "fixmedins_setl_cnt": "1",
        "refd_setl_flag": "",
        "clr_type": "11",
    }
    return {"data": data, "detail": detail}


def test_3202_names_each_settlement_that_differs(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await register_visit(c)
        s = (await c.ok("2207", step("2207")["input"]))["setlinfo"]
        mine = {
            "setl_id": s["setl_id"],
            "mdtrt_id": s["mdtrt_id"],
            "psn_no": PSN,
            "medfee_sumamt": s["medfee_sumamt"],
            "fund_pay_sumamt": s["fund_pay_sumamt"],
            "acct_pay": s["acct_pay"],
            "refd_setl_flag": "0",
        }
        out = await c.ok("3202", detail_input(c, [mine]))
        assert out["stmtinfo"]["stmt_rslt"] == "0" and out["diff"] == []

        wrong = mine | {"fund_pay_sumamt": "9.99"}
        ghost = mine | {"setl_id": "H370211000011764000000000abcdef"}
        out = await c.ok("3202", detail_input(c, [wrong, ghost]))
        assert out["stmtinfo"]["stmt_rslt"] == "1" and out["stmtinfo"]["his_cnt"] == 2
        diffs = {d["setl_id"]: d for d in out["diff"]}
        assert diffs[ghost["setl_id"]]["diff_type"] == "1" and diffs[ghost["setl_id"]]["agent"] is None
        d = diffs[s["setl_id"]]
        assert d["diff_type"] == "3"
        assert d["diff_dscr"] == f"fund_pay_sumamt: HIS 9.99, agent {s['fund_pay_sumamt']}"

        c.vars["setl_id"] = s["setl_id"]
        rev = await c.ok("2208", step("2208")["input"])
        r = rev["setlinfo"]
        out = await c.ok("3202", detail_input(c, [mine]))  # the HIS missed the cancellation
        (d,) = out["diff"]
        assert d["setl_id"] == r["setl_id"] and d["diff_type"] == "2" and d["agent"]["refd_setl_flag"] == "1"
        assert d["agent"]["medfee_sumamt"] == "-19.30"
        # the reversal listed with positive amounts and refd_setl_flag 1 is the same reversal
        listed = mine | {"setl_id": r["setl_id"], "refd_setl_flag": "1"}
        out = await c.ok("3202", detail_input(c, [mine, listed]))
        assert out["diff"] == [] and out["stmtinfo"]["agent_cnt"] == 2

        await c.error("3202", detail_input(c, []), "input.detail: required")
        file_only = detail_input(c, []) | {"data": detail_input(c, [])["data"] | {"file_qury_no": "F1"}}
        await c.error("3202", file_only, "input.detail", "9101")
        await c.error(
            "3202", detail_input(c, [mine | {"medfee_sumamt": "x"}]), "input.detail[0].medfee_sumamt"
        )
        await c.error("3202", detail_input(c, [mine, mine]), "input.detail[1].setl_id: listed twice")

    run(tmp_path, scenario)


# ---- 1301-1319 -------------------------------------------------------------------------------------


def test_catalogue_downloads_come_from_the_held_bundle_paged(tmp_path):
    catalogue = json.loads((SAMPLES / "catalogue.json").read_text())
    drugs = sorted(i["code"] for i in catalogue["items"] if i["list_type"] in ("101", "102"))
    services = [i for i in catalogue["items"] if i["list_type"] == "201"]

    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await c.sign_in()
        out = await c.ok("1301", {"data": {"ver": "0"}})
        assert out["ver"] == "2" and out["recordCounts"] == len(drugs) == 39 and out["pages"] == 1
        assert [r["med_list_codg"] for r in out["data"]] == drugs
        omeprazole = next(r for r in out["data"] if r["med_list_codg"] == "XA02BCA211A010010102134")
        assert omeprazole["chrgitm_lv"] == "01" and omeprazole["hilist_pric_uplmt_amt"] == "6.90"
        # paged
        page = await c.ok("1301", {"data": {"ver": "", "page_num": "4", "page_size": 10}})
        assert (
            page["pages"] == 4
            and page["lastPage"]
            and [r["med_list_codg"] for r in page["data"]] == drugs[30:]
        )
        # incremental: the HIS holds this version already
        current = await c.ok("1301", {"data": {"ver": "2"}})
        assert current["recordCounts"] == 0 and current["data"] == [] and current["ver"] == "2"
        out = await c.ok("1305", {"data": {"ver": "1"}})
        assert out["recordCounts"] == len(services) == 33
        out = await c.ok("1306", {"data": {"ver": "0"}})
        assert {r["list_type"] for r in out["data"]} == {"301"}
        # queries
        out = await c.ok(
            "1312",
            {
                "data": {
                    "hilist_code": "XA02BCP072B001010101540",
                    "page_num": 1,
                    "page_size": 100,
                    "query_date": "",
                    "insu_admdvs": "",
                }
            },
        )
        (row,) = out["data"]
        assert row["chrgitm_lv"] == "02" and row["selfpay_prop"] == "0.10"
        out = await c.ok("1318", {"data": {"hilist_code": "XA02BCA211A010010102134"}})
        assert out["data"][0]["hilist_pric_uplmt_amt"] == "6.90" and out["data"][0]["medins_lv"] == "3"
        out = await c.ok("1319", {"data": {"page_size": 1000}})
        assert all(r["selfpay_prop"] for r in out["data"]) and out["recordCounts"] >= 12
        out = await c.ok("1312", {"data": {"updt_time": "2099-01-01 00:00:00"}})
        assert out["recordCounts"] == 0  # nothing changed after that time
        # kinds the bundle does not hold: a clear error, never an empty success (the national lists the
        # sample carries: tests/agent/national/test_catalogue_lists.py)
        for infno in ("1302", "1303"):
            await c.error(infno, {"data": {"ver": "0"}}, "catalogue_not_held", infno)
        await c.error("1301", {"data": {"page_size": 0}}, "input.data.page_size")

    run(tmp_path, scenario)


def test_catalogue_download_without_a_catalogue_bundle_is_an_error(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await c.sign_in()
        await c.error("1301", {"data": {"ver": "0"}}, "catalogue_not_held", "no catalogue bundle")

    run(tmp_path, scenario, with_desk=False)


# ---- national.db schema 1 → 2 ---------------------------------------------------------------------------

_SCHEMA_1 = """
CREATE TABLE signins (sign_no TEXT PRIMARY KEY, opter TEXT NOT NULL, fixmedins_code TEXT NOT NULL,
    signed_in_at REAL NOT NULL, expires_at REAL NOT NULL, signed_out_at REAL);
CREATE TABLE msgs (msgid TEXT PRIMARY KEY, infno TEXT NOT NULL, digest BLOB NOT NULL, answer TEXT NOT NULL,
    at REAL NOT NULL);
CREATE TABLE persons (psn_no TEXT PRIMARY KEY, gend TEXT, brdy TEXT, insuplc_admdvs TEXT, card_sn TEXT,
    at REAL NOT NULL);
CREATE TABLE visits (mdtrt_id TEXT PRIMARY KEY, psn_no TEXT NOT NULL, state TEXT NOT NULL, reg TEXT NOT NULL,
    diseinfo TEXT, settle_round INTEGER NOT NULL DEFAULT 0, setl_id TEXT, setlinfo TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE fees (mdtrt_id TEXT NOT NULL, feedetl_sn TEXT NOT NULL, line TEXT NOT NULL,
    PRIMARY KEY (mdtrt_id, feedetl_sn));
INSERT INTO persons VALUES ('P1', '1', '1958-04-02', '370211', NULL, 0);
INSERT INTO visits VALUES ('V1', 'P1', 'open', '{}', NULL, 0, NULL, NULL, 0, 0);
PRAGMA user_version = 1;
"""


def test_a_schema_1_national_db_is_migrated_in_place(tmp_path):
    import sqlite3

    conn = sqlite3.connect(tmp_path / "national.db")
    conn.executescript(_SCHEMA_1)
    conn.close()

    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        assert rows(home / "national.db", "PRAGMA user_version") == [(2,)]
        assert rows(home / "national.db", "SELECT kind FROM visits") == [("otp",)]
        assert rows(home / "national.db", "SELECT gend, emp_no, insutype FROM persons") == [("1", None, None)]
        await c.sign_in()  # and it serves

    run(tmp_path, scenario)
