"""Backup and restore of a home (agent or centre) while its server runs.

A home is SQLite databases plus small files (config, keys, certificates, TUF metadata). Copying a
live database file byte by byte can catch it between a WAL checkpoint's writes, so databases go
through SQLite's online backup API: a consistent snapshot taken in steps, each step holding the
read lock only briefly so settlements keep committing meanwhile. Every other file is copied aside
first and archived as copied, so one the server rewrites meanwhile still matches its checksum.

The archive is a tar (gzip) with ``MANIFEST.json`` first: the kind of home, when, and the SHA-256
and size of every member. ``restore`` checks every member against the manifest before it writes
anything, writes into a home that does not exist or is empty (never over a live one), and runs
``PRAGMA integrity_check`` on each restored database. Both sides use this module and import nothing
of each other, so it lives in ``protocol``.

A centre whose database is a PostgreSQL server keeps its data outside the home. Its backup adds one
more member, a dump of that database (``DUMP_MEMBER``), checksummed in the manifest like the rest; the
caller makes it and loads it (``dump``/``load``: ``central.storage.pg_backup`` runs ``pg_dump`` and
``pg_restore``), because this module imports nothing of ``central``. Such an archive says format
``yibao-backup/2``, so an older release refuses it by its format rather than restoring the home without its
data; an archive without a dump stays ``yibao-backup/1``, which every release reads. ``restore`` loads the
dump only after every member checked out and before it moves the home into place: a load that fails leaves
no home behind.

What a backup holds is as sensitive as the home: private keys, the HIS token, personal data in the
databases. It is written with mode 0600; where it goes is the operator's to protect.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import ProtocolError

__all__ = [
    "DUMP_MEMBER",
    "BackupError",
    "Dump",
    "Load",
    "Manifest",
    "add_parsers",
    "backup_database",
    "backup_home",
    "read_manifest",
    "restore_home",
    "run_cli",
]

MANIFEST = "MANIFEST.json"
FORMAT = "yibao-backup/1"
#: The format of an archive that holds a database dump: releases that know only /1 refuse it.
FORMAT_DUMP = "yibao-backup/2"
#: The archive member holding the database dump (outside ``home/``: it is no file of the home).
DUMP_MEMBER = "database.dump"
#: SQLite's side files: the snapshot of the database replaces them.
_SIDE_FILES = ("-wal", "-shm", "-journal")
_DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_NAMES = {"agent": "an agent", "central": "the centre"}


class BackupError(ProtocolError):
    """A backup that cannot be made, or an archive that must not be restored."""

    code = "backup_failed"


#: Writes the database dump to the path it is given; answers what ``Load`` needs to know of it (JSON
#: values: the tools' and the schema's versions, where it came from), which the manifest keeps.
Dump = Callable[[Path], dict[str, Any]]
#: Loads the dump (its path, what ``Dump`` answered, the staged home, which it may amend, e.g. to name
#: another database); answers a sentence saying what it loaded where. Raising leaves no home behind.
Load = Callable[[Path, dict[str, Any], Path], str]


@dataclass(frozen=True)
class Manifest:
    kind: str
    created_at: str
    #: member path → (sha256 hex, size, "database" | "file")
    members: dict[str, tuple[str, int, str]]
    #: The database dump, when the home's data lives in a server: ``sha256``, ``size`` and what ``Dump``
    #: answered. None for a home that holds all its data.
    dump: dict[str, Any] | None = field(default=None)

    def to_json(self) -> bytes:
        obj: dict[str, Any] = {
            "format": FORMAT if self.dump is None else FORMAT_DUMP,
            "kind": self.kind,
            "created_at": self.created_at,
            "members": {k: list(v) for k, v in sorted(self.members.items())},
        }
        if self.dump is not None:
            obj["dump"] = {"member": DUMP_MEMBER, **self.dump}
        return json.dumps(obj, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            obj = json.loads(data)
            if obj.get("format") not in (FORMAT, FORMAT_DUMP):
                raise BackupError(
                    f"not a backup this release reads (format {obj.get('format')!r}; it reads {FORMAT} and "
                    f"{FORMAT_DUMP}): restore it with the release that made it, or a newer one"
                )
            members = {str(k): (str(v[0]), int(v[1]), str(v[2])) for k, v in obj["members"].items()}
            dump = obj.get("dump")
            if obj["format"] == FORMAT_DUMP:
                if not isinstance(dump, dict) or dump.get("member") != DUMP_MEMBER:
                    raise ValueError(f"format {FORMAT_DUMP} names no {DUMP_MEMBER}")
                dump = {k: v for k, v in dump.items() if k != "member"}
                str(dump["sha256"])
                int(dump["size"])
            elif dump is not None:
                raise ValueError(f"format {FORMAT} holds no dump")
            return cls(str(obj["kind"]), str(obj["created_at"]), members, dump)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise BackupError(f"the backup's {MANIFEST} is damaged: {exc}") from None


def backup_database(src: Path, dest: Path, *, step_pages: int = 256) -> None:
    """A consistent copy of the live database ``src`` at ``dest``, integrity-checked and fsynced."""
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30)
    try:
        target = sqlite3.connect(dest)
        try:
            # Small steps with a pause: the writer's transactions get the lock between them.
            source.backup(target, pages=step_pages, sleep=0.002)
            target.execute("PRAGMA journal_mode=DELETE")  # a self-contained file, no -wal beside it
            (ok,) = target.execute("PRAGMA integrity_check").fetchone()
            if ok != "ok":
                raise BackupError(f"the copy of {src.name} fails its integrity check: {ok}")
        finally:
            target.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot back up {src}: {exc}") from None
    finally:
        source.close()
    with open(dest, "rb") as fh:
        os.fsync(fh.fileno())


def _is_database(path: Path) -> bool:
    if path.suffix not in _DB_SUFFIXES:
        return False
    with open(path, "rb") as fh:
        return fh.read(16) == b"SQLite format 3\x00"


def _walk(home: Path) -> Iterator[Path]:
    for path in sorted(home.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue  # sockets, fifos and links are not part of a home's state
        if any(path.name.endswith(db + side) for db in _DB_SUFFIXES for side in _SIDE_FILES):
            continue
        yield path


def _sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def backup_home(
    home: Path, out: Path, *, kind: str, exclude: tuple[str, ...] = (), dump: Dump | None = None
) -> Manifest:
    """Write ``out`` (tar.gz, 0600) holding ``home``, databases by online backup.

    ``exclude``: top-level names left out (e.g. a drop folder inside the home). ``dump``: the home's data
    lives in a database server; its dump becomes the member ``DUMP_MEMBER``. It is taken first, into the
    scratch directory, so a dump that fails leaves nothing at ``out`` (nor a ``.part`` beside it).
    """
    home = Path(home)
    if not home.is_dir():
        raise BackupError(f"{home} is not a home directory; give the --home of the agent or centre")
    out = Path(out)
    members: dict[str, tuple[str, int, str]] = {}
    with tempfile.TemporaryDirectory(prefix="yibao-backup-") as scratch:
        dumped: dict[str, Any] | None = None
        dump_file = Path(scratch) / DUMP_MEMBER
        if dump is not None:
            info = dump(dump_file)
            sha, size = _sha256(dump_file)
            dumped = {"sha256": sha, "size": size, **info}
        staged: list[tuple[str, Path]] = []
        for path in _walk(home):
            rel = path.relative_to(home).as_posix()
            if rel.split("/", 1)[0] in exclude or path.resolve() == out.resolve():
                continue
            if _is_database(path):
                copy = Path(scratch) / f"{len(staged)}.db"
                backup_database(path, copy)
                staged.append((rel, copy))
                members[rel] = (*_sha256(copy), "database")
            else:
                # A copy first: a file the server appends to or replaces meanwhile (a log, TUF
                # metadata) must be archived exactly as it was hashed.
                copy = Path(scratch) / f"{len(staged)}.file"
                shutil.copyfile(path, copy)
                shutil.copymode(path, copy)
                staged.append((rel, copy))
                members[rel] = (*_sha256(copy), "file")
        manifest = Manifest(kind, datetime.now(UTC).isoformat(timespec="seconds"), members, dumped)
        tmp = out.with_name(out.name + ".part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
                data = manifest.to_json()
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mode = len(data), 0o600
                tar.addfile(info, io.BytesIO(data))
                for rel, src in staged:
                    info = tar.gettarinfo(str(src), arcname=f"home/{rel}")
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    with open(src, "rb") as fh:
                        tar.addfile(info, fh)
                if dumped is not None:  # last: the biggest member, and restore needs the home's first
                    info = tar.gettarinfo(str(dump_file), arcname=DUMP_MEMBER)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    info.mode = 0o600
                    with open(dump_file, "rb") as fh:
                        tar.addfile(info, fh)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return manifest


def _safe(name: str) -> str:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not name.startswith("home/"):
        raise BackupError(f"the backup holds a path outside a home ({name!r}); refusing it")
    return name[len("home/") :]


def restore_home(archive: Path, home: Path, *, kind: str, load: Load | None = None) -> Manifest:
    """Restore ``archive`` into ``home``, which must not exist or be empty; everything is checked first.

    An archive holding a database dump needs ``load``, called once every member matched its checksum and
    before the home is moved into place; what it answers is kept as ``Manifest.dump["loaded"]``.
    """
    home = Path(home)
    if home.exists() and any(home.iterdir()):
        raise BackupError(
            f"{home} is not empty: restore into a new, empty home (stop the server, move the old home "
            "aside, then restore), never over a live one"
        )
    try:
        tar = tarfile.open(archive, mode="r:gz")
    except (OSError, tarfile.TarError) as exc:
        raise BackupError(f"cannot read the backup {archive}: {exc}") from None
    home.parent.mkdir(parents=True, exist_ok=True)
    # Staged beside the home (one file system), moved into place only when everything checked out.
    with tar, tempfile.TemporaryDirectory(prefix=".yibao-restore-", dir=home.parent) as scratch:
        first = tar.next()
        if first is None or first.name != MANIFEST:
            raise BackupError(f"{archive} has no {MANIFEST} first: not a Yibao Edge backup")
        manifest = Manifest.from_json(tar.extractfile(first).read())  # type: ignore[union-attr]
        if manifest.kind != kind:
            raise BackupError(
                f"this backup holds the home of {_NAMES.get(manifest.kind, manifest.kind)}, not of "
                f"{_NAMES.get(kind, kind)}: restore it with "
                f"yibao-{manifest.kind} restore"
            )
        if manifest.dump is not None and load is None:
            raise BackupError(
                f"this backup holds a database dump, which yibao-{kind} restore cannot load: restore it "
                "with yibao-central restore"
            )
        seen: set[str] = set()
        stage = Path(scratch) / "home"
        dump_file = Path(scratch) / DUMP_MEMBER
        dump_seen = False
        for member in tar:
            if member is first:
                continue  # iterating a TarFile starts again from its first member
            if manifest.dump is not None and member.name == DUMP_MEMBER:
                if dump_seen or not member.isfile():
                    raise BackupError(f"the backup holds {DUMP_MEMBER!r} twice or not as a file; refusing it")
                dump_seen = True
                _extract(tar, member, dump_file)
                if _sha256(dump_file)[0] != manifest.dump["sha256"]:
                    raise BackupError(
                        f"{DUMP_MEMBER} (the database dump) in the backup does not match its checksum: the "
                        "archive is damaged; restore an older backup"
                    )
                continue
            rel = _safe(member.name)
            if not member.isfile() or rel not in manifest.members or rel in seen:  # no links, no extras
                raise BackupError(f"the backup holds {member.name!r}, which its manifest does not list once")
            seen.add(rel)
            target = stage / rel
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _extract(tar, member, target)
            if _sha256(target)[0] != manifest.members[rel][0]:
                raise BackupError(f"{rel} in the backup does not match its checksum: the archive is damaged")
        missing = sorted(set(manifest.members) - seen)
        if manifest.dump is not None and not dump_seen:
            missing.append(DUMP_MEMBER)
        if missing:
            raise BackupError(
                f"the backup lacks {len(missing)} member(s) its manifest lists, first {missing[0]}"
            )
        for rel, (_, _, what) in manifest.members.items():
            if what == "database":
                conn = sqlite3.connect(stage / rel)
                try:
                    (ok,) = conn.execute("PRAGMA integrity_check").fetchone()
                finally:
                    conn.close()
                if ok != "ok":
                    raise BackupError(f"the restored {rel} fails its integrity check: {ok}")
        if manifest.dump is not None and load is not None:
            stage.mkdir(parents=True, exist_ok=True, mode=0o700)  # a home of no files but the dump
            loaded = load(dump_file, dict(manifest.dump), stage)
            manifest = Manifest(
                manifest.kind, manifest.created_at, manifest.members, {**manifest.dump, "loaded": loaded}
            )
        if home.exists():
            home.rmdir()
        os.replace(stage, home)
        os.chmod(home, 0o700)
    return manifest


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    with tar.extractfile(member) as src, open(target, "wb") as dst:  # type: ignore[union-attr]
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    os.chmod(target, member.mode & 0o777)


def read_manifest(archive: Path) -> Manifest:
    """The manifest of an archive, without extracting anything."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST:
                raise BackupError(f"{archive} has no {MANIFEST} first: not a Yibao Edge backup")
            return Manifest.from_json(tar.extractfile(first).read())  # type: ignore[union-attr]
    except (OSError, tarfile.TarError) as exc:
        raise BackupError(f"cannot read the backup {archive}: {exc}") from None


def add_parsers(
    verbs: argparse._SubParsersAction,  # type: ignore[type-arg]
    what: str,
) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The ``backup`` and ``restore`` verbs, the same for ``yibao-agent`` and ``yibao-central``.

    Returns both parsers so a side can add its own options (the centre's ``restore --database``).
    """
    server = ", a PostgreSQL database by pg_dump" if what == "centre" else ""
    how = f"databases by SQLite's online backup{server}"
    b = verbs.add_parser("backup", help=f"archive the {what}'s home while it runs ({how})")
    b.add_argument("out", help="the archive to write (tar.gz, mode 0600: it holds keys and personal data)")
    r = verbs.add_parser(
        "restore",
        help=f"restore an archive into a new, empty {what} home (--home); never over a live one",
    )
    r.add_argument("archive", help="an archive written by 'backup'")
    return b, r


def run_cli(
    args: argparse.Namespace,
    home: str | None,
    kind: str,
    *,
    exclude: tuple[str, ...] = (),
    dump: Dump | None = None,
    load: Load | None = None,
) -> int:
    """Run ``backup`` or ``restore`` for ``home``; prints what was done, raises ``BackupError``.

    ``dump``/``load``: see ``backup_home`` and ``restore_home`` (the centre on PostgreSQL).
    """
    if not home:
        raise BackupError("no home: pass --home DIR or set $YIBAO_HOME")
    if args.verb == "backup":
        manifest = backup_home(Path(home), Path(args.out), kind=kind, exclude=exclude, dump=dump)
        dbs = sum(1 for _, _, what in manifest.members.values() if what == "database")
        print(f"wrote {args.out}: {len(manifest.members)} files ({dbs} databases), {manifest.created_at}")
        if manifest.dump is not None:
            print(f"with a dump of the database: {manifest.dump.get('described', 'yes')}")
        print("it holds the home's keys and personal data: keep it where only operators can read it")
        return 0
    manifest = restore_home(Path(args.archive), Path(home), kind=kind, load=load)
    print(f"restored the {kind} home of {manifest.created_at} into {home} ({len(manifest.members)} files)")
    if manifest.dump is not None:
        print(manifest.dump["loaded"])
    return 0
