"""``make demo`` in miniature: the demo exits 0 only when everything made reached the centre."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_end_to_end_and_exits_zero(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulators.demo",
            "--duration",
            "3",
            "--rate",
            "15",
            "--home",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "every settlement made reached the centre" in out.stdout
    # Verified, each agent's heartbeat shows the centre caught up; today has not ended.
    assert "complete up to " in out.stdout and "behind by" not in out.stdout
    assert "NOT provably complete: the period has not ended yet" in out.stdout
    assert "missing 0; held twice 0" in out.stdout
    # The desk: a card read through the demo's own pcscd (none may be running when this test runs:
    # the card tests' pcscd is per module) and an e-voucher, each settled with its identification.
    assert "card          authenticated" in out.stdout, out.stdout[-3000:]
    assert "4 card APDUs" in out.stdout
    assert "same QR again refused: evoucher_replayed" in out.stdout
    assert "settlements   2 naming" in out.stdout
    # The operator's path: a blacklist entry reaches the agent through the signed bundles and back.
    assert "the agent refused the next settlement" in out.stdout, out.stdout[-3000:]
    assert "the agent settles for the person again" in out.stdout
