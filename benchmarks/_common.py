"""Shared bits of the benchmarks: JSON-lines output and the example settlement."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import example_settlement  # noqa: E402

__all__ = ["Bodies", "Failed", "emit", "example_settlement", "median", "parse_args"]


class Failed(Exception):
    """A benchmark's own check failed: its figures are not to be trusted."""


def emit(name: str, value: float, unit: str, ratio: float | None = None, **extra: object) -> None:
    """One JSON object per line; the headline figure is printed first by each benchmark."""
    row: dict[str, object] = {"name": name, "value": round(value, 3), "unit": unit}
    if ratio is not None:
        row["ratio"] = round(ratio, 3)
    row.update(extra)
    print(json.dumps(row), flush=True)


def parse_args(ap: argparse.ArgumentParser, **smoke: object) -> argparse.Namespace:
    """Parse the command line; ``--smoke`` swaps the sizes for tiny ones.

    Every benchmark runs in ``make test`` at its smoke size (``tests/benchmarks``), so one
    that breaks fails CI instead of rotting until someone wants its figures. Sizes given on
    the command line win over the smoke sizes.
    """
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks the benchmark runs")
    args = ap.parse_args()
    if args.smoke:
        for name, value in smoke.items():
            if getattr(args, name) == ap.get_default(name):
                setattr(args, name, value)
    return args


def median(values: list[float]) -> float:
    return statistics.median(values)


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


class Bodies:
    """Varied, valid HIS settlement bodies: people, visits, quantities, totals and splits differ."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.template = example_settlement()
        self.hospital = self.template["fixmedins_code"]

    def body(self, i: int) -> bytes:
        d = self.template  # mutated and serialised at once; never shared across an await
        d["his_setl_no"] = f"HIS-{self.tag}-{i:08d}"
        d["psn"]["psn_no"] = f"3702{i % 50_000:016d}"
        d["mdtrt"]["mdtrt_id"] = f"MDT-{self.tag}-{i:08d}"
        d["mdtrt"]["med_type"] = ("11", "14", "41")[i % 3]
        first, second = d["feedetl"][0], d["feedetl"][1]
        cnt1, cnt2 = 1 + i % 4, 1 + (i // 4) % 2
        line1, line2 = cnt1 * 1960, cnt2 * 1200
        first["cnt"], first["det_item_fee_sumamt"] = str(cnt1), _yuan(line1)
        second["cnt"], second["det_item_fee_sumamt"] = str(cnt2), _yuan(line2)
        total = line1 + line2
        d["medfee_sumamt"] = _yuan(total)
        if i % 3:
            fund = total * 6 // 10
            acct = (total - fund) // 2
            d["fund_pay_sumamt"], d["acct_pay"] = _yuan(fund), _yuan(acct)
            d["psn_cash_pay"] = _yuan(total - fund - acct)
        else:
            for name in ("fund_pay_sumamt", "acct_pay", "psn_cash_pay"):
                d.pop(name, None)
        return json.dumps(d).encode()
