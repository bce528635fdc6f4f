"""Every benchmark runs at its smoke size, so one that breaks fails CI instead of rotting.

The figures at this size mean nothing; what is checked is the contract of ``make bench``: the
benchmark exits 0 and prints one JSON object per line, headline first, each with a name, a
numeric value and one of the allowed units (and a numeric ratio where it gives one).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
UNITS = {"s", "ms", "us", "per_s", "bytes", "count"}


def parse_lines(stdout: str) -> list[dict[str, object]]:
    """The benchmark's rows; anything that is not a well-formed row is a failure with the line."""
    rows = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        assert isinstance(row, dict), line
        assert isinstance(row.get("name"), str) and row["name"], line
        value = row.get("value")
        assert isinstance(value, int | float) and not isinstance(value, bool), line
        assert math.isfinite(value), line
        assert row.get("unit") in UNITS, line
        if "ratio" in row:
            assert isinstance(row["ratio"], int | float) and math.isfinite(row["ratio"]), line
        rows.append(row)
    return rows


def test_every_benchmark_is_covered() -> None:
    assert len(BENCHMARKS) >= 10, [p.name for p in BENCHMARKS]


@pytest.mark.parametrize("bench", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_benchmark_runs_at_smoke_size(bench: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(bench), "--smoke"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, f"{bench.name} --smoke exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    rows = parse_lines(proc.stdout)
    assert rows, f"{bench.name} --smoke printed no figures:\n{proc.stderr[-2000:]}"
    names = [r["name"] for r in rows]
    assert len(names) == len(set(names)), f"{bench.name} printed a figure twice: {names}"


def test_parse_lines_refuses_a_bad_unit() -> None:
    with pytest.raises(AssertionError):
        parse_lines('{"name": "x", "value": 1, "unit": "seconds"}')
    with pytest.raises(json.JSONDecodeError):
        parse_lines("progress 50%")
    assert parse_lines('{"name": "x", "value": 1.5, "unit": "ms", "ratio": 0.5}\n') == [
        {"name": "x", "value": 1.5, "unit": "ms", "ratio": 0.5}
    ]
