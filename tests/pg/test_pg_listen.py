"""The LISTEN thread outlives its database: a server stopped for seconds, or a backend terminated.

A collector hears the other collectors' stored batches through ``PgStore.listen``. These tests cut its
connection for real — ``pg_ctl stop -m immediate`` of a server of their own (the session's server stays
up for the other tests), and ``pg_terminate_backend`` of the listening session — and show that a
notification sent after the database is back is still delivered, that each outage is logged once (start
and end) with the DSN's password left out, and that closing the store ends the thread mid-outage.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from central.storage.postgres import LISTEN_BACKOFF_MAX_S, PgStore
from simulators.pgserver import PgServer

CHANNEL = "yibao_test_listen"
SECRET = "s3cret-not-for-logs"
LOGGER = "central.storage.postgres"


@pytest.fixture
def own_server() -> Iterator[PgServer]:
    """A server this test may stop and start (the session's is shared with every other test)."""
    with PgServer() as server:
        yield server


def _notify(server: PgServer, payload: str) -> None:
    with psycopg.connect(server.dsn("listen"), autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


def _heard_after(server: PgServer, heard: queue.Queue[str], tag: str, timeout: float) -> list[str]:
    """Send ``tag-N`` every 0.2 s until one arrives; the ones sent before the listener is back are lost."""
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        _notify(server, f"{tag}-{n}")
        n += 1
        try:
            first = heard.get(timeout=0.2)
        except queue.Empty:
            continue
        got = [first]
        while not heard.empty():
            got.append(heard.get_nowait())
        return got
    raise AssertionError(f"no notification {tag}-* delivered within {timeout} s")


def _outage_lines(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    mine = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.INFO]
    lost = [r.getMessage() for r in mine if "was lost" in r.getMessage()]
    back = [r.getMessage() for r in mine if "again after" in r.getMessage()]
    return lost, back


def test_the_listener_keeps_listening_through_a_server_outage_and_a_terminated_backend(
    own_server: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    own_server.create_database("listen")
    dsn = own_server.dsn("listen") + f" password={SECRET}"  # trust auth ignores it; the logs must too
    heard: queue.Queue[str] = queue.Queue()
    with PgStore(dsn, create=True) as store:
        store.listen(CHANNEL, heard.put)
        _notify(own_server, "before")
        assert heard.get(timeout=5) == "before"
        (thread,) = [t for t in threading.enumerate() if t.name == f"central-pg-listen-{CHANNEL}"]

        # 1. The server is down for several reconnection attempts (the old thread ended at the first).
        own_server.halt()
        time.sleep(3.0)
        assert thread.is_alive(), "the listener ended while the database was down"
        attempts = [r for r in caplog.records if r.name == LOGGER and "attempt" in r.getMessage()]
        assert len(attempts) >= 3, "the listener should have tried to reconnect several times by now"
        own_server.resume()
        got = _heard_after(own_server, heard, "after-restart", timeout=LISTEN_BACKOFF_MAX_S + 10)
        assert got[0].startswith("after-restart-")
        lost, back = _outage_lines(caplog)
        assert len(lost) == 1 and len(back) == 1, (lost, back)  # one outage, said once, however many tries

        # 2. The listening session is ended by the server while the server stays up.
        with psycopg.connect(own_server.dsn("listen"), autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'listen' "
                "AND query LIKE 'LISTEN%%' AND pid <> pg_backend_pid()"
            ).fetchall()
        assert ended == [(True,)]
        got = _heard_after(own_server, heard, "after-terminate", timeout=10)
        assert got[0].startswith("after-terminate-")
        lost, back = _outage_lines(caplog)
        assert len(lost) == 2 and len(back) == 2, (lost, back)
        assert thread.is_alive()

        # 3. Closing the store in the middle of an outage ends the thread at once.
        own_server.halt()
        deadline = time.monotonic() + 5
        while len(_outage_lines(caplog)[0]) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_outage_lines(caplog)[0]) == 3
        closing = time.monotonic()
        store.close()
        thread.join(timeout=5)
        assert not thread.is_alive() and time.monotonic() - closing < 3
    assert all(SECRET not in r.getMessage() for r in caplog.records)
    assert all(SECRET not in (r.exc_text or "") for r in caplog.records)
