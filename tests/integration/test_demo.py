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
    assert "RESULT: complete and verified" in out.stdout
    assert "missing 0; held twice 0" in out.stdout
