"""``yibao-sim fleet``: several lightweight agents enrol against a real centre and follow its policy."""

from __future__ import annotations

import json
import subprocess
import sys

from .harness import BIN, Central

HOSPITAL = "H37021100001"


def test_fleet_agents_enrol_apply_and_report(tmp_path):
    central = Central(tmp_path / "central")
    central.proc.start()
    try:
        central.cli("blacklist", "add", "--type", "person", "--id", "370200199001011234",
                    "--reason", "deceased", "--area", "370200")  # fmt: skip
        tokens = tmp_path / "tokens"
        tokens.write_text(central.cli("enroll-token", "--hospital", HOSPITAL, "--count", "3"))
        out = subprocess.run(
            [str(BIN / "yibao-sim"), "fleet", "--central", central.url, "--tokens", str(tokens),
             "--hospital", HOSPITAL, "--home", str(tmp_path / "fleet"), "--duration", "4",
             "--ca-hash", central.ca_hash],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "enrolled 3 agents" in out.stderr
        assert "blacklist seq held: min 1, max 1" in out.stderr
        rows = [json.loads(x) for x in central.cli("agents", "list", "--json").splitlines() if x.strip()]
        assert len(rows) == 3
        assert all((r["policy"] or {}).get("versions", {}).get("blacklist") == 1 for r in rows)
        assert all(r["behind"].get("blacklist") == 0 for r in rows)
    finally:
        central.proc.stop()


def test_fleet_without_tokens_says_how_to_make_them(tmp_path):
    empty = tmp_path / "tokens"
    empty.write_text("")
    out = subprocess.run(
        [sys.executable, "-m", "simulators.cli", "fleet", "--central", "http://127.0.0.1:9",
         "--tokens", str(empty)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "enroll-token --count" in out.stderr
