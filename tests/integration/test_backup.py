"""Backup while running, restore, and nothing lost: a real centre backed up under upload traffic, restored
after it had taken more, and an idle agent that learns from its heartbeat that the centre holds less
and resends (``protocol.backup``, ``agent.heartbeat``)."""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter

import pytest

from protocol.backup import backup_home, restore_home
from tests.conftest import example_settlement

from .harness import BIN, Agent, Central, Proc, wait_until

HOSPITAL = "H37021100001"


@pytest.fixture
def central(tmp_path):
    c = Central(tmp_path / "central", insecure_dev=True)
    c.proc.start()
    yield c
    c.proc.stop()


def test_centre_restored_from_a_backup_gets_back_what_it_lost_from_the_agent(tmp_path, central) -> None:
    agent = Agent(tmp_path / "agent", central.url, HOSPITAL, central.enroll_token(HOSPITAL), heartbeat_s=0.3)
    agent.proc.start()
    made: dict[str, str] = {}

    def settle(prefix: str, count: int) -> None:
        for i in range(count):
            status, answer = agent.settle(example_settlement(f"{prefix}-{i}"))
            assert status == 201, answer
            made[f"{prefix}-{i}"] = answer["setl_id"]

    try:
        settle("BEFORE", 10)
        wait_until(agent.drained, 30, what="the first settlements to upload")
        during = threading.Thread(target=settle, args=("DURING", 20))
        during.start()
        backup_home(central.home, tmp_path / "central.tar.gz", kind="central")  # the centre is serving
        during.join(60)
        settle("AFTER", 5)  # these the backup cannot hold
        wait_until(agent.drained, 30, what="everything to upload before the loss")
        held_before = len(central.settlements())
        assert held_before == 35

        central.proc.stop()  # the centre's disk is lost; a new machine gets the backup
        restored = tmp_path / "restored"
        restore_home(tmp_path / "central.tar.gz", restored, kind="central")
        central.home = restored
        lost = held_before - len(central.settlements())  # read from the restored home, not yet served
        assert lost >= 5  # the restored centre lacks at least the last five
        listen = central.url.removeprefix("http://")
        central.proc = Proc(
            "central",
            [
                str(BIN / "yibao-central"),
                "--home",
                str(restored),
                "serve",
                "--listen",
                listen,
                "--insecure-dev",
            ],
            restored / "central.log",
            central.url + "/v1/health",
        ).start()

        # The idle agent has nothing pending; its heartbeat's answer tells it the centre is behind.
        wait_until(lambda: len(central.settlements()) == 35, 60, what="the agent to resend what was lost")
        held = central.settlements()
        ids = Counter(r["setl_id"] for r in held)
        assert set(ids) == set(made.values()) and max(ids.values()) == 1
        assert sorted(r["seq"] for r in held) == list(range(1, 36))
        assert "central_behind" in {a["code"] for a in agent.status()["alarms"]}
    finally:
        agent.proc.stop()


def _run(program: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / program), *args], capture_output=True, text=True, timeout=120)


def test_agent_backup_and_restore_through_the_cli_while_it_serves(tmp_path, central) -> None:
    agent = Agent(tmp_path / "agent", central.url, HOSPITAL, central.enroll_token(HOSPITAL))
    agent.proc.start()
    try:
        for i in range(5):
            assert agent.settle(example_settlement(f"CLI-{i}"))[0] == 201
        before = agent.status()["outbox"]
        archive = tmp_path / "agent.tar.gz"
        out = _run("yibao-agent", "--home", str(agent.home), "backup", str(archive))
        assert out.returncode == 0, out.stderr
        assert "databases" in out.stdout and archive.stat().st_mode & 0o777 == 0o600
    finally:
        agent.proc.stop()

    restored = tmp_path / "agent-restored"
    out = _run("yibao-agent", "--home", str(restored), "restore", str(archive))
    assert out.returncode == 0, out.stderr
    status = _run("yibao-agent", "--home", str(restored), "status")
    assert status.returncode == 0, status.stderr
    outbox = json.loads(status.stdout)["outbox"]
    assert outbox["last_seq"] == before["last_seq"] == 5
    assert (restored / "agent.key").read_bytes() == (agent.home / "agent.key").read_bytes()

    again = _run("yibao-agent", "--home", str(restored), "restore", str(archive))
    assert again.returncode == 1 and "not empty" in again.stderr  # never over a live home
    wrong = _run("yibao-central", "--home", str(tmp_path / "c2"), "restore", str(archive))
    assert wrong.returncode == 1 and "yibao-agent restore" in wrong.stderr
    assert not (tmp_path / "c2").exists()


def test_centre_backup_through_the_cli(tmp_path, central) -> None:
    archive = tmp_path / "c.tar.gz"
    out = _run("yibao-central", "--home", str(central.home), "backup", str(archive))
    assert out.returncode == 0, out.stderr
    restored = tmp_path / "c-restored"
    assert _run("yibao-central", "--home", str(restored), "restore", str(archive)).returncode == 0
    assert (restored / "central.db").exists()
    missing = _run("yibao-central", "--home", str(tmp_path / "x"), "restore", str(tmp_path / "nope.tar.gz"))
    assert missing.returncode == 1 and "cannot read the backup" in missing.stderr
