"""Home backups (``protocol.backup``): databases by SQLite's online backup, everything checked on restore."""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
import threading
from pathlib import Path

import pytest

from protocol.backup import MANIFEST, BackupError, backup_home, restore_home


def make_home(root: Path) -> Path:
    home = root / "home"
    (home / "tls").mkdir(parents=True)
    (home / "agent.json").write_text('{"agent_id": "A-1"}')
    (home / "tls" / "client.key").write_bytes(b"secret key")
    conn = sqlite3.connect(home / "agent.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"row{i}",) for i in range(500)])
    conn.commit()
    conn.close()
    return home


def test_round_trip_while_a_writer_commits(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    stop = threading.Event()
    written = []

    def writer() -> None:
        conn = sqlite3.connect(home / "agent.db", timeout=30)
        while not stop.is_set():
            with conn:
                cur = conn.execute("INSERT INTO t (v) VALUES ('live')")
            written.append(cur.lastrowid)
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        manifest = backup_home(home, tmp_path / "b.tar.gz", kind="agent")
    finally:
        stop.set()
        thread.join()
    assert written, "the writer committed while the backup ran"
    assert (tmp_path / "b.tar.gz").stat().st_mode & 0o077 == 0
    assert manifest.members["agent.db"][2] == "database" and manifest.members["tls/client.key"][2] == "file"
    assert "agent.db-wal" not in manifest.members
    restored = restore_home(tmp_path / "b.tar.gz", tmp_path / "restored", kind="agent")
    assert restored.members == manifest.members
    new = tmp_path / "restored"
    assert (new / "tls" / "client.key").read_bytes() == b"secret key"
    conn = sqlite3.connect(new / "agent.db")
    (count,) = conn.execute("SELECT count(*) FROM t").fetchone()
    (first_live,) = conn.execute("SELECT min(n) FROM t WHERE v = 'live'").fetchone() or (None,)
    conn.close()
    # A consistent snapshot: the 500 rows, then a prefix of the live ones with no gap.
    assert 500 <= count <= 500 + len(written)
    if count > 500:
        assert first_live == 501
    assert not (new / "agent.db-wal").exists()


def test_restore_refuses_a_non_empty_home_and_another_kind(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    backup_home(home, tmp_path / "b.tar.gz", kind="agent")
    with pytest.raises(BackupError, match="not empty"):
        restore_home(tmp_path / "b.tar.gz", home, kind="agent")
    with pytest.raises(BackupError, match="home of an agent, not of the centre: restore it with yibao-agent"):
        restore_home(tmp_path / "b.tar.gz", tmp_path / "c", kind="central")
    assert not (tmp_path / "c").exists()


def _rewrite(src: Path, dest: Path, change) -> None:
    with tarfile.open(src, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(dest, "w:gz") as out:
        for member, data in change(members):
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))


def test_a_damaged_or_hostile_archive_restores_nothing(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    good = tmp_path / "b.tar.gz"
    backup_home(home, good, kind="agent")

    def flip_key(members):
        return [(m, b"other key" if m.name == "home/tls/client.key" else d) for m, d in members]

    def escape(members):
        out = list(members)
        evil = tarfile.TarInfo("home/../../evil")
        manifest = json.loads(out[0][1])
        manifest["members"]["../../evil"] = ["0" * 64, 1, "file"]
        out[0] = (out[0][0], json.dumps(manifest).encode())
        return [*out, (evil, b"x")]

    def drop_db(members):
        return [(m, d) for m, d in members if m.name != "home/agent.db"]

    for change, says in ((flip_key, "checksum"), (escape, "outside a home"), (drop_db, "lacks 1")):
        bad = tmp_path / f"{change.__name__}.tar.gz"
        _rewrite(good, bad, change)
        target = tmp_path / f"r-{change.__name__}"
        with pytest.raises(BackupError, match=says):
            restore_home(bad, target, kind="agent")
        assert not target.exists()
    assert not (tmp_path.parent / "evil").exists()
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(BackupError, match="cannot read"):
        restore_home(tmp_path / "junk.tar.gz", tmp_path / "r-junk", kind="agent")
    with tarfile.open(tmp_path / "nomanifest.tar.gz", "w:gz") as tar:
        tar.add(home / "agent.json", arcname="home/agent.json")
    with pytest.raises(BackupError, match=MANIFEST):
        restore_home(tmp_path / "nomanifest.tar.gz", tmp_path / "r-nm", kind="agent")
