"""A 10-million-entry card blacklist at the agent: snapshot apply, delta apply, lookups, size.

The bundles are real files in the wire format (``protocol.bundles``: zlib-compressed msgpack,
streamed), written before the clock starts, and applied through ``agent.policy_store.PolicyStore``
exactly as the TUF client applies a verified download (``apply_file``: header checks, one
transaction, fsync). Card numbers are 16-digit identification codes in the order the centre
writes them (sorted). Lookups are the settlement-time check (``is_blacklisted``) on a mix of
listed and unlisted cards, one at a time, timed each. Aim: lookup p99 ≤ 50 µs.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, median, parse_args

from agent.policy_store import PolicyStore
from protocol.bundles import BlacklistEntry, BundleHeader, encode_blacklist

AIM_P99_US = 50.0
AREA = "370200"
CREATED = "2026-11-25T00:00:00Z"


def card(i: int) -> str:
    return f"3702{i * 7 + 13:012d}"


def write_full(path: Path, n: int) -> None:
    header = BundleHeader("blacklist", AREA, 1, None, CREATED)
    entries = (BlacklistEntry("+", "card", card(i), "lost", "bureau", "") for i in range(n))
    with path.open("wb") as out:
        encode_blacklist(out, header, entries)


def write_delta(path: Path, n: int, total: int) -> None:
    """Half removals of listed cards, half additions of new ones."""
    header = BundleHeader("blacklist", AREA, 2, 1, CREATED)
    half = n // 2
    step = max(1, total // half)
    removes = (BlacklistEntry("-", "card", card(i)) for i in range(0, total, step))
    adds = (BlacklistEntry("+", "card", card(total + i), "cloned", "bureau", "") for i in range(n - half))
    with path.open("wb") as out:
        encode_blacklist(out, header, (e for g in (removes, adds) for e in g))


def lookups(store: PolicyStore, total: int, n: int) -> list[float]:
    rng = random.Random(7)
    probes = [card(rng.randrange(total * 2)) for _ in range(n)]
    times = []
    hits = 0
    for c in probes:
        t = time.perf_counter()
        hit = store.is_blacklisted(card_sn=c)
        times.append(time.perf_counter() - t)
        hits += hit is not None
    if not 0 < hits < n:
        raise SystemExit(f"lookups found {hits} of {n}: the probes should mix listed and unlisted cards")
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=10_000_000)
    ap.add_argument("--delta", type=int, default=100_000)
    ap.add_argument("--lookups", type=int, default=200_000)
    args = parse_args(ap, entries=20_000, delta=2_000, lookups=2_000)
    with tempfile.TemporaryDirectory(prefix="bench-blacklist-") as d:
        tmp = Path(d)
        full, delta = tmp / "full.bin", tmp / "delta.bin"
        t = time.perf_counter()
        write_full(full, args.entries)
        write_delta(delta, args.delta, args.entries)
        build_s = time.perf_counter() - t
        store = PolicyStore(tmp / "policy.db")
        try:
            t = time.perf_counter()
            store.apply_file(full, area=AREA)
            full_s = time.perf_counter() - t
            if store.blacklist_count() != args.entries:
                raise SystemExit(f"snapshot applied {store.blacklist_count()} entries, not {args.entries}")
            t = time.perf_counter()
            store.apply_file(delta, area=AREA)
            delta_s = time.perf_counter() - t
            if store.held_seq("blacklist") != 2:
                raise SystemExit("the delta did not apply")
            times = sorted(lookups(store, args.entries, args.lookups))
        finally:
            store.close()
        p50 = median(times) * 1e6
        p99 = times[int(0.99 * (len(times) - 1))] * 1e6
        size = sum(f.stat().st_size for f in tmp.glob("policy.db*"))
        emit(
            "blacklist_lookup_p99_us",
            p99,
            "us",
            ratio=p99 / AIM_P99_US,
            ratio_to=f"aim_{AIM_P99_US:g}_us",
            entries=args.entries,
            lookups=args.lookups,
            note="is_blacklisted(card_sn=...), half of the probes listed",
        )
        emit("blacklist_lookup_p50_us", p50, "us")
        emit("blacklist_snapshot_apply_s", full_s, "s", entries=args.entries,
             per_s=round(args.entries / full_s), bundle_bytes=full.stat().st_size)  # fmt: skip
        emit("blacklist_delta_apply_s", delta_s, "s", entries=args.delta, bundle_bytes=delta.stat().st_size)
        emit("blacklist_agent_db_bytes", size, "bytes", entries=args.entries)
        emit("blacklist_bundle_build_s", build_s, "s", note="writing the bundle files; not the measure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
