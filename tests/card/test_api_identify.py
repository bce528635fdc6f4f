"""GET /v1/card and POST /v1/evoucher over real HTTP, the card read through real pcscd; and a
settlement that names how its person was identified."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from agent.api import create_app
from agent.card import CardReader
from agent.config import AgentConfig
from agent.evoucher import open_verifier
from agent.store import Outbox
from protocol.chain import decode_body, decode_entry
from simulators.evoucher import Issuer
from tests.card.conftest import PSN_NO
from tests.conftest import example_settlement, with_client

TOKEN = "his-secret-token"


def _run(tmp_path: Path, scenario, issuer: Issuer | None = None) -> None:
    async def main() -> None:
        config = AgentConfig(home=tmp_path, agent_id="H1-01", fixmedins_code="H37021100001")
        if issuer is not None:
            config.evoucher_issuers = issuer.issuers_config()
        outbox = Outbox(tmp_path / "agent.db", agent_id="H1-01")
        reader = CardReader()
        vouchers = open_verifier(config)
        app = create_app(config, outbox, None, TOKEN, card_reader=reader, vouchers=vouchers)
        try:
            await with_client(app, TOKEN, scenario, outbox)
        finally:
            outbox.close()
            reader.close()
            vouchers.close()

    asyncio.run(main())


def test_get_card_waits_for_the_card_and_answers_the_identity(tmp_path, insert):
    async def scenario(http, outbox):
        async with http.get("/v1/card?wait=0.2") as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "no_card"
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, insert, "valid", PSN_NO, False)  # the patient inserts it while we wait
        started = time.monotonic()
        async with http.get("/v1/card?wait=15") as r:
            body = await r.json()
            assert r.status == 200, body
        assert time.monotonic() - started < 10
        ident = body["identity"]
        assert ident["psn_no"] == PSN_NO and ident["method"] == "card" and ident["authenticated"] is True
        assert body["read"]["card_apdus"] == 4
        async with http.get("/v1/card?wait=soon") as r:
            assert r.status == 400 and (await r.json())["error"]["details"][0]["field"] == "wait"
        async with http.get("/v1/card", headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401

    _run(tmp_path, scenario)


def test_get_card_reports_a_counterfeit(tmp_path, insert):
    insert("cloned")

    async def scenario(http, outbox):
        async with http.get("/v1/card") as r:
            err = (await r.json())["error"]
        assert r.status == 422 and err["code"] == "card_auth_failed" and PSN_NO not in err["message"]

    _run(tmp_path, scenario)


def test_evoucher_then_settlement_naming_it(tmp_path, psam):
    issuer = Issuer.load_or_create(tmp_path / "issuer")

    async def scenario(http, outbox):
        qr = issuer.issue(PSN_NO, insuplc_admdvs="370202", ttl_s=120)
        async with http.post("/v1/evoucher", json={"qr": qr}) as r:
            body = await r.json()
            assert r.status == 200, body
        ident = body["identity"]
        assert (
            ident["method"] == "evoucher" and ident["mdtrt_cert_type"] == "01" and ident["psn_no"] == PSN_NO
        )
        async with http.post("/v1/evoucher", json={"qr": qr}) as r:
            assert r.status == 422 and (await r.json())["error"]["code"] == "evoucher_replayed"
        async with http.post("/v1/evoucher", json={"qr": "not a voucher"}) as r:
            assert r.status == 422 and (await r.json())["error"]["code"] == "evoucher_malformed"
        async with http.post("/v1/evoucher", json={"text": qr}) as r:
            assert r.status == 400

        settle = example_settlement("QR-1")
        settle["mdtrt_cert_type"], settle["mdtrt_cert_no"] = "01", "0" * 32  # never scanned here
        async with http.post("/v1/settlements", json=settle) as r:
            assert r.status == 400 and (await r.json())["error"]["details"][0]["field"] == "mdtrt_cert_no"
        assert outbox.last_seq == 0  # refused: nothing written
        settle["mdtrt_cert_no"] = ident["mdtrt_cert_no"]
        async with http.post("/v1/settlements", json=settle) as r:
            assert r.status == 201, await r.text()
        record = decode_body(decode_entry(outbox.read_pending(0, 10, 1 << 20)[0].raw))
        assert (record.mdtrt_cert_type, record.mdtrt_cert_no) == ("01", ident["mdtrt_cert_no"])

    _run(tmp_path, scenario, issuer)
