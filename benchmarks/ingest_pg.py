"""Central verify-and-store on PostgreSQL against SQLite: records/s through ``Ingestor.ingest`` on each.

The same signed batches (``ingest.build_batches``: one agent's chain of varied settlements, parsed by
``agent.intake`` as an agent would) are ingested, in process and without HTTP, into a fresh SQLite
``central.db`` (WAL, ``synchronous=FULL``) and into a fresh database on a scratch PostgreSQL server
(``simulators.pgserver``: ``fsync=on``, ``synchronous_commit=on``, loopback TCP), each with an agent
enrolled the way the endpoint does it. The clock covers ``Ingestor.ingest`` for every batch: decoding,
the signature, the chain links, body validation, row building and one write transaction per batch —
on PostgreSQL the translated statements (``central.storage.sql``), the agent head locked ``FOR UPDATE``,
the rows sent by ``PgConnection.executemany`` and the ``NOTIFY`` to other collectors.

Headline: PostgreSQL's records/s, with ``ratio`` = PostgreSQL / SQLite. Rounds alternate which engine
goes first; figures are medians. Both engines share this machine's two cores with the benchmark itself
(the PostgreSQL server's backend process competes with the Python that verifies), which a deployment
with the database on its own host would not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import Bodies, Failed, emit, median, parse_args
from ingest import build_batches, enrol

from central.intake.ingest import Ingestor
from central.storage.base import BaseStore
from central.storage.postgres import PgStore
from central.storage.store import SqliteStore
from protocol.batch import BatchLimits, KeyPair
from simulators.pgserver import PgServer, PgServerMissing

TEMPLATE = "bench_template"


def count_held(store: BaseStore) -> tuple[int, int]:
    return store.read(
        lambda conn: (
            conn.execute("SELECT count(*) FROM records").fetchone()[0],
            conn.execute("SELECT count(*) FROM settlements").fetchone()[0],
        )
    )


def run_ingest(
    open_store: Callable[[], BaseStore], key: KeyPair, hospital: str, batches: list[bytes], n: int
) -> float:
    """Records/s through ``Ingestor.ingest`` into the fresh store ``open_store`` gives."""
    store = open_store()
    try:
        enrol(store, key, hospital)
        ingestor = Ingestor(store, BatchLimits())
        start = time.perf_counter()
        for data in batches:
            ack = ingestor.ingest(data)
            if ack.code != "stored" or ack.rejected:
                raise Failed(f"batch answered {ack.code} with {len(ack.rejected)} rejected")
        rate = n / (time.perf_counter() - start)
        if ack.acked_seq != n or count_held(store) != (n, n):
            raise Failed(f"ingestion acked {ack.acked_seq} and holds {count_held(store)}, expected {n}")
    finally:
        store.close()
    return rate


def run(args: argparse.Namespace, tmp: Path) -> None:
    if not 0 < args.batch <= BatchLimits().max_records:
        raise Failed(f"--batch must be 1..{BatchLimits().max_records} (the centre's BatchLimits)")
    key = KeyPair.generate()
    hospital = Bodies("INGEST").hospital
    try:
        server = PgServer().start()  # under /tmp: the postgres user cannot enter a root-only tmp
    except PgServerMissing as exc:
        raise Failed(str(exc)) from None
    try:
        PgStore(server.create_database(TEMPLATE), create=True).close()
        # A fresh store names its first agent of a hospital the same on both engines: learn it once.
        probe = SqliteStore(tmp / "probe" / "central.db", create=True)
        try:
            agent_id = enrol(probe, key, hospital)
        finally:
            probe.close()
        start = time.perf_counter()
        batches = build_batches(key, agent_id, args.n, args.batch)
        build_s = time.perf_counter() - start

        pg: list[float] = []
        lite: list[float] = []
        for r in range(args.rounds):

            def on_pg(r: int = r) -> BaseStore:
                import psycopg

                with psycopg.connect(server.dsn(), autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "r{r}" TEMPLATE "{TEMPLATE}"')
                return PgStore(server.dsn(f"r{r}"))

            def on_sqlite(r: int = r) -> BaseStore:
                return SqliteStore(tmp / f"lite-{r}" / "central.db", create=True)

            sides = [(pg, on_pg), (lite, on_sqlite)]
            for figures, opener in sides if r % 2 == 0 else reversed(sides):
                figures.append(run_ingest(opener, key, hospital, batches, args.n))
    finally:
        server.stop()

    m_pg, m_lite = median(pg), median(lite)
    emit(
        "ingest_pg_records_per_s",
        m_pg,
        "per_s",
        ratio=m_pg / m_lite,
        ratio_to="ingest_sqlite_records_per_s",
        batch_records=args.batch,
        records=args.n,
        rounds=args.rounds,
        per_round=[round(x) for x in pg],
    )
    emit(
        "ingest_sqlite_records_per_s",
        m_lite,
        "per_s",
        per_round=[round(x) for x in lite],
        note="the same batches through the same Ingestor into SQLite (WAL, synchronous=FULL)",
    )
    emit("ingest_pg_us_per_record", 1e6 / m_pg, "us")
    emit("ingest_sqlite_us_per_record", 1e6 / m_lite, "us")
    emit("batch_build_seconds", build_s, "s", note="parse, chain and sign the batches; not the measure")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000, help="records per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1000, help="records per signed batch")
    args = parse_args(ap, n=1_000, rounds=1, batch=250)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ingest-pg-") as d:
            run(args, Path(d))
    except Failed as exc:
        print(f"PostgreSQL ingest benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
