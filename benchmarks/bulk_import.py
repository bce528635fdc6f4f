"""Bulk import of historical settlements: settlements/s from JSON lines, CSV and Parquet files.

A province has ~200M visits a year; loading the years screening must see is a first-day job whose
duration an operator plans around. Varied settlements (``_common.Bodies``, parsed by the agent's
intake into the records agents sign) are written to one file per format before the clock starts
(JSON lines in the record layout; CSV and Parquet in the flat layout, one row per fee line). The
clock covers ``import_settlements`` from the file's digest to the last checkpoint: reading, the
protocol's validation, ingest's row building, and one write transaction per ``CHUNK`` records
(settlements, their ``hist_lines`` and ``hist_visits`` rows, the checkpoint) into a fresh
``central.db`` (WAL, ``synchronous=FULL``). Rounds alternate the order of the formats; figures are
medians. The headline is the JSON-lines rate; ``province_year_import_s`` extrapolates the slowest
format's rate to 200M settlements on one core (imports of different files run in parallel only as
far as SQLite's one writer allows).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
from _common import Bodies, Failed, emit, median, parse_args

from agent.intake import parse_settlement
from central.intake.bulk_import import FLAT_COLUMNS, import_settlements
from central.intake.hospitals import set_hospital
from central.policy.bundles import Actor
from central.storage.store import Store

PROVINCE_YEAR = 200_000_000


def records(n: int) -> list[dict]:
    bodies = Bodies("IMPORT")
    out = []
    for i in range(n):
        record, _digest = parse_settlement(bodies.body(i), fixmedins_code=bodies.hospital)
        d = msgspec.to_builtins(record)
        d["setl_id"] = f"IMP-{i:09d}"
        d["setl_time"] = f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T10:{i % 60:02d}:00+08:00"
        out.append(d)
    return out


def flat(rec: dict) -> list[dict]:
    top = {k: v for k, v in rec.items() if not isinstance(v, (dict, list))} | rec["psn"] | rec["mdtrt"]
    return [top | line for line in rec["feedetl"]]


def write_files(directory: Path, recs: list[dict]) -> dict[str, Path]:
    paths = {f: directory / f"history.{f}" for f in ("jsonl", "csv", "parquet")}
    with paths["jsonl"].open("w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    rows = [row for r in recs for row in flat(r)]
    with paths["csv"].open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(FLAT_COLUMNS))
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if v is None else v) for k, v in row.items() if k in FLAT_COLUMNS})
    columns = {
        c: pa.array([None if r.get(c) is None else str(r[c]) for r in rows], pa.string())
        for c in FLAT_COLUMNS
    }
    pq.write_table(pa.table(columns), paths["parquet"], row_group_size=50_000)
    return paths


def run_one(directory: Path, path: Path, n: int, hospital: str, label: str) -> float:
    db = directory / f"central-{label}.db"
    with Store(db, create=True) as store:
        set_hospital(store, Actor("bench"), hospital, "2")
        start = time.perf_counter()
        summary = import_settlements(store, path)
        elapsed = time.perf_counter() - start
    if (summary.settlements, summary.rejected, summary.status) != (n, 0, "done"):
        raise Failed(f"{path.name}: {summary}")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return n / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settlements", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = parse_args(ap, settlements=300, rounds=1)
    recs = records(args.settlements)
    hospital = recs[0]["fixmedins_code"]
    rates: dict[str, list[float]] = {"jsonl": [], "csv": [], "parquet": []}
    with tempfile.TemporaryDirectory(prefix="yibao-bench-import-") as tmp:
        directory = Path(tmp)
        paths = write_files(directory, recs)
        sizes = {f: p.stat().st_size for f, p in paths.items()}
        for r in range(args.rounds):
            order = list(rates) if r % 2 == 0 else list(reversed(rates))
            for fmt in order:
                rates[fmt].append(run_one(directory, paths[fmt], args.settlements, hospital, f"{fmt}-{r}"))
    med = {f: median(v) for f, v in rates.items()}
    emit("bulk_import_jsonl_settlements_per_s", med["jsonl"], "per_s", settlements=args.settlements)
    emit("bulk_import_csv_settlements_per_s", med["csv"], "per_s")
    emit("bulk_import_parquet_settlements_per_s", med["parquet"], "per_s")
    emit("province_year_import_s", PROVINCE_YEAR / min(med.values()), "s", settlements=PROVINCE_YEAR)
    for fmt, size in sizes.items():
        emit(f"bulk_import_{fmt}_file_bytes_per_settlement", size / args.settlements, "bytes")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as exc:
        print(f"bulk_import: {exc}", file=sys.stderr)
        sys.exit(1)
