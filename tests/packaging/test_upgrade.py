"""Upgrade from the previous tagged version: its data, written by its own code, taken over by this one.

The old version is the source of the tag ``v0.1.0`` (issues 2-7: the spine, cards, bundles, rules,
monitoring, the hospital interface), exported from this repository with ``git archive`` and run from
that tree with this virtualenv's libraries: a centre and an agent as an old installation ran them, a
blacklist published with the old CLI, settlements uploaded and three still waiting in the outbox when
both stop. Then this version starts on the same homes, as an upgraded package would: ``init`` again on
the centre (idempotent: it migrates the database and adds what the new version needs, the TLS CA among
it), both servers, and everything must be there exactly once: the uploaded settlements, the waiting
ones now uploaded, the chain whole, the blacklist still enforced, the audit trail kept.

Homes from before TLS keep their plain-HTTP link only with ``insecure_dev`` (set here by hand, as the
upgrade notes say) until the agent is enrolled again over TLS.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.conftest import example_settlement
from tests.integration.harness import BIN, Proc, free_port, http, wait_until

ROOT = Path(__file__).resolve().parents[2]
PREVIOUS_TAG = "v0.1.0"
#: The tag's commit, for a clone that did not fetch tags (any clone of main's history has it).
PREVIOUS_COMMIT = "c7d33c0"
HOSPITAL = "H37021100001"
BLACKLISTED = "37020000000009999999"


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("old-version")
    for ref in (PREVIOUS_TAG, PREVIOUS_COMMIT):
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True)
        if archive.returncode == 0:
            subprocess.run(["tar", "x", "-C", str(tree)], input=archive.stdout, check=True)
            # A script in the tree puts the tree first on sys.path (before this checkout or the
            # virtualenv's editable install of it): `old.py central ARGS` runs the old central.cli.
            (tree / "old.py").write_text(
                "import runpy, sys\n"
                "program = sys.argv.pop(1)\n"
                "sys.argv[0] = program\n"
                "runpy.run_module(program + '.cli', run_name='__main__', alter_sys=True)\n"
            )
            return tree
    pytest.fail(
        f"cannot export the previous version ({PREVIOUS_TAG} / {PREVIOUS_COMMIT}) from {ROOT}: the upgrade "
        f"test needs a git clone with main's history (git archive said: {archive.stderr.decode()[:200]})"
    )


def _old(tree: Path, program: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(tree / "old.py"), program, *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"old {program} {' '.join(args)}: {out.stderr}"
    return out.stdout


def _new(program: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / program), *args], capture_output=True, text=True, timeout=120)


def _old_proc(tree: Path, name: str, args: list[str], log: Path, health_url: str) -> Proc:
    """A server of the old version, run from the exported tree."""
    return Proc(name, [sys.executable, str(tree / "old.py"), *args], log, health_url)


def test_the_previous_versions_homes_are_taken_over_with_nothing_lost(old_tree: Path, tmp_path: Path) -> None:
    central_home, agent_home = tmp_path / "central", tmp_path / "agent"
    c_port, a_port = free_port(), free_port()
    central_url, agent_url = f"http://127.0.0.1:{c_port}", f"http://127.0.0.1:{a_port}"

    # --- the old installation ---------------------------------------------------------------------
    _old(old_tree, "central", "--home", str(central_home), "init", "--area", "370200")
    token = _old(old_tree, "central", "--home", str(central_home), "enroll-token", "--hospital", HOSPITAL)
    old_central = _old_proc(
        old_tree, "old central", ["central", "--home", str(central_home), "serve", "--listen",
                                  f"127.0.0.1:{c_port}", "--policy-poll-s", "0.2"],
        tmp_path / "old-central.log", central_url + "/v1/health",
    ).start()  # fmt: skip
    _old(old_tree, "agent", "--home", str(agent_home), "init", "--central", central_url, "--token",
         token.strip(), "--hospital", HOSPITAL)  # fmt: skip
    config = json.loads((agent_home / "agent.json").read_text())
    config.update({"backoff_initial_s": 0.05, "backoff_max_s": 0.5, "idle_poll_s": 0.2})
    (agent_home / "agent.json").write_text(json.dumps(config))
    his_token = (agent_home / "his.token").read_text().strip()
    old_agent = _old_proc(
        old_tree, "old agent", ["agent", "--home", str(agent_home), "serve", "--listen",
                                f"127.0.0.1:{a_port}"],
        tmp_path / "old-agent.log", agent_url + "/v1/health",
    ).start()  # fmt: skip
    made: dict[str, str] = {}  # his_setl_no -> setl_id of every settlement the old agent took
    try:
        _old(old_tree, "central", "--home", str(central_home), "blacklist", "add", "--type", "person",
             "--id", BLACKLISTED, "--reason", "fraud confirmed", "--operator", "alice")  # fmt: skip
        attempts = iter(range(1000))

        def refused_now() -> bool:
            # A new his_setl_no each time: one settled before the bundle arrived is answered as held.
            body = example_settlement(f"OLD-BL-{next(attempts)}")
            body["psn"]["psn_no"] = BLACKLISTED
            status, answer = http("POST", agent_url + "/v1/settlements", body, his_token)
            if status == 201:
                made[body["his_setl_no"]] = answer["setl_id"]
            return status == 403

        wait_until(refused_now, 30, what="the old agent to enforce the old centre's blacklist")
        for i in range(5):
            body = example_settlement(f"OLD-{i}")
            status, answer = http("POST", agent_url + "/v1/settlements", body, his_token)
            assert status == 201, answer
            made[f"OLD-{i}"] = answer["setl_id"]
        wait_until(
            lambda: http("GET", agent_url + "/v1/status", token=his_token)[1]["outbox"]["pending"] == 0,
            30, what="the old agent to upload",
        )  # fmt: skip
        old_central.stop()  # the centre goes down for its upgrade first; the desk keeps settling
        for i in range(3):
            body = example_settlement(f"WAIT-{i}")
            status, answer = http("POST", agent_url + "/v1/settlements", body, his_token)
            assert status == 201, answer
            made[f"WAIT-{i}"] = answer["setl_id"]
        pending = http("GET", agent_url + "/v1/status", token=his_token)[1]["outbox"]["pending"]
        assert pending == 3
    finally:
        old_agent.stop()
        old_central.stop()

    # --- this version on the same homes -----------------------------------------------------------
    init = _new("yibao-central", "--home", str(central_home), "init")
    assert init.returncode == 0, init.stderr
    config = json.loads((agent_home / "agent.json").read_text())
    config.update({"insecure_dev": True, "heartbeat_s": 0.5})  # enrolled before TLS: plain HTTP only so
    (agent_home / "agent.json").write_text(json.dumps(config))
    central = Proc(
        "central", [str(BIN / "yibao-central"), "--home", str(central_home), "serve", "--listen",
                    f"127.0.0.1:{c_port}", "--insecure-dev"],
        tmp_path / "central.log", central_url + "/v1/health",
    ).start()  # fmt: skip
    agent = Proc(
        "agent", [str(BIN / "yibao-agent"), "--home", str(agent_home), "serve", "--listen",
                  f"127.0.0.1:{a_port}"],
        tmp_path / "agent.log", agent_url + "/v1/health",
    ).start()  # fmt: skip
    try:
        def held() -> list[dict]:
            out = _new("yibao-central", "--home", str(central_home), "export", "settlements")
            assert out.returncode == 0, out.stderr
            return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

        wait_until(lambda: len(held()) >= len(made), 60, what="the waiting settlements to upload")
        rows = held()
        ids = Counter(r["setl_id"] for r in rows)
        assert set(ids) == set(made.values()) and max(ids.values()) == 1  # nothing lost, nothing twice
        assert sorted(r["seq"] for r in rows) == list(range(1, len(made) + 1))

        today = datetime.now(timezone(timedelta(hours=8))).date().isoformat()  # periods are +08:00
        reconcile = _new("yibao-central", "--home", str(central_home), "reconcile", "--hospital", HOSPITAL,
                         "--from", today, "--to", today, "--json")  # fmt: skip
        assert reconcile.returncode in (0, 3), reconcile.stderr  # 3: the period is not over yet
        assert reconcile.returncode != 2, reconcile.stdout  # every chain whole and verified

        refused = example_settlement("NEW-BL")
        refused["psn"]["psn_no"] = BLACKLISTED
        status, answer = http("POST", agent_url + "/v1/settlements", refused, his_token)
        assert status == 403 and answer["error"]["code"] == "blacklisted"  # the old policy.db migrated
        status, answer = http("POST", agent_url + "/v1/settlements", example_settlement("NEW-0"), his_token)
        # the chain goes on where it stopped: seq len+1 is the blacklist_applied card log this version
        # chains at start for the blacklist bundle the old policy.db holds (issue 18), then the settlement
        assert status == 201 and answer["seq"] == len(made) + 2

        audit = _new("yibao-central", "--home", str(central_home), "audit", "--json")
        assert audit.returncode == 0, audit.stderr
        actions = [json.loads(line)["action"] for line in audit.stdout.splitlines() if line.strip()]
        assert "blacklist.add" in actions
    finally:
        agent.stop()
        central.stop()
