"""End to end with real processes: nothing lost, nothing twice, whatever breaks.

Each test starts ``yibao-central`` and ``yibao-agent`` as subprocesses on loopback and
drives the agent's HIS API like a HIS that retries unanswered requests with the same
``his_setl_no``. The final check is always the same: the settlements the centre holds are
exactly the ones the HIS was told about — none lost, none twice.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections import Counter
from datetime import date, timedelta

import pytest

from simulators.faultnet import FaultyLink
from tests.conftest import example_settlement

from .harness import Agent, Central, settle_until_answered, wait_until

HOSPITAL = "H37021100001"


@pytest.fixture
def central(tmp_path):
    c = Central(tmp_path / "central", insecure_dev=True)  # the faulty link rewrites plain HTTP
    c.proc.start()
    yield c
    c.proc.stop()


def _agent(tmp_path, central_url: str, central: Central, **settings) -> Agent:
    return Agent(tmp_path / "agent", central_url, HOSPITAL, central.enroll_token(HOSPITAL), **settings)


def _assert_exactly(central: Central, acknowledged: dict[str, dict]) -> None:
    held = central.settlements()
    ids = Counter(r["setl_id"] for r in held)
    assert not [k for k, n in ids.items() if n > 1], "a settlement is held twice"
    assert set(ids) == {a["setl_id"] for a in acknowledged.values()}, "held set differs from acknowledged set"
    seqs = sorted(r["seq"] for r in held)
    assert seqs == list(range(1, len(seqs) + 1)), "seq numbers at the centre have a gap"


class Traffic(threading.Thread):
    """A HIS posting settlements without pause, retrying each until answered."""

    def __init__(self, agent: Agent, prefix: str) -> None:
        super().__init__(daemon=True)
        self.agent, self.prefix = agent, prefix
        self.acknowledged: dict[str, dict] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            body = example_settlement(f"{self.prefix}-{n:06d}")
            self.acknowledged[body["his_setl_no"]] = settle_until_answered(self.agent, body, 90)
            n += 1

    def finish(self) -> dict[str, dict]:
        self.stopping.set()
        self.join(120)
        return self.acknowledged


def test_settlements_reach_the_centre_exactly_once(tmp_path, central):
    agent = _agent(tmp_path, central.url, central)
    agent.proc.start()
    try:
        acked = {}
        for i in range(50):
            body = example_settlement(f"HIS-{i:04d}")
            status, answer = agent.settle(body)
            assert status == 201
            acked[body["his_setl_no"]] = answer
        again = agent.settle(example_settlement("HIS-0007"))
        assert again[0] == 200 and again[1]["setl_id"] == acked["HIS-0007"]["setl_id"]
        wait_until(agent.drained, 30, what="outbox to drain")
        st = agent.status()
        assert st["outbox"]["acked_seq"] == 50 and st["central"]["reachable"] is True
        _assert_exactly(central, acked)
        agents = central.cli("agents", "list")
        assert agent.agent_id in agents
    finally:
        agent.proc.stop()


def test_agent_killed_at_random_points_loses_nothing(tmp_path, central):
    agent = _agent(tmp_path, central.url, central)
    agent.proc.start()
    traffic = Traffic(agent, "KILL")
    traffic.start()
    rng = random.Random(7)
    try:
        for _ in range(4):
            time.sleep(rng.uniform(0.3, 1.2))
            agent.proc.kill9()
            time.sleep(rng.uniform(0.0, 0.3))
            agent.proc.start()
        time.sleep(0.5)
        acked = traffic.finish()
        assert len(acked) > 20
        wait_until(agent.drained, 60, what="outbox to drain after kills")
        _assert_exactly(central, acked)
    finally:
        traffic.stopping.set()
        agent.proc.stop()


def test_central_killed_and_restarted_loses_nothing(tmp_path, central):
    agent = _agent(tmp_path, central.url, central)
    agent.proc.start()
    traffic = Traffic(agent, "CKILL")
    traffic.start()
    rng = random.Random(11)
    try:
        for _ in range(3):
            time.sleep(rng.uniform(0.3, 1.0))
            central.proc.kill9()
            time.sleep(rng.uniform(0.1, 0.5))
            central.proc.start()
        acked = traffic.finish()
        wait_until(agent.drained, 60, what="outbox to drain after central restarts")
        _assert_exactly(central, acked)
    finally:
        traffic.stopping.set()
        agent.proc.stop()


def test_centre_down_backlog_grows_then_drains_by_itself(tmp_path, central):
    agent = _agent(tmp_path, central.url, central)
    agent.proc.start()
    try:
        central.proc.stop()
        acked = {}
        for i in range(40):
            body = example_settlement(f"DOWN-{i:04d}")
            status, answer = agent.settle(body)
            assert status == 201, answer  # the cashier is never blocked by the link
            acked[body["his_setl_no"]] = answer
        st = wait_until(
            lambda: (s := agent.status())["central"]["reachable"] is False and s,
            10,
            what="agent to notice the centre is down",
        )
        assert st["outbox"]["pending"] == 40 and st["outbox"]["oldest_age_s"] > 0
        central.proc.start()
        wait_until(agent.drained, 30, what="backlog to drain")
        assert agent.status()["central"]["reachable"] is True
        _assert_exactly(central, acked)
    finally:
        agent.proc.stop()


def test_lost_ack_and_duplicate_delivery_store_once(tmp_path, central):
    link = FaultyLink(central.url).start()
    agent = _agent(tmp_path, link.url, central)
    agent.proc.start()
    try:
        link.set(lose_answers=3, duplicate=3)
        acked = {}
        for i in range(30):
            body = example_settlement(f"LOSS-{i:04d}")
            acked[body["his_setl_no"]] = agent.settle(body)[1]
            time.sleep(0.02)
        wait_until(agent.drained, 30, what="outbox to drain through the faulty link")
        assert link.count("lose_answers") == 3 and link.count("duplicate") == 3
        _assert_exactly(central, acked)
    finally:
        agent.proc.stop()
        link.stop()


def test_tampered_record_in_transit_is_refused_and_recorded(tmp_path, central):
    link = FaultyLink(central.url).start()
    agent = _agent(tmp_path, link.url, central)
    agent.proc.start()
    try:
        link.set(tamper=1)
        acked = {}
        for i in range(10):
            body = example_settlement(f"TAMP-{i:04d}")
            acked[body["his_setl_no"]] = agent.settle(body)[1]
        wait_until(agent.drained, 30, what="outbox to drain after the tampered attempt")
        assert link.count("tamper") == 1
        _assert_exactly(central, acked)  # the retry carried the true bytes; nothing tampered stored
        db = sqlite3.connect(central.home / "central.db")
        events = db.execute("SELECT code FROM security_events").fetchall()
        assert ("chain_broken",) in events or ("signature_invalid",) in events
    finally:
        agent.proc.stop()
        link.stop()


def test_outbox_limit_refuses_with_clear_error_and_loses_nothing(tmp_path, central):
    agent = _agent(tmp_path, central.url, central, outbox_max_records=5)
    agent.proc.start()
    try:
        central.proc.stop()
        acked = {}
        for i in range(5):
            body = example_settlement(f"FULL-{i:04d}")
            status, answer = agent.settle(body)
            assert status == 201
            acked[body["his_setl_no"]] = answer
        status, answer = agent.settle(example_settlement("FULL-0005"))
        assert status == 503 and answer["error"]["code"] == "outbox_full"
        assert "outbox_full" in {a["code"] for a in agent.status()["alarms"]}
        central.proc.start()
        wait_until(agent.drained, 30, what="backlog to drain")
        status, answer = agent.settle(example_settlement("FULL-0005"))
        assert status == 201
        acked["FULL-0005"] = answer
        wait_until(agent.drained, 30, what="outbox to drain")
        _assert_exactly(central, acked)
    finally:
        agent.proc.stop()


def test_record_corrupted_on_agent_disk_is_quarantined_and_the_rest_flows(tmp_path, central):
    agent = _agent(tmp_path, central.url, central)
    agent.proc.start()
    try:
        central.proc.stop()
        acked = {}
        for i in range(10):
            body = example_settlement(f"DISK-{i:04d}")
            acked[body["his_setl_no"]] = agent.settle(body)[1]
        agent.proc.stop()
        db = sqlite3.connect(tmp_path / "agent" / "agent.db")
        record = db.execute("SELECT record FROM outbox WHERE seq=4").fetchone()[0]
        db.execute("UPDATE outbox SET record=? WHERE seq=4", (record[:60] + b"\x00" + record[61:],))
        db.commit()
        db.close()
        agent.proc.start()
        central.proc.start()
        wait_until(agent.drained, 30, what="the rest to flow past the corrupt record")
        st = agent.status()
        assert st["outbox"]["quarantined"] == 1 and st["outbox"]["acked_seq"] == 10
        assert "record_corrupt" in {a["code"] for a in st["alarms"]}
        held = {r["setl_id"] for r in central.settlements()}
        lost_id = acked["DISK-0003"]["setl_id"]
        assert held == {a["setl_id"] for a in acked.values()} - {lost_id}
        today = date.today()  # records are dated by the agent's local clock
        report = central.cli(
            "reconcile", "--hospital", HOSPITAL, "--from", str(today - timedelta(days=2)), "--to", str(today)
        )
        assert "lost to corruption at the agent" in report
    finally:
        agent.proc.stop()
