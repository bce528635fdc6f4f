"""Central verify-and-store: records/s through ``Ingestor.ingest``, against raw inserts.

In process, no HTTP. An agent is enrolled in a fresh ``central.db`` the way the endpoint
does it (``issue_token`` + ``enrol_agent`` with the agent's real Ed25519 key); its chain
of varied settlements (``_common.Bodies``, parsed by ``agent.intake`` exactly as an agent would)
is signed into batches before the clock starts. The clock covers ``Ingestor.ingest`` for
every batch: decode within limits, the agent lookup, one signature check, the chain
links, decoding and validating every body, building the rows, and one write transaction
per batch on the store's writer thread (WAL, ``synchronous=FULL``).

The baseline inserts exactly the rows that ingestion wrote (read back from its database,
prebuilt as tuples: records, settlements, each settlement's ``hist_lines`` and its ``hist_visits``
row) into a fresh
database with the same schema (``central.storage.schema``, indexes included), the same pragmas, the
same statements, ``executemany``, one transaction per batch, and the same agent-row update per
batch. The ratio is then the cost of verification, decoding and
Python row building. Aim: ratio >= 0.5. Rounds alternate which side goes first; figures
are medians.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from _common import Bodies, Failed, emit, median, parse_args

from agent.intake import parse_settlement
from central.intake.enrol import enrol_agent, issue_token
from central.intake.ingest import _INSERT_RECORD, _INSERT_SETTLEMENT, Ingestor
from central.intake.lines import INSERT_HIST_LINE
from central.intake.visits import INSERT_VISIT, VISIT_COLUMNS
from central.storage.schema import migrate
from central.storage.store import Store
from protocol.batch import BatchLimits, KeyPair, encode_batch, sign_batch
from protocol.chain import GENESIS, encode_body, encode_entry
from protocol.rules import HIST_COLUMNS
from protocol.wire import EnrollRequest

AIM_RATIO = 0.5

_RECORD_COLUMNS = "agent_id, seq, hash, kind, status, reject_code, reject_message, raw, received_at"
_SETTLEMENT_COLUMNS = (
    "setl_id, agent_id, seq, kind, his_setl_no, fixmedins_code, psn_no, mdtrt_id, med_type, setl_time, "
    "setl_date, medfee_sumamt, fund_pay_sumamt, acct_pay, psn_cash_pay, orig_setl_id, mdtrt_cert_type, "
    "mdtrt_cert_no, card_sn, hifp_pay, hifmi_pay, hifob_pay, insutype"
)


def enrol(store: Store, key: KeyPair, hospital: str) -> str:
    """Register the agent's key in ``store`` (either backend) as the enrolment endpoint does; its id."""
    token = issue_token(store, hospital)
    request = EnrollRequest(token=token, fixmedins_code=hospital, public_key=key.public_bytes.hex())
    response, created = enrol_agent(store, request)
    if not created:
        raise Failed("enrolment did not create the agent")
    return response.agent_id


def enrolled_store(path: Path, key: KeyPair, hospital: str) -> tuple[Store, str]:
    """A fresh central.db with the agent's key registered as the enrolment endpoint does it."""
    store = Store(path, create=True)
    return store, enrol(store, key, hospital)


def build_batches(key: KeyPair, agent_id: str, n: int, size: int) -> list[bytes]:
    """The agent's chain of ``n`` settlements, signed into batches of ``size``."""
    bodies = Bodies("INGEST")
    entries: list[bytes] = []
    prev = GENESIS
    for i in range(n):
        record, _digest = parse_settlement(bodies.body(i), fixmedins_code=bodies.hospital)
        entry = encode_entry(agent_id, i + 1, prev, "setl", encode_body(record))
        prev = hashlib.sha256(entry).digest()
        entries.append(entry)
    return [
        encode_batch(sign_batch(key, agent_id, lo + 1, entries[lo : lo + size])) for lo in range(0, n, size)
    ]


def run_ingest(path: Path, key: KeyPair, hospital: str, batches: list[bytes], n: int) -> tuple[float, float]:
    """Records/s through ``Ingestor.ingest``; then records/s of ``prepare`` alone (reads only)."""
    store, _agent_id = enrolled_store(path, key, hospital)
    try:
        ingestor = Ingestor(store, BatchLimits())
        start = time.perf_counter()
        for data in batches:
            ack = ingestor.ingest(data)
            if ack.code != "stored" or ack.rejected:
                raise Failed(f"batch answered {ack.code} with {len(ack.rejected)} rejected")
        rate = n / (time.perf_counter() - start)
        if ack.acked_seq != n:
            raise Failed(f"ingestion acked {ack.acked_seq}, expected {n}")
        start = time.perf_counter()
        for data in batches:
            ingestor.prepare(data)  # steps 1-3 and row building, no write: where the CPU goes
        prepare_rate = n / (time.perf_counter() - start)
    finally:
        store.close()
    return rate, prepare_rate


Rows = tuple[tuple, list[tuple], list[tuple], list[list[tuple]], list[tuple]]


def written_rows(path: Path, agent_id: str, n: int) -> Rows:
    """What ingestion wrote: the agent row as enrolled, its records and settlements rows, and the
    ``hist_lines`` rows of each settlement (by seq)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        agent = con.execute("SELECT * FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
        records = con.execute(
            f"SELECT {_RECORD_COLUMNS} FROM records WHERE agent_id = ? ORDER BY seq", (agent_id,)
        ).fetchall()
        settlements = con.execute(
            f"SELECT {_SETTLEMENT_COLUMNS} FROM settlements WHERE agent_id = ? ORDER BY seq", (agent_id,)
        ).fetchall()
        lines: list[list[tuple]] = [[] for _ in range(n)]
        cols = ", ".join(f"h.{c}" for c in HIST_COLUMNS)
        for row in con.execute(
            f"SELECT s.seq, {cols} FROM hist_lines AS h JOIN settlements AS s USING (setl_id) "
            "WHERE s.agent_id = ? ORDER BY h.rowid",
            (agent_id,),
        ):
            lines[row[0] - 1].append(row[1:])
        visits = con.execute(
            f"SELECT {', '.join(f'v.{c}' for c in VISIT_COLUMNS)} FROM hist_visits AS v "
            "JOIN settlements AS s USING (setl_id) WHERE s.agent_id = ? ORDER BY s.seq",
            (agent_id,),
        ).fetchall()
    finally:
        con.close()
    if len(records) != n or len(settlements) != n:
        raise Failed(f"ingestion stored {len(records)} records and {len(settlements)} settlements, not {n}")
    if not all(lines):
        raise Failed("ingestion stored a settlement without its hist_lines")
    if len(visits) != n:
        raise Failed(f"ingestion stored {len(visits)} hist_visits rows, not {n}")
    agent = (*agent[:6], 0, bytes(32), None, None, *agent[10:])  # as enrolled: nothing acked yet
    return agent, records, settlements, lines, visits


def run_raw(path: Path, rows: Rows, size: int) -> float:
    """The same rows, same schema, same pragmas, same statements, one transaction per batch."""
    agent, records, settlements, lines, visits = rows
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA synchronous = FULL")
        if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise Failed("the baseline database is not in WAL mode")
        migrate(conn)
        conn.execute(f"INSERT INTO agents VALUES ({', '.join('?' * len(agent))})", agent)
        agent_id = agent[0]
        updates = [
            (records[min(lo + size, len(records)) - 1][1], records[min(lo + size, len(records)) - 1][2], lo)
            for lo in range(0, len(records), size)
        ]
        batch_lines = [
            [r for per in lines[lo : lo + size] for r in per] for lo in range(0, len(records), size)
        ]
        stamp = "2026-11-24T10:00:00+00:00"
        start = time.perf_counter()
        for (last, head, lo), new_lines in zip(updates, batch_lines, strict=True):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT_SETTLEMENT, settlements[lo : lo + size])
            conn.executemany(INSERT_HIST_LINE, new_lines)
            conn.executemany(INSERT_VISIT, visits[lo : lo + size])
            conn.executemany(_INSERT_RECORD, records[lo : lo + size])
            conn.execute(
                "UPDATE agents SET acked_seq = ?, head_hash = ?, last_seen = ? WHERE agent_id = ?",
                (last, head, stamp, agent_id),
            )
            conn.execute("COMMIT")
        rate = len(records) / (time.perf_counter() - start)
        held = conn.execute("SELECT count(*) FROM settlements").fetchone()[0]
        held_lines = conn.execute("SELECT count(*) FROM hist_lines").fetchone()[0]
    finally:
        conn.close()
    if held != len(settlements) or held_lines != sum(map(len, lines)):
        raise Failed(
            f"the baseline holds {held} settlements and {held_lines} lines, not what ingestion wrote"
        )
    return rate


def run(args: argparse.Namespace, tmp: Path) -> None:
    if not 0 < args.batch <= BatchLimits().max_records:
        raise Failed(f"--batch must be 1..{BatchLimits().max_records} (the centre's BatchLimits)")
    key = KeyPair.generate()
    hospital = Bodies("INGEST").hospital
    # A fresh store always names its first agent of a hospital the same: learn the id once.
    probe, agent_id = enrolled_store(tmp / "probe" / "central.db", key, hospital)
    probe.close()
    start = time.perf_counter()
    batches = build_batches(key, agent_id, args.n, args.batch)
    build_s = time.perf_counter() - start

    ours: list[float] = []
    prepare: list[float] = []
    raw: list[float] = []
    rows = None
    for r in range(args.rounds):
        ingest_db = tmp / f"ingest-{r}" / "central.db"

        def ingest_side(db: Path = ingest_db) -> None:
            rate, prepare_rate = run_ingest(db, key, hospital, batches, args.n)
            ours.append(rate)
            prepare.append(prepare_rate)

        if rows is None:  # the first round ingests first: its rows are the baseline's rows
            ingest_side()
            rows = written_rows(ingest_db, agent_id, args.n)
            raw.append(run_raw(tmp / f"raw-{r}.db", rows, args.batch))
        elif r % 2:
            raw.append(run_raw(tmp / f"raw-{r}.db", rows, args.batch))
            ingest_side()
        else:
            ingest_side()
            raw.append(run_raw(tmp / f"raw-{r}.db", rows, args.batch))
        shutil.rmtree(ingest_db.parent)  # every round starts on the same, empty disk space
        for suffix in ("", "-wal", "-shm"):
            Path(f"{tmp / f'raw-{r}.db'}{suffix}").unlink(missing_ok=True)

    m_ours, m_raw = median(ours), median(raw)
    ratios = [a / b for a, b in zip(ours, raw, strict=True)]
    emit(
        "ingest_records_per_s",
        m_ours,
        "per_s",
        ratio=m_ours / m_raw,
        ratio_to="raw_insert_rows_per_s",
        aim_ratio=AIM_RATIO,
        batch_records=args.batch,
        records=args.n,
        rounds=args.rounds,
        per_round_ratio=[round(x, 3) for x in ratios],
    )
    emit(
        "raw_insert_rows_per_s",
        m_raw,
        "per_s",
        note="per record: its records row + settlements row + hist_lines rows + hist_visits row, agent row "
        "updated per batch; same schema, pragmas (WAL, synchronous=FULL), statements and transactions",
    )
    m_prep = median(prepare)
    emit(
        "ingest_prepare_us_per_record",
        1e6 / m_prep,
        "us",
        note="decode, agent lookup, signature, chain links, body validation and row building; no write",
    )
    emit(
        "ingest_commit_us_per_record", max(0.0, 1e6 / m_ours - 1e6 / m_prep), "us", note="the rest of ingest"
    )
    emit("raw_insert_us_per_record", 1e6 / m_raw, "us")
    emit("batch_build_seconds", build_s, "s", note="parse, chain and sign the batches; not the measure")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="records per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1000, help="records per signed batch")
    args = parse_args(ap, n=2_000, rounds=1, batch=500)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as d:
            run(args, Path(d))
    except Failed as exc:
        print(f"ingest benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
