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


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _m001_initial,
    _m002_security_event_repeats,
    _m003_identification,
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
