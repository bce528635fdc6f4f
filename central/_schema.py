"""Schema and numbered migrations of ``central.db``.

Rules:

1. ``MIGRATIONS`` only grows; a shipped migration is never edited or reordered.
2. Each migration runs once, inside one transaction together with the row that records
   it in ``_migrations``; a crash mid-way leaves the database at the previous version.
3. ``PRAGMA user_version`` mirrors the number of applied migrations so tools can read it
   without knowing our tables; a database newer than this code is refused, not guessed at.

Money columns are INTEGER fen; STRICT tables make SQLite refuse anything else.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime

import sqlite_utils

from .errors import SchemaTooNew

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate", "schema_version"]


def _m001_initial(db: sqlite_utils.Database) -> None:
    db.create_table(
        "agents",
        {
            "agent_id": str,
            "fixmedins_code": str,
            "public_key": bytes,
            "key_fingerprint": str,
            "agent_version": str,
            "enrolled_at": str,
            "acked_seq": int,
            "head_hash": bytes,
            "last_seen": str,
            "revoked_at": str,
        },
        pk="agent_id",
        not_null=["fixmedins_code", "public_key", "key_fingerprint", "enrolled_at", "acked_seq", "head_hash"],
        defaults={"acked_seq": 0},
        strict=True,
    )
    db.create_table(
        "enrol_tokens",
        {
            "token_hash": str,
            "fixmedins_code": str,
            "created_at": str,
            "expires_at": str,
            "used_at": str,
            "agent_id": str,
        },
        pk="token_hash",
        not_null=["fixmedins_code", "created_at", "expires_at"],
        strict=True,
    )
    # The chain as received: every entry, valid or not, so the chain stays continuous.
    db.create_table(
        "records",
        {
            "agent_id": str,
            "seq": int,
            "hash": bytes,
            "kind": str,
            "status": str,  # ok | rejected | lost
            "reject_code": str,
            "reject_message": str,
            "raw": bytes,
            "received_at": str,
        },
        pk=("agent_id", "seq"),
        not_null=["hash", "status", "raw", "received_at"],
        strict=True,
    )
    db.create_table(
        "settlements",
        {
            "setl_id": str,
            "agent_id": str,
            "seq": int,
            "kind": str,
            "his_setl_no": str,
            "fixmedins_code": str,
            "psn_no": str,
            "mdtrt_id": str,
            "med_type": str,
            "setl_time": str,
            "setl_date": str,
            "medfee_sumamt": int,
            "fund_pay_sumamt": int,
            "acct_pay": int,
            "psn_cash_pay": int,
            "orig_setl_id": str,
        },
        pk="setl_id",
        not_null=["agent_id", "seq", "kind", "fixmedins_code", "setl_time", "setl_date", "medfee_sumamt"],
        strict=True,
    )
    db["settlements"].create_index(["fixmedins_code", "setl_date"])
    db["settlements"].create_index(["agent_id", "seq"], unique=True)
    db.create_table(
        "security_events",
        {
            "id": int,
            "time": str,
            "agent_id": str,
            "code": str,
            "message": str,
            "remote": str,
        },
        pk="id",
        not_null=["time", "code", "message"],
        strict=True,
    )
    db["security_events"].create_index(["agent_id", "time"])


def _m002_security_event_repeats(db: sqlite_utils.Database) -> None:
    """Repeats of the same event from the same source fold into one row (bounded growth)."""
    db.execute("ALTER TABLE security_events ADD COLUMN repeats INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE security_events ADD COLUMN last_time TEXT")


def _m003_identification(db: sqlite_utils.Database) -> None:
    """How each person was identified at the desk, and each e-voucher's first use.

    A voucher is single-use across hospitals: its nonce is held here with the hospital that
    used it first; the same nonce from another hospital is refused (``evoucher_replayed``).
    """
    for column in ("mdtrt_cert_type", "mdtrt_cert_no", "card_sn"):
        db.execute(f"ALTER TABLE settlements ADD COLUMN {column} TEXT")
    db.create_table(
        "evoucher_uses",
        {"nonce": str, "fixmedins_code": str, "setl_id": str, "agent_id": str, "seq": int, "used_at": str},
        pk="nonce",
        not_null=["fixmedins_code", "setl_id", "agent_id", "seq", "used_at"],
        strict=True,
    )


def _area_of(hospital: str) -> str | None:
    """``H`` + 4 digits of the city + ``00`` (``H37021100001`` → ``370200``); None if it does not fit."""
    if len(hospital) >= 5 and hospital[0] == "H" and hospital[1:5].isascii() and hospital[1:5].isdigit():
        return hospital[1:5] + "00"
    return None


def _m004_policy(db: sqlite_utils.Database) -> None:
    """Policy bundles (issue 4): the blacklist, the bundle log, the operators' audit log, agent reports.

    - ``settings``: centre-wide values (``default_area``, set by ``init --area``).
    - ``blacklist``: the current entries per pooling area, each with the bundle seq that added it.
    - ``bundles``: every bundle published, per (area, kind, seq); the TUF targets metadata is a
      function of this table (newest full + later deltas per area and kind), so an interrupted
      publish is completed by the next one.
    - ``audit_log``: who did what, when, why, and the bundle it produced.
    - ``agent_reports``: the newest signed policy report of each agent.
    - ``agents.pooling_area`` / ``enrol_tokens.pooling_area``: the area an agent obeys.
    """
    db.create_table("settings", {"key": str, "value": str}, pk="key", not_null=["value"], strict=True)
    db.create_table(
        "blacklist",
        {
            "area": str,
            "list_type": str,
            "id": str,
            "reason": str,
            "source": str,
            "effective_at": str,
            "added_seq": int,
            "added_at": str,
        },
        pk=("area", "list_type", "id"),
        not_null=["reason", "source", "effective_at", "added_seq", "added_at"],
        strict=True,
    )
    db.create_table(
        "bundles",
        {
            "area": str,
            "kind": str,
            "seq": int,
            "base_seq": int,  # NULL: a full bundle
            "target": str,  # TUF target name (protocol.bundles.target_name)
            "path": str,  # file under tuf/targets/ (hash-prefixed, as TUF clients fetch it)
            "length": int,
            "sha256": str,
            "entries": int,  # blacklist: entries (ops) in the file; other kinds: items in the document
            "created": str,
            "operator": str,
        },
        pk=("area", "kind", "seq"),
        not_null=["target", "path", "length", "sha256", "entries", "created", "operator"],
        strict=True,
    )
    db.create_table(
        "audit_log",
        {
            "id": int,
            "at": str,
            "operator": str,
            "action": str,
            "reason": str,
            "detail": str,  # JSON
            "area": str,
            "kind": str,
            "seq": int,
            "target": str,
        },
        pk="id",
        not_null=["at", "operator", "action", "reason", "detail"],
        strict=True,
    )
    db.create_table(
        "agent_reports",
        {"agent_id": str, "reported_at": str, "received_at": str, "versions": str, "problems": str},
        pk="agent_id",
        not_null=["reported_at", "received_at", "versions", "problems"],
        strict=True,
    )
    db.execute("ALTER TABLE agents ADD COLUMN pooling_area TEXT")
    db.execute("ALTER TABLE enrol_tokens ADD COLUMN pooling_area TEXT")
    for agent_id, hospital in db.execute("SELECT agent_id, fixmedins_code FROM agents").fetchall():
        db.execute("UPDATE agents SET pooling_area = ? WHERE agent_id = ?", (_area_of(hospital), agent_id))


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _m001_initial,
    _m002_security_event_repeats,
    _m003_identification,
    _m004_policy,
]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply pending migrations, each in its own transaction; returns the names applied.

    ``conn`` must be in autocommit mode (``isolation_level=None``) so the transactions here
    are the only ones.
    """
    db = sqlite_utils.Database(conn, execute_plugins=False)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at TEXT NOT NULL)"
    )
    current = schema_version(conn)
    if current > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"central.db is at schema version {current} but this yibao-central knows only "
            f"{SCHEMA_VERSION}; upgrade yibao-central instead of opening the database with an older one"
        )
    applied = []
    for version, step in enumerate(MIGRATIONS[current:], start=current + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            step(db)
            conn.execute(
                "INSERT INTO _migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, step.__name__, datetime.now(UTC).isoformat(timespec="seconds")),
            )
            conn.execute(f"PRAGMA user_version = {version:d}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(step.__name__)
    return applied
