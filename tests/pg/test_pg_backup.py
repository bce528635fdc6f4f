"""Backup and restore of a centre on PostgreSQL (``central.storage.pg_backup`` under ``protocol.backup``):
``pg_dump -Fc`` taken while ingest writes, ``pg_restore --single-transaction --no-owner`` into an empty
database only, the dump checksummed like every other member, passwords never on a command line.

All on the session's real server (``tests/pg/conftest.py``); the tools are the real ``pg_dump`` and
``pg_restore``. Where a test needs a tool to behave otherwise (fail, or record how it was called) it puts a
small script in ``PG_BINDIR`` that does so and then runs the real one.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import count
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from central.cli import init_home
from central.config import CONFIG_NAME, CentralConfig
from central.intake.ingest import Ingestor
from central.storage.pg_backup import (
    PgBackupFailed,
    PgDumpTooNew,
    PgToolMissing,
    RestoreTargetNotEmpty,
    dumper,
    find_tool,
    loader,
)
from central.storage.pg_schema import pg_steps
from central.storage.postgres import PgStore
from protocol.backup import (
    DUMP_MEMBER,
    FORMAT_DUMP,
    MANIFEST,
    BackupError,
    backup_home,
    read_manifest,
    restore_home,
)
from protocol.chain import GENESIS, verify_chain
from simulators.pgserver import PgServer, find_bindir
from tests.central.conftest import Chain, enrol

BIN = Path(sys.executable).parent
_targets = count(1)


def _empty_database(server: PgServer) -> str:
    return server.create_database(f"restore{next(_targets)}_{os.getpid()}")


def _held(dsn: str) -> dict[str, list[tuple[int, bytes]]]:
    """Each agent's stored (seq, hash) in seq order."""
    with psycopg.connect(dsn) as conn:
        found: dict[str, list[tuple[int, bytes]]] = {}
        held = conn.execute("SELECT agent_id, seq, hash FROM records ORDER BY agent_id, seq")
        for agent_id, seq, digest in held:
            found.setdefault(agent_id, []).append((seq, bytes(digest)))
        return found


def _assert_chains_whole(dsn: str) -> dict[str, int]:
    """Every agent's records run 1..acked_seq, re-verify as one chain, and end at the head row's hash."""
    heads: dict[str, int] = {}
    with psycopg.connect(dsn) as conn:
        for agent_id, acked, head in conn.execute("SELECT agent_id, acked_seq, head_hash FROM agents"):
            raws = [bytes(r[0]) for r in conn.execute(
                "SELECT raw FROM records WHERE agent_id = %s ORDER BY seq", (agent_id,))]  # fmt: skip
            assert len(raws) == acked
            linked = verify_chain(raws, agent_id=agent_id, first_seq=1, prev_hash=GENESIS)
            assert (linked[-1].hash if linked else GENESIS) == bytes(head)
            heads[agent_id] = acked
        dup = conn.execute("SELECT count(*) - count(DISTINCT setl_id) FROM settlements").fetchone()
        assert dup == (0,)
    return heads


def _objects(dsn: str) -> list[tuple[str, int]]:
    """Every table of the public schema with its row count: what "nothing changed" compares."""
    with psycopg.connect(dsn) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]  # fmt: skip
        return [(n, conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0]) for n in names]


def _backup(config: CentralConfig, out: Path) -> None:
    backup_home(config.home, out, kind="central", dump=dumper(config.database))


def test_round_trip_while_ingest_writes(tmp_path, config, store, pg_server) -> None:
    chains: list[Chain] = [enrol(store) for _ in range(3)]
    for c in chains:
        c.extend(400)
    ingestor = Ingestor(store)
    for c in chains:
        for first in range(1, 21, 5):
            assert ingestor.ingest(c.batch(first, first + 4)).code == "stored"
    before = _held(config.database)
    assert sum(len(v) for v in before.values()) == 60

    stop = threading.Event()
    stamps: list[float] = []

    def collector() -> None:  # what serving collectors do meanwhile: store batch after batch
        first = 21
        while not stop.is_set() and first + 4 <= 400:
            for c in chains:
                assert ingestor.ingest(c.batch(first, first + 4)).code == "stored"
                stamps.append(time.monotonic())
            first += 5

    with ThreadPoolExecutor(max_workers=1) as pool:
        ingesting = pool.submit(collector)
        try:
            while len(stamps) < 6 and not ingesting.done():
                time.sleep(0.01)
            started = time.monotonic()
            _backup(config, tmp_path / "c.tar.gz")
            ended = time.monotonic()
            while (not stamps or stamps[-1] <= ended) and not ingesting.done():  # and on after the backup
                time.sleep(0.01)
        finally:
            stop.set()
        ingesting.result(timeout=60)  # the collector's own failure, raised here
    assert any(started < s < ended for s in stamps), "no batch was stored while pg_dump ran"
    source = _held(config.database)

    manifest = read_manifest(tmp_path / "c.tar.gz")
    assert manifest.dump is not None and manifest.dump["schema_version"] == len(pg_steps())
    assert json.loads(manifest.to_json())["format"] == FORMAT_DUMP
    assert (tmp_path / "c.tar.gz").stat().st_mode & 0o777 == 0o600

    target = _empty_database(pg_server)
    restored = tmp_path / "restored"
    result = restore_home(tmp_path / "c.tar.gz", restored, kind="central", load=loader(target))
    assert "loaded the PostgreSQL dump" in result.dump["loaded"]  # type: ignore[index]
    assert json.loads((restored / CONFIG_NAME).read_text())["database"] == target
    assert (restored / "tls").is_dir() and (restored / "tuf").is_dir()

    heads = _assert_chains_whole(target)
    got = _held(target)
    for agent_id, held in before.items():
        assert got[agent_id][: len(held)] == held  # everything stored before the backup is there, once
    for agent_id, held in got.items():
        assert held == source[agent_id][: len(held)]  # a prefix of what the source went on to hold
    assert sum(heads.values()) > 60  # and the batches stored while pg_dump ran, in whole or not at all
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT max(version) FROM _migrations").fetchone() == (len(pg_steps()),)

    # The restored centre opens as `serve` would, and each agent's chain goes on from its restored head.
    restored_config = CentralConfig.from_home(restored)
    with PgStore(restored_config.database) as again:
        assert again.applied_migrations == []
        for c in chains:
            nxt = heads[c.agent_id] + 1
            ack = Ingestor(again).ingest(c.batch(nxt, nxt + 4))
            assert ack.code == "stored" and ack.acked_seq == nxt + 4
    _assert_chains_whole(target)


def test_restore_into_a_database_that_is_not_empty_is_refused_and_changes_nothing(
    tmp_path, config, store, pg_server, pg_dsn
) -> None:
    chain = enrol(store)
    chain.extend(5)
    Ingestor(store).ingest(chain.batch(1, 5))
    _backup(config, tmp_path / "c.tar.gz")

    # The archive's own database (still live, full) is the default target: refused.
    live_before = _objects(config.database)
    with pytest.raises(RestoreTargetNotEmpty) as caught:
        restore_home(tmp_path / "c.tar.gz", tmp_path / "r1", kind="central", load=loader())
    assert "not empty" in caught.value.message and "--database" in caught.value.message
    assert _objects(config.database) == live_before
    assert not (tmp_path / "r1").exists()

    # Another database holding anything of its own — here one table — is refused the same way.
    other = _empty_database(pg_server)
    with psycopg.connect(other, autocommit=True) as conn:
        conn.execute("CREATE TABLE keep_me (n int)")
        conn.execute("INSERT INTO keep_me VALUES (1), (2)")
    with pytest.raises(RestoreTargetNotEmpty, match=r"public\.keep_me"):
        restore_home(tmp_path / "c.tar.gz", tmp_path / "r2", kind="central", load=loader(other))
    assert _objects(other) == [("keep_me", 2)]
    assert not (tmp_path / "r2").exists()


def _rewrite(archive: Path, out: Path, *, member: str | None = None, manifest_edit=None) -> None:
    """A copy of ``archive`` with one byte of ``member`` flipped, or its manifest edited."""
    with tarfile.open(archive, "r:gz") as src, tarfile.open(out, "w:gz") as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read()  # type: ignore[union-attr]
            if info.name == member:
                data = data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:]
            if info.name == MANIFEST and manifest_edit is not None:
                obj = json.loads(data)
                manifest_edit(obj)
                data = json.dumps(obj).encode()
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))


def test_a_damaged_dump_or_one_too_new_for_the_local_pg_restore_is_refused_before_loading(
    tmp_path, config, store, pg_server
) -> None:
    chain = enrol(store)
    chain.extend(5)
    Ingestor(store).ingest(chain.batch(1, 5))
    _backup(config, tmp_path / "c.tar.gz")
    target = _empty_database(pg_server)

    _rewrite(tmp_path / "c.tar.gz", tmp_path / "bad.tar.gz", member=DUMP_MEMBER)
    with pytest.raises(BackupError, match=r"database dump.*does not match its checksum"):
        restore_home(tmp_path / "bad.tar.gz", tmp_path / "r1", kind="central", load=loader(target))
    assert _objects(target) == [] and not (tmp_path / "r1").exists()

    def newer(obj: dict) -> None:
        obj["dump"]["pg_dump_major"], obj["dump"]["pg_dump_version"] = 99, "99.1"

    _rewrite(tmp_path / "c.tar.gz", tmp_path / "new.tar.gz", manifest_edit=newer)
    with pytest.raises(PgDumpTooNew) as caught:
        restore_home(tmp_path / "new.tar.gz", tmp_path / "r2", kind="central", load=loader(target))
    assert "pg_dump 99.1" in caught.value.message and "postgresql-client-99" in caught.value.message
    assert _objects(target) == [] and not (tmp_path / "r2").exists()

    def newer_server(obj: dict) -> None:
        obj["dump"]["server_version"] = "99.1"

    _rewrite(tmp_path / "c.tar.gz", tmp_path / "server.tar.gz", manifest_edit=newer_server)
    with pytest.raises(PgBackupFailed, match="not loaded into an older server"):
        restore_home(tmp_path / "server.tar.gz", tmp_path / "r5", kind="central", load=loader(target))
    assert _objects(target) == [] and not (tmp_path / "r5").exists()

    def future_schema(obj: dict) -> None:
        obj["dump"]["schema_version"] = len(pg_steps()) + 1

    _rewrite(tmp_path / "c.tar.gz", tmp_path / "future.tar.gz", manifest_edit=future_schema)
    with pytest.raises(Exception, match="schema version") as caught_schema:
        restore_home(tmp_path / "future.tar.gz", tmp_path / "r3", kind="central", load=loader(target))
    assert getattr(caught_schema.value, "code", None) == "schema_too_new"
    assert _objects(target) == [] and not (tmp_path / "r3").exists()

    # An archive with a dump is no agent's: yibao-agent's restore (no loader) refuses it.
    with pytest.raises(BackupError, match="yibao-central restore"):
        restore_home(tmp_path / "c.tar.gz", tmp_path / "r4", kind="central")
    assert not (tmp_path / "r4").exists()


def test_no_tool_of_a_major_that_can_read_the_server_says_what_to_install() -> None:
    with pytest.raises(PgToolMissing) as caught:
        find_tool("pg_dump", at_least=99, prefer=99)
    assert caught.value.code == "pg_tools_missing"
    assert "apt-get install postgresql-client-99" in caught.value.message
    assert "PG_BINDIR" in caught.value.message
    found = find_tool("pg_restore", at_least=1, prefer=int(find_bindir().parent.name))
    assert found.major == int(find_bindir().parent.name) and found.path.name == "pg_restore"


def _wrapping_bindir(root: Path, real: Path, *, fail_dump: bool = False) -> Path:
    """``PG_BINDIR`` scripts that log argv and the PG* environment, then run the real tool (or, for a
    failing pg_dump, write half a file and exit 1 like a dump that lost its connection)."""
    bindir = root / "bin"
    bindir.mkdir()
    for name in ("pg_dump", "pg_restore"):
        body = f'echo "$@" >> {root}/argv.log\nenv | grep "^PG" >> {root}/env.log\n'
        if fail_dump and name == "pg_dump":
            body += (
                f'case "$1" in --version) exec {real}/{name} "$@";; esac\n'
                'for a in "$@"; do case "$a" in --file=*) echo PGDMP-half > "${a#--file=}";; esac; done\n'
                'echo "pg_dump: error: connection to server lost" >&2\nexit 1\n'
            )
        else:
            body += f'exec {real}/{name} "$@"\n'
        (bindir / name).write_text("#!/bin/sh\n" + body)
        (bindir / name).chmod(0o755)
    return bindir


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "yibao-central"), *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_cli_backup_and_restore_with_a_password_that_never_reaches_argv_or_output(
    tmp_path, config, store, pg_server
) -> None:
    """A role that must log in with a password (scram on loopback, for this role only): the password is in
    the DSN of central.json; the tools get it from a private PGPASSFILE, never their command line."""
    role, password = f"pwuser{os.getpid()}", "s3cret:pa\\ss"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), password))
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
    hba_text = hba.read_text() if os.access(hba, os.R_OK) else None
    if hba_text is None:  # the cluster belongs to the postgres user when the tests run as root
        hba_text = subprocess.run(["cat", str(hba)], capture_output=True, text=True, check=True).stdout
    line = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
    _write_as_cluster_owner(pg_server, hba, line + hba_text)
    try:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
            db = f"pwdb{os.getpid()}"
            conn.execute(f'CREATE DATABASE "{db}" OWNER {role}')
            target = f"pwtarget{os.getpid()}"
            conn.execute(f'CREATE DATABASE "{target}" OWNER {role}')
        base = f"host=127.0.0.1 port={pg_server.port} user={role}"
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(f"{base} dbname={db}").close()  # the password is really needed
        escaped = password.replace("\\", "\\\\")
        dsn = f"{base} dbname={db} password='{escaped}'"
        home = config.home
        (home / CONFIG_NAME).write_text(json.dumps({"database": dsn}))
        with PgStore(dsn, create=True) as pw_store:  # the role owns the schema, as `init` makes it
            chain = enrol(pw_store)
            chain.extend(5)
            assert Ingestor(pw_store).ingest(chain.batch(1, 5)).code == "stored"

        env = {**os.environ, "PG_BINDIR": str(_wrapping_bindir(tmp_path, find_bindir()))}
        env.pop("PGPASSWORD", None)
        out = _cli("--home", str(home), "-v", "backup", str(tmp_path / "c.tar.gz"), env=env)
        assert out.returncode == 0, out.stderr
        assert "with a dump of the database" in out.stdout

        refused = _cli("--home", str(tmp_path / "r0"), "restore", str(tmp_path / "c.tar.gz"), "--database",
                       f"{base} dbname={target} password=x", env=env)  # fmt: skip
        assert refused.returncode == 1 and "~/.pgpass" in refused.stderr and not (tmp_path / "r0").exists()

        passfile = tmp_path / "pgpass"
        passfile.write_text(f"*:*:*:{role}:" + password.replace("\\", "\\\\").replace(":", "\\:") + "\n")
        passfile.chmod(0o600)
        restore_env = {**env, "PGPASSFILE": str(passfile)}
        restored = tmp_path / "restored"
        out = _cli("--home", str(restored), "-v", "restore", str(tmp_path / "c.tar.gz"), "--database",
                   f"{base} dbname={target}", env=restore_env)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "loaded the PostgreSQL dump" in out.stdout and "schema version" in out.stdout

        listed = _cli("--home", str(restored), "agents", "list", env=restore_env)
        assert listed.returncode == 0, listed.stderr
        assert chain.agent_id in listed.stdout and "seq 5" in listed.stdout

        again = _cli("--home", str(tmp_path / "r2"), "restore", str(tmp_path / "c.tar.gz"), "--database",
                     f"{base} dbname={target}", env=restore_env)  # fmt: skip
        assert again.returncode == 1 and "is not empty" in again.stderr
        assert "nothing was changed" in again.stderr
        assert not (tmp_path / "r2").exists()

        argv_log = (tmp_path / "argv.log").read_text()
        assert "--format=custom" in argv_log
        assert "--single-transaction" in argv_log and "--no-owner" in argv_log
        for text in (argv_log, out.stdout, out.stderr, again.stderr, refused.stderr):
            assert password not in text and "s3cret" not in text
        env_log = (tmp_path / "env.log").read_text()
        assert "PGPASSFILE=" in env_log and "s3cret" not in env_log
    finally:
        _write_as_cluster_owner(pg_server, hba, hba_text)
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")


def _write_as_cluster_owner(server: PgServer, path: Path, text: str) -> None:
    if server.user:
        subprocess.run(["runuser", "-u", server.user, "--", "tee", str(path)], input=text, text=True,
                       capture_output=True, check=True)  # fmt: skip
    else:
        path.write_text(text)


def test_a_failed_pg_dump_leaves_no_archive_behind(tmp_path, config, store, monkeypatch) -> None:
    env = {**os.environ, "PG_BINDIR": str(_wrapping_bindir(tmp_path, find_bindir(), fail_dump=True))}
    out = _cli("--home", str(config.home), "backup", str(tmp_path / "c.tar.gz"), env=env)
    assert out.returncode == 1
    assert "pg_dump failed" in out.stderr and "connection to server lost" in out.stderr
    assert not list(tmp_path.glob("c.tar.gz*"))  # no archive, no .part

    monkeypatch.setenv("PG_BINDIR", env["PG_BINDIR"])
    with pytest.raises(PgBackupFailed) as caught:
        _backup(config, tmp_path / "d.tar.gz")
    assert caught.value.code == "pg_backup_failed"
    assert not list(tmp_path.glob("d.tar.gz*"))


def test_a_sqlite_centre_backup_stays_format_1_and_refuses_database(tmp_path, pg_server) -> None:
    """A centre on SQLite keeps writing archives every release reads; --database has nothing to load."""
    home = tmp_path / "sqlite-centre"
    init_home(CentralConfig(home=home, insecure_dev=True))
    out = _cli("--home", str(home), "backup", str(tmp_path / "s.tar.gz"))
    assert out.returncode == 0, out.stderr
    manifest = read_manifest(tmp_path / "s.tar.gz")
    assert manifest.dump is None and json.loads(manifest.to_json())["format"] == "yibao-backup/1"
    target = _empty_database(pg_server)
    refused = _cli("--home", str(tmp_path / "r"), "restore", str(tmp_path / "s.tar.gz"), "--database", target)
    assert refused.returncode == 1 and "leave out --database" in refused.stderr
    assert not (tmp_path / "r").exists() and _objects(target) == []
