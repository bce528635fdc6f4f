"""The agent's ``/metrics``: real HIS traffic and a real upload, then ``curl`` and prometheus-client's parser.

The app is ``create_app``'s, with ``agent.metrics.install`` called on it as ``serve`` will; uploads go
through the real ``Uploader`` to a stand-in centre on loopback that verifies each signed batch and
acknowledges it. The page must reflect the traffic and hold none of the personal data that was sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from agent.api import create_app
from agent.config import AgentConfig
from agent.metrics import AgentMetrics, install
from agent.policy_store import PolicyStore
from agent.store import Outbox
from agent.uploader import Uploader
from protocol.batch import KeyPair, decode_batch, verify_batch
from protocol.bundles import BlacklistEntry, BundleHeader
from protocol.wire import BATCH_PATH, MSGPACK, BatchAck, encode_ack
from tests.conftest import example_settlement
from tests.metrics_page import curl as page_curl
from tests.metrics_page import samples, value

TOKEN = "his-secret-token"
HOSPITAL = "H37021100001"
#: Personal data the HIS sends: none of it may appear anywhere on the page.
PSN_NO = "37020000000001234567"
CARD_SN = "A12345678"
CERTNO = "370211195804020011"
PSN_NAME = "Zhang Sanfeng"
BLOCKED_CARD = "B99887766"
ASKED_PSN_NO = "37020000000009876543"


def settlement_body(his_setl_no: str, card_sn: str = CARD_SN) -> dict:
    body = example_settlement(his_setl_no)
    body["psn"].update(card_sn=card_sn, certno=CERTNO, psn_name=PSN_NAME)
    return body


async def curl(url: str, token: str | None) -> tuple[int, str]:
    """The page as a scrape job fetches it, on a thread: the server shares this event loop."""
    return await asyncio.to_thread(page_curl, url, token)


def stand_in_centre(key: KeyPair) -> web.Application:
    """Verifies each batch's signature and chain like the centre and acknowledges its last seq."""

    async def batches(request: web.Request) -> web.Response:
        batch = decode_batch(await request.read())
        linked = verify_batch(batch, key.public_bytes, prev_hash=None)
        ack = BatchAck(acked_seq=batch.last_seq, code="stored", stored=len(linked))
        return web.Response(body=encode_ack(ack), content_type=MSGPACK)

    app = web.Application()
    app.router.add_post(BATCH_PATH, batches)
    return app


Scenario = Callable[[aiohttp.ClientSession, str, Outbox, Uploader, AgentMetrics], Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario) -> None:
    async def main() -> None:
        key = KeyPair.generate()
        centre = TestServer(stand_in_centre(key))
        await centre.start_server()
        config = AgentConfig(
            home=tmp_path,
            agent_id="H1-01",
            fixmedins_code=HOSPITAL,
            pooling_area="370200",
            central_url=str(centre.make_url("/")).rstrip("/"),
        )
        outbox = Outbox(tmp_path / "agent.db", agent_id="H1-01")
        policy = PolicyStore(tmp_path / "policy.db")
        policy.apply_blacklist(
            BundleHeader("blacklist", "370200", 1, None, "2026-11-01T00:00:00+00:00"),
            [BlacklistEntry("+", "card", BLOCKED_CARD, "lost", "ops", "")],
        )
        uploader = Uploader(config, outbox, key)
        outbox.on_append = uploader.wake
        app = create_app(config, outbox, uploader, TOKEN, policy=policy)
        metrics = AgentMetrics(config=config, outbox=outbox, uploader=uploader, policy=policy)
        install(app, metrics)
        server = TestServer(app)
        await server.start_server()
        try:
            async with aiohttp.ClientSession(
                base_url=str(server.make_url("/")), headers={"Authorization": f"Bearer {TOKEN}"}
            ) as http:
                await scenario(http, str(server.make_url("/metrics")), outbox, uploader, metrics)
        finally:
            uploader.stop()
            await server.close()
            await centre.close()
            outbox.close()
            policy.close()

    asyncio.run(main())


def test_page_follows_the_traffic_and_the_upload_and_names_no_person(tmp_path):
    async def scenario(http, url, outbox, uploader, metrics):
        for his_setl_no in ("HIS-1", "HIS-2"):
            async with http.post("/v1/settlements", json=settlement_body(his_setl_no)) as r:
                assert r.status == 201
        async with http.post("/v1/settlements", json=settlement_body("HIS-1")) as r:
            assert r.status == 200  # the same his_setl_no again: the first answer
        async with http.post("/v1/settlements", json=settlement_body("HIS-3", BLOCKED_CARD)) as r:
            assert r.status == 403
        async with http.get(f"/v1/persons/{ASKED_PSN_NO}/medications") as r:
            assert r.status == 404  # this agent runs without the rule library
        async with http.get("/v1/card") as r:
            assert r.status == 503 and (await r.json())["error"]["code"] == "no_reader"
        async with http.get(f"/v1/no-such-route/{ASKED_PSN_NO}") as r:
            assert r.status == 404

        status, text = await curl(url, TOKEN)
        assert status == 200
        page = samples(text)
        pending = outbox.status()["pending"]
        assert pending == 3  # two settlements and the blocked card's refusal (a card log)
        assert value(page, "yibao_agent_outbox_pending_records") == pending
        assert value(page, "yibao_agent_outbox_pending_bytes") == outbox.status()["bytes"] > 0
        assert value(page, "yibao_agent_outbox_oldest_pending_age_seconds") >= 0
        assert value(page, "yibao_agent_outbox_last_seq") == 3
        assert value(page, "yibao_agent_outbox_acked_seq") == 0
        requests = "yibao_agent_http_requests_total"
        assert value(page, requests, method="POST", route="/v1/settlements", status="201") == 2
        assert value(page, requests, method="POST", route="/v1/settlements", status="200") == 1
        assert value(page, requests, method="POST", route="/v1/settlements", status="403") == 1
        medications = "/v1/persons/{psn_no}/medications"
        assert value(page, requests, method="GET", route=medications, status="404") == 1
        assert value(page, requests, method="GET", route="/v1/card", status="503") == 1
        assert value(page, requests, method="GET", route="unmatched", status="404") == 1
        latency = "yibao_agent_http_request_duration_seconds_count"
        assert value(page, latency, method="POST", route="/v1/settlements") == 4
        assert value(page, "yibao_agent_card_errors_total", code="no_reader") == 1
        assert value(page, "yibao_agent_policy_bundle_seq", kind="blacklist") == 1
        assert value(page, "yibao_agent_policy_bundle_entries", kind="blacklist") == 1
        assert value(page, "yibao_agent_policy_bundle_age_seconds", kind="blacklist") > 0
        assert value(page, "yibao_agent_upload_batches_total") == 0
        info = {"agent_id": "H1-01", "fixmedins_code": HOSPITAL, "pooling_area": "370200"}
        assert value(page, "yibao_agent_info", **info) == 1
        for personal in (PSN_NO, CARD_SN, CERTNO, PSN_NAME, BLOCKED_CARD, ASKED_PSN_NO):
            assert personal not in text

        task = asyncio.create_task(uploader.run())
        try:
            for _ in range(200):
                if outbox.acked_seq == 3:
                    break
                await asyncio.sleep(0.05)
            assert outbox.acked_seq == 3
            status, text = await curl(url, TOKEN)
        finally:
            uploader.stop()
            await task
        page = samples(text)
        assert value(page, "yibao_agent_outbox_pending_records") == outbox.status()["pending"] == 0
        assert value(page, "yibao_agent_outbox_oldest_pending_age_seconds") == 0
        assert value(page, "yibao_agent_outbox_acked_seq") == 3
        assert value(page, "yibao_agent_upload_records_acked_total") == 3
        assert value(page, "yibao_agent_upload_batches_total") == uploader.batches_sent >= 1
        assert value(page, "yibao_agent_central_reachable") == 1
        assert value(page, "yibao_agent_upload_last_duration_seconds") >= 0
        assert value(page, "yibao_agent_upload_last_success_timestamp_seconds") == uploader.last_upload_at
        # the previous scrape was counted like any request, under its own route
        assert value(page, requests, method="GET", route="/metrics", status="200") == 1
        for personal in (PSN_NO, CARD_SN, CERTNO, PSN_NAME, BLOCKED_CARD, ASKED_PSN_NO):
            assert personal not in text

    run(tmp_path, scenario)


def test_the_page_needs_the_his_token(tmp_path):
    async def scenario(http, url, outbox, uploader, metrics):
        async with http.post("/v1/settlements", json=settlement_body("HIS-1")) as r:
            assert r.status == 201
        for token in (None, "wrong-token", ""):
            status, text = await curl(url, token)
            assert status == 401
            assert '"unauthorized"' in text and "yibao_agent" not in text and PSN_NO not in text
        status, text = await curl(url, TOKEN)
        assert status == 200
        page = samples(text)
        refused = value(page, "yibao_agent_http_requests_total", method="GET", route="/metrics", status="401")
        assert refused == 3

    run(tmp_path, scenario)


def test_reported_codes_only_and_one_registry_per_agent(tmp_path):
    first, second = AgentMetrics(), AgentMetrics()  # two agents in one process do not clash
    first.count_card_error("card_expired")
    first.count_card_error(CARD_SN)  # not a card error code: never shown
    first.observe_upload(0.2, "ok")
    first.observe_upload(1.5, "central_unreachable")
    first.observe_upload(0.1, f"refused for {PSN_NO}")
    first.observe_request("BREW", "/v1/card", 418, 0.01)
    text = first.exposition().decode()
    page = samples(text)
    assert value(page, "yibao_agent_card_errors_total", code="card_expired") == 1
    assert value(page, "yibao_agent_card_errors_total", code="other") == 1
    assert value(page, "yibao_agent_upload_duration_seconds_count", outcome="ok") == 1
    assert value(page, "yibao_agent_upload_duration_seconds_sum", outcome="central_unreachable") == 1.5
    assert value(page, "yibao_agent_upload_duration_seconds_count", outcome="other") == 1
    assert value(page, "yibao_agent_http_requests_total", method="other", route="/v1/card", status="418") == 1
    assert CARD_SN not in text and PSN_NO not in text
    other = samples(second.exposition().decode())
    assert value(other, "yibao_agent_card_errors_total", code="card_expired") is None


def test_a_failing_source_is_left_out_and_counted(tmp_path):
    outbox = Outbox(tmp_path / "agent.db", agent_id="H1-01")
    metrics = AgentMetrics(outbox=outbox)
    outbox.close()  # the database is gone from under the page
    page = samples(metrics.exposition().decode())
    assert value(page, "yibao_agent_outbox_pending_records") is None
    assert value(page, "yibao_agent_metrics_collect_errors_total", source="outbox") == 1
