"""Two ``yibao-central serve`` processes on one PostgreSQL database behind one address, one killed with -9.

What ``reuse_port`` promises (docs/POSTGRES.md, "Two collectors"), shown with real processes on loopback:
a PostgreSQL server (``simulators.pgserver``), two collectors bound to the same port with SO_REUSEPORT,
real agents (``yibao-agent serve``) fed by HIS threads that retry every settlement until answered.

1. Ingest exactly once: each collector is ``kill -9``-ed in turn at the moment its writer has an ingest
   transaction open (seen in ``pg_stat_activity``: each collector runs with its own ``PGAPPNAME``), the
   agents retry against the survivor, the victim is started again. At the end every agent's chain is at
   the centre exactly: seqs 1..N with the agent's own hashes, its head, and one settlement per HIS
   answer.
2. Background work once: re-signing the online TUF roles runs under an advisory lock. While the test holds
   that lock itself, neither collector re-signs, though the timestamp is due; each collector re-signs
   after the other was killed (the survivor takes the work over).
3. A maker-checker change is proposed and approved through the CLI (its own store on the same database)
   while a collector ingests and the killed one starts again, and every agent applies the bundle.

About 35 s on two cores. Which collector each agent's keep-alive connection lands on is the kernel's
choice, so both ingesting at the same moment is likely (the run prints the counts) but not asserted;
what is asserted holds whichever way the connections fall.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from central.storage.postgres import PgConnection, PgStore, _lock_key
from tests.conftest import example_settlement
from tests.integration.harness import Agent, Central, Proc, settle_until_answered, wait_until

HOSPITAL = "H37021100001"
AGENTS = 3
APPS = ("yibao-collector-a", "yibao-collector-b")
#: Timestamp life: re-signed when half of it is gone, so about every 3 s; checked every 0.5 s.
TIMESTAMP_S = 6.0
RESIGNED = re.compile(rb"re-signed the online TUF roles: timestamp v(\d+)")
BATCH_OK = re.compile(rb'"POST /v1/batches" 200 ')


class Collector:
    """One ``serve`` process of the centre, its own log and its own PostgreSQL application name."""

    def __init__(self, central: Central, app: str) -> None:
        self.app = app
        self.log_path = central.home / f"{app}.log"
        self.proc = Proc(app, central.proc.args, self.log_path, central.url + "/v1/health")

    def start(self) -> Collector:
        """Start it and return once it serves (the shared address answering says nothing: the other may)."""
        start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:  # libpq names every session of this process PGAPPNAME
            self.proc.proc = subprocess.Popen(
                self.proc.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PGAPPNAME": self.app},
            )

        def serving() -> bool:
            assert self.proc.proc is not None
            if self.proc.proc.poll() is not None:
                raise AssertionError(
                    f"{self.app} exited with {self.proc.proc.returncode}:\n{self.proc.log()}"
                )
            return b"yibao-central serving" in self.log()[start:]

        wait_until(serving, 30, what=f"{self.app} to serve")
        return self

    def log(self) -> bytes:
        return self.log_path.read_bytes()

    def resigned(self, since: int = 0) -> list[int]:
        """The timestamp versions this collector re-signed (after byte ``since`` of its log)."""
        return [int(v) for v in RESIGNED.findall(self.log()[since:])]

    def batches(self, since: int = 0) -> int:
        """Batches it answered 200 (after byte ``since`` of its log)."""
        return len(BATCH_OK.findall(self.log()[since:]))


class Traffic(threading.Thread):
    """A HIS posting settlements to one agent, each retried until answered, about ten a second."""

    def __init__(self, agent: Agent, prefix: str) -> None:
        super().__init__(daemon=True)
        self.agent, self.prefix = agent, prefix
        self.answered: dict[str, dict] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            body = example_settlement(f"{self.prefix}-{n:06d}")
            self.answered[body["his_setl_no"]] = settle_until_answered(self.agent, body, 60)
            n += 1
            self.stopping.wait(0.1)

    def finish(self) -> dict[str, dict]:
        self.stopping.set()
        self.join(90)
        assert not self.is_alive()
        return self.answered


def _ingesting(db: psycopg.Connection, apps: tuple[str, ...]) -> str | None:
    """The collector whose writer is inside an ingest transaction now: the agent's head row locked, the
    records, lines or settlements being inserted, not yet committed."""
    row = db.execute(
        "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = ANY(%s) AND backend_xid IS NOT NULL "
        "AND state IN ('active', 'idle in transaction') "
        "AND query ~ 'FOR UPDATE|INTO (records|settlements|hist_lines|hist_visits)' LIMIT 1",
        (list(apps),),
    ).fetchone()
    return row[0] if row else None


def _kill_mid_ingest(db: psycopg.Connection, collectors: dict[str, Collector], among: tuple[str, ...]) -> str:
    """``kill -9`` the first of ``among`` seen with an ingest transaction open; returns its name."""
    victim = wait_until(lambda: _ingesting(db, among), 20, interval=0.002, what="a collector mid-ingest")
    collectors[victim].proc.kill9()
    return victim


def _timestamp_version(central: Central) -> int:
    return json.loads((central.home / "tuf" / "metadata" / "timestamp.json").read_text())["signed"]["version"]


UPLOAD_FAILED = re.compile(rb"upload of \S+ failed")


def _upload_failures(agents: list[Agent], offsets: list[int]) -> int:
    """Uploads the agents logged as cut since ``offsets`` (their logs' sizes then)."""
    return sum(
        len(UPLOAD_FAILED.findall(a.proc.log_path.read_bytes()[off:]))
        for a, off in zip(agents, offsets, strict=True)
    )


def _agent_chain(agent: Agent) -> tuple[list[tuple[int, bytes]], int, bytes, list[str]]:
    """The agent's own outbox: (seq, hash) in order, its head (seq, hash) and its settlements' ids."""
    with sqlite3.connect(f"file:{agent.home / 'agent.db'}?mode=ro", uri=True) as db:
        chain = db.execute("SELECT seq, hash FROM outbox ORDER BY seq").fetchall()
        last_seq, head = db.execute("SELECT last_seq, head_hash FROM chain WHERE id = 1").fetchone()
        setl_ids = [r[0] for r in db.execute("SELECT setl_id FROM settlements")]
    return [(s, bytes(h)) for s, h in chain], last_seq, bytes(head), setl_ids


@pytest.fixture
def db(pg_dsn: str) -> Iterator[psycopg.Connection]:
    """The test's own session on the collectors' database: what they hold, who is mid-transaction."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


def test_two_collectors_behind_one_address_lose_nothing_when_one_is_killed(
    tmp_path: Path, pg_dsn: str, db: psycopg.Connection
) -> None:
    began = time.monotonic()
    home = tmp_path / "central"
    home.mkdir()
    (home / "central.json").write_text(json.dumps({
        "database": pg_dsn, "reuse_port": True, "timestamp_expiry_s": TIMESTAMP_S, "resign_check_s": 0.5,
    }))  # fmt: skip
    central = Central(home)  # init on the PostgreSQL database, operators maker and checker, TLS
    collectors = {app: Collector(central, app) for app in APPS}
    agents: list[Agent] = []
    traffic: list[Traffic] = []
    resign_lock = _lock_key("yibao-central:tuf-resign")
    try:
        with ThreadPoolExecutor(AGENTS) as pool:
            list(pool.map(Collector.start, collectors.values()))
            tokens = central.cli("enroll-token", "--hospital", HOSPITAL, "--count", str(AGENTS)).split()
            agents = list(pool.map(  # the enrolments reach either collector
                lambda i: Agent(tmp_path / f"agent{i}", central.url, HOSPITAL, tokens[i]), range(AGENTS)
            ))  # fmt: skip
            list(pool.map(lambda a: a.proc.start(), agents))
        traffic = [Traffic(a, f"A{i}") for i, a in enumerate(agents)]
        for t in traffic:
            t.start()
        wait_until(lambda: sum(c.batches() for c in collectors.values()) >= 2 * AGENTS, 20, what="uploads")

        # -- re-signing waits for the advisory lock: the test holds it past the moment it is due --------
        before = _timestamp_version(central)
        wait_until(lambda: _timestamp_version(central) > before, TIMESTAMP_S, what="a re-sign")
        db.execute("SELECT pg_advisory_lock(%s)", (resign_lock,))
        held, holding = _timestamp_version(central), time.monotonic()
        # meanwhile a maker proposes a change (recorded only: publishing would sign a timestamp)
        add = ("blacklist", "add", "--type", "person", "--id", "370200199001011234", "--reason", "deceased")
        proposed = central.cli_as(central.maker_token, *add, "--area", "370200")
        time.sleep(max(0.0, holding + TIMESTAMP_S / 2 + 1.0 - time.monotonic()))  # due at TIMESTAMP_S / 2
        assert _timestamp_version(central) == held, "a collector re-signed while another held the lock"
        db.execute("SELECT pg_advisory_unlock(%s)", (resign_lock,))
        wait_until(lambda: _timestamp_version(central) > held, 3, what="the re-sign once the lock is free")
        both_before = {app: c.batches() for app, c in collectors.items()}

        # -- kill -9 whichever collector is mid-ingest; the other takes everything over ----------------
        marks = {app: len(c.log()) for app, c in collectors.items()}
        agent_marks = [len(a.proc.log_path.read_bytes()) for a in agents]
        first = _kill_mid_ingest(db, collectors, APPS)
        (second,) = [app for app in APPS if app != first]
        # the survivor alone takes the uploads and the re-signing over (asked before the victim is back:
        # once both run, which of them takes the lock when the timestamp is due is a race)
        wait_until(
            lambda: collectors[second].batches(marks[second]) >= AGENTS,
            20,
            what="the survivor takes the uploads",
        )
        wait_until(
            lambda: collectors[second].resigned(marks[second]), TIMESTAMP_S, what="the survivor re-signs"
        )
        # the victim starts again while the checker approves through the CLI and the survivor ingests
        with ThreadPoolExecutor(1) as pool:
            restarted = pool.submit(collectors[first].start)
            assert "blacklist seq 1" in central.approve(proposed)
            restarted.result()
        assert _upload_failures(agents, agent_marks) >= 1, "no agent had an upload cut by the kill"

        # -- the other is killed in turn, mid-ingest (every agent is on it since the first kill) -------
        marks = {app: len(c.log()) for app, c in collectors.items()}
        assert _kill_mid_ingest(db, collectors, (second,)) == second
        wait_until(
            lambda: collectors[first].batches(marks[first]) >= AGENTS, 20, what="the restarted one ingests"
        )
        wait_until(lambda: collectors[first].resigned(marks[first]), TIMESTAMP_S, what="it re-signs in turn")

        answered = [t.finish() for t in traffic]
        for a in agents:
            wait_until(a.drained, 30, what=f"{a.agent_id} to drain")
            wait_until(lambda a=a: (a.status()["policy"]["bundles"].get("blacklist") or {}).get("seq") == 1,
                       30, what=f"{a.agent_id} to apply the approved blacklist")  # fmt: skip
    finally:
        for t in traffic:
            t.stopping.set()
        for a in agents:
            a.proc.stop()
        for c in collectors.values():
            c.proc.stop()

    # -- every agent's chain is at the centre exactly once, whole ---------------------------------------
    for a, his in zip(agents, answered, strict=True):
        chain, last_seq, head, setl_ids = _agent_chain(a)
        assert last_seq > 0 and [s for s, _ in chain] == list(range(1, last_seq + 1))
        held_chain = db.execute(
            "SELECT seq, hash FROM records WHERE agent_id = %s ORDER BY seq", (a.agent_id,)
        ).fetchall()
        assert [(s, bytes(h)) for s, h in held_chain] == chain, f"{a.agent_id}: the centre's chain differs"
        acked, held_head = db.execute(
            "SELECT acked_seq, head_hash FROM agents WHERE agent_id = %s", (a.agent_id,)
        ).fetchone()
        assert (acked, bytes(held_head)) == (last_seq, head), f"{a.agent_id}: the centre's head differs"
        held = Counter(r[0] for r in db.execute(
            "SELECT setl_id FROM settlements WHERE agent_id = %s", (a.agent_id,)
        ))  # fmt: skip
        assert all(n == 1 for n in held.values())
        assert set(held) == set(setl_ids) == {r["setl_id"] for r in his.values()}, (
            f"{a.agent_id}: settlements"
        )
        assert len(held) == len(his) > 10
    assert db.execute("SELECT count(*) FROM records WHERE status <> 'ok'").fetchone()[0] == 0

    # -- both collectors served batches and re-signed; no timestamp version was signed twice -------------
    assert all(c.batches() > 0 for c in collectors.values())
    versions = [v for c in collectors.values() for v in c.resigned()]
    assert len(versions) == len(set(versions)), f"a timestamp version was re-signed twice: {sorted(versions)}"
    settled = sum(len(h) for h in answered)
    print(f"\nbatches answered per collector before the first kill: {both_before}; killed {first}, then "
          f"{second}; {settled} settlements; {time.monotonic() - began:.1f} s")  # fmt: skip


def test_a_write_that_loses_a_unique_key_to_another_collector_runs_again(pg_dsn: str) -> None:
    """Two collectors' writers pick the same next key at once (as enrolment picks a hospital's next agent
    id): the later insert waits for the first commit, fails on the key, and is run again, seeing it."""
    both_looked = threading.Barrier(2, timeout=10)
    attempts: Counter[str] = Counter()

    def next_key(who: str) -> Callable[[PgConnection], str]:
        def tx(conn: PgConnection) -> str:
            attempts[who] += 1
            (n,) = conn.execute("SELECT count(*) FROM settings WHERE key LIKE ?", ("race-%",)).fetchone()
            if attempts[who] == 1:
                both_looked.wait()  # each has counted before either inserts
            key = f"race-{n + 1}"
            conn.execute("INSERT INTO settings (key, value) VALUES (?, ?)", (key, who))
            return key

        return tx

    with PgStore(pg_dsn) as a, PgStore(pg_dsn) as b, ThreadPoolExecutor(2) as pool:
        keys = sorted(pool.map(lambda s_who: s_who[0].write(next_key(s_who[1])), [(a, "a"), (b, "b")]))
        rows = a.read(
            lambda c: c.execute("SELECT key, value FROM settings WHERE key LIKE ?", ("race-%",)).fetchall()
        )
    assert keys == ["race-1", "race-2"]
    assert sorted(attempts.values()) == [1, 2]  # the loser ran twice
    assert sorted(k for k, _ in rows) == keys and {v for _, v in rows} == {"a", "b"}
