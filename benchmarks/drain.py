"""A backlog of settlements drained from an agent to the centre over loopback, end to end.

The issue's aim: at least 10,000 records/s. The setting is the real one: the centre is
``yibao-central serve`` in its own process (so agent and centre split this machine's two
cores as they would on one host), its home made by ``yibao-central init``; the agent is
enrolled with a token from ``yibao-central enroll-token`` through ``agent.enrol.enrol``; the
backlog sits in a real ``agent.store.Outbox`` and the real ``agent.uploader.Uploader`` reads,
re-hashes, signs and posts it and commits each acknowledgement (fsync on both sides).

Filling the backlog is not the measured figure, but it is reported: 200,000 varied HIS
bodies through ``agent.intake.parse_settlement`` and concurrent ``append_settlement`` calls
so group commit works. The filled outbox is copied aside once and each round drains a
fresh copy into a fresh centre, which registers the same agent key through the HTTP
enrolment endpoint (a fresh centre gives the agent the same id, so the chain stays valid).

The clock runs from the uploader's start until the agent's acked_seq reaches the backlog.
At the end of every round the centre's database must hold exactly the backlog as stored
settlements of that agent, with its chain head; anything else exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from _centre import Centre, Failed
from _common import Bodies, emit, median, parse_args

from agent.config import AgentConfig
from agent.enrol import enrol, load_key
from agent.intake import parse_settlement
from agent.service import open_outbox
from agent.store import Outbox
from agent.uploader import Uploader
from protocol.batch import BatchLimits

AIM_TLS_RATIO = 0.8
AIM_PER_S = 10_000


# ---- the backlog ---------------------------------------------------------------------------


async def _fill(outbox: Outbox, bodies: Bodies, n: int, concurrency: int) -> None:
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            record, digest = parse_settlement(bodies.body(i), fixmedins_code=bodies.hospital)
            receipt = await outbox.append_settlement(record, digest)
            if receipt.duplicate:
                raise Failed(f"body {i} was taken for a duplicate")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def _check_centre(home: Path, agent_id: str, n: int, head: bytes) -> None:
    """The centre holds exactly ``n`` stored settlements of the agent, ending in its chain head."""
    con = sqlite3.connect(f"file:{home / 'central.db'}?mode=ro", uri=True)
    try:
        settlements = con.execute(
            "SELECT count(*) FROM settlements WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        records = con.execute(
            "SELECT count(*), coalesce(min(seq), 0), coalesce(max(seq), 0), "
            "coalesce(sum(status <> 'ok'), 0) FROM records WHERE agent_id = ?",
            (agent_id,),
        ).fetchone()
        agent = con.execute(
            "SELECT acked_seq, head_hash FROM agents WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        others = con.execute("SELECT count(*) FROM settlements WHERE agent_id <> ?", (agent_id,)).fetchone()
    finally:
        con.close()
    problems = []
    if settlements[0] != n:
        problems.append(f"{settlements[0]} settlement rows for {agent_id}, expected {n}")
    if tuple(records) != (n, 1 if n else 0, n, 0):
        problems.append(
            f"records (count, min seq, max seq, not ok) = {tuple(records)}, expected ({n}, 1, {n}, 0)"
        )
    if agent is None or agent[0] != n or agent[1] != head:
        problems.append(f"agent row acked_seq/head {agent and agent[0]} does not match the agent's chain")
    if others[0]:
        problems.append(f"{others[0]} settlement rows of other agents")
    if problems:
        raise Failed("the centre does not hold the backlog exactly: " + "; ".join(problems))


# ---- one drain ------------------------------------------------------------------------------


async def _drain(config: AgentConfig, outbox: Outbox, n: int, timeout_s: float) -> dict[str, float]:
    uploader = Uploader(config, outbox, load_key(config))
    first_tenth = last_tenth = None  # (seconds, acked) when a tenth / nine tenths were acked
    start = time.perf_counter()
    task = asyncio.create_task(uploader.run())
    try:
        while (acked := outbox.acked_seq) < n:
            now = time.perf_counter() - start
            if first_tenth is None and acked >= n // 10:
                first_tenth = (now, acked)
            if last_tenth is None and acked >= n - n // 10:
                last_tenth = (now, acked)
            if task.done():
                task.result()
                raise Failed("the uploader stopped before the backlog was acknowledged")
            if now > timeout_s:
                raise Failed(
                    f"only {acked} of {n} acknowledged after {timeout_s:.0f} s "
                    f"(last error: {uploader.last_error})"
                )
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - start
    finally:
        uploader.stop()
        await task
    first_tenth = first_tenth or (elapsed, n)
    last_tenth = last_tenth or (0.0, 0)
    return {
        "rate": n / elapsed,
        "seconds": elapsed,
        "batches": uploader.batches_sent,
        "first_tenth_rate": first_tenth[1] / first_tenth[0],
        "last_tenth_rate": (n - last_tenth[1]) / max(elapsed - last_tenth[0], 1e-9),
    }


def drain_round(
    config: AgentConfig, centre: Centre, pristine: Path, n: int, timeout_s: float
) -> dict[str, float]:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{config.db_path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(pristine, config.db_path)
    outbox = open_outbox(config)
    try:
        if (outbox.last_seq, outbox.acked_seq) != (n, 0):
            raise Failed(f"the backlog copy holds seqs up to {outbox.last_seq}, acked {outbox.acked_seq}")
        cpu0, central0 = time.process_time(), centre.cpu_s()
        result = asyncio.run(_drain(config, outbox, n, timeout_s))
        result["agent_cpu_s"] = time.process_time() - cpu0
        result["central_cpu_s"] = centre.cpu_s() - central0
        status = outbox.status()
    finally:
        outbox.close()
    con = sqlite3.connect(f"file:{config.db_path}?mode=ro", uri=True)
    (head,) = con.execute("SELECT head_hash FROM chain WHERE id = 1").fetchone()
    con.close()
    if status["acked_seq"] != n or status["dead_letter"] or status["quarantined"]:
        raise Failed(f"the agent's outbox after the drain: {status}")
    centre.stop()
    _check_centre(centre.home, config.agent_id, n, head)
    return result


def run(args: argparse.Namespace, tmp: Path, centres: list[Centre]) -> None:
    limits = BatchLimits()
    if not 0 < args.batch <= limits.max_records:
        raise Failed(f"--batch must be 1..{limits.max_records} (the centre's BatchLimits)")
    bodies = Bodies("DRAIN")
    centre = Centre(tmp / "central-0", bodies.hospital)
    centres.append(centre)
    config = asyncio.run(
        enrol(tmp / "agent", centre.url, centre.token, bodies.hospital, ca_hash=centre.ca_hash)
    )
    config.batch_max_records = args.batch
    config.batch_max_bytes = limits.max_bytes // 2  # well inside the centre's byte limit

    outbox = open_outbox(config)
    try:
        start = time.perf_counter()
        asyncio.run(_fill(outbox, bodies, args.n, args.concurrency))
        fill_s = time.perf_counter() - start
        if outbox.last_seq != args.n:
            raise Failed(f"the outbox holds {outbox.last_seq} records after filling, expected {args.n}")
    finally:
        outbox.close()
    pristine = tmp / "backlog.db"
    shutil.copyfile(config.db_path, pristine)

    rounds = []
    for r in range(args.rounds):
        if r:
            centre = Centre(tmp / f"central-{r}", bodies.hospital)
            centres.append(centre)
            agent_id = centre.register(load_key(config).public_bytes, bodies.hospital, config.tls_dir)
            if agent_id != config.agent_id:
                raise Failed(f"a fresh centre named the agent {agent_id}, not {config.agent_id}")
        config.central_url = centre.url
        rounds.append(drain_round(config, centre, pristine, args.n, args.timeout))
        centre.stop()
        shutil.rmtree(centre.home, ignore_errors=True)

    # The same backlog into plain-HTTP centres (--insecure-dev): what TLS costs, measured in this run.
    plain = []
    for r in range(args.rounds):
        centre = Centre(tmp / f"plain-{r}", bodies.hospital, tls=False)
        centres.append(centre)
        if centre.register(load_key(config).public_bytes, bodies.hospital) != config.agent_id:
            raise Failed("a fresh plain centre named the agent differently")
        config.central_url, config.insecure_dev = centre.url, True
        plain.append(drain_round(config, centre, pristine, args.n, args.timeout))
        centre.stop()
        shutil.rmtree(centre.home, ignore_errors=True)

    def med(key: str) -> float:
        return median([x[key] for x in rounds])

    rate = med("rate")
    emit(
        "drain_records_per_s",
        rate,
        "per_s",
        ratio=rate / AIM_PER_S,
        ratio_to="aim_10000_per_s",
        records=args.n,
        rounds=args.rounds,
        per_round=[round(x["rate"]) for x in rounds],
        verified="centre holds exactly the backlog as settlements of the agent",
    )
    plain_rate = median([x["rate"] for x in plain])
    emit(
        "drain_tls_to_plain_ratio",
        rate / plain_rate,
        "count",
        ratio=(rate / plain_rate) / AIM_TLS_RATIO,
        ratio_to="aim_0.8",
        plain_records_per_s=round(plain_rate),
        note="mutual TLS (as deployed) vs --insecure-dev plain HTTP, same backlog, same machine, one run",
    )
    emit("drain_seconds", med("seconds"), "s", records=args.n)
    emit("drain_batch_records", args.batch, "count", batches=round(med("batches")))
    emit("drain_first_tenth_records_per_s", med("first_tenth_rate"), "per_s")
    emit(
        "drain_last_tenth_records_per_s",
        med("last_tenth_rate"),
        "per_s",
        ratio=med("last_tenth_rate") / med("first_tenth_rate"),
        ratio_to="first_tenth",
        note="below 1: acknowledging gets slower as acked-but-retained records pile up",
    )
    emit("drain_agent_cpu_s", med("agent_cpu_s"), "s", note="agent process, all threads")
    emit("drain_central_cpu_s", med("central_cpu_s"), "s", note="yibao-central serve")
    emit("fill_records_per_s", args.n / fill_s, "per_s", concurrency=args.concurrency, note="not the measure")
    emit("fill_seconds", fill_s, "s")
    emit("backlog_outbox_bytes", pristine.stat().st_size, "bytes")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="records in the backlog")
    ap.add_argument("--rounds", type=int, default=3, help="drains of the same backlog into fresh centres")
    ap.add_argument("--batch", type=int, default=2000, help="uploader batch_max_records")
    ap.add_argument("--concurrency", type=int, default=256, help="concurrent appends while filling")
    ap.add_argument("--timeout", type=float, default=300, help="give up a drain after this many seconds")
    args = parse_args(ap, n=2_000, rounds=1, batch=500, concurrency=32, timeout=60)
    centres: list[Centre] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-drain-") as d:
            try:
                run(args, Path(d), centres)
            finally:
                for centre in centres:
                    centre.stop()
    except Failed as exc:
        print(f"drain benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
