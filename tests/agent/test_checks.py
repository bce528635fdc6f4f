"""The rule library and the split at the desk, with the sample rules, catalogue and policy bundles
applied to a real policy store, local history in a real outbox, and no centre (offline)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.checks import DeskChecks, RuleRefused, bill_from_request
from agent.intake import parse_settlement
from agent.policy_store import PolicyStore
from agent.store import Outbox
from agent.users import Principal, UserStore
from protocol.bundles import BlacklistEntry, BundleHeader
from protocol.chain import decode_body, decode_entry
from tests.conftest import example_settlement

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"
OMEPRAZOLE = "XA02BCA211A010010102134"  # class A, ceiling 6.90, max 14 days acute
FEMALE_ONLY = "XG03DAP078B002010100156"  # class A drug, gender 2 only, ceiling 2.15
CLASS_C = "009900000010000"  # class C service, ceiling 5.50 at level 3
#: A bill whose female-only line the in-event rules move to self-pay unless a doctor overrides.
RESTRICTED = [(OMEPRAZOLE, "2", "6.90", 7, "101"), (FEMALE_ONLY, "10", "2.15", 10, "101")]
DOCTOR = Principal(role="doctor", name="dr.wang", dr_codg="D0001")
TOKEN = "t"


def _body(tag: str, lines: list[tuple[str, str, str, int | None, str]], **extra) -> bytes:
    """A settlement for the example person (male, outpatient 11) with lines (code, cnt, pric, days, type)."""
    d = example_settlement(tag)
    feedetl, total = [], 0
    for i, (code, cnt, pric, days, list_type) in enumerate(lines):
        fen = round(float(cnt) * float(pric) * 100)
        total += fen
        line = {
            "feedetl_sn": f"{tag}-{i}",
            "list_type": list_type,
            "med_list_codg": code,
            "medins_list_name": code,
            "cnt": cnt,
            "pric": pric,
            "det_item_fee_sumamt": f"{fen / 100:.2f}",
        }
        feedetl.append(line | ({"days": days} if days else {}))  # fmt: skip
    d["feedetl"] = feedetl
    d["medfee_sumamt"] = f"{total / 100:.2f}"
    for name in ("fund_pay_sumamt", "hifp_pay", "hifmi_pay", "hifob_pay", "acct_pay", "psn_cash_pay"):
        d.pop(name, None)
    d.update(extra)
    return json.dumps(d).encode()


@pytest.fixture
def desk(tmp_path):
    outbox = Outbox(tmp_path / "agent.db", agent_id="H1-01", hosp_lv="3")
    store = PolicyStore(tmp_path / "policy.db")
    for seq, kind in enumerate(("rules", "catalogue", "policy"), start=1):
        doc = json.loads((SAMPLES / f"{kind}.json").read_text())
        store.apply_document(BundleHeader(kind, "370200", seq, None, "2026-11-25T00:00:00Z"), doc)
    checks = DeskChecks(tmp_path / "agent.db", store, None, hosp_lv="3")
    yield checks, outbox
    checks.close()
    store.close()
    outbox.close()


def test_doctor_sees_a_duplicate_from_earlier_dispensing_even_offline(desk):
    checks, outbox = desk
    earlier, digest = parse_settlement(_body("EARLY", [(OMEPRAZOLE, "1", "6.90", 14, "101")]))
    outbox.append_settlement_sync(earlier, digest)
    request = {
        "psn": {"psn_no": earlier.psn.psn_no, "gend": "1", "brdy": "1958-04-02"},
        "mdtrt": {"med_type": "11", "dise_codg": "K21.9", "begntime": "2026-11-25T09:00:00+08:00"},
        "lines": [{"feedetl_sn": "1", "med_list_codg": OMEPRAZOLE, "cnt": "1", "pric": "6.90", "days": 14,
                   "list_type": "101"}],
    }  # fmt: skip
    answer = asyncio.run(
        checks.prescription(bill_from_request(json.dumps(request).encode(), "H37021100001", "3"))
    )
    assert answer["local_only"] is True and answer["cross_hospital"] is False  # no centre: said so
    dup = [p for p in answer["prompts"] if p["rule_id"] == "dup_med_same_drug"]
    assert dup and dup[0]["severity"] == "warn" and dup[0]["evidence"]
    assert dup[0]["evidence"][0]["setl_date"] == earlier.setl_time[:10]


def test_price_above_the_ceiling_refuses_the_settlement(desk):
    checks, _outbox = desk
    record, _ = parse_settlement(_body("PRICE", [(OMEPRAZOLE, "1", "9.90", 7, "101")]))
    with pytest.raises(RuleRefused) as err:
        asyncio.run(checks.settle(record))
    assert err.value.code == "rule_refused" and err.value.details[0]["rule_id"] == "price_over_ceiling"


def test_a_restricted_item_moves_to_self_pay_unless_a_doctor_overrides_and_the_split_adds_up(desk):
    checks, _outbox = desk
    lines = [
        (OMEPRAZOLE, "2", "6.90", 7, "101"),
        (FEMALE_ONLY, "10", "2.15", 10, "101"),
        (CLASS_C, "1", "5.50", None, "201"),
    ]
    record, _ = parse_settlement(_body("SELF", lines))
    outcome = asyncio.run(checks.settle(record))
    by_rule = {r.rule_id: r for r in record.rule_hits}
    assert by_rule["gender_restriction"].outcome == "self_pay" and "SELF-1" in outcome.self_pay_lines
    assert record.feedetl[1].fulamt_ownpay_amt == record.feedetl[1].det_item_fee_sumamt  # wholly self-paid
    assert record.feedetl[2].fulamt_ownpay_amt == record.feedetl[2].det_item_fee_sumamt  # class C
    assert outcome.split and outcome.split["computed"] is True
    assert record.fund_pay_sumamt + record.acct_pay + record.psn_cash_pay == record.medfee_sumamt
    assert (
        record.psn_cash_pay >= record.feedetl[1].det_item_fee_sumamt + record.feedetl[2].det_item_fee_sumamt
    )

    override = [{"rule_id": "gender_restriction", "reason": "transgender patient on HRT"}]
    record, _ = parse_settlement(_body("OVR", lines, overrides=override), caller=DOCTOR)
    outcome = asyncio.run(checks.settle(record))
    assert {r.rule_id: r.outcome for r in record.rule_hits}["gender_restriction"] == "overridden"
    assert "OVR-1" not in outcome.self_pay_lines and record.overrides[0].dr_codg == "D0001"


def test_shadow_rules_are_recorded_but_change_nothing(desk):
    checks, outbox = desk
    for i in range(5):  # frequent_outpatient_visits is shadow: more than 4 visits in 7 days
        r, d = parse_settlement(_body(f"V{i}", [(OMEPRAZOLE, "1", "6.90", 1, "101")]))
        outbox.append_settlement_sync(r, d)
    request = {
        "psn": {"psn_no": r.psn.psn_no, "gend": "1", "brdy": "1958-04-02"},
        "mdtrt": {"med_type": "11", "dise_codg": "K21.9", "begntime": "2026-11-25T09:00:00+08:00"},
        "lines": [{"feedetl_sn": "1", "med_list_codg": CLASS_C, "cnt": "1", "pric": "5.50",
                   "list_type": "201"}],
    }  # fmt: skip
    answer = asyncio.run(
        checks.prescription(bill_from_request(json.dumps(request).encode(), "H37021100001", "3"))
    )
    shadow = [p for p in answer["prompts"] if p["rule_id"] == "frequent_outpatient_visits"]
    assert shadow and shadow[0]["shadow"] is True and shadow[0]["mode"] == "shadow"


def _serve(desk, tmp_path, scenario) -> None:
    """``scenario(http, outbox, users)`` against the real HIS API with the desk checks; ``http`` sends the HIS
    token unless a request names another, and ``users`` is the agent's own users table."""
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from agent.api import create_app
    from agent.config import AgentConfig

    checks, outbox = desk
    config = AgentConfig(home=tmp_path, agent_id="H1-01", fixmedins_code="H37021100001", hosp_lv="3")

    async def main() -> None:
        server = TestServer(create_app(config, outbox, None, TOKEN, policy=checks.policy, desk=checks))
        await server.start_server()
        try:
            async with ClientSession(
                str(server.make_url("/")), headers={"Authorization": f"Bearer {TOKEN}"}
            ) as http:
                with UserStore(tmp_path / "users.db") as users:
                    await scenario(http, outbox, users)
        finally:
            await server.close()

    asyncio.run(main())


def test_the_http_api_refuses_previews_checks_and_lists_medications(desk, tmp_path):
    async def scenario(http, outbox, _users):
        async with http.post("/v1/settlements", data=_body("P1", [(OMEPRAZOLE, "1", "9.90", 7, "101")])) as r:
            assert r.status == 422 and (await r.json())["error"]["code"] == "rule_refused"
        assert outbox.last_seq == 0  # refused: nothing written
        good = _body("G1", [(OMEPRAZOLE, "2", "6.90", 14, "101"), (CLASS_C, "1", "5.50", None, "201")])
        async with http.post("/v1/settlements/preview", data=good) as r:
            preview = await r.json()
            assert r.status == 200 and preview["checks"]["split"]["computed"] is True
        assert outbox.last_seq == 0  # a preview commits nothing
        amounts = preview["amounts"]
        assert amounts["fund_pay_sumamt"] + amounts["acct_pay"] + amounts["psn_cash_pay"] == 1930
        async with http.post("/v1/settlements", data=good) as r:
            settled = await r.json()
            assert r.status == 201 and "checks" in settled
        async with http.get("/v1/persons/37020000000001234567/medications?days=30") as r:
            meds = await r.json()
        assert [m["med_list_codg"] for m in meds["medications"]] == [OMEPRAZOLE]
        assert meds["medications"][0]["supply_until"] and meds["cross_hospital"] is False
        async with http.get("/v1/persons/37020000000001234567/medications?days=0") as r:
            assert r.status == 400

    _serve(desk, tmp_path, scenario)


def _stored(outbox: Outbox) -> dict:
    """The settlements in the outbox by his_setl_no, decoded from the chain entries that travel."""
    records = (decode_body(decode_entry(p.raw)) for p in outbox.read_pending(0, 100, 1 << 30))
    return {r.his_setl_no: r for r in records}


def test_an_override_is_the_signed_in_doctors_and_nobody_elses(desk, tmp_path):
    override = {"rule_id": "gender_restriction", "reason": "transgender patient on HRT"}

    async def post(http, path: str, tag: str, token: str, **change) -> tuple[int, dict]:
        body = _body(tag, RESTRICTED, overrides=[override | change])
        async with http.post(path, data=body, headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status, await r.json()

    async def scenario(http, outbox, users):
        doctor = users.add("dr.wang", "doctor", dr_codg="D0001")
        cashier = users.add("li.na", "cashier")
        for path in ("/v1/settlements", "/v1/settlements/preview"):  # a preview must not promise it either
            for token, who in ((TOKEN, "the HIS system token"), (cashier, "cashier li.na's token")):
                status, answer = await post(http, path, "REF", token)
                assert status == 403 and answer["error"]["code"] == "override_needs_doctor", answer
                assert who in answer["error"]["message"] and "own token" in answer["error"]["message"]
            status, answer = await post(http, path, "REF", doctor, dr_codg="D0002")
            assert status == 403 and answer["error"]["code"] == "override_doctor_mismatch"
            assert answer["error"]["details"] == [
                {"field": "overrides[0].dr_codg", "message": "D0002 is not the signed-in doctor's code"}
            ]
        assert outbox.last_seq == 0  # every refusal: nothing written

        status, answer = await post(http, "/v1/settlements", "OVR", doctor)
        assert status == 201
        assert {h["rule_id"]: h["outcome"] for h in answer["checks"]["hits"]}[
            "gender_restriction"
        ] == "overridden"
        status, _ = await post(
            http, "/v1/settlements", "OVR2", doctor, dr_codg="D0001"
        )  # the same code: fine
        assert status == 201
        stored = _stored(outbox)
        for tag in ("OVR", "OVR2"):
            assert [(o.rule_id, o.dr_codg) for o in stored[tag].overrides] == [
                ("gender_restriction", "D0001")
            ]
            assert stored[tag].opter_name == "dr.wang"  # who signed in, not the HIS's "cashier 7"
        # A retry of the doctor's settlement under the HIS token is refused too: overrides need the doctor.
        status, answer = await post(http, "/v1/settlements", "OVR", TOKEN)
        assert status == 403 and outbox.last_seq == 2

        users.disable("dr.wang")
        status, answer = await post(http, "/v1/settlements", "OVR3", doctor)
        assert status == 401 and answer["error"]["code"] == "token_disabled"
        assert "dr.wang" in answer["error"]["message"] and outbox.last_seq == 2

    _serve(desk, tmp_path, scenario)


def test_the_year_so_far_counts_this_hospitals_earlier_settlements_offline(desk):
    checks, outbox = desk
    first, d1 = parse_settlement(_body("Y1", [(OMEPRAZOLE, "150", "6.90", 7, "101")]))  # 1035.00
    outbox.append_settlement_sync(first, d1)
    second, _ = parse_settlement(_body("Y2", [(OMEPRAZOLE, "2", "6.90", 7, "101")]))  # 13.80
    outcome = asyncio.run(checks.settle(second))
    assert outcome.split["ytd_partial"] is True  # no centre: this hospital's settlements only
    # The first bill met the 800.00 deductible, so the fund shares the second (alone it would not).
    assert second.fund_pay_sumamt > 0
    assert second.fund_pay_sumamt + second.acct_pay + second.psn_cash_pay == second.medfee_sumamt


def test_the_personal_account_pays_the_persons_share_up_to_the_balance_the_his_sends(desk):
    from agent.intake import account_balance

    checks, _outbox = desk
    body = _body("ACCT", [(OMEPRAZOLE, "2", "6.90", 7, "101")], acct_balance="5.00")
    record, _ = parse_settlement(body)
    assert account_balance(body) == 500
    asyncio.run(checks.settle(record, acct_balance=account_balance(body)))
    # 13.80 is below the 800.00 outpatient deductible: all of it is the person's share; the account pays
    # what its balance allows (5.00) and the rest is cash.
    assert (record.fund_pay_sumamt, record.acct_pay, record.psn_cash_pay) == (0, 500, 880)


def test_an_inpatient_stay_does_not_count_towards_the_outpatient_pool(desk):
    checks, outbox = desk
    big = [(OMEPRAZOLE, "150", "6.90", 7, "101")]  # 1035.00: more than the 800.00 outpatient deductible
    inpatient = json.loads(_body("IN1", big))
    inpatient["mdtrt"]["med_type"] = "21"
    stay, d = parse_settlement(json.dumps(inpatient).encode())
    outbox.append_settlement_sync(stay, d)
    bill, _ = parse_settlement(_body("OUT1", [(OMEPRAZOLE, "2", "6.90", 7, "101")]))
    outcome = asyncio.run(checks.settle(bill))
    # Outpatient (11) is its own pool: the stay adds nothing to its year so far, so the bill is still
    # under the outpatient deductible and the fund pays nothing ...
    assert outcome.split["computed"] and bill.fund_pay_sumamt == 0
    # ... whereas an earlier outpatient bill of the same size does meet it, and the fund pays.
    earlier, d = parse_settlement(_body("OUT0", big))
    outbox.append_settlement_sync(earlier, d)
    again, _ = parse_settlement(_body("OUT2", [(OMEPRAZOLE, "2", "6.90", 7, "101")]))
    asyncio.run(checks.settle(again))
    assert again.fund_pay_sumamt > 0


def test_a_rules_bundle_the_checks_cannot_load_keeps_the_previous_rules_and_raises_an_alarm(desk):
    checks, _outbox = desk
    record, _ = parse_settlement(_body("BAD0", [(OMEPRAZOLE, "1", "9.90", 7, "101")]))
    with pytest.raises(RuleRefused):
        asyncio.run(checks.settle(record))  # the sample rules refuse a price above the ceiling
    # A bundle TUF delivered and policy.db holds, but whose rules this version cannot load.
    checks.policy.apply_document(
        BundleHeader("rules", "370200", 9, None, "2026-11-25T01:00:00Z"),
        {"area": "370200", "format": 99, "rules": []},
    )
    record, _ = parse_settlement(_body("BAD1", [(OMEPRAZOLE, "1", "9.90", 7, "101")]))
    with pytest.raises(RuleRefused):
        asyncio.run(checks.settle(record))  # the previous rules still apply
    assert checks.alarms["rules"]["code"] == "checks_bundle_unusable"


def test_a_suspended_doctors_override_is_refused_like_the_visits_doctor(desk, tmp_path):
    """The override's doctor is the signed-in one, so a doctor suspended by the centre (a blacklisted
    ``dr_codg``) cannot override in a visit someone else leads: refused, nothing written."""
    checks, _outbox = desk
    checks.policy.apply_blacklist(
        BundleHeader("blacklist", "370200", 1, None, "2026-11-25T00:00:00Z"),
        [BlacklistEntry("+", "doctor", "D0009", "suspended", "test", "")],
    )
    override = [{"rule_id": "gender_restriction", "reason": "transgender patient on HRT"}]

    async def scenario(http, outbox, users):
        suspended = users.add("dr.zhao", "doctor", dr_codg="D0009")
        body = _body("SUS", RESTRICTED, overrides=override)
        as_doctor = {"Authorization": f"Bearer {suspended}"}
        async with http.post("/v1/settlements", data=body, headers=as_doctor) as r:
            err = (await r.json())["error"]
        assert r.status == 403 and err["code"] == "blacklisted" and outbox.last_seq == 0
        async with http.post("/v1/settlements", data=_body("SUS", RESTRICTED)) as r:
            assert r.status == 201  # the same visit without the suspended doctor's override settles

    _serve(desk, tmp_path, scenario)
