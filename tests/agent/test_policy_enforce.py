"""Blacklists enforced at POST /v1/settlements, over real HTTP, with bundles fetched by the real TUF client.

A blacklisted card, person or employer is refused before anything is written, with the list, the reason,
the list version and what the cashier does, and no number echoed; an entry not yet in force is not
enforced; removal by a delta makes the same settlement acceptable again. The keys bundle replaces the
e-voucher issuers of agent.json.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from agent.api import create_app
from agent.evoucher import open_verifier
from agent.policy import ALARM_STALE
from agent.service import open_policy
from agent.store import Outbox
from protocol.bundles import BlacklistEntry
from simulators.evoucher import Issuer
from tests.agent.tufrepo import Repo, card, in_, unlist
from tests.conftest import example_settlement

TOKEN = "his-secret-token"


def settlement(no: str, *, card_sn: str | None = None, psn_no: str | None = None, emp_no: str | None = None):
    body = example_settlement(no)
    if card_sn is not None:
        body["psn"]["card_sn"] = card_sn
    if psn_no is not None:
        body["psn"]["psn_no"] = psn_no
    if emp_no is not None:
        body["psn"]["emp_no"] = emp_no
    return body


def test_blacklisted_card_person_employer_are_refused_and_removal_reopens(tmp_path, repo, client, store):
    example = example_settlement()["psn"]
    card_sn, psn_no = example["card_sn"], example["psn_no"]
    later = in_(days=1).isoformat()
    repo.blacklist(
        1,
        [
            card(card_sn, reason="reported lost"),
            BlacklistEntry("+", "person", "P-DECEASED", "deceased", "civil affairs", ""),
            BlacklistEntry("+", "employer", "E-SUSPENDED", "contributions unpaid", "tax", ""),
            BlacklistEntry("+", "employer", "E-NEXT-WEEK", "suspended from tomorrow", "tax", later),
        ],
    )
    repo.publish()

    async def main() -> None:
        assert (await asyncio.to_thread(client.update)).ok
        config = client.config
        outbox = Outbox(tmp_path / "agent.db", agent_id="H1-01")
        server = TestServer(create_app(config, outbox, None, TOKEN, policy=store, policy_client=client))
        await server.start_server()
        try:
            async with aiohttp.ClientSession(
                base_url=str(server.make_url("/")), headers={"Authorization": f"Bearer {TOKEN}"}
            ) as http:

                async def refused(body: dict, list_type: str, version: int) -> None:
                    async with http.post("/v1/settlements", json=body) as r:
                        text = await r.text()
                        assert r.status == 403, text
                    err = json.loads(text)["error"]
                    assert err["code"] == "blacklisted" and err["list_type"] == list_type
                    assert err["list_version"] == version and err["reason"] and err["action"]
                    assert f"list version {version}" in err["message"]
                    for number in (card_sn, psn_no, "P-DECEASED", "E-SUSPENDED", body["psn"].get("emp_no")):
                        if number:
                            assert number not in text

                await refused(settlement("S1"), "card", 1)
                await refused(settlement("S2", card_sn="CLEAN1", psn_no="P-DECEASED"), "person", 1)
                await refused(settlement("S3", card_sn="CLEAN1", emp_no="E-SUSPENDED"), "employer", 1)
                # no settlement written; the card's refusal is chained as a card log (agent.cardlog)
                assert outbox.last_seq == 1 and outbox.status()["pending"] == 1

                # Published ahead of time: not in force yet.
                async with http.post(
                    "/v1/settlements", json=settlement("S4", card_sn="CLEAN1", emp_no="E-NEXT-WEEK")
                ) as r:
                    assert r.status == 201, await r.text()
                # Settled before its card was listed: a retry is answered, not refused.
                first = settlement("S5", card_sn="SOONLOST1")
                async with http.post("/v1/settlements", json=first) as r:
                    assert r.status == 201
                repo.blacklist(2, [card("SOONLOST1")], base=1)
                repo.publish()
                assert (await asyncio.to_thread(client.update)).ok
                async with http.post("/v1/settlements", json=first) as r:
                    assert r.status == 200 and (await r.json())["duplicate"] is True
                await refused(settlement("S6", card_sn="SOONLOST1"), "card", 2)

                # The operator removes the card: a delta, and the same settlement goes through.
                repo.blacklist(3, [unlist("card", card_sn)], base=2)
                repo.publish()
                assert (await asyncio.to_thread(client.update)).ok
                async with http.post("/v1/settlements", json=settlement("S1")) as r:
                    assert r.status == 201, await r.text()
                assert outbox.last_seq == 5  # 3 settlements, the 2 refused cards' logs

                async with http.get("/v1/status") as r:
                    status = await r.json()
                policy = status["policy"]
                assert (
                    policy["bundles"]["blacklist"]["seq"] == 3
                    and policy["bundles"]["blacklist"]["entries"] == 4
                )
                assert policy["tuf"]["timestamp"] == 4 and policy["last_attempt"]["result"] == "ok"
                assert policy["warning"] is None and policy["alarms"] == []
        finally:
            await server.close()
            outbox.close()

    asyncio.run(main())


def test_a_suspended_doctor_or_hospital_is_refused_until_the_entry_is_lifted(tmp_path, repo, client, store):
    """A review's suspension decision travels as a doctor / hospital entry; the agent refuses the visit."""
    body = example_settlement()
    doctor, hospital = body["mdtrt"]["dr_codg"], body["fixmedins_code"]
    repo.blacklist(
        1, [BlacklistEntry("+", "doctor", doctor, "suspended until 2027-01-31: case 7", "case 7", "")]
    )
    repo.publish()

    async def main() -> None:
        assert (await asyncio.to_thread(client.update)).ok
        outbox = Outbox(tmp_path / "agent.db", agent_id="H1-01")
        server = TestServer(
            create_app(client.config, outbox, None, TOKEN, policy=store, policy_client=client)
        )
        await server.start_server()
        try:
            async with aiohttp.ClientSession(
                base_url=str(server.make_url("/")), headers={"Authorization": f"Bearer {TOKEN}"}
            ) as http:

                async def post(no: str, dr_codg: str) -> tuple[int, dict]:
                    sent = settlement(no)
                    sent["mdtrt"]["dr_codg"] = dr_codg
                    async with http.post("/v1/settlements", json=sent) as r:
                        return r.status, await r.json()

                status, answer = await post("D1", doctor)
                assert status == 403 and answer["error"]["list_type"] == "doctor", answer
                preview = settlement("D1")
                preview["mdtrt"]["dr_codg"] = doctor
                async with http.post("/v1/settlements/preview", json=preview) as r:  # the same refusal
                    assert r.status == 403 and (await r.json())["error"]["list_type"] == "doctor"
                assert "doctor's medical-insurance service is suspended" in answer["error"]["action"]
                assert outbox.last_seq == 0
                assert (await post("D2", "D370211000999"))[0] == 201  # another doctor settles

                suspended = BlacklistEntry("+", "hospital", hospital, "agreement suspended", "case 8", "")
                repo.blacklist(2, [suspended], base=1)
                repo.publish()
                assert (await asyncio.to_thread(client.update)).ok
                status, answer = await post("D3", "D370211000999")
                assert status == 403 and answer["error"]["list_type"] == "hospital", answer

                repo.blacklist(3, [unlist("doctor", doctor), unlist("hospital", hospital)], base=2)
                repo.publish()
                assert (await asyncio.to_thread(client.update)).ok
                assert (await post("D4", doctor))[0] == 201  # lifted
        finally:
            await server.close()
            outbox.close()

    asyncio.run(main())


def test_status_warns_when_the_blacklist_is_old_and_the_agent_keeps_serving(tmp_path, repo, client, store):
    repo.blacklist(1, [card("C1")])
    repo.publish()
    assert client.update().ok
    config = client.config
    config.blacklist_max_age_s = 0.001  # confirmed a moment ago is already too old

    async def main() -> None:
        outbox = Outbox(tmp_path / "agent.db", agent_id="H1-01")
        server = TestServer(create_app(config, outbox, None, TOKEN, policy=store, policy_client=client))
        await server.start_server()
        try:
            async with aiohttp.ClientSession(
                base_url=str(server.make_url("/")), headers={"Authorization": f"Bearer {TOKEN}"}
            ) as http:
                async with http.get("/v1/status") as r:
                    status = await r.json()
                assert "last confirmed current" in status["policy"]["warning"]
                assert ALARM_STALE in {a["code"] for a in status["alarms"]}
                async with http.post("/v1/settlements", json=settlement("S1", card_sn="CLEAN")) as r:
                    assert r.status == 201
        finally:
            await server.close()
            outbox.close()

    asyncio.run(main())


def test_a_keys_bundle_replaces_the_voucher_issuers_of_agent_json(repo: Repo, agent_config, tmp_path: Path):
    old, new = Issuer.generate("old"), Issuer.generate("new")
    agent_config.evoucher_issuers = old.issuers_config()
    with open_verifier(agent_config) as vouchers:
        store, client = open_policy(agent_config, vouchers=vouchers)
        try:
            assert set(vouchers.issuers) == {"old"} and vouchers.issuers_source == "agent.json"
            repo.document("keys", 1, {"evoucher_issuers": new.issuers_config()})
            repo.publish()
            assert client.update().ok
            assert set(vouchers.issuers) == {"new"} and vouchers.issuers_source == "keys bundle seq 1"
            assert vouchers.verify(new.issue("37021119580402123X", ttl_s=60)).issuer_kid == "new"
        finally:
            store.close()
        # After a restart the held bundle is used from the start.
        store, _client = open_policy(agent_config, vouchers=vouchers)
        store.close()
        assert set(vouchers.issuers) == {"new"}
