"""Signed heartbeats end to end: a real agent holding settlements the centre lacks, and reconcile saying so.

The link between them blocks only batches (a proxy in the way, a WAF refusing uploads): the
settlements wait in the agent's outbox while its heartbeats still arrive. Before heartbeats,
reconcile said "complete" here; now it says "behind by N" until the backlog is in.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from agent.config import AgentConfig
from agent.heartbeat import HeartbeatSender
from agent.service import open_outbox
from central.intake.reconcile import PERIOD_TZ
from protocol.batch import KeyPair
from simulators.faultnet import FaultyLink
from tests.conftest import example_settlement

from .harness import Agent, Central, wait_until

HOSPITAL = "H37021100001"  # the hospital of tests.conftest.example_settlement


@pytest.fixture
def central(tmp_path):
    c = Central(tmp_path / "central", insecure_dev=True)  # the faulty link forwards plain HTTP
    c.proc.start()
    yield c
    c.proc.stop()


def _reconcile(central: Central, day: str) -> dict:
    out = central.cli("reconcile", "--hospital", HOSPITAL, "--from", day, "--to", day, "--json")
    return json.loads(out)


def test_pending_settlements_make_reconcile_say_behind_by_n(tmp_path, central):
    link = FaultyLink(central.url).start()
    token = central.enroll_token(HOSPITAL)
    agent = Agent(tmp_path / "agent", link.url, HOSPITAL, token, heartbeat_s=0.3)
    agent.proc.start()
    today = datetime.now(PERIOD_TZ).date()
    yesterday = (today - timedelta(days=1)).isoformat()
    try:
        for i in range(3):
            assert agent.settle(example_settlement(f"HB-{i}"))[0] == 201
        wait_until(agent.drained, 30, what="the first three to upload")
        link.set(block_batches=True)
        for i in range(3, 5):
            assert agent.settle(example_settlement(f"HB-{i}"))[0] == 201

        def behind() -> dict | None:
            [a] = _reconcile(central, today.isoformat())["agents"]
            return a if a["state"] == "behind" else None

        reach = wait_until(behind, 30, what="reconcile to see the agent behind")
        assert (reach["acked_seq"], reach["heartbeat_seq"], reach["behind_by"]) == (3, 5, 2)
        assert reach["chain_ok"] and not reach["period_complete"]
        table = central.cli("reconcile", "--hospital", HOSPITAL, "--from", today.isoformat(), "--to",
                            today.isoformat())  # fmt: skip
        assert "behind by 2" in table and "NOT provably complete" in table
        # Yesterday is over and the two waiting were made today: yesterday is provably complete.
        assert _reconcile(central, yesterday)["ok"] is True
        assert link.count("blocked") >= 1

        link.set(block_batches=False)
        wait_until(agent.drained, 30, what="the backlog to upload")

        def caught_up() -> dict | None:
            [a] = _reconcile(central, today.isoformat())["agents"]
            return a if a["state"] == "complete" and a["heartbeat_seq"] == 5 else None

        reach = wait_until(caught_up, 30, what="a heartbeat after the backlog")
        assert reach["acked_seq"] == 5 and reach["behind_by"] == 0
        assert datetime.fromisoformat(reach["since"]) <= datetime.now(UTC)
        # Today has not ended: complete up to now, but the period cannot be called complete yet.
        assert not _reconcile(central, today.isoformat())["ok"]
        assert "complete up to " in central.cli(
            "reconcile", "--hospital", HOSPITAL, "--from", today.isoformat(), "--to", today.isoformat()
        )
        # The agent's own status shows the sender: delivered beats, then a link that is down.
        beat = agent.status()["heartbeat"]
        assert beat["last_error"] is None and beat["sent"] >= 2 and beat["interval_s"] == 0.3
        assert datetime.fromisoformat(beat["last_sent_at"]) <= datetime.now(UTC)
        link.set(down=True)
        down = wait_until(
            lambda: (b := agent.status()["heartbeat"])["last_error"] == "central_unreachable" and b,
            30,
            what="the status to show the heartbeat undelivered",
        )
        assert down["last_sent_at"] is not None and down["sent"] >= beat["sent"]
    finally:
        agent.proc.stop()
        link.stop()


def test_a_refused_heartbeat_keeps_the_centres_reason_and_a_down_link_says_unreachable(tmp_path, central):
    """The agent's sender against the real centre: an impostor's heartbeat is refused with the centre's
    code (kept for ``/metrics`` and the log), and a link that is down is told apart from a refusal."""
    home = tmp_path / "impostor"
    home.mkdir()
    config = AgentConfig(home=home, central_url=central.url, agent_id="H37021100001-77", insecure_dev=True)
    outbox = open_outbox(config)
    try:
        sender = HeartbeatSender(config, outbox, KeyPair.generate())
        hb = sender.build()
        assert (hb.last_seq, hb.acked_seq, hb.oldest_pending_ms) == (0, 0, None)

        async def once(url: str) -> bool:
            sender.config = AgentConfig(
                home=home, central_url=url, agent_id=config.agent_id, insecure_dev=True
            )
            async with aiohttp.ClientSession() as session:
                return await sender.send_once(session)

        assert asyncio.run(once(central.url)) is False and sender.last_error == "agent_unknown"
        link = FaultyLink(central.url).start()
        try:
            link.set(down=True)
            assert asyncio.run(once(link.url)) is False and sender.last_error == "central_unreachable"
        finally:
            link.stop()
        assert sender.status() == {
            "last_sent_at": None,
            "last_error": "central_unreachable",
            "sent": 0,
            "interval_s": config.heartbeat_s,
        }
    finally:
        outbox.close()
