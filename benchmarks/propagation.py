"""Publish one blacklist entry → time until every agent of a fleet enforces it (aim p99 ≤ 5 s).

A real ``yibao-central serve`` (its own process) and a fleet of real policy clients
(``simulators.fleet``: each agent enrolled with its own key and token, its TUF root pinned,
its own ``policy.db``, long-polling ``/v1/policy/changes`` and updating with ``tuf.ngclient``)
in this process. Each round an operator runs ``yibao-central blacklist add`` (a separate
process: signing with the operator key, a new delta, new targets/snapshot/timestamp); the clock
starts before that command and stops, per agent, when its policy store refuses the card — the
same lookup a settlement makes. All of it shares this machine's 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from _centre import Centre, Failed, central_cli
from _common import emit, median, parse_args

from simulators.fleet import Fleet

AIM_P99_S = 5.0
HOSPITAL = "H37021100001"
def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


async def _run(args: argparse.Namespace, tmp: Path) -> None:
    home = tmp / "central"
    centre = Centre(home, area="370200")
    url = centre.url
    fleet: Fleet | None = None
    try:
        warm_card = "3702000000000000"
        central_cli(home, "blacklist", "add", "--type", "card", "--id", warm_card, "--reason", "warm-up")
        count = str(args.agents)
        tokens = central_cli(home, "enroll-token", "--hospital", HOSPITAL, "--count", count).split()
        fleet = Fleet(url, tmp / "fleet", [HOSPITAL] * len(tokens), ca_hash=centre.ca_hash)
        started = time.perf_counter()
        await fleet.enrol_all(tokens)
        fleet.open_all()
        enrol_s = time.perf_counter() - started
        await fleet.start()
        warm = await fleet.wait_enforced(120, card_sn=warm_card)
        if any(w is None for w in warm):
            raise Failed(f"{sum(w is None for w in warm)} agents never applied the first blacklist")
        await asyncio.sleep(1.0)  # every client back in its long-poll
        delays: list[float] = []
        publish: list[float] = []
        for r in range(args.rounds):
            card = f"37020{r:011d}"
            t0 = time.perf_counter()
            await asyncio.to_thread(
                central_cli, home, "blacklist", "add", "--type", "card", "--id", card, "--reason", "lost card"
            )
            publish.append(time.perf_counter() - t0)
            done = await fleet.wait_enforced(60, card_sn=card)
            missing = sum(d is None for d in done)
            if missing:
                raise Failed(f"round {r}: {missing} of {len(done)} agents did not enforce the entry in 60 s")
            # ``publish``: the maker's proposal and the checker's approval (two commands, central_cli).
            # ``done`` counts from when waiting began, i.e. after the approval returned.
            delays.extend(publish[-1] + d for d in done if d is not None)
            await asyncio.sleep(1.0)
        p99 = _pct(delays, 0.99)
        emit(
            "propagation_p99_s",
            p99,
            "s",
            ratio=p99 / AIM_P99_S,
            ratio_to=f"aim_{AIM_P99_S:g}_s",
            agents=len(fleet.members),
            rounds=args.rounds,
            note="from the start of `yibao-central blacklist add` until each agent's store refuses the card",
        )
        emit("propagation_p50_s", median(delays), "s")
        emit("propagation_max_s", max(delays), "s")
        emit("publish_command_median_s", median(publish), "s", note="the operator's CLI, start to exit")
        emit("fleet_enrol_s", enrol_s, "s", agents=len(fleet.members), note="not the measure")
    finally:
        if fleet is not None:
            await fleet.stop()
        centre.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = parse_args(ap, agents=10, rounds=1)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-propagation-") as d:
            asyncio.run(_run(args, Path(d)))
    except Failed as exc:
        print(f"propagation benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
