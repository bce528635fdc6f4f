"""The outbox: the agent's truth. A settlement exists once it is here, durable.

Rules this module keeps:

1. One writer. All writes go through one thread that owns the only writing connection;
   callers hand it small functions and wait on futures. Writes that arrive together are
   committed together (group commit): one ``COMMIT`` — one fsync of the WAL with
   ``synchronous=FULL`` — makes the whole group durable before any caller is answered.
2. Sequence numbers and the hash chain are assigned inside the writer, so they follow
   commit order exactly; the head is kept in memory and written in the same transaction.
   If a commit fails, the in-memory head is rolled back with it.
3. Nothing is dropped to make room. At the record or byte limit, or when the disk is
   nearly full, new settlements are refused with a clear error and an alarm.
4. Every record read back is re-hashed. A record that no longer matches is copied to
   ``quarantine`` with an alarm and travels as a lost marker (its hash), so the rest of
   the chain still flows and the gap stays visible at the centre.
5. Acknowledged records are pruned after the retention period, in the same transaction
   that advances the acked cursor. Records the centre refuses permanently are copied to
   ``dead_letter``, never deleted unseen.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from protocol.chain import GENESIS, LOST_MARKER_LEN, decode_body, decode_entry, encode_body, encode_entry
from protocol.errors import ProtocolError
from protocol.records import CardLog, Reversal, Settlement, check_card_log, fen_to_text
from protocol.rules import HISTORY_DDL, HISTORY_INSERT, history_rows_from_settlement
from protocol.wire import Rejection

from .errors import (
    AgentError,
    ChainDiverged,
    DiskNearlyFull,
    HisSetlNoConflict,
    NotFound,
    OutboxFull,
    ResyncPending,
    StoreError,
)
from .intake import ReversalRequest, new_setl_id, now_iso

__all__ = ["SCHEMA_VERSION", "Outbox", "Pending", "Receipt"]

log = logging.getLogger("yibao.agent.store")

SCHEMA_VERSION = 3
#: A settlement's lines join the local history; OR IGNORE: a line is there once (unique index).
_HISTORY_INSERT = HISTORY_INSERT.replace("INSERT", "INSERT OR IGNORE", 1)
#: The content digest of a settlement taken back from the centre (``Outbox.recover``): the HIS body it
#: came from is not kept, so a retry of its ``his_setl_no`` is answered as held whatever it carries.
RECOVERED_DIGEST = bytes(32)


def _migration_1(db: sqlite_utils.Database) -> None:
    db["chain"].create(
        {"id": int, "last_seq": int, "head_hash": bytes, "acked_seq": int, "acked_at": float},
        pk="id",
    )
    db["chain"].insert({"id": 1, "last_seq": 0, "head_hash": GENESIS, "acked_seq": 0, "acked_at": None})
    db["outbox"].create(
        {
            "seq": int,
            "kind": str,
            "setl_id": str,
            "hash": bytes,
            "record": bytes,
            "created_at": float,
            "quarantined": int,
        },
        pk="seq",
        not_null={"kind", "hash", "created_at"},
        defaults={"quarantined": 0},
    )
    db["settlements"].create(
        {
            "his_setl_no": str,
            "setl_id": str,
            "seq": int,
            "hash": bytes,
            "digest": bytes,
            "medfee_sumamt": int,
            "fund_pay_sumamt": int,
            "acct_pay": int,
            "psn_cash_pay": int,
            "created_at": float,
            "reversal_setl_id": str,
            "reversal_seq": int,
            "reversal_hash": bytes,
        },
        pk="his_setl_no",
        not_null={"setl_id", "seq", "hash", "digest", "medfee_sumamt"},
    )
    db["settlements"].create_index(["setl_id"], unique=True)
    db["quarantine"].create(
        {"seq": int, "stored_hash": bytes, "sent_hash": bytes, "record": bytes, "reason": str, "at": float},
        pk="seq",
    )
    db["dead_letter"].create(
        {"seq": int, "setl_id": str, "code": str, "message": str, "record": bytes, "at": float}, pk="seq"
    )
    db["alarms"].create(
        {"code": str, "message": str, "first_at": float, "last_at": float, "count": int, "cleared_at": float},
        pk="code",
    )


def _migration_2(db: sqlite_utils.Database) -> None:
    """This hospital's settled lines per person (``hist_lines`` of the rule library), kept with the
    outbox in the same transaction, so local history never disagrees with what was settled."""
    for statement in HISTORY_DDL.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS hist_lines_setl_line ON hist_lines (setl_id, feedetl_sn)")


def _migration_3(db: sqlite_utils.Database) -> None:
    """``hist_lines.fee_date``: the local date of each line's ``fee_ocur_time`` (NULL when the HIS did not
    send it), the last column of the rule library's ``HIST_COLUMNS``. A database that migration 2 made
    from today's ``HISTORY_DDL`` has it already."""
    if "fee_date" not in {row[1] for row in db.execute("PRAGMA table_info(hist_lines)").fetchall()}:
        db.execute("ALTER TABLE hist_lines ADD COLUMN fee_date TEXT")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_migration_1, _migration_2, _migration_3]


def migrate(conn: sqlite3.Connection) -> int:
    """Apply numbered migrations, each in its own transaction, recorded in a table."""
    db = sqlite_utils.Database(conn)
    if "schema_migrations" not in db.table_names():
        db["schema_migrations"].create({"version": int, "applied_at": float}, pk="version")
    done = {row["version"] for row in db["schema_migrations"].rows}
    for number, step in enumerate(MIGRATIONS, start=1):
        if number in done:
            continue
        with conn:
            step(db)
            db["schema_migrations"].insert({"version": number, "applied_at": time.time()})
    newest = max(done | set(range(1, len(MIGRATIONS) + 1)))
    if newest > SCHEMA_VERSION:
        raise StoreError(f"database schema {newest} is newer than this agent ({SCHEMA_VERSION}); upgrade it")
    return newest


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the HIS is told once a record is durable."""

    setl_id: str
    seq: int
    hash: bytes
    kind: str
    duplicate: bool
    medfee_sumamt: int
    orig_setl_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "setl_id": self.setl_id,
            "seq": self.seq,
            "hash": self.hash.hex(),
            "medfee_sumamt": fen_to_text(self.medfee_sumamt),
            "duplicate": self.duplicate,
        }
        if self.orig_setl_id:
            body["orig_setl_id"] = self.orig_setl_id
        return body


@dataclass(slots=True)
class Pending:
    seq: int
    raw: bytes  # entry bytes, or the 32-byte hash for a quarantined record


@dataclass(slots=True)
class _Head:
    last_seq: int
    head_hash: bytes
    acked_seq: int
    pending: int
    pending_bytes: int

    def copy(self) -> _Head:
        return _Head(self.last_seq, self.head_hash, self.acked_seq, self.pending, self.pending_bytes)


_STOP = object()


class Outbox:
    """The durable, hash-chained queue of everything this agent has settled."""

    def __init__(
        self,
        path: Path,
        *,
        agent_id: str,
        max_records: int = 2_000_000,
        max_bytes: int = 4 * 1024**3,
        min_free_disk_bytes: int = 256 * 1024**2,
        group_max: int = 256,
        retention_s: float = 7 * 24 * 3600,
        hosp_lv: str = "",
    ) -> None:
        self.path = Path(path)
        #: The hospital's grade, written into the local history lines (the record does not carry it).
        self.hosp_lv = hosp_lv
        self.agent_id = agent_id
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.min_free_disk_bytes = min_free_disk_bytes
        self.group_max = group_max
        self.retention_s = retention_s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._reader = connect(self.path)
        self._reader_lock = threading.Lock()
        migrate(self._reader)
        row = self._reader.execute("SELECT last_seq, head_hash, acked_seq FROM chain WHERE id=1").fetchone()
        pending, pending_bytes = self._reader.execute(
            "SELECT count(*), coalesce(sum(length(record)), 0) FROM outbox WHERE seq > ?", (row[2],)
        ).fetchone()
        self._head = _Head(row[0], row[1], row[2], pending, pending_bytes)
        self._disk_checked_at = 0.0
        self._disk_free = 1 << 62
        self.alarms: dict[str, dict[str, Any]] = {
            r[0]: {"code": r[0], "message": r[1], "since": r[2], "count": r[3]}
            for r in self._reader.execute(
                "SELECT code, message, first_at, count FROM alarms WHERE cleared_at IS NULL"
            )
        }
        self.on_append: Callable[[], None] | None = None
        #: Set while the agent takes its own records back from the centre after a restore
        #: (``agent.resync``): every append is refused with ``ResyncPending`` meanwhile.
        self.hold_appends: str | None = None
        self._thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._thread.start()

    # ---- the writer thread -------------------------------------------------------------

    def _run(self) -> None:
        conn = connect(self.path)
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            items = [item]
            while len(items) < self.group_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                items.append(item)
            self._commit_group(conn, items)
        conn.close()

    def _commit_group(self, conn: sqlite3.Connection, items: list) -> None:
        before = self._head.copy()
        outcomes: list[tuple[cf.Future, bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, fut in items:
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    outcomes.append((fut, True, fn(conn)))
                except (AgentError, ProtocolError) as exc:
                    outcomes.append((fut, False, exc))
            h = self._head
            if h.last_seq != before.last_seq or h.acked_seq != before.acked_seq:
                conn.execute(
                    "UPDATE chain SET last_seq=?, head_hash=?, acked_seq=? WHERE id=1",
                    (h.last_seq, h.head_hash, h.acked_seq),
                )
            conn.execute("COMMIT")
        except Exception as exc:  # the whole group failed: nothing of it is durable
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._head = before
            log.error("outbox commit failed: %s", exc)
            error = StoreError(
                f"the outbox could not be written ({type(exc).__name__}); nothing was recorded, "
                "check the agent's disk and retry"
            )
            for _fn, fut in items:
                if not fut.done():
                    if fut.running() or fut.set_running_or_notify_cancel():
                        fut.set_exception(error)
            return
        appended = False
        for fut, ok, value in outcomes:
            if ok:
                fut.set_result(value)
                appended = appended or isinstance(value, Receipt)
            else:
                fut.set_exception(value)
        if appended and self.on_append is not None:
            self.on_append()

    def submit(self, fn: Callable[[sqlite3.Connection], Any]) -> cf.Future:
        """Run ``fn(conn)`` in the writer, inside a group transaction; durable when resolved."""
        if not self._thread.is_alive():
            raise StoreError("the outbox is closed")
        fut: cf.Future = cf.Future()
        self._queue.put((fn, fut))
        return fut

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout=30)
        self._reader.close()

    # ---- alarms -------------------------------------------------------------------------

    def _raise_alarm(self, conn: sqlite3.Connection, code: str, message: str) -> None:
        now = time.time()
        log.warning("alarm %s: %s", code, message)
        conn.execute(
            "INSERT INTO alarms(code, message, first_at, last_at, count) VALUES (?,?,?,?,1) "
            "ON CONFLICT(code) DO UPDATE SET message=excluded.message, last_at=excluded.last_at, "
            "count=count+1, cleared_at=NULL",
            (code, message, now, now),
        )
        alarm = self.alarms.setdefault(code, {"code": code, "since": now, "count": 0})
        alarm["message"] = message
        alarm["count"] += 1

    def _clear_alarm(self, conn: sqlite3.Connection, code: str) -> None:
        if self.alarms.pop(code, None) is not None:
            conn.execute("UPDATE alarms SET cleared_at=? WHERE code=?", (time.time(), code))

    def raise_alarm(self, code: str, message: str) -> cf.Future:
        return self.submit(lambda conn: self._raise_alarm(conn, code, message))

    def clear_alarm(self, code: str) -> cf.Future:
        return self.submit(lambda conn: self._clear_alarm(conn, code))

    # ---- appends ------------------------------------------------------------------------

    def _check_capacity(self, conn: sqlite3.Connection, size: int) -> None:
        if self.hold_appends is not None:
            raise ResyncPending(self.hold_appends)
        h = self._head
        if h.pending >= self.max_records or h.pending_bytes + size > self.max_bytes:
            message = (
                f"outbox holds {h.pending} records / {h.pending_bytes} bytes not yet accepted by the "
                "centre and is at its limit; new settlements are refused until the link to the "
                "centre is restored and the backlog drains"
            )
            self._raise_alarm(conn, "outbox_full", message)
            raise OutboxFull(message)
        now = time.monotonic()
        if now - self._disk_checked_at > 1.0:
            st = os.statvfs(self.path.parent)
            self._disk_free = st.f_bavail * st.f_frsize
            self._disk_checked_at = now
        if self._disk_free < self.min_free_disk_bytes:
            message = (
                f"only {self._disk_free // (1024 * 1024)} MiB free on the agent's disk; new settlements "
                "are refused until space is freed"
            )
            self._raise_alarm(conn, "disk_nearly_full", message)
            raise DiskNearlyFull(message)
        if "outbox_full" in self.alarms:
            self._clear_alarm(conn, "outbox_full")
        if "disk_nearly_full" in self.alarms:
            self._clear_alarm(conn, "disk_nearly_full")

    def _chain(self, conn: sqlite3.Connection, kind: str, setl_id: str, body: bytes) -> tuple[int, bytes]:
        h = self._head
        seq = h.last_seq + 1
        entry = encode_entry(self.agent_id, seq, h.head_hash, kind, body)
        digest = hashlib.sha256(entry).digest()
        conn.execute(
            "INSERT INTO outbox(seq, kind, setl_id, hash, record, created_at) VALUES (?,?,?,?,?,?)",
            (seq, kind, setl_id, digest, entry, time.time()),
        )
        h.last_seq, h.head_hash = seq, digest
        h.pending += 1
        h.pending_bytes += len(entry)
        return seq, digest

    def _append_settlement(
        self, conn: sqlite3.Connection, record: Settlement, body: bytes, digest: bytes
    ) -> Receipt:
        row = conn.execute(
            "SELECT setl_id, seq, hash, digest, medfee_sumamt FROM settlements WHERE his_setl_no=?",
            (record.his_setl_no,),
        ).fetchone()
        if row is not None:
            if row[3] != digest and row[3] != RECOVERED_DIGEST:
                raise HisSetlNoConflict(
                    "this his_setl_no was already settled with different content; the first "
                    "settlement stands — reverse it and settle again under a new his_setl_no",
                    setl_id=row[0],
                )
            return Receipt(row[0], row[1], row[2], "setl", True, row[4])
        self._check_capacity(conn, len(body) + 128)
        seq, digest_h = self._chain(conn, "setl", record.setl_id, body)
        conn.execute(
            "INSERT INTO settlements(his_setl_no, setl_id, seq, hash, digest, medfee_sumamt, "
            "fund_pay_sumamt, acct_pay, psn_cash_pay, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                record.his_setl_no,
                record.setl_id,
                seq,
                digest_h,
                digest,
                record.medfee_sumamt,
                record.fund_pay_sumamt,
                record.acct_pay,
                record.psn_cash_pay,
                time.time(),
            ),
        )
        conn.executemany(_HISTORY_INSERT, history_rows_from_settlement(record, self.hosp_lv))
        return Receipt(record.setl_id, seq, digest_h, "setl", False, record.medfee_sumamt)

    async def append_settlement(self, record: Settlement, digest: bytes) -> Receipt:
        """Durably append a validated settlement; the same ``his_setl_no`` answers the first receipt."""
        import asyncio

        body = encode_body(record)
        return await asyncio.wrap_future(
            self.submit(lambda conn: self._append_settlement(conn, record, body, digest))
        )

    def append_settlement_sync(self, record: Settlement, digest: bytes) -> Receipt:
        body = encode_body(record)
        return self.submit(lambda conn: self._append_settlement(conn, record, body, digest)).result()

    def _append_reversal(
        self, conn: sqlite3.Connection, orig_setl_id: str, req: ReversalRequest, fixmedins_code: str
    ) -> Receipt:
        row = conn.execute(
            "SELECT medfee_sumamt, fund_pay_sumamt, acct_pay, psn_cash_pay, reversal_setl_id, "
            "reversal_seq, reversal_hash FROM settlements WHERE setl_id=?",
            (orig_setl_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no settlement {orig_setl_id} was made by this agent; check the setl_id")
        total, fund, acct, cash, rev_id, rev_seq, rev_hash = row
        if rev_id is not None:
            return Receipt(rev_id, rev_seq, rev_hash, "revs", True, -total, orig_setl_id)
        self._check_capacity(conn, 512)

        def neg(v: int | None) -> int | None:
            return None if v is None else -v

        record = Reversal(
            acct_pay=neg(acct),
            fixmedins_code=fixmedins_code,
            fund_pay_sumamt=neg(fund),
            his_setl_no=req.his_setl_no,
            medfee_sumamt=-total,
            opter=req.opter,
            orig_setl_id=orig_setl_id,
            psn_cash_pay=neg(cash),
            reason=req.reason,
            setl_id=new_setl_id(fixmedins_code),
            setl_time=now_iso(),
        )
        seq, digest = self._chain(conn, "revs", record.setl_id, encode_body(record))
        conn.execute(
            "UPDATE settlements SET reversal_setl_id=?, reversal_seq=?, reversal_hash=? WHERE setl_id=?",
            (record.setl_id, seq, digest, orig_setl_id),
        )
        conn.execute("DELETE FROM hist_lines WHERE setl_id=?", (orig_setl_id,))  # reversed: no history
        return Receipt(record.setl_id, seq, digest, "revs", False, -total, orig_setl_id)

    async def append_reversal(self, orig_setl_id: str, req: ReversalRequest, fixmedins_code: str) -> Receipt:
        """Record a cancellation as a new record; reversing twice answers the first reversal."""
        import asyncio

        return await asyncio.wrap_future(
            self.submit(lambda conn: self._append_reversal(conn, orig_setl_id, req, fixmedins_code))
        )

    def _append_card_log(self, conn: sqlite3.Connection, record: CardLog, body: bytes) -> Receipt:
        self._check_capacity(conn, len(body) + 128)
        seq, digest = self._chain(conn, "card", record.log_id, body)
        return Receipt(record.log_id, seq, digest, "card", False, 0)

    async def append_card_log(self, record: CardLog) -> Receipt:
        """Durably chain a card log (validated first: a bad one raises and changes nothing).

        Card logs share the settlements' chain on purpose: one signature and one seq order prove
        to the centre that the institution logged a lost card, or applied a blacklist bundle, at a
        point in its sequence of settlements — and a log can no more vanish than a settlement.
        """
        import asyncio

        check_card_log(record)
        body = encode_body(record)
        return await asyncio.wrap_future(self.submit(lambda conn: self._append_card_log(conn, record, body)))

    def submit_card_log(self, record: CardLog) -> cf.Future:
        """Chain a card log without waiting (the policy client's callback must not block on the writer);
        the future holds the ``Receipt``. Validated first: a bad log raises here and nothing is queued."""
        check_card_log(record)
        body = encode_body(record)
        return self.submit(lambda conn: self._append_card_log(conn, record, body))

    # ---- recovery after a restore -------------------------------------------------------

    def _recover(self, conn: sqlite3.Connection, entries: list[bytes]) -> int:
        """Append the agent's own entries the centre sent back, as acknowledged; all or none."""
        h = self._head
        for raw in entries:
            try:
                entry = decode_entry(raw)
                record = decode_body(entry)
            except ProtocolError as exc:
                raise ChainDiverged(f"the centre sent an entry this agent cannot read: {exc}") from None
            follows = entry.seq == h.last_seq + 1 and entry.prev_hash == h.head_hash
            if entry.agent_id != self.agent_id or not follows:
                raise ChainDiverged(
                    f"the centre's seq {entry.seq} does not continue this agent's chain at {h.last_seq}: "
                    "nothing was taken back; the central operators must compare the two chains "
                    "(yibao-central reconcile) before this agent settles again"
                )
            digest = hashlib.sha256(raw).digest()
            record_id = record.log_id if isinstance(record, CardLog) else record.setl_id
            conn.execute(
                "INSERT INTO outbox(seq, kind, setl_id, hash, record, created_at) VALUES (?,?,?,?,?,?)",
                (entry.seq, entry.kind, record_id, digest, raw, time.time()),
            )
            if isinstance(record, Settlement):
                conn.execute(
                    "INSERT OR IGNORE INTO settlements(his_setl_no, setl_id, seq, hash, digest, "
                    "medfee_sumamt, fund_pay_sumamt, acct_pay, psn_cash_pay, created_at) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (record.his_setl_no, record.setl_id, entry.seq, digest, RECOVERED_DIGEST,
                     record.medfee_sumamt, record.fund_pay_sumamt, record.acct_pay, record.psn_cash_pay,
                     time.time()),
                )  # fmt: skip
                conn.executemany(_HISTORY_INSERT, history_rows_from_settlement(record, self.hosp_lv))
            elif isinstance(record, Reversal):
                conn.execute(
                    "UPDATE settlements SET reversal_setl_id=?, reversal_seq=?, reversal_hash=? "
                    "WHERE setl_id=?",
                    (record.setl_id, entry.seq, digest, record.orig_setl_id),
                )
                conn.execute("DELETE FROM hist_lines WHERE setl_id=?", (record.orig_setl_id,))
            h.last_seq, h.head_hash = entry.seq, digest
        if entries:
            h.acked_seq = h.last_seq  # the centre holds every one of them
            h.pending, h.pending_bytes = 0, 0
            conn.execute("UPDATE chain SET acked_seq=?, acked_at=? WHERE id=1", (h.acked_seq, time.time()))
            if "central_ahead" in self.alarms:
                self._clear_alarm(conn, "central_ahead")
        return len(entries)

    def recover(self, entries: list[bytes]) -> cf.Future:
        """Take back entries this agent made after its backup (``agent.resync``); refused with
        ``ChainDiverged`` unless they continue the chain exactly, and only while nothing is pending."""

        def run(conn: sqlite3.Connection) -> int:
            if self._head.acked_seq != self._head.last_seq:
                raise ChainDiverged(
                    "this agent has records the centre does not hold and the centre has records this agent "
                    "lacks: the chains forked; the central operators must compare them (reconcile)"
                )
            # The group's transaction commits the other items' work whatever this one does: a
            # savepoint (and the head as it was) makes a refusal change nothing.
            before = self._head.copy()
            conn.execute("SAVEPOINT recover")
            try:
                taken = self._recover(conn, entries)
            except BaseException:
                conn.execute("ROLLBACK TO recover")
                conn.execute("RELEASE recover")
                self._head = before
                raise
            conn.execute("RELEASE recover")
            return taken

        return self.submit(run)

    # ---- the upload side ----------------------------------------------------------------

    @property
    def acked_seq(self) -> int:
        return self._head.acked_seq

    @property
    def last_seq(self) -> int:
        return self._head.last_seq

    def read_pending(self, after_seq: int, max_records: int, max_bytes: int) -> list[Pending]:
        """Up to ``max_records`` / ``max_bytes`` of records after ``after_seq``, each re-hashed.

        Bounded on purpose: a week of backlog streams through in batches and is never
        loaded whole.
        """
        with self._reader_lock:
            rows = self._reader.execute(
                "SELECT seq, hash, record, quarantined FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, max_records + 1),
            ).fetchall()
        out: list[Pending] = []
        size = 0
        expected = after_seq + 1
        for i, (seq, stored_hash, record, quarantined) in enumerate(rows[:max_records]):
            if seq != expected:
                # A row is missing under our feet (pruned, or lost to corruption of the file).
                self.raise_alarm(
                    "outbox_gap", f"outbox has no record for seq {expected}; the centre will report a gap"
                ).result()
                break
            if quarantined:
                raw = stored_hash
            elif record is None or hashlib.sha256(record).digest() != stored_hash:
                raw = self._quarantine(seq, stored_hash, record, rows[i + 1] if i + 1 < len(rows) else None)
            else:
                raw = record
            if out and size + len(raw) > max_bytes:
                break
            size += len(raw)
            out.append(Pending(seq, raw))
            expected += 1
        return out

    def _quarantine(self, seq: int, stored_hash: bytes, record: bytes | None, after: tuple | None) -> bytes:
        """Decide what travels for a record whose bytes no longer match its hash."""
        best = stored_hash
        if after is not None and after[2] is not None and hashlib.sha256(after[2]).digest() == after[1]:
            try:
                best = decode_entry(after[2]).prev_hash  # the next record vouches for our hash
            except ProtocolError:
                pass
        elif seq == self._head.last_seq:
            best = self._head.head_hash
        if record is not None and hashlib.sha256(record).digest() == best:
            # The record is intact; only its stored hash was damaged. Repair, don't quarantine.
            self.submit(
                lambda conn: conn.execute("UPDATE outbox SET hash=? WHERE seq=?", (best, seq))
            ).result()
            return record

        def move(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO quarantine(seq, stored_hash, sent_hash, record, reason, at) "
                "VALUES (?,?,?,?,?,?)",
                (seq, stored_hash, best, record, "record bytes do not match their hash", time.time()),
            )
            conn.execute("UPDATE outbox SET quarantined=1, hash=? WHERE seq=?", (best, seq))
            self._raise_alarm(
                conn,
                "record_corrupt",
                f"record seq {seq} is corrupt on the agent's disk; it was quarantined and is reported "
                "to the centre as lost — check the disk and compare with the HIS",
            )

        self.submit(move).result()
        assert len(best) == LOST_MARKER_LEN
        return best

    def _ack(self, conn: sqlite3.Connection, acked_seq: int, rejected: list[Rejection]) -> int:
        h = self._head
        if acked_seq > h.last_seq:
            self._raise_alarm(
                conn,
                "central_ahead",
                f"the centre holds seq {acked_seq} but this agent's chain ends at {h.last_seq}; "
                "was the agent restored from an old backup? Contact the central operators",
            )
            return h.acked_seq
        now = time.time()
        for r in rejected:
            conn.execute(
                "INSERT OR REPLACE INTO dead_letter(seq, setl_id, code, message, record, at) "
                "SELECT seq, setl_id, ?, ?, record, ? FROM outbox WHERE seq=?",
                (r.code, r.message, now, r.seq),
            )
            self._raise_alarm(
                conn, "dead_letter", f"the centre refused record seq {r.seq} ({r.code}); see dead_letter"
            )
        if acked_seq < h.acked_seq:
            self._raise_alarm(
                conn,
                "central_behind",
                f"the centre now holds only up to seq {acked_seq} (was {h.acked_seq}); resending",
            )
        old = h.acked_seq
        h.acked_seq = acked_seq
        lo, hi = min(old, acked_seq), max(old, acked_seq)
        moved = conn.execute(
            "SELECT count(*), coalesce(sum(length(record)), 0) FROM outbox WHERE seq > ? AND seq <= ?",
            (lo, hi),
        ).fetchone()
        sign = 1 if acked_seq >= old else -1
        h.pending = h.last_seq - acked_seq
        h.pending_bytes = max(0, h.pending_bytes - sign * moved[1])
        conn.execute("UPDATE chain SET acked_seq=?, acked_at=? WHERE id=1", (acked_seq, now))
        self._prune_acked(conn, acked_seq, now - self.retention_s)
        return acked_seq

    @staticmethod
    def _prune_acked(conn: sqlite3.Connection, acked_seq: int, cutoff: float, chunk: int = 4096) -> None:
        # Bounded work per ack: look only at the oldest `chunk` rows (by primary key) and delete the
        # acknowledged prefix older than the cutoff. A scan over every acked row on each ack made a
        # long drain quadratic; rows are appended in seq order, so the prefix is what ages first.
        rows = conn.execute(
            "SELECT seq, created_at FROM outbox WHERE seq <= ? ORDER BY seq LIMIT ?", (acked_seq, chunk)
        )
        upto = None
        for seq, created_at in rows:  # a cursor: stops reading at the first young row
            if created_at >= cutoff:
                break
            upto = seq
        if upto is not None:
            conn.execute("DELETE FROM outbox WHERE seq <= ?", (upto,))

    def ack(self, acked_seq: int, rejected: list[Rejection] | None = None) -> cf.Future:
        """Advance the acked cursor and prune, in one transaction."""
        return self.submit(lambda conn: self._ack(conn, acked_seq, rejected or []))

    def prune(self) -> cf.Future:
        return self.ack(self._head.acked_seq)

    def has_settlement(self, his_setl_no: str) -> bool:
        """Whether this ``his_setl_no`` was settled here (read-only: a retry is answered, not refused)."""
        with self._reader_lock:
            row = self._reader.execute(
                "SELECT 1 FROM settlements WHERE his_setl_no=?", (his_setl_no,)
            ).fetchone()
        return row is not None

    # ---- status -------------------------------------------------------------------------

    @property
    def writer_alive(self) -> bool:
        """Whether the writer thread runs: without it no settlement can be stored (the watchdog asks)."""
        return self._thread.is_alive()

    def snapshot(self) -> tuple[int, bytes, int, float | None]:
        """(last seq, chain head, acked seq, append time of the oldest unacked record) read in one
        transaction, so a signed heartbeat never pairs a seq with another seq's head."""
        with self._reader_lock:
            self._reader.execute("BEGIN")
            try:
                last_seq, head, acked = self._reader.execute(
                    "SELECT last_seq, head_hash, acked_seq FROM chain WHERE id=1"
                ).fetchone()
                oldest = self._reader.execute(
                    "SELECT created_at FROM outbox WHERE seq > ? ORDER BY seq LIMIT 1", (acked,)
                ).fetchone()
            finally:
                self._reader.execute("COMMIT")
        return last_seq, bytes(head), acked, oldest[0] if oldest else None

    def status(self) -> dict[str, Any]:
        h = self._head
        with self._reader_lock:
            oldest = self._reader.execute(
                "SELECT created_at FROM outbox WHERE seq > ? ORDER BY seq LIMIT 1", (h.acked_seq,)
            ).fetchone()
            quarantined = self._reader.execute("SELECT count(*) FROM quarantine").fetchone()[0]
            dead = self._reader.execute("SELECT count(*) FROM dead_letter").fetchone()[0]
        return {
            "pending": h.pending,
            "bytes": h.pending_bytes,
            "oldest_age_s": round(time.time() - oldest[0], 3) if oldest else None,
            "acked_seq": h.acked_seq,
            "last_seq": h.last_seq,
            "quarantined": quarantined,
            "dead_letter": dead,
            "limit_records": self.max_records,
            "limit_bytes": self.max_bytes,
        }
