"""The yibao-central command: real subprocesses where stdout matters, in-process elsewhere."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from central.cli import main
from central.intake.enrol import enrol_agent
from central.storage.store import Store
from protocol.batch import KeyPair
from protocol.wire import EnrollRequest

from .conftest import HOSPITAL

BIN = Path(sys.executable).parent / "yibao-central"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=60, env=env)


def test_enroll_token_prints_only_the_token(tmp_path: Path) -> None:
    home = tmp_path / "home"
    admin = str(tmp_path / "admin.token")
    assert _run("--home", str(home), "init", "--admin-token-file", admin).returncode == 0
    out = _run("--home", str(home), "--token-file", admin, "enroll-token", "--hospital", HOSPITAL,
               "--ttl-hours", "2")  # fmt: skip
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and len(lines[0]) >= 32 and " " not in lines[0]
    with Store(home / "central.db") as store:
        key = KeyPair.generate()
        request = EnrollRequest(token=lines[0], fixmedins_code=HOSPITAL, public_key=key.public_bytes.hex())
        response, created = enrol_agent(store, request)
    assert created and response.agent_id == f"{HOSPITAL}-01"


def test_home_from_the_environment_and_a_clear_error_without_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "YIBAO_HOME"}
    out = _run("init", env=env)
    assert out.returncode == 1 and "--home" in out.stderr and "YIBAO_HOME" in out.stderr
    env["YIBAO_HOME"] = str(tmp_path / "envhome")
    assert _run("init", env=env).returncode == 0
    assert (tmp_path / "envhome" / "central.db").exists()


def test_uninitialised_home_says_to_run_init(tmp_path: Path, capsys) -> None:
    assert main(["--home", str(tmp_path / "none"), "agents", "list"]) == 1
    assert "init" in capsys.readouterr().err


def test_agents_list_and_revoke(config, store, chain, capsys, act_as) -> None:
    home = ["--home", str(config.home)]
    act_as("policy-only", "policy")
    assert main([*home, "agents", "revoke", chain.agent_id]) == 4  # an admin's act
    assert "only a admin operator" in capsys.readouterr().err
    act_as()
    assert main([*home, "agents", "list", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["agent_id"] == chain.agent_id and row["revoked"] is False
    assert main([*home, "agents", "revoke", chain.agent_id]) == 0
    assert main([*home, "agents", "list"]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main([*home, "agents", "revoke", "nobody"]) == 1
    assert "no agent 'nobody'" in capsys.readouterr().err


def test_bad_hospital_code_is_refused(config, capsys, act_as) -> None:
    act_as()
    assert main(["--home", str(config.home), "enroll-token", "--hospital", "bad code"]) == 1
    assert "hospital code" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_health_and_stops_cleanly_on_sigterm(config) -> None:
    port = _free_port()
    ca = ssl.create_default_context(cafile=str(config.tls_dir / "trust.pem"))  # serve is HTTPS by default
    proc = subprocess.Popen(
        [str(BIN), "--home", str(config.home), "serve", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                health = f"https://127.0.0.1:{port}/v1/health"
                with urllib.request.urlopen(health, timeout=2, context=ca) as resp:
                    assert json.loads(resp.read()) == {"ok": True}
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (
                    proc.stderr.read() if proc.stderr else ""
                )
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_agents_list_shows_what_each_agents_signed_heartbeat_says(config, store, chain, capsys) -> None:
    from datetime import UTC, datetime, timedelta

    from central.intake.heartbeats import record_heartbeat
    from central.intake.ingest import Ingestor

    from .test_heartbeats import beat

    home = ["--home", str(config.home)]
    assert main([*home, "agents", "list"]) == 0
    assert "heartbeat: none yet" in capsys.readouterr().out
    chain.extend(5)
    Ingestor(store).ingest(chain.batch(1, 3))  # the centre holds 3; the agent has settled 5
    record_heartbeat(store, beat(chain, acked=3, at=datetime.now(UTC)))
    assert main([*home, "agents", "list"]) == 0
    assert "behind by 2" in capsys.readouterr().out
    Ingestor(store).ingest(chain.batch(4, 5))
    record_heartbeat(store, beat(chain, acked=5, at=datetime.now(UTC)))
    assert main([*home, "agents", "list"]) == 0
    assert "caught up" in capsys.readouterr().out
    record_heartbeat(store, beat(chain, acked=5, at=datetime.now(UTC) + timedelta(seconds=1)))
    store.write(lambda c: c.execute("UPDATE agent_heartbeats SET received_at = '2020-01-01T00:00:00+00:00'"))
    assert main([*home, "agents", "list"]) == 0
    assert "heartbeat: SILENT since" in capsys.readouterr().out
