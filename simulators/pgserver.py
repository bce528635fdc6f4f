"""A scratch PostgreSQL server: ``initdb`` in a temporary directory, ``pg_ctl start`` on a free port.

The tests and ``benchmarks/ingest_pg.py`` run the centre on a real server, never a mock. Debian's
``postgresql`` package provides the binaries (``make test`` installs it); the cluster belongs to the
``postgres`` system user when run as root (PostgreSQL refuses to run as root), lives under ``/tmp``
and listens on loopback and its own Unix socket directory only, with ``trust`` authentication for
that loopback: a test cluster, never a deployment.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PgServer", "PgServerMissing", "find_bindir"]


class PgServerMissing(RuntimeError):
    """No PostgreSQL server binaries: install Debian's ``postgresql`` (``make test`` does)."""


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/N/bin`` with ``initdb``, or ``PG_BINDIR``."""
    env = os.environ.get("PG_BINDIR")
    candidates = (
        [env] if env else sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    )
    for found in reversed(candidates):
        if found and (Path(found) / "initdb").exists():
            return Path(found)
    raise PgServerMissing(
        "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb); install them with "
        "`apt-get install postgresql` or run `make test`, which does"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One throwaway cluster; ``dsn(db)`` names a database on it, ``create_database`` makes one."""

    def __init__(self, *, base: Path | None = None) -> None:
        self.bindir = find_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="yibao-pg-", dir=base))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.port = _free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        self._started = False

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(argv)
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> PgServer:
        self.sockets.mkdir(parents=True)
        if self.user:
            shutil.chown(self.root, self.user)
            shutil.chown(self.sockets, self.user)
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
            "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        self._pg_ctl_start()
        return self

    def _pg_ctl_start(self) -> None:
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.sockets} "
            "-c fsync=on -c max_connections=200 -c shared_buffers=128MB"
        )
        proc = self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w",
            "-t", "60", "start", check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            log = (
                (self.root / "log").read_text(errors="replace")[-2000:]
                if (self.root / "log").exists()
                else ""
            )
            raise RuntimeError(f"PostgreSQL did not start: {proc.stderr.strip()} {log}")
        self._started = True

    def halt(self) -> None:
        """Stop the server as a crash would (``-m immediate``: every session cut) but keep the cluster.

        An outage for the tests of what a collector does while its database is away; ``resume`` starts
        the same cluster on the same port again.
        """
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self._started = False

    def resume(self) -> None:
        """Start the cluster ``halt`` stopped, on the same port; returns once it accepts connections."""
        self._pg_ctl_start()

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its DSN."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        if self._started:
            self._run(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "-w",
                "stop",
                check=False,
            )
            self._started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":  # pragma: no cover - manual use: a server to point a collector at
    with PgServer() as server:
        print(server.dsn(), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
