"""The centre's signed history lookup over real HTTPS: one person's 90 days among many persons'.

``yibao-central serve`` in its own process (``_centre.Centre``), HTTPS with mutual TLS as deployed
(``--plain``: its ``--insecure-dev`` plain HTTP, the setting of ``tests/central/test_history_http.py``,
which used to assert the bound); an agent key registered through the enrolment endpoint, with its TLS
client certificate; the history uploaded as the agent uploads it (signed batches of its hash chain to
``POST /v1/batches``, so ``central.intake.lines`` writes ``hist_lines`` at ingest): the checked person's
visits
(two lines each) within the last 80 days, and other persons' visits around them. Then
``GET /v1/persons/{psn_no}/history`` through the agent's own client (``agent.history.CentralHistory``:
signed headers, one kept-alive aiohttp session over the agent's TLS context), timed each, every answer
checked to hold all of the person's lines and only them. Limit (the test's bound): 100 ms at the
median; the aim is 20 ms, and the agent gives up after its 300 ms budget.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

from _centre import Centre, Failed
from _common import emit, example_settlement, median, parse_args

from agent.history import CentralHistory
from agent.intake import parse_settlement
from agent.tls import ClientTls
from protocol.batch import KeyPair, encode_batch, sign_batch
from protocol.chain import GENESIS, encode_body, encode_entry, record_hash
from protocol.records import Settlement
from protocol.wire import BATCH_PATH, MSGPACK, PROTOCOL_HEADER, decode_ack

LIMIT_MS = 100.0
AIM_MS = 20.0
PSN = "P0000000001"
DAYS = 90
BATCH = 500


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def visit(i: int, psn_no: str, days_ago: int, hospital: str) -> Settlement:
    """A valid two-line outpatient settlement of ``psn_no``, settled ``days_ago`` days ago."""
    day = (datetime.now().astimezone() - timedelta(days=days_ago)).date().isoformat()
    body = example_settlement(f"HIS-HL-{i:07d}")
    body["fixmedins_code"] = hospital
    body["psn"]["psn_no"] = psn_no
    body["mdtrt"]["mdtrt_id"] = f"MDT-HL-{i:07d}"
    body["mdtrt"]["begntime"] = f"{day}T09:00:00+08:00"
    body["mdtrt"]["endtime"] = f"{day}T09:30:00+08:00"
    record, _ = parse_settlement(json.dumps(body).encode(), fixmedins_code=hospital)
    record.setl_id = f"S-HL-{i:07d}"
    record.setl_time = f"{day}T10:00:00+08:00"
    return record


class Uploader:
    """The agent's side of ingest: its hash chain, signed batches posted to the centre, each ack checked."""

    def __init__(self, centre: Centre, agent_id: str, key: KeyPair, context: ssl.SSLContext | None) -> None:
        self.url, self.agent_id, self.key, self.context = centre.url, agent_id, key, context
        self.seq, self.head = 0, GENESIS

    def upload(self, records: list[Settlement]) -> None:
        entries = []
        for rec in records:
            self.seq += 1
            raw = encode_entry(self.agent_id, self.seq, self.head, "setl", encode_body(rec))
            self.head = record_hash(raw)
            entries.append(raw)
        first = self.seq - len(entries) + 1
        req = urllib.request.Request(
            self.url + BATCH_PATH,
            data=encode_batch(sign_batch(self.key, self.agent_id, first, entries)),
            method="POST",
            headers={"Content-Type": MSGPACK, PROTOCOL_HEADER: "1"},
        )
        try:
            with urllib.request.urlopen(req, timeout=60, context=self.context) as resp:
                ack = decode_ack(resp.read())
        except urllib.error.HTTPError as exc:
            raise Failed(f"batch {first}-{self.seq} refused: {exc.code} {exc.read()[:300]!r}") from None
        if ack.code != "stored" or ack.rejected or ack.acked_seq != self.seq:
            raise Failed(f"batch {first}-{self.seq} not stored whole: {ack}")


async def lookups(history: CentralHistory, n: int, expected: set[str]) -> list[float]:
    await history.fetch(PSN, DAYS)  # the first connection and the centre's statement cache
    times = []
    for _ in range(n):
        t = time.perf_counter()
        got = await history.fetch(PSN, DAYS)
        times.append(time.perf_counter() - t)
        if not got.ok:
            raise Failed(f"the lookup failed: {got.missing}")
        if len(got.lines) != 2 * len(expected) or {ln["setl_id"] for ln in got.lines} != expected:
            raise Failed(f"the lookup answered {len(got.lines)} lines, not the person's {2 * len(expected)}")
    await history.close()
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--visits", type=int, default=150, help="the checked person's visits (2 lines each)")
    ap.add_argument("--others", type=int, default=50_000, help="other persons' visits (2 lines each)")
    ap.add_argument("--lookups", type=int, default=500)
    ap.add_argument("--plain", action="store_true", help="plain HTTP (--insecure-dev) instead of mutual TLS")
    args = parse_args(ap, visits=20, others=1_000, lookups=30)
    hospital = example_settlement()["fixmedins_code"]
    records = [visit(i, PSN, i % 80, hospital) for i in range(args.visits)]
    records += [visit(args.visits + i, f"Q{i:09d}", i % 80, hospital) for i in range(args.others)]
    expected = {r.setl_id for r in records[: args.visits]}
    key = KeyPair.generate()
    with tempfile.TemporaryDirectory(prefix="bench-history-") as d:
        centre = Centre(Path(d) / "central", hospital, tls=not args.plain)
        try:
            tls_dir = Path(d) / "agent" / "tls"
            agent_id = centre.register(key.public_bytes, hospital, None if args.plain else tls_dir)
            context = None if args.plain else ClientTls(tls_dir).context
            up = Uploader(centre, agent_id, key, context)
            t = time.perf_counter()
            for i in range(0, len(records), BATCH):
                up.upload(records[i : i + BATCH])
            load_s = time.perf_counter() - t
            history = CentralHistory(
                centre.url, agent_id, key, timeout_s=5.0, ssl_context=True if context is None else context
            )
            times = asyncio.run(lookups(history, args.lookups, expected))
        finally:
            centre.stop()
    med = median(times) * 1e3
    p95 = _p(times, 0.95) * 1e3
    emit(
        "history_lookup_median_ms",
        med,
        "ms",
        ratio=med / LIMIT_MS,
        ratio_to=f"test_bound_{LIMIT_MS:g}_ms",
        aim_ms=AIM_MS,
        lookups=args.lookups,
        person_lines=2 * args.visits,
        history_lines=2 * len(records),
        days=DAYS,
        transport="http (--insecure-dev)" if args.plain else "https, mutual TLS",
        note="signed GET /v1/persons/{psn_no}/history by agent.history.CentralHistory, yibao-central serve",
    )
    emit("history_lookup_p95_ms", p95, "ms", ratio=p95 / LIMIT_MS, ratio_to=f"test_bound_{LIMIT_MS:g}_ms")
    emit("history_lookup_p99_ms", _p(times, 0.99) * 1e3, "ms")
    emit("history_lookup_max_ms", max(times) * 1e3, "ms")
    emit("history_load_s", load_s, "s", records=len(records),
         note="uploading the history through POST /v1/batches; not the measure")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
