"""The HIS API over real loopback HTTP (aiohttp's TestServer binds a real socket)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from agent.api import create_app
from agent.config import AgentConfig
from agent.store import Outbox
from agent.users import UserStore
from tests.conftest import example_settlement, with_client

TOKEN = "his-secret-token"


def _run(tmp_path: Path, scenario, **config_overrides) -> None:
    async def main() -> None:
        config = AgentConfig(
            home=tmp_path, agent_id="H1-01", fixmedins_code="H37021100001", **config_overrides
        )
        outbox = Outbox(tmp_path / "agent.db", agent_id="H1-01", max_records=config.outbox_max_records)
        try:
            await with_client(create_app(config, outbox, None, TOKEN), TOKEN, scenario, outbox)
        finally:
            outbox.close()

    asyncio.run(main())


def test_settle_then_retry_returns_the_first_answer(tmp_path):
    async def scenario(http, outbox):
        body = example_settlement()
        async with http.post("/v1/settlements", json=body) as r:
            assert r.status == 201
            first = await r.json()
        assert first["seq"] == 1 and first["medfee_sumamt"] == "51.20" and len(first["hash"]) == 64
        async with http.post("/v1/settlements", json=body) as r:
            assert r.status == 200
            again = await r.json()
        assert again["duplicate"] is True and again["setl_id"] == first["setl_id"]
        async with http.post(
            f"/v1/settlements/{first['setl_id']}/reversal", json={"reason": "refund", "opter": "C0007"}
        ) as r:
            assert r.status == 201
            rev = await r.json()
        assert (
            rev["seq"] == 2 and rev["medfee_sumamt"] == "-51.20" and rev["orig_setl_id"] == first["setl_id"]
        )
        assert outbox.last_seq == 2

    _run(tmp_path, scenario)


def test_bad_input_gets_field_errors_and_writes_nothing(tmp_path):
    async def scenario(http, outbox):
        bad = example_settlement()
        bad["feedetl"][0]["cnt"] = "-1"
        bad["medfee_sumamt"] = "1.00"
        async with http.post("/v1/settlements", json=bad) as r:
            assert r.status == 400
            err = (await r.json())["error"]
        assert err["code"] == "validation_failed"
        assert {"feedetl[0].cnt", "medfee_sumamt"} <= {d["field"] for d in err["details"]}
        async with http.post("/v1/settlements", data=b"{not json") as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "validation_failed"
        async with http.post("/v1/settlements/nope/reversal", json={"reason": "x", "opter": "C1"}) as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "not_found"
        async with http.post("/v1/settlements/nope/reversal", json={"reason": "x"}) as r:
            assert r.status == 400
        assert outbox.last_seq == 0

    _run(tmp_path, scenario)


def test_missing_or_wrong_token_is_401(tmp_path):
    async def scenario(http, outbox):
        for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": ""}):
            async with http.post("/v1/settlements", json=example_settlement(), headers=headers) as r:
                assert r.status == 401
                assert (await r.json())["error"]["code"] == "unauthorized"
        async with http.get("/v1/status", headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        async with http.get("/v1/health", headers={"Authorization": ""}) as r:
            assert r.status == 200
        assert outbox.last_seq == 0

    _run(tmp_path, scenario)


def test_oversized_body_is_413(tmp_path):
    async def scenario(http, outbox):
        body = json.dumps(example_settlement()) + " " * 5000
        async with http.post("/v1/settlements", data=body.encode()) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "body_too_large"
        assert outbox.last_seq == 0

    _run(tmp_path, scenario, max_body_bytes=4096)


def test_outbox_full_is_503_with_a_clear_message(tmp_path):
    async def scenario(http, outbox):
        async with http.post("/v1/settlements", json=example_settlement("A")) as r:
            assert r.status == 201
        async with http.post("/v1/settlements", json=example_settlement("B")) as r:
            assert r.status == 503
            err = (await r.json())["error"]
        assert err["code"] == "outbox_full" and "refused" in err["message"]
        async with http.get("/v1/status") as r:
            st = await r.json()
        assert st["outbox"]["pending"] == 1 and st["alarms"][0]["code"] == "outbox_full"

    _run(tmp_path, scenario, outbox_max_records=1)


def test_status_shape(tmp_path):
    async def scenario(http, outbox):
        async with http.get("/v1/status") as r:
            empty = (await r.json())["outbox"]
        assert empty["pending"] == 0 and empty["bytes"] == 0 and empty["oldest_age_s"] is None
        before = time.time()
        async with http.post("/v1/settlements", json=example_settlement()) as r:
            assert r.status == 201
        await asyncio.sleep(0.05)
        async with http.get("/v1/status") as r:
            st = await r.json()
        waited = time.time() - before
        assert st["agent_id"] == "H1-01" and st["heartbeat"] is None  # this app has no sender
        assert st["outbox"]["pending"] == 1 and st["outbox"]["acked_seq"] == 0
        # the age of the one pending record: written after ``before``, read after the sleep
        # (rounded to the millisecond by the status)
        assert st["outbox"]["bytes"] > 0 and 0.049 <= st["outbox"]["oldest_age_s"] <= waited + 0.001
        assert set(st["central"]) >= {"reachable", "last_upload_at"}

    _run(tmp_path, scenario)


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_each_token_is_its_own_caller_and_roles_keep_to_their_side(tmp_path):
    async def scenario(http, outbox):
        with UserStore(tmp_path / "users.db") as users:
            doctor = users.add("dr.wang", "doctor", dr_codg="D0001", dept_codg="A03.01")
            cashier = users.add("li.na", "cashier")
            callers = {}
            for token in (TOKEN, doctor, cashier):
                async with http.get("/v1/whoami", headers=_as(token)) as r:
                    assert r.status == 200
                    callers[token] = await r.json()
                async with http.get("/v1/status", headers=_as(token)) as r:
                    assert (await r.json())["caller"] == callers[token]
            assert callers[TOKEN] == {"role": "his", "name": "his", "dr_codg": None, "dept_codg": None}
            assert callers[doctor] == {
                "role": "doctor",
                "name": "dr.wang",
                "dr_codg": "D0001",
                "dept_codg": "A03.01",
            }
            assert callers[cashier]["role"] == "cashier" and callers[cashier]["dr_codg"] is None

            async with http.post("/v1/settlements", json=example_settlement("C1"), headers=_as(cashier)) as r:
                assert r.status == 201
                setl_id = (await r.json())["setl_id"]
            # The doctor's side: a cashier's token does not read a patient's medication history ...
            medications = "/v1/persons/37020000000001234567/medications"
            async with http.get(medications, headers=_as(cashier)) as r:
                assert r.status == 403 and (await r.json())["error"]["code"] == "role_forbidden"
            async with http.post("/v1/checks/prescription", json={}, headers=_as(cashier)) as r:
                assert r.status == 403
            for token in (TOKEN, doctor):  # ... the doctor's and the HIS's do (this agent has no rules: 404)
                async with http.get(medications, headers=_as(token)) as r:
                    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
            # The cashier's side: a doctor does not reverse a settlement; the HIS token still does.
            reversal = f"/v1/settlements/{setl_id}/reversal"
            async with http.post(
                reversal, json={"reason": "refund", "opter": "C0007"}, headers=_as(doctor)
            ) as r:
                err = (await r.json())["error"]
                assert r.status == 403 and err["code"] == "role_forbidden" and "cashier" in err["message"]
            assert outbox.last_seq == 1
            async with http.post(reversal, json={"reason": "refund", "opter": "C0007"}) as r:
                assert r.status == 201
            assert outbox.last_seq == 2

    _run(tmp_path, scenario)


def test_unknown_rotated_and_disabled_user_tokens_are_401_with_what_to_do(tmp_path):
    async def scenario(http, outbox):
        with UserStore(tmp_path / "users.db") as users:
            old = users.add("li.na", "cashier")
            new = users.rotate("li.na")
            async with http.get("/v1/whoami", headers=_as(new)) as r:
                assert r.status == 200
            for token in (old, "ybu_made-up", "his.token-lookalike"):
                async with http.post("/v1/settlements", json=example_settlement(), headers=_as(token)) as r:
                    err = (await r.json())["error"]
                assert r.status == 401 and err["code"] == "unauthorized" and "his.token" in err["message"]
            users.disable("li.na")  # at once: the agent reads the table on every request
            async with http.post("/v1/settlements", json=example_settlement(), headers=_as(new)) as r:
                err = (await r.json())["error"]
            assert r.status == 401 and err["code"] == "token_disabled" and "li.na" in err["message"]
            assert new not in json.dumps(err)  # a token is never echoed
            assert outbox.last_seq == 0

    _run(tmp_path, scenario)
