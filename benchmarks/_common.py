"""Shared bits of the benchmarks: JSON-lines output and the example settlement."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import example_settlement  # noqa: E402

__all__ = ["emit", "example_settlement", "median"]


def emit(name: str, value: float, unit: str, ratio: float | None = None, **extra: object) -> None:
    """One JSON object per line; the headline figure is printed first by each benchmark."""
    row: dict[str, object] = {"name": name, "value": round(value, 3), "unit": unit}
    if ratio is not None:
        row["ratio"] = round(ratio, 3)
    row.update(extra)
    print(json.dumps(row), flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)
