"""The PostgreSQL part of a centre's backup: ``pg_dump -Fc`` while collectors run, ``pg_restore`` into an
empty database.

``protocol.backup`` archives the home and calls ``dump``/``load`` here for the data, which lives in the
server. Why it is shaped so:

- **Consistent while running.** ``pg_dump`` reads everything in one repeatable-read snapshot, so a dump
  taken while collectors ingest holds each batch wholly or not at all, and every agent's head row agrees
  with its records. Nothing is paused. The schema version is read before and after: one that moved (an
  upgrade ran meanwhile) fails the backup rather than label the dump wrongly.
- **The right tools.** ``pg_dump`` refuses a server newer than itself, and ``pg_restore`` an archive
  written by a newer ``pg_dump``. So the tools are looked for by major version — ``PG_BINDIR``, Debian's
  ``/usr/lib/postgresql/N/bin`` and ``PATH`` — preferring the server's own major; the manifest keeps the
  ``pg_dump`` major, so a restore on a machine with only older tools is refused before it starts, saying
  which ``postgresql-client-N`` to install; and the server's, so a dump is never loaded into an older
  server (PostgreSQL does not support a downgrade, and a newer dump's SQL can fail half-way there).
- **Only into an empty database.** Restoring over a live centre would mix two histories. A target holding
  any table, view, sequence, function or type of its own is refused and nothing is changed;
  ``--single-transaction`` makes a load that fails half-way leave the target as empty as it was.
  ``--no-owner``: the restoring role owns what it creates, as ``init`` would have made it.
- **Another database.** A restore normally goes to the database the archive's ``central.json`` names (a
  machine rebuilt at the same address). ``restore --database DSN`` loads it elsewhere and writes that DSN
  into the restored ``central.json``, so the restored home never points at the old, perhaps live, database.
  That DSN must not carry a password: it is on the command line.
- **Passwords never in argv or logs.** The tools get the DSN without its password on their command line;
  a password the DSN carries reaches them through a ``PGPASSFILE`` written 0600 in a private temporary
  directory for the run and deleted after (``PGPASSWORD`` or ``~/.pgpass`` of the service user work as
  libpq documents, untouched). Messages name the server by ``redact_dsn``.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from central.config import CONFIG_NAME, CentralConfig
from central.errors import CentralError, SchemaTooNew
from protocol.backup import Dump, Load

from .pg_schema import pg_steps
from .postgres import DatabaseUnavailable, PgStore, redact_dsn

__all__ = [
    "PgBackupFailed",
    "PgDumpTooNew",
    "PgToolMissing",
    "RestoreTargetNotEmpty",
    "check_database_option",
    "dumper",
    "find_tool",
    "loader",
]

_VERSION = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")


class PgBackupFailed(CentralError):
    """``pg_dump`` or ``pg_restore`` could not do its part; the message says what to do."""

    code = "pg_backup_failed"


class PgToolMissing(PgBackupFailed):
    """No ``pg_dump``/``pg_restore`` of a major version that can read the server or the dump."""

    code = "pg_tools_missing"


class PgDumpTooNew(PgToolMissing):
    """The dump was written by a newer ``pg_dump`` than any ``pg_restore`` here can read."""

    code = "pg_dump_too_new"


class RestoreTargetNotEmpty(PgBackupFailed):
    """The database to restore into already holds objects: restore goes into an empty one only."""

    code = "restore_target_not_empty"


@dataclass(frozen=True)
class Tool:
    path: Path
    major: int
    version: str


def _candidates(name: str) -> Iterator[Path]:
    env = os.environ.get("PG_BINDIR")
    if env:
        yield Path(env) / name
    for bindir in glob.glob("/usr/lib/postgresql/*/bin"):
        yield Path(bindir) / name
    found = shutil.which(name)
    if found:
        yield Path(found)


def _tool_version(path: Path) -> Tool | None:
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    return Tool(path, major, f"{major}.{match.group(2) or 0}")


def _install_hint(major: int) -> str:
    return (
        f"install PostgreSQL {major}'s client tools (Debian: `apt-get install postgresql-client-{major}`, "
        "from apt.postgresql.org when Debian's release lacks it) or point PG_BINDIR at their bin directory"
    )


def find_tool(name: str, *, at_least: int, prefer: int) -> Tool:
    """``name`` (``pg_dump``/``pg_restore``) of major ``prefer`` if here, else the oldest newer than
    ``at_least``: the tool closest to the server's own version that can still read what it must."""
    tools: dict[Path, Tool] = {}
    for path in _candidates(name):
        real = path.resolve()
        if real not in tools and path.is_file() and (tool := _tool_version(path)) is not None:
            tools[real] = tool
    usable = [t for t in tools.values() if t.major >= at_least]
    usable.sort(key=lambda t: (t.major != prefer, t.major))
    if usable:
        return usable[0]
    have = ", ".join(sorted({str(t.major) for t in tools.values()})) or "none"
    raise PgToolMissing(
        f"no {name} of PostgreSQL {at_least} or newer on this machine (found: {have}; looked in PG_BINDIR, "
        f"/usr/lib/postgresql/*/bin and PATH): {_install_hint(max(at_least, prefer))}"
    )


@contextmanager
def _tool_login(dsn: str) -> Iterator[tuple[str, dict[str, str]]]:
    """The DSN without its password (for the tool's ``--dbname``) and the environment to run it in.

    A password in the DSN goes into a ``PGPASSFILE`` only this user can read, removed after the run: never
    the command line, which every user of the machine can list.
    """
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise PgBackupFailed(
            "the `database` setting is not a DSN libpq can parse; fix it in central.json"
        ) from None
    password = info.pop("password", None)
    conninfo = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})
    env = dict(os.environ)
    if password is None:
        yield conninfo, env
        return
    with tempfile.TemporaryDirectory(prefix="yibao-pgpass-") as private:  # 0700
        passfile = Path(private) / "pgpass"
        escaped = str(password).replace("\\", "\\\\").replace(":", "\\:")
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"*:*:*:*:{escaped}\n")
        env["PGPASSFILE"] = str(passfile)
        env.pop("PGPASSWORD", None)  # the DSN's password is the one meant
        yield conninfo, env


def _run(argv: list[str], env: dict[str, str], what: str, dsn: str) -> None:
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise PgBackupFailed(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()][-5:]
        detail = " / ".join(lines) or f"exit status {proc.returncode}"
        password = psycopg.conninfo.conninfo_to_dict(dsn).get("password")
        if password:
            detail = detail.replace(str(password), "***")
        raise PgBackupFailed(f"{what} failed for {redact_dsn(dsn)}: {detail}")


def _connect(dsn: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL at {redact_dsn(dsn)}: {str(exc).strip()}; check that the server "
            "is up and the DSN"
        ) from None


def _schema_version(conn: psycopg.Connection[Any], where: str) -> int:
    if not conn.execute("SELECT to_regclass('_migrations') IS NOT NULL").fetchone()[0]:  # type: ignore[index]
        raise PgBackupFailed(
            f"the PostgreSQL database {where} holds no yibao-central schema: is `database` in central.json "
            "the centre's database?"
        )
    return int(conn.execute("SELECT coalesce(max(version), 0) FROM _migrations").fetchone()[0])  # type: ignore[index]


def dumper(dsn: str) -> Dump:
    """The ``protocol.backup.Dump`` for the centre's database at ``dsn``."""

    def dump(dest: Path) -> dict[str, Any]:
        where = redact_dsn(dsn)
        with _connect(dsn) as conn:
            server_major = int(conn.info.server_version) // 10000
            server_version = str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]  # type: ignore[index]
            before = _schema_version(conn, where)
        tool = find_tool("pg_dump", at_least=server_major, prefer=server_major)
        with _tool_login(dsn) as (conninfo, env):
            argv = [
                str(tool.path), "--format=custom", "--no-password", f"--file={dest}", f"--dbname={conninfo}",
            ]  # fmt: skip
            _run(argv, env, "pg_dump", dsn)
        with _connect(dsn) as conn:
            after = _schema_version(conn, where)
        if after != before:
            raise PgBackupFailed(
                f"the schema of {where} moved from version {before} to {after} during the backup (an upgrade "
                "ran); run the backup again"
            )
        return {
            "engine": "postgresql",
            "source": where,
            "server_version": server_version,
            "pg_dump_major": tool.major,
            "pg_dump_version": tool.version,
            "schema_version": before,
            "described": (
                f"{where}, PostgreSQL {server_version}, schema version {before}, by pg_dump {tool.version}"
            ),
        }

    return dump


def _objects(conn: psycopg.Connection[Any]) -> list[str]:
    """What the database holds of its own (not the system's): relations, functions, types; a few names."""
    system = (
        "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' "
        "AND n.nspname NOT LIKE 'pg\\_temp%'"
    )
    rows = conn.execute(
        f"SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE {system} "
        f"UNION ALL SELECT n.nspname || '.' || p.proname || '()' FROM pg_proc p "
        f"JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {system} "
        f"UNION ALL SELECT n.nspname || '.' || t.typname FROM pg_type t "
        f"JOIN pg_namespace n ON n.oid = t.typnamespace "
        f"WHERE {system} AND t.typtype NOT IN ('b', 'p') AND t.typrelid = 0 AND t.typelem = 0 "
        f"ORDER BY 1"
    ).fetchall()
    return [str(r[0]) for r in rows]


def _target_dsn(stage: Path, database: str | None) -> str:
    """The database to load into: ``--database``, else the one the archive's ``central.json`` names; with
    ``--database`` the staged ``central.json`` is rewritten to name it."""
    settings_path = stage / CONFIG_NAME
    try:
        settings = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.exists() else {}
    except ValueError:
        raise PgBackupFailed(f"the backup's {CONFIG_NAME} is not JSON; the archive is damaged") from None
    if database is None:
        archived = settings.get("database", "sqlite")
        if archived == "sqlite":
            raise PgBackupFailed(
                f"the backup holds a PostgreSQL dump but its {CONFIG_NAME} names no PostgreSQL database: "
                "pass --database DSN (an empty database) to restore it"
            )
        return str(archived)
    CentralConfig(home=stage, database=database)  # the same check `database` gets in central.json
    settings["database"] = database
    tmp = settings_path.with_name(CONFIG_NAME + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(settings, fh, indent=1)
    os.replace(tmp, settings_path)
    return database


def check_database_option(database: str | None) -> None:
    """``--database`` names a PostgreSQL DSN without a password (argv is visible to every user)."""
    if database is None:
        return
    try:
        info = psycopg.conninfo.conninfo_to_dict(database)
    except psycopg.ProgrammingError:
        raise PgBackupFailed(
            "--database is not a DSN libpq can parse (postgresql://USER@HOST/DB or 'host=… dbname=…')"
        ) from None
    if info.get("password"):
        raise PgBackupFailed(
            "leave the password out of --database (a command line is visible to every user of the machine): "
            "put it in ~/.pgpass or a file PGPASSFILE names"
        )


def loader(database: str | None = None) -> Load:
    """The ``protocol.backup.Load`` for a centre's dump: into ``database`` (``--database``) or the DSN the
    archive's ``central.json`` names."""
    check_database_option(database)

    def load(dump_file: Path, info: dict[str, Any], stage: Path) -> str:
        if info.get("engine") != "postgresql":
            raise PgBackupFailed(
                f"the backup's dump is of {info.get('engine')!r}, which this release cannot load"
            )
        version = int(info["schema_version"])
        if version > len(pg_steps()):
            raise SchemaTooNew(
                f"the backup's database is at schema version {version} but this yibao-central knows only "
                f"{len(pg_steps())}; restore it with the release that made it or a newer one"
            )
        dsn = _target_dsn(stage, database)
        where = redact_dsn(dsn)
        with _connect(dsn) as conn:
            target_major = int(conn.info.server_version) // 10000
            held = _objects(conn)
        if held:
            raise RestoreTargetNotEmpty(
                f"the database {where} is not empty ({len(held)} objects, e.g. {', '.join(held[:3])}): "
                "restore loads into an empty database only, never over a centre's data. Create a new one "
                "(`createdb -O ROLE NAME`) and pass it with --database, or empty this one if it is truly "
                "yours to replace; nothing was changed"
            )
        source_major = int(str(info["server_version"]).split(".")[0])
        if target_major < source_major:
            raise PgBackupFailed(
                f"the backup's database ran on PostgreSQL {info['server_version']} and {where} runs "
                f"{target_major}: a dump is not loaded into an older server (PostgreSQL does not support "
                f"it); restore into a server of version {source_major} or newer; nothing was changed"
            )
        dump_major = int(info["pg_dump_major"])
        try:
            tool = find_tool("pg_restore", at_least=dump_major, prefer=max(target_major, dump_major))
        except PgToolMissing as exc:
            raise PgDumpTooNew(
                f"the backup's dump was written by pg_dump {info.get('pg_dump_version')}, which only "
                f"pg_restore {dump_major} or newer reads; {exc.message}"
            ) from None
        with _tool_login(dsn) as (conninfo, env):
            argv = [
                str(tool.path), "--single-transaction", "--no-owner", "--no-password", f"--dbname={conninfo}",
                str(dump_file),
            ]  # fmt: skip
            _run(argv, env, "pg_restore (nothing was loaded: it runs as one transaction)", dsn)
        # Loaded and committed: a refusal from here on leaves the data in the database (and no home), so
        # it says to empty the database before another attempt.
        again = "; the database now holds the loaded dump: drop and create it again before another restore"
        with _connect(dsn) as conn:
            loaded = _schema_version(conn, where)
        if loaded != version:
            raise PgBackupFailed(
                f"{where} holds schema version {loaded} after the restore, the backup said {version}: the "
                f"dump does not match its manifest; restore an older backup{again}"
            )
        try:
            with PgStore(dsn) as store:  # opens as `serve` will; migrates an older schema forward
                upgraded = store.applied_migrations
        except CentralError as exc:
            raise PgBackupFailed(f"the restored database does not open: {exc.message}{again}") from None
        note = f", then migrated {len(upgraded)} step(s) forward" if upgraded else ""
        return (
            f"loaded the PostgreSQL dump of {info.get('source')} (schema version {version}) into {where} "
            f"with pg_restore {tool.version}{note}"
        )

    return load
