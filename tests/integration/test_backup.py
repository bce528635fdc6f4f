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

from .harness import BIN, Agent, Central, Proc, http, wait_until

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


def test_agent_restored_from_an_older_backup_takes_back_its_records_before_settling(tmp_path) -> None:
    """The agent's disk is lost after it went on settling past its last backup: restored, it refuses to
    settle (503 resync_pending) until the centre gave back its own records, then goes on from the head
    the centre holds — no fork, nothing twice, retries of lost-disk settlements answered as held."""
    central = Central(tmp_path / "central")  # TLS: the records come back over the agent's mTLS link
    central.proc.start()
    agent = Agent(tmp_path / "agent", central.url, HOSPITAL, central.enroll_token(HOSPITAL))
    agent.proc.start()
    made: dict[str, str] = {}
    try:
        for i in range(5):
            status, answer = agent.settle(example_settlement(f"OLD-{i}"))
            assert status == 201, answer
            made[f"OLD-{i}"] = answer["setl_id"]
        archive = tmp_path / "agent.tar.gz"
        assert _run("yibao-agent", "--home", str(agent.home), "backup", str(archive)).returncode == 0
        for i in range(6):
            status, answer = agent.settle(example_settlement(f"NEW-{i}"))
            assert status == 201, answer
            made[f"NEW-{i}"] = answer["setl_id"]
        reversal = {"reason": "patient left", "opter": "C0007"}
        reverse = f"{agent.url}/v1/settlements/{made['NEW-0']}/reversal"
        status, answer = http("POST", reverse, reversal, agent.token)
        assert status == 201, answer
        wait_until(agent.drained, 30, what="everything to upload before the disk is lost")
        last_seq = agent.status()["outbox"]["last_seq"]
        assert last_seq == 12
    finally:
        agent.proc.stop()
    central.proc.stop()  # the centre is down too while the agent comes back: it must wait, not fork

    restored = tmp_path / "agent-restored"
    out = _run("yibao-agent", "--home", str(restored), "restore", str(archive))
    assert out.returncode == 0 and "resync_pending" in out.stdout, out.stderr
    agent.home = restored
    agent.proc = Proc(
        "agent",
        [str(BIN / "yibao-agent"), "--home", str(restored), "serve", "--listen", f"127.0.0.1:{agent.port}"],
        restored / "agent.log",
        agent.url + "/v1/health",
    ).start()
    try:
        status, answer = agent.settle(example_settlement("WHILE-DOWN"))
        assert status == 503 and answer["error"]["code"] == "resync_pending", answer
        assert agent.status()["outbox"]["last_seq"] == 5  # the backup's head, nothing appended

        central.proc.start()
        wait_until(lambda: agent.settle(example_settlement("WHILE-DOWN"))[0] == 201, 60,
                   what="the restored agent to take back its records and settle again")  # fmt: skip
        status, answer = agent.settle(example_settlement("WHILE-DOWN"))
        assert status == 200 and answer["seq"] == last_seq + 1  # the chain goes on after the centre's head
        made["WHILE-DOWN"] = answer["setl_id"]
        assert not (restored / "restored.json").exists()

        # A HIS retrying a settlement made after the backup gets the first answer, not a second one.
        status, answer = agent.settle(example_settlement("NEW-3"))
        assert status == 200 and answer["setl_id"] == made["NEW-3"], answer
        # The reversal made after the backup is known again: reversing twice answers the first.
        reverse = f"{agent.url}/v1/settlements/{made['NEW-0']}/reversal"
        status, answer = http("POST", reverse, reversal, agent.token)
        assert status == 200 and answer["seq"] == 12, answer

        wait_until(agent.drained, 30, what="the new settlement to upload")
        held = central.settlements()
        ids = Counter(r["setl_id"] for r in held)
        assert max(ids.values()) == 1 and set(made.values()) <= set(ids)
        seqs = sorted(r["seq"] for r in held if r["setl_id"] in made.values())
        assert seqs == [*range(1, 12), 13]  # 12 is the reversal
        assert not {"central_ahead", "chain_diverged"} & {a["code"] for a in agent.status()["alarms"]}
    finally:
        agent.proc.stop()
        central.proc.stop()
