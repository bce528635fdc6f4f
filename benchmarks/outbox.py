"""Durable settlements per second through the agent's commit path, against raw SQLite.

The commit path: JSON validation into a typed record, canonical encoding, hashing,
chaining, outbox append with fsync (WAL, synchronous=FULL) — in process, with concurrent
callers so group commit can work. The baselines insert the same entry bytes into a table
of the same shape with the same durability in the same run:

- ``raw_single``: one transaction + fsync per row (what "durable before answering" costs
  without grouping);
- ``raw_grouped``: rows committed in groups of the same size the outbox reached.

Also: settlements/s over real loopback HTTP with concurrent clients. Each figure is the
median of several rounds (this machine is small and noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from pathlib import Path

import aiohttp
from _common import emit, example_settlement, median, parse_args
from aiohttp import web

from agent.api import create_app
from agent.config import AgentConfig
from agent.intake import parse_settlement
from agent.store import Outbox, connect

AIM_PER_S = 5000


def bodies(n: int, tag: str) -> list[bytes]:
    return [json.dumps(example_settlement(f"{tag}-{i:08d}")).encode() for i in range(n)]


async def _commit_path(outbox: Outbox, payloads: list[bytes], concurrency: int) -> float:
    it = iter(payloads)

    async def worker() -> None:
        for body in it:
            record, digest = parse_settlement(body)
            await outbox.append_settlement(record, digest)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(payloads) / (time.perf_counter() - start)


def commit_path(tmp: Path, n: int, concurrency: int, round_no: int) -> tuple[float, list[bytes]]:
    path = tmp / f"outbox-{round_no}.db"
    outbox = Outbox(path, agent_id="BENCH-01", group_max=256)
    try:
        rate = asyncio.run(_commit_path(outbox, bodies(n, f"R{round_no}"), concurrency))
    finally:
        outbox.close()
    con = sqlite3.connect(path)
    entries = [r[0] for r in con.execute("SELECT record FROM outbox ORDER BY seq")]
    con.close()
    return rate, entries


def _raw_table(path: Path) -> sqlite3.Connection:
    con = connect(path)
    con.execute(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, kind TEXT, setl_id TEXT, hash BLOB, "
        "record BLOB, created_at FLOAT, quarantined INTEGER)"
    )
    return con


def raw_inserts(tmp: Path, entries: list[bytes], group: int, tag: str) -> float:
    con = _raw_table(tmp / f"raw-{tag}.db")
    rows = [(i + 1, "setl", f"S{i}", b"\0" * 32, e, time.time(), 0) for i, e in enumerate(entries)]
    start = time.perf_counter()
    for lo in range(0, len(rows), group):
        con.execute("BEGIN IMMEDIATE")
        for row in rows[lo : lo + group]:
            con.execute("INSERT INTO outbox VALUES (?,?,?,?,?,?,?)", row)
        con.execute("COMMIT")
    rate = len(rows) / (time.perf_counter() - start)
    con.close()
    return rate


async def _over_http(tmp: Path, n: int, clients: int) -> float:
    config = AgentConfig(home=tmp, agent_id="BENCH-02", fixmedins_code="H37021100001")
    outbox = Outbox(tmp / "http.db", agent_id="BENCH-02")
    runner = web.AppRunner(create_app(config, outbox, None, "t"), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    payloads = iter(bodies(n, "HTTP"))
    url = f"http://127.0.0.1:{port}/v1/settlements"

    async def client(session: aiohttp.ClientSession) -> None:
        for body in payloads:
            async with session.post(url, data=body, headers={"Authorization": "Bearer t"}) as r:
                assert r.status == 201, await r.text()

    try:
        async with aiohttp.ClientSession() as session:
            start = time.perf_counter()
            await asyncio.gather(*(client(session) for _ in range(clients)))
            return n / (time.perf_counter() - start)
    finally:
        await runner.cleanup()
        outbox.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--http-n", type=int, default=5000)
    args = parse_args(ap, n=500, rounds=1, concurrency=16, http_n=200)
    ours, single, grouped = [], [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for r in range(args.rounds):
            rate, entries = commit_path(tmp, args.n, args.concurrency, r)
            ours.append(rate)
            grouped.append(raw_inserts(tmp, entries, 256, f"g{r}"))
            single.append(raw_inserts(tmp, entries[:2000], 1, f"s{r}"))
        http_rate = median(
            [
                asyncio.run(_over_http(Path(tempfile.mkdtemp(dir=d)), args.http_n, 32))
                for _ in range(args.rounds)
            ]
        )
    m_ours, m_single, m_grouped = median(ours), median(single), median(grouped)
    emit(
        "outbox_durable_settlements_per_s",
        m_ours,
        "per_s",
        ratio=m_ours / m_single,
        ratio_to="raw_single_row_commits",
        aim_per_s=AIM_PER_S,
        aim_ratio=0.5,
    )
    emit(
        "outbox_ratio_to_raw_grouped_inserts",
        m_ours / m_grouped,
        "count",
        note="same rows, groups of up to 256, same fsync durability",
    )
    emit("raw_sqlite_single_commit_rows_per_s", m_single, "per_s")
    emit("raw_sqlite_grouped_commit_rows_per_s", m_grouped, "per_s")
    emit("outbox_vs_aim_ratio", m_ours / AIM_PER_S, "count")
    emit("http_durable_settlements_per_s", http_rate, "per_s", clients=32)


if __name__ == "__main__":
    main()
