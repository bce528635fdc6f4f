"""Many lightweight agents against one centre: the policy side of a province's hospitals.

Each fleet member is a real agent as far as policy goes: its own home directory, its own
Ed25519 key enrolled at the centre with its own one-time token, the TUF root pinned at
enrolment, its own ``policy.db``, and ``agent.policy.PolicyClient`` long-polling the change
signal, updating through ``tuf.ngclient`` and posting signed reports. What it leaves out is
the HIS API and the outbox, so two hundred of them fit in one process.

``yibao-sim fleet --central URL --tokens FILE --agents N`` runs them until Ctrl-C (tokens from
``yibao-central enroll-token --hospital H --count N``);
``benchmarks/propagation.py`` uses ``Fleet`` to time a blacklist entry reaching all of them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import load_config
from agent.enrol import enrol, load_key
from agent.policy import PolicyClient
from agent.policy_store import PolicyStore

__all__ = ["Fleet", "Member", "run_fleet"]


@dataclass
class Member:
    home: Path
    client: PolicyClient
    store: PolicyStore
    task: asyncio.Task[None] | None = None


@dataclass
class Fleet:
    central_url: str
    root: Path
    hospitals: list[str]
    members: list[Member] = field(default_factory=list)
    #: The centre's ``--ca-hash`` for an https centre; an http centre is enrolled ``--insecure-dev``.
    ca_hash: str | None = None
    #: PolicyClient.update runs in worker threads; the default pool (cores + 4) would queue
    #: two hundred agents' updates behind six threads.
    threads: int = 64

    async def enrol_all(self, tokens: list[str], *, concurrency: int = 16) -> None:
        """Enrol one agent per token (hospital i gets token i); homes under ``root``."""
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int, token: str) -> None:
            home = self.root / f"agent-{i:04d}"
            async with sem:
                await enrol(
                    home,
                    self.central_url,
                    token,
                    self.hospitals[i],
                    ca_hash=self.ca_hash,
                    insecure_dev=self.central_url.startswith("http://"),
                )

        await asyncio.gather(*(one(i, t) for i, t in enumerate(tokens)))

    def open_all(self) -> None:
        for home in sorted(self.root.glob("agent-*")):
            config = load_config(home)
            store = PolicyStore(config.policy_db_path)
            client = PolicyClient(config, store, key=load_key(config))
            self.members.append(Member(home, client, store))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(self.threads))
        for m in self.members:
            m.task = asyncio.create_task(m.client.run())

    async def stop(self) -> None:
        for m in self.members:
            m.client.stop()
        tasks = [m.task for m in self.members if m.task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for m in self.members:
            m.store.close()

    def enforcing(self, *, card_sn: str | None = None, psn_no: str | None = None) -> list[bool]:
        """Per member: does its policy store refuse this card / person now?"""
        return [m.store.is_blacklisted(card_sn=card_sn, psn_no=psn_no) is not None for m in self.members]

    async def wait_enforced(
        self, timeout: float, *, card_sn: str | None = None, psn_no: str | None = None, poll_s: float = 0.02
    ) -> list[float | None]:
        """Seconds from now until each member enforces the entry (None: not within ``timeout``)."""
        start = time.perf_counter()
        done: list[float | None] = [None] * len(self.members)
        while time.perf_counter() - start < timeout:
            for i, m in enumerate(self.members):
                if done[i] is None and m.store.is_blacklisted(card_sn=card_sn, psn_no=psn_no) is not None:
                    done[i] = time.perf_counter() - start
            if all(d is not None for d in done):
                break
            await asyncio.sleep(poll_s)
        return done

    def seqs(self, kind: str = "blacklist") -> list[int]:
        return [m.store.held_seq(kind) for m in self.members]


async def run_fleet(
    central_url: str,
    tokens: list[str],
    hospital: str,
    root: Path,
    *,
    duration: float | None = None,
    stop: asyncio.Event | None = None,
    say: Callable[[str], None] = print,
    ca_hash: str | None = None,
) -> Fleet:
    """Enrol one agent per token under ``root``, run them all until ``duration`` or ``stop``."""
    fleet = Fleet(central_url.rstrip("/"), root, [hospital] * len(tokens), ca_hash=ca_hash)
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    await fleet.enrol_all(tokens)
    fleet.open_all()
    say(f"enrolled {len(fleet.members)} agents in {time.perf_counter() - started:.1f} s; running")
    await fleet.start()
    stop = stop or asyncio.Event()
    try:
        await asyncio.wait_for(stop.wait(), timeout=duration)
    except TimeoutError:
        pass
    finally:
        seqs = fleet.seqs()
        say(f"blacklist seq held: min {min(seqs, default=0)}, max {max(seqs, default=0)}")
        await fleet.stop()
    return fleet
