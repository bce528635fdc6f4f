"""The full screen on SQLite, PostgreSQL, DuckDB and Spark local side by side: seconds, visits/s per core,
province-year.

Data: ``benchmarks/screen.py``'s generated centre (cached in ``$TMPDIR/yibao-bench-screen``): by
default 1,000,000 visits of 100,000 persons at 200 hospitals over 2025, ~10 lines each. Rules: that
benchmark's (``docs/samples/rules.json`` and one rule per centre template) plus one rule each of
templates 19 (``unreasonable_admission``) and 20 (``repeated_treatment``): every SQL template.

Each engine screens a fresh copy of the database through its own full-screen path: SQLite with
``screening.screen`` (chunks, ``--workers`` processes), PostgreSQL the same on a centre whose store is a
scratch PostgreSQL server (``simulators.pgserver``; the tables copied in with ``COPY`` first, not timed;
``central.monitoring.pgscreen``, a session per worker), DuckDB and Spark with
``engines.screen_on`` (the Parquet export included in their time and shown apart), all recording
their findings as suspicions. The engines must agree (hits per rule and the suspicions' fact keys)
or the benchmark fails: a fast wrong answer is no figure.

Headline: ``screen_<size>_visits_duckdb_s`` (ratio: DuckDB's seconds over SQLite's). Then per engine
its seconds, visits/s per core, and the core-seconds a province-year would take (~200 million visits,
~4,000 institutions) at that per-core rate: a linear extrapolation, fair because a province screens
area by area and each visit's cost is its person's history (a year's depth either way), not the
province's size; Spark's and DuckDB's own scaling past 2 cores is not measured here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import screen as base
from _common import Failed, emit, parse_args

from central.monitoring import engines as en
from central.monitoring.screening import load_area_rules, screen
from central.storage.postgres import PgStore
from central.storage.store import Store
from simulators.pgserver import PgServer

PROVINCE_VISITS = 200_000_000
PROVINCE_INSTITUTIONS = 4_000
EXTRA_RULES = [
    {"id": "short_stay", "version": 1, "template": "unreasonable_admission", "severity": "warn",
     "mode": "enforce", "action": "prompt", "moments": ["post"],
     "params": {"outpatient_prefixes": ["J06", "J20"], "max_stay_days": 2}},
    {"id": "repeated_treatment", "version": 1, "template": "repeated_treatment", "severity": "info",
     "mode": "shadow", "action": "prompt", "moments": ["post"], "params": {"days": 14, "min_visits": 4}},
]  # fmt: skip


def _label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


def _facts(store: Any) -> set[str]:
    return store.read(lambda c: {r[0] for r in c.execute("SELECT fact_key FROM suspicions")})


def _pg_copy(src: Path, server: Any, name: str) -> PgStore:
    """A PostgreSQL centre holding the tables the screen reads, copied from ``src`` with ``COPY``."""
    store = PgStore(server.create_database(name), create=True)
    lite = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    try:
        with psycopg.connect(store.dsn) as conn:
            for table in en.HISTORY_TABLES:
                cols = [r[1] for r in lite.execute(f"PRAGMA table_info({table})")]
                with conn.cursor().copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                    for row in lite.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY rowid"):
                        copy.write_row(row)
            conn.execute("ANALYZE")
    finally:
        lite.close()
    return store


def run(args: argparse.Namespace, tmp: Path) -> None:
    src, build_s = base.cached_data(args)
    doc = base.rules_document()
    doc["rules"] += EXTRA_RULES
    areas = {base.AREA: load_area_rules(doc, base.catalogue_document(), area=base.AREA)}
    lo = base.YEAR_START.isoformat()
    hi = (base.YEAR_START + timedelta(days=base.DAYS - 1)).isoformat()
    wanted = [e for e in args.engines.split(",") if e]
    if "sqlite" not in wanted:
        raise Failed("--engines must include sqlite: the others are checked against it")
    results: dict[str, dict] = {}
    facts: dict[str, set[str]] = {}
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(PgServer()) if "postgres" in wanted else None
        for engine in wanted:
            results[engine], facts[engine] = _run_engine(engine, args, src, tmp, areas, lo, hi, server)
    _report(args, areas, wanted, results, facts, build_s)


def _run_engine(
    engine: str, args: argparse.Namespace, src: Path, tmp: Path, areas: dict, lo: str, hi: str, server: Any
) -> tuple[dict, set[str]]:
    if engine == "postgres":
        store: Any = _pg_copy(src, server, "bench_screen")
        db = None
    else:
        db = base.working_copy(src, tmp / engine / "central.db")
        store = Store(db)
    start = time.perf_counter()
    with store:
        if engine in ("sqlite", "postgres"):
            summary = screen(store, lo, hi, areas=areas, workers=args.workers)
            cores = args.workers
        else:
            options: dict = {"threads": args.cores}
            if engine == "spark":
                options = {"cores": args.cores, "memory": args.spark_memory}
            summary = en.screen_on(store, lo, hi, engine=engine, export_dir=tmp / engine / "parquet",
                                   areas=areas, engine_options=options)  # fmt: skip
            cores = args.cores
        summary["wall_s"] = time.perf_counter() - start
        found = _facts(store)
    print(f"{engine}: {summary['wall_s']:.1f} s, {summary['hits']} hits", file=sys.stderr, flush=True)
    summary["cores"] = cores
    if db is not None:
        db.unlink()
    return summary, found


def _report(
    args: argparse.Namespace, areas: dict, wanted: list[str], results: dict[str, dict],
    facts: dict[str, set[str]], build_s: float | None,
) -> None:  # fmt: skip
    ref = results["sqlite"]
    for engine in wanted[1:]:
        if results[engine]["per_rule"] != ref["per_rule"]:
            raise Failed(f"{engine} hits per rule differ from SQLite's: {results[engine]['per_rule']} "
                         f"vs {ref['per_rule']}")  # fmt: skip
        if facts[engine] != facts["sqlite"]:
            raise Failed(
                f"{engine} recorded other suspicions than SQLite ({len(facts[engine] ^ facts['sqlite'])})"
            )
    visits = ref["settlements"]
    label = _label(visits)
    head = "duckdb" if "duckdb" in results else wanted[-1]
    emit(
        f"screen_{label}_visits_{head}_s", results[head]["wall_s"], "s",
        ratio=results[head]["wall_s"] / ref["wall_s"], ratio_of=f"{head} seconds / sqlite seconds",
        visits=visits, lines=ref["lines"], rules=len(areas[base.AREA].rules), hits=ref["hits"],
        suspicions=len(facts["sqlite"]), agree=True,
    )  # fmt: skip
    for engine, s in results.items():
        rate = visits / s["wall_s"] / s["cores"]
        core_s = PROVINCE_VISITS / rate
        extra = {}
        if "export" in s:
            extra = {"export_s": s["export"]["seconds"], "export_bytes": s["export"]["bytes"]}
        emit(f"screen_{engine}_s", s["wall_s"], "s", cores=s["cores"], hits=s["hits"],
             new_suspicions=s["new_suspicions"], per_rule_s=s["seconds"], **extra)  # fmt: skip
        emit(f"screen_{engine}_visits_per_core_s", rate, "per_s", cores=s["cores"])
        emit(
            f"province_year_{engine}_core_s", core_s, "s", core_hours=round(core_s / 3600, 1),
            hours_on_2_cores=round(core_s / 3600 / 2, 1), hours_on_64_cores=round(core_s / 3600 / 64, 2),
            province_visits=PROVINCE_VISITS, institutions=PROVINCE_INSTITUTIONS,
            note="linear in visits at this machine's per-core rate",
        )  # fmt: skip
    if build_s is not None:
        emit("data_build_s", build_s, "s", note="generating the cached database; not the measure")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--visits", type=int, default=1_000_000)
    ap.add_argument("--persons", type=int)
    ap.add_argument("--hospitals", type=int)
    ap.add_argument("--engines", default="sqlite,postgres,duckdb,spark", help="comma-separated, sqlite first")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="SQLite's processes")
    ap.add_argument("--cores", type=int, default=min(2, os.cpu_count() or 1), help="DuckDB/Spark threads")
    ap.add_argument(
        "--cache", help="directory for the generated database (default: $TMPDIR/yibao-bench-screen)"
    )
    ap.add_argument("--spark-memory", default="8g", help="Spark's driver memory (local mode: all of Spark)")
    ap.add_argument("--rebuild", action="store_true", help="generate the data again")
    # The smoke leaves Spark out: its screen costs a minute and a half of a two-core machine even at 2,000
    # visits (the JVM, a job per query), and it runs the same ``engines.screen_on`` line as DuckDB here;
    # Spark's agreement with SQLite is tests/central/test_engines.py's. ``--smoke --engines …`` adds it.
    args = parse_args(ap, visits=2_000, engines="sqlite,postgres,duckdb")
    args.persons = args.persons or max(300, args.visits // 10)
    args.hospitals = args.hospitals or max(10, min(200, args.visits // 5_000))
    try:
        with tempfile.TemporaryDirectory(prefix="bench-engines-") as d:
            run(args, Path(d))
    except (Failed, en.EngineUnavailable, en.EngineFailed) as exc:
        print(f"screen_engines benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
