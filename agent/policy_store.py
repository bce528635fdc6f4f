"""``HOME/policy.db``: the verified policy bundles this agent enforces, and what happened to updates.

Tables (own schema version in ``PRAGMA user_version``):

- ``blacklist(list_type, id, reason, source, effective_at, seq)``, primary key ``(list_type, id)``,
  ``WITHOUT ROWID``: a lookup is one descent of one b-tree. ``effective_at`` is epoch seconds
  (0 = always); an entry published ahead of time is held but not enforced until then.
- ``bundle_state(kind, seq, created, target, applied_at, entries)``: which bundle of each kind is held.
- ``documents(kind, body)``: the body (msgpack) of the ``rules``, ``policy``, ``catalogue`` and ``keys``
  bundles.
- ``card_corrections(card_sn, new_card_sn, fields, reason, seq)`` and ``card_notices(id, card_sn, type,
  amount_fen, text, valid_from, valid_to, seq)``: the ``cards`` bundle (schema 2), read when a card is
  read at the desk (``GET /v1/card``) and before a settlement (a replaced card is refused).
- ``catalogue_lists(section, hospital, code, since, row)`` (schema 3): the national code lists of the
  ``catalogue`` bundle (``protocol.catalogue_lists``: diseases, operations, chronic diseases, TCM lists,
  hospital matches, …), one row each, keyed so a download pages through one list (``hospital`` is
  the row's ``fixmedins_code`` for ``matches``, else ''; ``since`` its ``begndate`` for matches). They
  are written with the document in the bundle's transaction and left out of its ``documents`` body,
  so reading the catalogue for the checks or a 1301 page never unpacks a whole ICD-10.
- ``meta``: TUF versions and expiries of the last verified refresh, the last update attempt.
- ``alarms`` and ``problems``: refusals and conditions an operator must see (codes, no personal data).

Apply is atomic: one ``BEGIN IMMEDIATE`` … ``COMMIT`` per bundle, and the checks that depend on what
is held (sequence newer, base of a delta) run inside that transaction. A full blacklist is built in
a new table, which replaces the old one by ``DROP`` + ``RENAME`` in the same transaction: a crash
(kill -9, power) anywhere before the ``COMMIT`` leaves the old list whole (WAL, ``synchronous=FULL``).
Entries that arrive sorted by ``(list_type, id)`` are appended to the new b-tree directly (the
fastest way SQLite builds one); from the first entry out of order on, the rest are staged in a
temporary table and inserted sorted by SQLite, so any order stays fast and duplicate ids keep the
last one.

Lookups use their own read connection (WAL readers never wait for the writer), so the event loop
can check each settlement while a 10-million-entry snapshot is being applied in a thread.
"""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgpack

from protocol import errors as perrors
from protocol.bundles import (
    BLACKLIST_TYPES,
    BlacklistEntry,
    BundleHeader,
    CardsEntry,
    iter_blacklist,
    iter_cards,
    read_document,
    read_header,
)
from protocol.catalogue_lists import LISTS, check_lists
from protocol.document import Checker, summary
from protocol.evoucher import load_issuers

from .errors import (
    BundleBaseMismatch,
    BundleHeaderMismatch,
    BundleInvalid,
    BundleNotNewer,
    BundleWrongArea,
    BundleWrongKind,
    ConfigError,
    PolicyStoreFailed,
)

__all__ = [
    "SCHEMA_VERSION",
    "Applied",
    "BlacklistHit",
    "CardCorrectionHeld",
    "PolicyStore",
    "parse_effective",
]

log = logging.getLogger("yibao.agent.policy")

SCHEMA_VERSION = 3
#: Problems kept in the table (newest first); older ones are deleted as new ones arrive.
MAX_PROBLEMS = 1000
#: Naive ``effective_at`` times are China Standard Time, the clock of every pooling area.
CST = timezone(timedelta(hours=8))

_BLACKLIST_DDL = """
CREATE TABLE {name} (
    list_type    TEXT NOT NULL,
    id           TEXT NOT NULL,
    reason       TEXT NOT NULL,
    source       TEXT NOT NULL,
    effective_at INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    PRIMARY KEY (list_type, id)
) STRICT, WITHOUT ROWID
"""

_SCHEMA = (
    _BLACKLIST_DDL.format(name="blacklist")
    + """;
CREATE TABLE bundle_state (
    kind       TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    created    TEXT NOT NULL,
    target     TEXT NOT NULL,
    applied_at REAL NOT NULL,
    entries    INTEGER
) STRICT;
CREATE TABLE documents (kind TEXT PRIMARY KEY, body BLOB NOT NULL) STRICT;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
CREATE TABLE alarms (
    code       TEXT PRIMARY KEY,
    message    TEXT NOT NULL,
    first_at   REAL NOT NULL,
    last_at    REAL NOT NULL,
    count      INTEGER NOT NULL,
    cleared_at REAL
) STRICT;
CREATE TABLE problems (
    id      INTEGER PRIMARY KEY,
    at      REAL NOT NULL,
    code    TEXT NOT NULL,
    kind    TEXT,
    message TEXT NOT NULL
) STRICT;
PRAGMA user_version = 1;
"""
)

#: Schema 2: the ``cards`` bundle (corrections and notices). Applied on top of schema 1, in one
#: transaction, when an older agent's ``policy.db`` is opened by this version.
_SCHEMA_2 = """
CREATE TABLE card_corrections (
    card_sn     TEXT PRIMARY KEY,
    new_card_sn TEXT NOT NULL,
    fields      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    seq         INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE card_notices (
    id         TEXT PRIMARY KEY,
    card_sn    TEXT NOT NULL,
    type       TEXT NOT NULL,
    amount_fen INTEGER,
    text       TEXT NOT NULL,
    valid_from TEXT NOT NULL,
    valid_to   TEXT NOT NULL,
    seq        INTEGER NOT NULL
) STRICT;
CREATE INDEX card_notices_card ON card_notices (card_sn, valid_from);
PRAGMA user_version = 2;
"""
#: Schema 3: the catalogue bundle's national code lists, out of its document body.
_SCHEMA_3 = """
CREATE TABLE catalogue_lists (
    section  TEXT NOT NULL,
    hospital TEXT NOT NULL,
    code     TEXT NOT NULL,
    since    TEXT NOT NULL,
    row      TEXT NOT NULL,
    PRIMARY KEY (section, hospital, code, since)
) STRICT, WITHOUT ROWID;
PRAGMA user_version = 3;
"""


def _upgrade_to_3(conn: sqlite3.Connection) -> None:
    """Schema 3, and the lists of a catalogue an older agent stored whole moved into their table.

    An agent of schema 2 keeps any catalogue body it was sent, lists and all; moving them here keeps
    the bundle it holds answering 1307 & co without waiting for the next publish. Lists that do not
    validate stay in the body (the downloads then answer ``catalogue_not_held``, as before).
    """
    for statement in _SCHEMA_3.split(";"):
        if statement.strip():
            conn.execute(statement)
    row = conn.execute("SELECT body FROM documents WHERE kind='catalogue'").fetchone()
    if row is None:
        return
    body = msgpack.unpackb(row[0], raw=False)
    if not isinstance(body, dict) or not LISTS.keys() & body.keys():
        return
    c = Checker()
    lists = check_lists(c, body)
    if c.problems:
        log.error("the held catalogue's national lists do not validate; 1304/1307-1317 stay unanswered")
        return
    _write_lists(conn, lists)
    conn.execute(
        "UPDATE documents SET body=? WHERE kind='catalogue'",
        (msgpack.packb({k: v for k, v in body.items() if k not in LISTS}, use_bin_type=True),),
    )


def _write_lists(conn: sqlite3.Connection, lists: dict[str, tuple[dict[str, str], ...]]) -> None:
    conn.execute("DELETE FROM catalogue_lists")
    conn.executemany(
        "INSERT INTO catalogue_lists(section, hospital, code, since, row) VALUES (?,?,?,?,?)",
        (
            (
                section,
                row.get("fixmedins_code", "") if section == "matches" else "",
                row[LISTS[section].code],
                row.get("begndate", "") if section == "matches" else "",
                json.dumps(row, ensure_ascii=False, separators=(",", ":")),
            )
            for section, rows in lists.items()
            for row in rows
        ),
    )


_UPGRADES: dict[int, Any] = {0: _SCHEMA, 1: _SCHEMA_2, 2: _upgrade_to_3}

_LOOKUP = (
    "SELECT reason, source, effective_at, seq FROM blacklist WHERE list_type=? AND id=? AND effective_at<=?"
)

_effective_cache: dict[str, int] = {}


def parse_effective(text: str) -> int:
    """ISO-8601 → epoch seconds; empty = 0 (in force at once). Naive times are China Standard Time."""
    if not text:
        return 0
    value = _effective_cache.get(text)
    if value is not None:
        return value
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise BundleInvalid(
            "a blacklist entry has an effective time that is not ISO-8601", kind="blacklist"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=CST)
    value = int(dt.timestamp())
    if len(_effective_cache) >= 4096:
        _effective_cache.clear()
    _effective_cache[text] = value
    return value


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


@dataclass(frozen=True, slots=True)
class BlacklistHit:
    """Why a settlement is refused. No identifier: the caller knows which one it asked about."""

    list_type: str
    reason: str
    source: str
    effective_at: int
    #: Sequence of the bundle that delivered the entry.
    entry_seq: int
    #: Sequence of the blacklist this agent holds (the list version shown to the cashier).
    list_version: int


@dataclass(frozen=True, slots=True)
class CardCorrectionHeld:
    """A correction of the card just read, from the held ``cards`` bundle."""

    card_sn: str
    #: The card that replaced this one; "" when only data is outdated.
    new_card_sn: str
    fields: tuple[str, ...]
    reason: str
    #: Sequence of the bundle that delivered it.
    seq: int

    @property
    def replaced(self) -> bool:
        return bool(self.new_card_sn)

    def to_json(self) -> dict[str, Any]:
        return {
            "card_sn": self.card_sn, "replaced": self.replaced, "new_card_sn": self.new_card_sn or None,
            "fields": list(self.fields), "reason": self.reason, "bundle_seq": self.seq,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Applied:
    kind: str
    seq: int
    base_seq: int | None
    #: Entries added and removed (blacklist), 0 for documents.
    added: int
    removed: int
    #: Entries held after the apply (blacklist), None for documents.
    entries: int | None
    seconds: float
    target: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "seq": self.seq,
            "base_seq": self.base_seq,
            "added": self.added,
            "removed": self.removed,
            "entries": self.entries,
            "seconds": round(self.seconds, 3),
        }


def check_header(header: BundleHeader, *, expect: BundleHeader | None, area: str | None) -> None:
    """The file's own header against the signed target metadata and the agent's pooling area."""
    if expect is not None:
        if header.kind != expect.kind:
            raise BundleWrongKind(
                f"the file holds a {header.kind} bundle where the signed metadata announces {expect.kind}",
                kind=expect.kind,
            )
        if header.area != expect.area:
            raise BundleWrongArea(
                f"the file is for pooling area {header.area} where the signed metadata announces "
                f"{expect.area}",
                kind=expect.kind,
            )
        if header.base_seq != expect.base_seq and header.seq == expect.seq:
            raise BundleBaseMismatch(
                f"the {header.kind} file {header.seq} applies on seq {header.base_seq} where the signed "
                f"metadata says {expect.base_seq}",
                kind=expect.kind,
            )
        if (header.seq, header.base_seq, header.created, header.format) != (
            expect.seq,
            expect.base_seq,
            expect.created,
            expect.format,
        ):
            raise BundleHeaderMismatch(
                f"the {header.kind} file says seq {header.seq} base {header.base_seq} where the signed "
                f"metadata says seq {expect.seq} base {expect.base_seq}",
                kind=expect.kind,
            )
    if area is not None and header.area != area:
        raise BundleWrongArea(
            f"the {header.kind} bundle is for pooling area {header.area}; this agent obeys {area}",
            kind=header.kind,
        )


def _check_document(kind: str, body: Any) -> dict[str, tuple[dict[str, str], ...]]:
    """Refuse a body the agent cannot hold; returns the catalogue's national lists (else ``{}``).

    The catalogue's lists are checked here, by the centre's own code, because they go into their own
    table at apply: a bad row must refuse the bundle (the last good one stays), not half-install.
    The rest of a catalogue is the checks' to load (they keep the previous one when it does not).
    """
    if not isinstance(body, dict):
        raise BundleInvalid(f"the {kind} bundle's body is not a map", kind=kind)
    if kind == "catalogue":
        c = Checker()
        lists = check_lists(c, body)
        if c.problems:
            raise BundleInvalid(summary("the catalogue bundle's national lists", c.problems), kind=kind)
        return lists
    if kind == "keys":
        issuers = body.get("evoucher_issuers")
        if not isinstance(issuers, dict):
            raise BundleInvalid("the keys bundle has no 'evoucher_issuers' map", kind=kind)
        try:
            load_issuers(issuers)
        except (ValueError, TypeError) as exc:
            raise BundleInvalid(f"the keys bundle holds a bad issuer key: {exc}", kind=kind) from None
    return {}


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class PolicyStore:
    """The held bundles, the blacklist lookup, and the record of update attempts."""

    def __init__(self, path: Path | str, *, cache_mb: int = 64) -> None:
        self.path = Path(path)
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        try:
            self._writer = _connect(self.path)
            self._writer.execute(f"PRAGMA cache_size=-{cache_mb * 1024}")
            version = self._writer.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                # Every step up to the current schema in one transaction: a crash leaves the old file.
                with self._wlock:
                    self._writer.execute("BEGIN IMMEDIATE")
                    try:
                        held = self._writer.execute("PRAGMA user_version").fetchone()[0]
                        for step in range(held, SCHEMA_VERSION):
                            upgrade = _UPGRADES[step]
                            if callable(upgrade):
                                upgrade(self._writer)
                                continue
                            for statement in upgrade.split(";"):
                                if statement.strip():
                                    self._writer.execute(statement)
                        self._writer.execute("COMMIT")
                    except BaseException:
                        self._writer.execute("ROLLBACK")
                        raise
                version = SCHEMA_VERSION
            self._reader = _connect(self.path)
        except sqlite3.Error as exc:
            raise PolicyStoreFailed(
                f"cannot open the policy database {self.path}: {exc}; check the agent's disk and permissions"
            ) from exc
        if version > SCHEMA_VERSION:
            self.close()
            raise ConfigError(
                f"the policy database {self.path} was written by a newer agent (schema {version}); run "
                "that version, or move the file aside (the next update fetches the bundles again)"
            )

    def close(self) -> None:
        """Close both connections, after an apply in progress in another thread has finished."""
        with self._wlock, self._rlock:
            for conn in (getattr(self, "_writer", None), getattr(self, "_reader", None)):
                if conn is not None:
                    conn.close()

    def __enter__(self) -> PolicyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the hot path ----------------------------------------------------------------------

    def is_blacklisted(
        self,
        card_sn: str | None = None,
        psn_no: str | None = None,
        emp_no: str | None = None,
        at: float | None = None,
        *,
        dr_codg: str | None = None,
        fixmedins_code: str | None = None,
    ) -> BlacklistHit | None:
        """The first entry in force at ``at`` (default now) for the card, the person, the employer, or a
        suspension of the prescribing doctor or of the hospital itself."""
        now = time.time() if at is None else at
        with self._rlock:
            for list_type, value in (
                ("card", card_sn), ("person", psn_no), ("employer", emp_no), ("doctor", dr_codg),
                ("hospital", fixmedins_code),
            ):  # fmt: skip
                if not value:
                    continue
                row = self._reader.execute(_LOOKUP, (list_type, value, now)).fetchone()
                if row is not None:
                    version = self._reader.execute(
                        "SELECT seq FROM bundle_state WHERE kind='blacklist'"
                    ).fetchone()
                    return BlacklistHit(
                        list_type, row[0], row[1], row[2], row[3], version[0] if version else 0
                    )
        return None

    def card_correction(self, card_sn: str | None) -> CardCorrectionHeld | None:
        """The held correction of ``card_sn`` (replaced, or data outdated), or None."""
        if not card_sn:
            return None
        with self._rlock:
            row = self._reader.execute(
                "SELECT card_sn, new_card_sn, fields, reason, seq FROM card_corrections WHERE card_sn=?",
                (card_sn,),
            ).fetchone()
        if row is None:
            return None
        return CardCorrectionHeld(row[0], row[1], tuple(json.loads(row[2])), row[3], row[4])

    def card_notices(self, card_sn: str | None, today: str) -> list[dict[str, Any]]:
        """The notices for ``card_sn`` valid on ``today`` (``YYYY-MM-DD``), oldest first."""
        if not card_sn:
            return []
        with self._rlock:
            rows = self._reader.execute(
                "SELECT id, type, amount_fen, text, valid_from, valid_to, seq FROM card_notices "
                "WHERE card_sn=? AND valid_from<=? AND valid_to>=? ORDER BY valid_from, id",
                (card_sn, today, today),
            ).fetchall()
        keys = ("id", "type", "amount_fen", "text", "valid_from", "valid_to", "bundle_seq")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def card_notes(self, card_sn: str | None, *, at: float | None = None) -> dict[str, Any]:
        """What the desk shows beside a card just read: its ``correction`` (or None) and the ``notices``
        valid today (China Standard Time, the card office's calendar)."""
        today = datetime.fromtimestamp(time.time() if at is None else at, CST).date().isoformat()
        correction = self.card_correction(card_sn)
        return {
            "correction": correction.to_json() if correction is not None else None,
            "notices": self.card_notices(card_sn, today),
        }

    # ---- what is held ----------------------------------------------------------------------

    def held(self) -> dict[str, dict[str, Any]]:
        """Per kind held: ``seq``, ``created``, ``target``, ``applied_at`` (epoch), ``entries``."""
        with self._rlock:
            rows = self._reader.execute(
                "SELECT kind, seq, created, target, applied_at, entries FROM bundle_state"
            ).fetchall()
        return {
            r[0]: {"seq": r[1], "created": r[2], "target": r[3], "applied_at": r[4], "entries": r[5]}
            for r in rows
        }

    def held_seq(self, kind: str) -> int:
        with self._rlock:
            row = self._reader.execute("SELECT seq FROM bundle_state WHERE kind=?", (kind,)).fetchone()
        return row[0] if row else 0

    def document(self, kind: str) -> Any | None:
        """The body of the held ``rules`` / ``policy`` / ``catalogue`` / ``keys`` bundle, or None."""
        with self._rlock:
            row = self._reader.execute("SELECT body FROM documents WHERE kind=?", (kind,)).fetchone()
        return msgpack.unpackb(row[0], raw=False) if row else None

    def catalogue_list(
        self,
        section: str,
        *,
        hospital: str = "",
        code: str | None = None,
        limit: int,
        offset: int,
    ) -> tuple[int, list[dict[str, Any]]]:
        """One national list of the held catalogue: (rows in all, this page's rows in code order).

        ``hospital`` selects one hospital's rows of ``matches`` (every other list has ''); ``code`` one
        code. Raises ``KeyError`` when the held catalogue carries none of the list for ``hospital``,
        so the caller answers "not held" rather than an empty list a HIS would take for the truth.
        """
        where = "section=? AND hospital=?"
        params: tuple[Any, ...] = (section, hospital)
        with self._rlock:
            held = self._reader.execute(f"SELECT 1 FROM catalogue_lists WHERE {where} LIMIT 1", params)
            if held.fetchone() is None:
                raise KeyError(section)
            if code:
                where, params = where + " AND code=?", (*params, code)
            total = self._reader.execute(f"SELECT count(*) FROM catalogue_lists WHERE {where}", params)
            count = total.fetchone()[0]
            rows = self._reader.execute(
                f"SELECT row FROM catalogue_lists WHERE {where} ORDER BY code, since LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
        return count, [json.loads(r[0]) for r in rows]

    def blacklist_count(self) -> int:
        """Entries held (counts the table: slow for millions; status uses ``held()['blacklist']``)."""
        with self._rlock:
            return self._reader.execute("SELECT count(*) FROM blacklist").fetchone()[0]

    # ---- apply -----------------------------------------------------------------------------

    def apply_file(
        self,
        path: Path | str,
        *,
        expect: BundleHeader | None = None,
        area: str | None = None,
        target: str = "",
    ) -> Applied:
        """Check and apply one bundle file in one transaction; raises a ``PolicyRefused`` subclass.

        ``expect``: the header the signed TUF target metadata announced (the file must say the same);
        ``area``: the agent's pooling area. The sequence must be newer than the held one and a delta's
        base must be the held sequence, checked inside the transaction.
        """
        try:
            with open(path, "rb") as f:
                header = read_header(f)
                check_header(header, expect=expect, area=area)
                f.seek(0)
                if header.kind == "blacklist":
                    header, entries = iter_blacklist(f)
                    return self.apply_blacklist(header, entries, target=target)
                if header.kind == "cards":
                    header, ops = iter_cards(f)
                    return self.apply_cards(header, ops, target=target)
                header, body = read_document(f)
                return self.apply_document(header, body, target=target)
        except perrors.BundleInvalid as exc:
            raise BundleInvalid(
                f"the bundle file is invalid: {exc.message}", kind=expect and expect.kind
            ) from None
        except OSError as exc:
            raise PolicyStoreFailed(f"cannot read the bundle file: {exc}") from exc

    def apply_document(self, header: BundleHeader, body: Any, *, target: str = "") -> Applied:
        lists = _check_document(header.kind, body)
        if header.kind == "catalogue":
            body = {k: v for k, v in body.items() if k not in LISTS}
        blob = msgpack.packb(body, use_bin_type=True)

        def work(conn: sqlite3.Connection) -> tuple[int, int, int | None]:
            conn.execute(
                "INSERT INTO documents(kind, body) VALUES (?, ?) "
                "ON CONFLICT(kind) DO UPDATE SET body=excluded.body",
                (header.kind, blob),
            )
            if header.kind == "catalogue":
                _write_lists(conn, lists)  # a catalogue without lists holds none
            return 0, 0, None

        return self._apply(header, target, work)

    def apply_blacklist(
        self, header: BundleHeader, entries: Iterable[BlacklistEntry], *, target: str = ""
    ) -> Applied:
        if header.kind != "blacklist":
            raise BundleWrongKind(f"a {header.kind} bundle is not a blacklist", kind="blacklist")
        if header.full:
            return self._apply(header, target, lambda conn: self._replace_all(conn, header.seq, entries))
        return self._apply(header, target, lambda conn: self._apply_delta(conn, header.seq, entries))

    def apply_cards(
        self, header: BundleHeader, entries: Iterable[CardsEntry], *, target: str = ""
    ) -> Applied:
        """A ``cards`` bundle: a full one replaces every correction and notice, a delta sets and withdraws
        them; both in the one apply transaction (a bad entry half-way leaves the held state whole)."""
        if header.kind != "cards":
            raise BundleWrongKind(f"a {header.kind} bundle is not a cards bundle", kind="cards")

        def work(conn: sqlite3.Connection) -> tuple[int, int, int]:
            added = removed = 0
            if header.full:
                removed = conn.execute("DELETE FROM card_corrections").rowcount
                removed += conn.execute("DELETE FROM card_notices").rowcount
            for e in entries:
                if e.op == "-":
                    table, key = ("card_corrections", "card_sn") if e.item == "correction" else (
                        "card_notices", "id")  # fmt: skip
                    removed += conn.execute(f"DELETE FROM {table} WHERE {key}=?", (e.key,)).rowcount
                elif e.correction is not None:
                    c = e.correction
                    conn.execute(
                        "INSERT OR REPLACE INTO card_corrections(card_sn, new_card_sn, fields, reason, seq) "
                        "VALUES (?,?,?,?,?)",
                        (c.card_sn, c.new_card_sn, json.dumps(list(c.fields)), c.reason, header.seq),
                    )
                    added += 1
                elif e.notice is not None:
                    n = e.notice
                    conn.execute(
                        "INSERT OR REPLACE INTO card_notices(id, card_sn, type, amount_fen, text, "
                        "valid_from, "
                        "valid_to, seq) VALUES (?,?,?,?,?,?,?,?)",
                        (n.id, n.card_sn, n.type, n.amount_fen, n.text, n.valid_from, n.valid_to, header.seq),
                    )
                    added += 1
            held = conn.execute(
                "SELECT (SELECT count(*) FROM card_corrections) + (SELECT count(*) FROM card_notices)"
            ).fetchone()[0]
            return added, removed, held

        return self._apply(header, target, work)

    def _apply(self, header: BundleHeader, target: str, work: Any) -> Applied:
        started = time.perf_counter()
        with self._wlock:
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    row = conn.execute(
                        "SELECT seq, entries FROM bundle_state WHERE kind=?", (header.kind,)
                    ).fetchone()
                    held = row[0] if row else 0
                    if header.seq <= held:
                        raise BundleNotNewer(
                            f"{header.kind} seq {header.seq} is not newer than the held seq {held}",
                            kind=header.kind,
                        )
                    if header.base_seq is not None and header.base_seq != held:
                        raise BundleBaseMismatch(
                            f"the {header.kind} delta {header.seq} applies on seq {header.base_seq}; "
                            f"this agent holds seq {held}",
                            kind=header.kind,
                        )
                    added, removed, entries = work(conn)
                    if entries is None and header.kind == "blacklist":
                        entries = (row[1] or 0) + added - removed if row else added - removed
                    conn.execute(
                        "INSERT INTO bundle_state(kind, seq, created, target, applied_at, entries) "
                        "VALUES (?,?,?,?,?,?) ON CONFLICT(kind) DO UPDATE SET seq=excluded.seq, "
                        "created=excluded.created, target=excluded.target, applied_at=excluded.applied_at, "
                        "entries=excluded.entries",
                        (header.kind, header.seq, header.created, target, time.time(), entries),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise PolicyStoreFailed(
                    f"cannot apply {header.kind} seq {header.seq} to {self.path}: {exc}; the held bundles "
                    "are unchanged. Check the agent's disk (free space, permissions)"
                ) from exc
            if header.kind == "blacklist" and header.full:
                # A snapshot of millions of entries leaves a WAL as large as the table: give it back.
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error as exc:  # pragma: no cover - a checkpoint is an optimisation
                    log.info("checkpoint after the blacklist snapshot failed: %s", exc)
        seconds = time.perf_counter() - started
        log.info(
            "applied %s seq %s (%s) in %.3f s",
            header.kind,
            header.seq,
            "full" if header.full else f"delta on {header.base_seq}",
            seconds,
        )
        return Applied(header.kind, header.seq, header.base_seq, added, removed, entries, seconds, target)

    @staticmethod
    def _rows(entries: Iterable[BlacklistEntry]) -> Iterator[tuple[str, str, str, str, int]]:
        for e in entries:
            if e.op != "+":
                raise BundleInvalid("a full blacklist holds additions only", kind="blacklist")
            if e.list_type not in BLACKLIST_TYPES:
                raise BundleInvalid("a blacklist entry has an unknown type", kind="blacklist")
            yield (e.list_type, e.id, e.reason, e.source, parse_effective(e.effective_at))

    def _replace_all(
        self, conn: sqlite3.Connection, seq: int, entries: Iterable[BlacklistEntry]
    ) -> tuple[int, int, int]:
        conn.execute("DROP TABLE IF EXISTS blacklist_next")
        conn.execute(_BLACKLIST_DDL.format(name="blacklist_next"))
        rows = self._rows(entries)
        out_of_order: list[tuple[str, str, str, str, int]] = []
        count = 0

        def in_order() -> Iterator[tuple[Any, ...]]:
            nonlocal count
            last: tuple[str, str] | None = None
            for row in rows:
                key = (row[0], row[1])
                if last is not None and key <= last:
                    out_of_order.append(row)
                    return
                last = key
                count += 1
                yield (*row, seq)

        conn.executemany("INSERT INTO blacklist_next VALUES (?,?,?,?,?,?)", in_order())
        if out_of_order:
            conn.execute("DROP TABLE IF EXISTS temp.blacklist_stage")
            conn.execute(
                "CREATE TEMP TABLE blacklist_stage (list_type TEXT, id TEXT, reason TEXT, source TEXT, "
                "effective_at INTEGER)"
            )
            conn.executemany(
                "INSERT INTO temp.blacklist_stage VALUES (?,?,?,?,?)", itertools.chain(out_of_order, rows)
            )
            conn.execute(
                "INSERT OR REPLACE INTO blacklist_next SELECT list_type, id, reason, source, effective_at, ? "
                "FROM temp.blacklist_stage ORDER BY list_type, id, rowid",
                (seq,),
            )
            conn.execute("DROP TABLE temp.blacklist_stage")
            count = conn.execute("SELECT count(*) FROM blacklist_next").fetchone()[0]
        removed = conn.execute("SELECT entries FROM bundle_state WHERE kind='blacklist'").fetchone()
        conn.execute("DROP TABLE blacklist")
        conn.execute("ALTER TABLE blacklist_next RENAME TO blacklist")
        return count, (removed[0] or 0) if removed else 0, count

    @staticmethod
    def _apply_delta(
        conn: sqlite3.Connection, seq: int, entries: Iterable[BlacklistEntry]
    ) -> tuple[int, int, None]:
        added = removed = 0
        cur = conn.cursor()
        for e in entries:
            if e.op == "-":
                cur.execute("DELETE FROM blacklist WHERE list_type=? AND id=?", (e.list_type, e.id))
                removed += cur.rowcount
                continue
            values = (e.reason, e.source, parse_effective(e.effective_at), seq, e.list_type, e.id)
            cur.execute(
                "UPDATE blacklist SET reason=?, source=?, effective_at=?, seq=? WHERE list_type=? AND id=?",
                values,
            )
            if cur.rowcount == 0:
                cur.execute(
                    "INSERT INTO blacklist(reason, source, effective_at, seq, list_type, id) "
                    "VALUES (?,?,?,?,?,?)",
                    values,
                )
                added += 1
        return added, removed, None

    # ---- meta, alarms, problems -------------------------------------------------------------

    def _write(self, sql: str, params: tuple = ()) -> None:
        try:
            with self._wlock:
                self._writer.execute(sql, params)
        except sqlite3.Error as exc:
            raise PolicyStoreFailed(f"cannot write to the policy database {self.path}: {exc}") from exc

    def set_meta(self, **values: Any) -> None:
        try:
            with self._wlock:
                self._writer.execute("BEGIN IMMEDIATE")
                try:
                    self._writer.executemany(
                        "INSERT INTO meta(key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                        [(k, json.dumps(v)) for k, v in values.items()],
                    )
                    self._writer.execute("COMMIT")
                except BaseException:
                    self._writer.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise PolicyStoreFailed(f"cannot write to the policy database {self.path}: {exc}") from exc

    def meta(self) -> dict[str, Any]:
        with self._rlock:
            return {k: json.loads(v) for k, v in self._reader.execute("SELECT key, value FROM meta")}

    def record_problem(
        self, code: str, message: str, *, kind: str | None = None, at: float | None = None
    ) -> None:
        at = time.time() if at is None else at
        try:
            with self._wlock:
                self._writer.execute("BEGIN IMMEDIATE")
                try:
                    self._writer.execute(
                        "INSERT INTO problems(at, code, kind, message) VALUES (?,?,?,?)",
                        (at, code, kind, message),
                    )
                    self._writer.execute(
                        "DELETE FROM problems WHERE id <= (SELECT max(id) FROM problems) - ?", (MAX_PROBLEMS,)
                    )
                    self._writer.execute("COMMIT")
                except BaseException:
                    self._writer.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise PolicyStoreFailed(f"cannot write to the policy database {self.path}: {exc}") from exc

    def problems(self, limit: int = 20, *, since_id: int = 0) -> list[dict[str, Any]]:
        """Newest first: ``id``, ``at`` (ISO), ``code``, ``kind``, ``message``."""
        with self._rlock:
            rows = self._reader.execute(
                "SELECT id, at, code, kind, message FROM problems WHERE id > ? ORDER BY id DESC LIMIT ?",
                (since_id, limit),
            ).fetchall()
        return [{"id": r[0], "at": _iso(r[1]), "code": r[2], "kind": r[3], "message": r[4]} for r in rows]

    def last_problem_id(self) -> int:
        with self._rlock:
            return self._reader.execute("SELECT coalesce(max(id), 0) FROM problems").fetchone()[0]

    def raise_alarm(self, code: str, message: str, *, at: float | None = None) -> bool:
        """Raise (or repeat) an alarm; True when it was not active before."""
        at = time.time() if at is None else at
        with self._rlock:
            row = self._reader.execute("SELECT cleared_at FROM alarms WHERE code=?", (code,)).fetchone()
        new = row is None or row[0] is not None
        self._write(
            "INSERT INTO alarms(code, message, first_at, last_at, count) VALUES (?,?,?,?,1) "
            "ON CONFLICT(code) DO UPDATE SET message=excluded.message, last_at=excluded.last_at, "
            "count=CASE WHEN cleared_at IS NULL THEN count+1 ELSE 1 END, "
            "first_at=CASE WHEN cleared_at IS NULL THEN first_at ELSE excluded.first_at END, cleared_at=NULL",
            (code, message, at, at),
        )
        return new

    def clear_alarm(self, code: str, *, at: float | None = None) -> bool:
        """Clear an active alarm; True when it was active."""
        with self._rlock:
            row = self._reader.execute(
                "SELECT 1 FROM alarms WHERE code=? AND cleared_at IS NULL", (code,)
            ).fetchone()
        if row is None:
            return False
        self._write("UPDATE alarms SET cleared_at=? WHERE code=?", (time.time() if at is None else at, code))
        return True

    def alarms(self) -> list[dict[str, Any]]:
        with self._rlock:
            rows = self._reader.execute(
                "SELECT code, message, first_at, count FROM alarms WHERE cleared_at IS NULL ORDER BY code"
            ).fetchall()
        return [{"code": r[0], "message": r[1], "since": r[2], "count": r[3]} for r in rows]
