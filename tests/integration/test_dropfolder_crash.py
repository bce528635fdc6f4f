"""The drop folder with a real ``yibao-agent serve``: kill -9 mid-flight, SIGTERM, a 5,000-file burst.

The final check is always the same: every file dropped is settled exactly once in the outbox (and
at the centre), its result is in ``results/`` once and names the outbox's own ``setl_id``, and its
input is in ``done/`` once.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import example_settlement

from .harness import Agent, Central, wait_until

HOSPITAL = "H37021100001"
WORKERS = 8


@pytest.fixture
def central(tmp_path):
    c = Central(tmp_path / "central")
    c.proc.start()
    yield c
    c.proc.stop()


def _agent(tmp_path: Path, central: Central, **settings) -> Agent:
    settings = {
        "dropfolder": "drop",
        "dropfolder_stable_ms": 100,
        "dropfolder_poll_s": 0.5,
        "dropfolder_workers": WORKERS,
        **settings,
    }
    return Agent(tmp_path / "agent", central.url, HOSPITAL, central.enroll_token(HOSPITAL), **settings)


def _drop_files(root: Path, n: int, prefix: str) -> list[str]:
    """The HIS: each file written under a .tmp name, then renamed into inbox/ (the contract)."""
    (root / "inbox").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"{prefix}-{i:05d}.json"
        body = example_settlement(f"{prefix}-{i:05d}")
        tmp = root / "inbox" / (name + ".tmp")
        tmp.write_text(json.dumps(body))
        os.rename(tmp, root / "inbox" / name)
        names.append(name)
    return names


def _count(root: Path, d: str) -> int:
    try:
        return sum(1 for n in os.listdir(root / d) if not n.startswith("."))
    except FileNotFoundError:
        return 0


def _outbox_settlements(agent: Agent) -> dict[str, str]:
    with sqlite3.connect(agent.home / "agent.db") as db:
        return dict(db.execute("SELECT his_setl_no, setl_id FROM settlements"))


def _assert_exactly_once(agent: Agent, root: Path, names: list[str]) -> dict[str, dict]:
    """Each file: settled once, one result naming the outbox's setl_id, input once in done/."""
    assert _count(root, "inbox") == 0 and _count(root, "processing") == 0 and _count(root, "rejected") == 0
    assert sorted(os.listdir(root / "done")) == sorted(names), "done/ differs from the files dropped"
    held = _outbox_settlements(agent)
    assert len(held) == len(names), f"outbox holds {len(held)} settlements for {len(names)} files"
    results = {}
    for name in names:
        answer = json.loads((root / "results" / name).read_text())
        stem = name.removesuffix(".json")
        assert answer["setl_id"] == held[stem], f"{name}: result names another settlement"
        results[name] = answer
    assert sorted(n for n in os.listdir(root / "results") if not n.startswith(".")) == sorted(names)
    assert len({a["setl_id"] for a in results.values()}) == len(names)
    return results


def test_kill9_while_files_are_in_flight_loses_and_duplicates_nothing(tmp_path, central):
    agent = _agent(tmp_path, central)
    root = agent.home / "drop"
    agent.proc.start()
    names = _drop_files(root, 600, "K")
    in_flight_at_kill = []
    for threshold in (60, 250, 450):  # three kills at different points of the run
        wait_until(lambda t=threshold: _count(root, "done") >= t, 60, 0.005, f"{threshold} files done")
        in_flight_at_kill.append(_count(root, "processing"))
        agent.proc.kill9()
        agent.proc.start()
    wait_until(lambda: _count(root, "done") == len(names), 120, 0.1, "every file done after the kills")
    results = _assert_exactly_once(agent, root, names)
    resumed = sum(1 for a in results.values() if a["duplicate"])
    print(f"in processing/ at each kill: {in_flight_at_kill}; answered from the outbox on resume: {resumed}")
    assert any(in_flight_at_kill), "no kill hit a file in flight: the test proved nothing"
    # And the centre holds each exactly once.
    wait_until(agent.drained, 60, what="outbox drained")
    held = central.settlements()
    assert len(held) == len(names) and len({r["setl_id"] for r in held}) == len(names)
    agent.proc.stop()


def test_sigterm_finishes_the_files_in_hand_and_the_rest_waits(tmp_path, central):
    agent = _agent(tmp_path, central)
    root = agent.home / "drop"
    agent.proc.start()
    names = _drop_files(root, 400, "T")
    wait_until(lambda: _count(root, "done") >= 50, 60, 0.005, "50 files done")
    agent.proc.proc.send_signal(signal.SIGTERM)
    assert agent.proc.proc.wait(15) == 0
    assert _count(root, "processing") == 0, "a clean stop left a file half-settled"
    assert _count(root, "done") + _count(root, "inbox") == len(names)
    agent.proc.start()
    wait_until(lambda: _count(root, "done") == len(names), 120, 0.1, "every file done after restart")
    _assert_exactly_once(agent, root, names)
    agent.proc.stop()


def test_burst_of_5000_files_all_settle_in_order_of_arrival(tmp_path, central):
    """Every file of the burst settled exactly once, in about the order it arrived. How fast is
    measured by ``benchmarks/dropfolder.py``; the wait here only stops a test that would hang."""
    n = 5000
    agent = _agent(tmp_path, central)
    root = agent.home / "drop"
    agent.proc.start()
    names = _drop_files(root, n, "B")
    wait_until(lambda: _count(root, "done") == n, 180, 0.2, f"{n} files done")
    results = _assert_exactly_once(agent, root, names)
    seqs = [results[name]["seq"] for name in names]  # names are in the order they were dropped
    drift = max(abs(seq - (i + 1)) for i, seq in enumerate(seqs))
    assert drift <= 4 * WORKERS, f"files were not taken in order of arrival (distance {drift})"
    shown = agent.status()["dropfolder"]  # what the hospital's IT sees in GET /v1/status
    assert (shown["settled"], shown["inbox"], shown["processing"], shown["rejected_files"]) == (n, 0, 0, 0)
    (root / "inbox" / "broken.json").write_text("{not json")
    wait_until(lambda: agent.status()["dropfolder"]["rejected_files"] == 1, 30, 0.2, "broken file refused")
    agent.proc.stop()
