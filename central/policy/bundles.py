"""Policy at the centre: the blacklist, document bundles, the bundle log, the audit log, export.

What an operator changes becomes a bundle (``protocol.bundles``) published as a TUF target
(``central.policy.tuf_repo``); ``docs/POLICY.md`` is the contract. Rules:

1. Input is validated whole first (``central.policy.documents``); on any problem nothing is written,
   published or audited, and the error names every problem with its place.
2. The operator keys must be able to sign targets *before* anything is written.
3. One database transaction holds the change, the bundle file (written to its hash-prefixed
   place in ``tuf/targets/`` before the commit), the bundle log row and the audit row. Only
   then is the TUF metadata updated, under the repository lock.
4. The targets metadata is a function of the bundle log: per (area, kind) the newest full
   bundle and, for the blacklist, every delta after it. A publish killed after the commit is
   completed by the next publish (or ``bundle sync``), never lost or published twice with
   different content under one seq.
5. Blacklist: each change is a delta on the previous bundle, unless there is no full snapshot
   yet, ``full_every`` deltas follow the last full, or the entries in the deltas since it would
   exceed ``full_ratio`` of its entries; then the bundle is a full snapshot of the area's list.
6. Who may ask for a change is decided before these methods are called: the CLI proposes a change
   request (``central.policy.changes``) and an approval by another operator calls the method here, with a
   ``TxHook`` that re-checks the request and records the approval inside the publishing transaction,
   so a change is published once, with its approval, or not at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sqlite3
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import TargetFile

from central.config import CentralConfig
from central.errors import (
    AreaRequired,
    BlacklistEntryUnknown,
    CardEntryUnknown,
    CentralError,
    ConfigInvalid,
    DocumentInvalid,
    InternalError,
)
from central.storage.schema import _area_of
from central.storage.store import Store, now_iso
from protocol.bundles import (
    BLACKLIST_TYPES,
    KINDS,
    BlacklistEntry,
    BundleHeader,
    CardCorrection,
    CardNotice,
    CardsEntry,
    correction_problems,
    encode_blacklist,
    encode_cards,
    encode_document,
    notice_problems,
    target_name,
)

from .documents import (
    check_area,
    check_blacklist_fields,
    load_json_document,
    read_blacklist_csv,
    validate_document,
)
from .tuf_repo import TufRepository, _tmp_path

__all__ = [
    "Actor",
    "Policy",
    "Published",
    "TxHook",
    "area_of_hospital",
    "audit_in",
    "default_area",
    "live_targets",
    "newest_seqs",
    "set_default_area",
    "stage_blacklist_csv",
]

log = logging.getLogger(__name__)

#: A blacklist change's rows as (list_type, id, reason, source, effective_at), read in the publishing
#: transaction (the connection is its own; a staging file may ignore it).
RowSource = Callable[[sqlite3.Connection], Iterator[tuple[str, str, str, str, str]]]

_UPSERT = (
    "INSERT INTO blacklist (area, list_type, id, reason, source, effective_at, added_seq, added_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (area, list_type, id) DO UPDATE SET "
    "reason = excluded.reason, source = excluded.source, effective_at = excluded.effective_at, "
    "added_seq = excluded.added_seq, added_at = excluded.added_at"
)
_BUNDLE_COLUMNS = "area, kind, seq, base_seq, target, path, length, sha256, entries, created, operator"


def _where(sql: str, **equal: str | None) -> tuple[str, list[str]]:
    """``sql`` narrowed by ``column = value`` for each value given (None: no filter on it)."""
    given = {k: v for k, v in equal.items() if v is not None}
    if not given:
        return sql, []
    return sql + " WHERE " + " AND ".join(f"{k} = ?" for k in given), list(given.values())


def area_of_hospital(hospital: str) -> str | None:
    """The pooling area a hospital code implies: ``H`` + 4 digits of the city + ``00``; None if none."""
    return _area_of(hospital)


def default_area(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT value FROM settings WHERE key = 'default_area'").fetchone()
    return row[0] if row else None


def set_default_area(store: Store, area: str) -> None:
    check_area(area)
    store.write(
        lambda conn: conn.execute(
            "INSERT INTO settings (key, value) VALUES ('default_area', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (area,),
        )
    )


def resolve_area(conn: sqlite3.Connection, area: str | None) -> str:
    """``--area`` if given, else the centre's default area; refused with what to do when neither."""
    if area is not None:
        return check_area(area)
    chosen = default_area(conn)
    if chosen is not None:
        return chosen
    known = [
        r[0] for r in conn.execute("SELECT DISTINCT pooling_area FROM agents WHERE pooling_area IS NOT NULL")
    ]
    hint = f" (areas of enrolled agents: {', '.join(sorted(known))})" if known else ""
    raise AreaRequired(
        f"no --area given and this centre has no default area{hint}; pass --area AREA, or set a default "
        "with `yibao-central init --area AREA`"
    )


def newest_seqs(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """The newest bundle seq per (area, kind)."""
    return {
        (a, k): s for a, k, s in conn.execute("SELECT area, kind, max(seq) FROM bundles GROUP BY area, kind")
    }


def _target_file(row: sqlite3.Row | tuple[Any, ...]) -> TargetFile:
    area, kind, seq, base_seq, target, _path, length, sha256, _entries, created, _op = row
    header = BundleHeader(kind=kind, area=area, seq=seq, base_seq=base_seq, created=created)
    return TargetFile(length, {"sha256": sha256}, target, unrecognized_fields={"custom": header.custom()})


def live_targets(conn: sqlite3.Connection) -> dict[str, TargetFile]:
    """What the targets metadata lists: per (area, kind) the newest full bundle and the deltas after it."""
    rows = conn.execute(
        f"SELECT {_BUNDLE_COLUMNS} FROM bundles AS b WHERE b.path != '' AND b.seq >= ("
        "SELECT max(f.seq) FROM bundles AS f WHERE f.area = b.area AND f.kind = b.kind "
        "AND f.base_seq IS NULL AND f.path != '') ORDER BY area, kind, seq"
    )
    return {row[4]: _target_file(row) for row in rows}


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts and why, for the audit log: a registered operator's name (``Operator.actor``), or the
    centre itself for what it does on its own schedule (lifting an ended suspension)."""

    operator: str
    reason: str = ""


class TxHook(Protocol):
    """What a caller does inside the transaction that records a bundle: ``check`` first (raise to
    change nothing), ``done`` last with the bundle recorded (``central.policy.changes``' approval)."""

    def check(self, conn: sqlite3.Connection) -> None: ...

    def done(self, conn: sqlite3.Connection, published: Published) -> None: ...


@dataclass(frozen=True, slots=True)
class Published:
    """One bundle produced by an operator action."""

    area: str
    kind: str
    seq: int
    base_seq: int | None
    target: str
    entries: int
    #: The TUF timestamp version that made it visible (None: recorded, not yet published).
    timestamp_version: int | None = None

    @property
    def full(self) -> bool:
        return self.base_seq is None

    def describe(self) -> str:
        shape = "full" if self.full else f"delta on seq {self.base_seq}"
        noun = (
            ("entry" if self.entries == 1 else "entries")
            if self.kind in ("blacklist", "cards")
            else ("item" if self.entries == 1 else "items")
        )
        when = (
            f"published as timestamp v{self.timestamp_version}"
            if self.timestamp_version is not None
            else "recorded; the TUF metadata did not change"
        )
        return f"{self.area} {self.kind} seq {self.seq} ({shape}, {self.entries} {noun}) {when}"

    def to_json(self) -> dict[str, Any]:
        return {
            "area": self.area,
            "kind": self.kind,
            "seq": self.seq,
            "base_seq": self.base_seq,
            "target": self.target,
            "entries": self.entries,
            "timestamp_version": self.timestamp_version,
        }


class Policy:
    """The operator actions on one centre's home (the CLI calls these; tests too)."""

    def __init__(self, store: Store, repo: TufRepository, config: CentralConfig) -> None:
        self.store = store
        self.repo = repo
        self.config = config

    # -- bundle log, audit, sync --------------------------------------------------------------------

    @staticmethod
    def _next_seq(conn: sqlite3.Connection, area: str, kind: str) -> tuple[int, int | None]:
        row = conn.execute(
            "SELECT max(seq) FROM bundles WHERE area = ? AND kind = ?", (area, kind)
        ).fetchone()
        last = row[0]
        return (last or 0) + 1, last

    def _record_bundle(
        self, conn: sqlite3.Connection, header: BundleHeader, tf: TargetFile, entries: int, actor: Actor
    ) -> None:
        conn.execute(
            f"INSERT INTO bundles ({_BUNDLE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                header.area, header.kind, header.seq, header.base_seq, tf.path, tf.get_prefixed_paths()[0],
                tf.length, tf.hashes["sha256"], entries, header.created, actor.operator,
            ),
        )  # fmt: skip

    @staticmethod
    def _audit(
        conn: sqlite3.Connection,
        actor: Actor,
        action: str,
        detail: dict[str, Any],
        header: BundleHeader | None = None,
        target: str | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO audit_log (at, operator, action, reason, detail, area, kind, seq, target) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                now_iso(), actor.operator, action, actor.reason, json.dumps(detail, ensure_ascii=False),
                header.area if header else detail.get("area"), header.kind if header else None,
                header.seq if header else None, target,
            ),
        )  # fmt: skip

    def audit(self, actor: Actor, action: str, detail: dict[str, Any]) -> None:
        """Record an operator action that produced no bundle (export, root rotation)."""
        self.store.write(lambda conn: self._audit(conn, actor, action, detail))

    def sync(self, signers: Sequence[CryptoSigner], *, force: bool = False) -> int | None:
        """Make the TUF targets metadata list what the bundle log says; returns the new timestamp version."""
        with self.repo.lock():
            self.complete_pending()
            live = self.store.read(live_targets)
            ts = self.repo.set_targets(live, signers, force=force)
            self.repo.prune_targets(keep=(t.get_prefixed_paths()[0] for t in live.values()))
            return ts

    def pending(self) -> list[str]:
        """Bundles recorded but not in the published targets metadata (an interrupted publish)."""
        live = self.store.read(live_targets)
        published = self.repo.targets_md().signed.targets
        unwritten = self.store.read(
            lambda conn: [r[0] for r in conn.execute("SELECT target FROM bundles WHERE path = ''")]
        )
        return sorted({*unwritten, *(name for name, tf in live.items() if published.get(name) != tf)})

    def complete_pending(self) -> dict[str, int]:
        """Write the files of full blacklist snapshots recorded but not yet written; {target: entries}.

        A full snapshot is streamed from a read snapshot of the list *after* the transaction that
        recorded it, so a multi-million-entry list never holds the database's write lock (the
        agents' uploads keep flowing). The repository lock keeps every other publisher out, so the
        list is exactly the state of that seq; a run killed half-way is finished by the next one.
        """
        with self.repo.lock():
            rows = self.store.read(
                lambda conn: conn.execute(
                    "SELECT area, seq, created, target, (SELECT max(seq) FROM bundles AS n "
                    "WHERE n.area = b.area AND n.kind = 'blacklist') FROM bundles AS b "
                    "WHERE kind = 'blacklist' AND path = '' ORDER BY area, seq"
                ).fetchall()
            )
            done = {}
            for area, seq, created, target, newest in rows:
                if seq != newest:  # pragma: no cover - every publish completes its own first
                    raise InternalError(f"{target} was never written and newer bundles follow it")
                header = BundleHeader("blacklist", area, seq, None, created)

                def write(f: Any, area: str = area, header: BundleHeader = header) -> int:
                    return self.store.read(
                        lambda conn: encode_blacklist(f, header, self._iter_list(conn, area))
                    )

                tf, count = self.repo.write_target(target, write)
                self.store.write(
                    lambda conn, tf=tf, count=count, area=area, seq=seq: conn.execute(
                        "UPDATE bundles SET path = ?, length = ?, sha256 = ?, entries = ? "
                        "WHERE area = ? AND kind = 'blacklist' AND seq = ?",
                        (tf.get_prefixed_paths()[0], tf.length, tf.hashes["sha256"], count, area, seq),
                    )
                )
                done[target] = count
            return done

    def _publish(
        self,
        signers: Sequence[CryptoSigner],
        tx: Callable[[sqlite3.Connection], Published],
    ) -> Published:
        self.repo.check_targets_signers(signers)
        with self.repo.lock():
            try:
                self.complete_pending()
            except OSError as exc:
                raise InternalError(
                    f"an earlier full snapshot could not be written ({exc}); free disk space or fix the "
                    "permissions of the home, then run `yibao-central bundle sync`; nothing new was recorded"
                ) from exc
            published = self.store.write(tx)
            try:
                entries = self.complete_pending().get(published.target, published.entries)
                published = dataclasses.replace(published, entries=entries)
                ts = self.sync(signers)  # completes nothing more: done just above
            except Exception as exc:
                log.exception("publishing the TUF metadata for %s failed", published.target)
                raise InternalError(
                    f"{published.area} {published.kind} seq {published.seq} is recorded but publishing the "
                    f"TUF metadata failed ({exc}); fix the cause and run `yibao-central bundle sync`"
                ) from exc
        log.info("%s %s seq %d published (timestamp %s)", published.area, published.kind, published.seq, ts)
        return Published(**{**published.to_json(), "timestamp_version": ts})

    # -- blacklist ---------------------------------------------------------------------------------

    def _full_needed(self, conn: sqlite3.Connection, area: str, n_ops: int, kind: str = "blacklist") -> bool:
        last_full = conn.execute(
            "SELECT seq, entries FROM bundles WHERE area = ? AND kind = ? AND base_seq IS NULL "
            "ORDER BY seq DESC LIMIT 1",
            (area, kind),
        ).fetchone()
        if last_full is None:
            return True
        n_deltas, delta_entries = conn.execute(
            "SELECT count(*), coalesce(sum(entries), 0) FROM bundles WHERE area = ? AND kind = ? AND seq > ?",
            (area, kind, last_full[0]),
        ).fetchone()
        if n_deltas >= self.config.full_every:
            return True
        return delta_entries + n_ops > self.config.full_ratio * last_full[1]

    def _blacklist_tx(
        self,
        actor: Actor,
        area: str | None,
        action: str,
        detail: dict[str, Any],
        n_ops: int,
        apply: Callable[[sqlite3.Connection, str, int, str], None],
        ops: Callable[[sqlite3.Connection], Iterable[BlacklistEntry]],
        hook: TxHook | None = None,
    ) -> Callable[[sqlite3.Connection], Published]:
        def tx(conn: sqlite3.Connection) -> Published:
            if hook is not None:
                hook.check(conn)
            chosen = resolve_area(conn, area)
            seq, last = self._next_seq(conn, chosen, "blacklist")
            created = now_iso()
            apply(conn, chosen, seq, created)
            full = self._full_needed(conn, chosen, n_ops)
            header = BundleHeader("blacklist", chosen, seq, None if full else last, created)
            name = target_name(chosen, "blacklist", seq, full)
            self._audit(conn, actor, action, {"area": chosen, **detail}, header, name)
            if full:  # written after the commit, off the write lock: see complete_pending
                conn.execute(
                    f"INSERT INTO bundles ({_BUNDLE_COLUMNS}) "
                    "VALUES (?, 'blacklist', ?, NULL, ?, '', 0, '', 0, ?, ?)",
                    (chosen, seq, name, created, actor.operator),
                )
                return _done(conn, Published(chosen, "blacklist", seq, None, name, 0))
            tf, count = self.repo.write_target(name, lambda f: encode_blacklist(f, header, ops(conn)))
            self._record_bundle(conn, header, tf, count, actor)
            return _done(conn, Published(chosen, "blacklist", seq, header.base_seq, name, count))

        def _done(conn: sqlite3.Connection, published: Published) -> Published:
            if hook is not None:
                hook.done(conn, published)
            return published

        return tx

    @staticmethod
    def _iter_list(conn: sqlite3.Connection, area: str) -> Iterator[BlacklistEntry]:
        cursor = conn.execute(
            "SELECT list_type, id, reason, source, effective_at FROM blacklist WHERE area = ? "
            "ORDER BY list_type, id",
            (area,),
        )
        for list_type, entry_id, reason, source, effective_at in cursor:
            yield BlacklistEntry("+", list_type, entry_id, reason, source, effective_at)

    def blacklist_add(
        self,
        actor: Actor,
        signers: Sequence[CryptoSigner],
        *,
        list_type: str,
        entry_id: str,
        reason: str,
        source: str = "",
        effective_at: str | None = None,
        area: str | None = None,
        hook: TxHook | None = None,
    ) -> Published:
        """Add (or replace) one entry; it applies from ``effective_at`` (ISO-8601 with offset; None = now)."""
        problems, when = check_blacklist_fields(list_type, entry_id, reason, source, effective_at)
        if area is not None:
            check_area(area)
        if problems:
            raise DocumentInvalid(
                "the blacklist entry", [f"--{f.replace('_', '-')}: {m}" for f, m in problems]
            )
        entry_reason = reason.strip()
        holder: dict[str, str] = {}

        def apply(conn: sqlite3.Connection, chosen: str, seq: int, created: str) -> None:
            holder["at"] = when or created
            conn.execute(
                _UPSERT, (chosen, list_type, entry_id, entry_reason, source, holder["at"], seq, created)
            )

        def ops(conn: sqlite3.Connection) -> list[BlacklistEntry]:
            return [BlacklistEntry("+", list_type, entry_id, entry_reason, source, holder["at"])]

        detail = {"list_type": list_type, "id": entry_id, "reason": entry_reason, "source": source,
                  "effective_at": when}  # fmt: skip
        tx = self._blacklist_tx(actor, area, "blacklist.add", detail, 1, apply, ops, hook)
        return self._publish(signers, tx)

    def blacklist_remove(
        self, actor: Actor, signers: Sequence[CryptoSigner], *, list_type: str, entry_id: str,
        area: str | None = None, hook: TxHook | None = None,
    ) -> Published:  # fmt: skip
        """Remove one entry; refused (nothing published) when the area's list does not hold it."""
        problems, _ = check_blacklist_fields(list_type, entry_id, None, "", None)
        if problems:
            raise DocumentInvalid(
                "the blacklist entry", [f"--{f.replace('_', '-')}: {m}" for f, m in problems]
            )

        def apply(conn: sqlite3.Connection, chosen: str, seq: int, created: str) -> None:
            cur = conn.execute(
                "DELETE FROM blacklist WHERE area = ? AND list_type = ? AND id = ?",
                (chosen, list_type, entry_id),
            )
            if cur.rowcount == 0:
                raise BlacklistEntryUnknown(
                    f"the {chosen} blacklist holds no {list_type} with that id; nothing was published "
                    f"(`yibao-central blacklist list --area {chosen} --type {list_type}` shows the entries)"
                )

        def ops(conn: sqlite3.Connection) -> list[BlacklistEntry]:
            return [BlacklistEntry("-", list_type, entry_id)]

        detail = {"list_type": list_type, "id": entry_id}
        return self._publish(
            signers, self._blacklist_tx(actor, area, "blacklist.remove", detail, 1, apply, ops, hook)
        )

    def blacklist_import(
        self, actor: Actor, signers: Sequence[CryptoSigner], path: Path | str, *, area: str | None = None
    ) -> Published:
        """Add (or replace) every entry of a CSV file (``docs/POLICY.md``), all or nothing."""
        path = Path(path)
        if area is not None:
            check_area(area)
        self.repo.check_targets_signers(signers)
        staging, count = stage_blacklist_csv(path, now_iso())
        try:

            def rows(conn: sqlite3.Connection) -> Iterator[tuple[str, str, str, str, str]]:
                yield from staging.execute(
                    "SELECT list_type, id, reason, source, effective_at FROM rows ORDER BY line"
                )

            return self.blacklist_rows(actor, signers, rows, count, {"file": path.name}, area=area)
        finally:
            staging.close()

    def blacklist_rows(
        self,
        actor: Actor,
        signers: Sequence[CryptoSigner],
        rows: RowSource,
        count: int,
        detail: dict[str, Any],
        *,
        area: str | None = None,
        hook: TxHook | None = None,
    ) -> Published:
        """Add (or replace) ``count`` validated entries (a staged CSV, an approved change's), audited
        ``blacklist.import``; ``rows`` is read twice in the publishing transaction (apply, bundle)."""

        def apply(conn: sqlite3.Connection, chosen: str, seq: int, created: str) -> None:
            conn.executemany(_UPSERT, ((chosen, *row, seq, created) for row in rows(conn)))

        def ops(conn: sqlite3.Connection) -> Iterator[BlacklistEntry]:
            for row in rows(conn):
                yield BlacklistEntry("+", *row)

        detail = {**detail, "entries": count}
        tx = self._blacklist_tx(actor, area, "blacklist.import", detail, count, apply, ops, hook)
        return self._publish(signers, tx)

    def blacklist_list(self, area: str | None = None, list_type: str | None = None) -> list[dict[str, Any]]:
        if area is not None:
            check_area(area)
        if list_type is not None and list_type not in BLACKLIST_TYPES:
            raise ConfigInvalid(f"--type must be one of {', '.join(BLACKLIST_TYPES)}")
        sql, params = _where(
            "SELECT area, list_type, id, reason, source, effective_at, added_seq, added_at FROM blacklist",
            area=area, list_type=list_type,
        )  # fmt: skip
        cols = ("area", "list_type", "id", "reason", "source", "effective_at", "added_seq", "added_at")
        return self.store.read(
            lambda conn: [
                dict(zip(cols, r, strict=True))
                for r in conn.execute(sql + " ORDER BY area, list_type, id", params)
            ]
        )

    # -- cards: corrections and notices -------------------------------------------------------------

    @staticmethod
    def _iter_cards(conn: sqlite3.Connection, area: str) -> Iterator[CardsEntry]:
        """The area's whole ``cards`` state as additions (a full snapshot), corrections then notices."""
        for card_sn, new_card_sn, fields, reason in conn.execute(
            "SELECT card_sn, new_card_sn, fields, reason FROM card_corrections WHERE area = ? "
            "ORDER BY card_sn",
            (area,),
        ).fetchall():
            c = CardCorrection(card_sn, new_card_sn, tuple(json.loads(fields)), reason)
            yield CardsEntry("+", "correction", card_sn, correction=c)
        for row in conn.execute(
            "SELECT id, card_sn, type, amount_fen, text, valid_from, valid_to FROM card_notices "
            "WHERE area = ? ORDER BY id",
            (area,),
        ).fetchall():
            yield CardsEntry("+", "notice", row[0], notice=CardNotice(*row))

    @staticmethod
    def _apply_cards_entry(conn: sqlite3.Connection, area: str, e: CardsEntry, seq: int, at: str) -> None:
        if e.op == "-":
            table, key = ("card_corrections", "card_sn") if e.item == "correction" else ("card_notices", "id")
            if conn.execute(f"DELETE FROM {table} WHERE area = ? AND {key} = ?", (area, e.key)).rowcount == 0:
                what = "correction of card" if e.item == "correction" else "notice"
                raise CardEntryUnknown(
                    f"area {area} holds no {what} {e.key}; nothing was published (`yibao-central cards list "
                    f"--area {area}` shows what it holds)"
                )
        elif e.correction is not None:
            c = e.correction
            conn.execute(
                "INSERT INTO card_corrections (area, card_sn, new_card_sn, fields, reason, added_seq, "
                "added_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (area, card_sn) DO UPDATE SET "
                "new_card_sn = excluded.new_card_sn, fields = excluded.fields, reason = excluded.reason, "
                "added_seq = excluded.added_seq, added_at = excluded.added_at",
                (area, c.card_sn, c.new_card_sn, json.dumps(list(c.fields)), c.reason, seq, at),
            )
        elif e.notice is not None:
            n = e.notice
            conn.execute(
                "INSERT INTO card_notices (area, id, card_sn, type, amount_fen, text, valid_from, valid_to, "
                "added_seq, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (area, id) DO UPDATE "
                "SET card_sn = excluded.card_sn, type = excluded.type, amount_fen = excluded.amount_fen, "
                "text = excluded.text, valid_from = excluded.valid_from, valid_to = excluded.valid_to, "
                "added_seq = excluded.added_seq, added_at = excluded.added_at",
                (area, n.id, n.card_sn, n.type, n.amount_fen, n.text, n.valid_from, n.valid_to, seq, at),
            )

    def cards_change(
        self,
        actor: Actor,
        signers: Sequence[CryptoSigner],
        entries: Sequence[CardsEntry],
        *,
        action: str,
        detail: dict[str, Any],
        area: str | None = None,
        hook: TxHook | None = None,
    ) -> Published:
        """Set or withdraw card corrections and notices, published as one ``cards`` bundle: a delta on the
        previous one, or a full snapshot of the area's state by the blacklist's rule (``_full_needed``).

        Everything is validated first (``DocumentInvalid`` naming each problem); a withdrawal of what the
        area does not hold is ``CardEntryUnknown``; either way nothing is written or published.
        """
        if area is not None:
            check_area(area)
        problems: list[str] = []
        for e in entries:
            if e.op == "+":
                found = (
                    correction_problems(e.correction) if e.correction is not None
                    else notice_problems(e.notice) if e.notice is not None
                    else [("entry", "an addition carries a correction or a notice")]
                )  # fmt: skip
                problems += [f"--{f.replace('_', '-')}: {m}" for f, m in found]
            elif not e.key:
                problems.append("a withdrawal names a card_sn or a notice id")
        if not entries:
            problems.append("no correction or notice given")
        if problems:
            raise DocumentInvalid("the card change", problems)

        def tx(conn: sqlite3.Connection) -> Published:
            if hook is not None:
                hook.check(conn)
            chosen = resolve_area(conn, area)
            seq, last = self._next_seq(conn, chosen, "cards")
            created = now_iso()
            for e in entries:
                self._apply_cards_entry(conn, chosen, e, seq, created)
            full = self._full_needed(conn, chosen, len(entries), "cards")
            header = BundleHeader("cards", chosen, seq, None if full else last, created)
            name = target_name(chosen, "cards", seq, full)
            ops: Iterable[CardsEntry] = self._iter_cards(conn, chosen) if full else entries
            tf, count = self.repo.write_target(name, lambda f: encode_cards(f, header, ops))
            self._record_bundle(conn, header, tf, count, actor)
            self._audit(conn, actor, action, {"area": chosen, **detail}, header, name)
            published = Published(chosen, "cards", seq, header.base_seq, name, count)
            if hook is not None:
                hook.done(conn, published)
            return published

        return self._publish(signers, tx)

    def cards_list(self, area: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """The corrections and notices held per area (what the newest ``cards`` bundle carries)."""
        if area is not None:
            check_area(area)

        def run(conn: sqlite3.Connection) -> dict[str, list[dict[str, Any]]]:
            sql, params = _where(
                "SELECT area, card_sn, new_card_sn, fields, reason, added_seq, added_at "
                "FROM card_corrections",
                area=area,
            )
            corrections = [
                {
                    "area": r[0],
                    "card_sn": r[1],
                    "new_card_sn": r[2] or None,
                    "fields": json.loads(r[3]),
                    "reason": r[4],
                    "added_seq": r[5],
                    "added_at": r[6],
                }
                for r in conn.execute(sql + " ORDER BY area, card_sn", params)
            ]
            sql, params = _where(
                "SELECT area, id, card_sn, type, amount_fen, text, valid_from, valid_to, added_seq, added_at "
                "FROM card_notices",
                area=area,
            )
            keys = ("area", "id", "card_sn", "type", "amount_fen", "text", "valid_from", "valid_to",
                    "added_seq", "added_at")  # fmt: skip
            notices = [
                dict(zip(keys, r, strict=True)) for r in conn.execute(sql + " ORDER BY area, id", params)
            ]
            return {"corrections": corrections, "notices": notices}

        return self.store.read(run)

    # -- documents ---------------------------------------------------------------------------------

    def publish_document(
        self,
        actor: Actor,
        signers: Sequence[CryptoSigner],
        kind: str,
        document: Any,
        *,
        area: str | None = None,
        what: str = "",
        action: str | None = None,
        hook: TxHook | None = None,
    ) -> Published:
        """Validate and publish a ``policy``/``catalogue``/``rules``/``keys`` document as a full bundle."""
        if area is not None:
            check_area(area)
        body, doc_area, count = validate_document(kind, document, area=area, what=what)
        action = action or f"{kind}.publish"

        def tx(conn: sqlite3.Connection) -> Published:
            if hook is not None:
                hook.check(conn)
            chosen = resolve_area(conn, doc_area)
            seq, _ = self._next_seq(conn, chosen, kind)
            header = BundleHeader(kind, chosen, seq, None, now_iso())
            name = target_name(chosen, kind, seq, True)
            tf, _ = self.repo.write_target(name, lambda f: encode_document(f, header, body))
            self._record_bundle(conn, header, tf, count, actor)
            self._audit(conn, actor, action, {"area": chosen, "file": what, "items": count}, header, name)
            published = Published(chosen, kind, seq, None, name, count)
            if hook is not None:
                hook.done(conn, published)
            return published

        return self._publish(signers, tx)

    def publish_document_file(
        self, actor: Actor, signers: Sequence[CryptoSigner], kind: str, path: Path | str, *,
        area: str | None = None, action: str | None = None,
    ) -> Published:  # fmt: skip
        path = Path(path)
        document = load_json_document(path)
        return self.publish_document(actor, signers, kind, document, area=area, what=path.name, action=action)

    # -- export ------------------------------------------------------------------------------------

    def export(self, out: Path | str, kind: str = "all", area: str | None = None) -> list[str]:
        """A tar of the published repository for offline sites: ``metadata/<file>`` (every root, the
        timestamp, the snapshot and targets it reaches) and ``targets/<hash-prefixed path>`` of the
        ``kind`` bundles (all kinds for ``all``). Returns the member names."""
        if kind != "all" and kind not in KINDS:
            raise ConfigInvalid(f"--kind must be one of {', '.join(KINDS)} or all")
        if area is not None:
            check_area(area)
        out = Path(out)
        with self.repo.lock():
            with contextlib.suppress(CentralError):
                self.repo.resign_online()  # as fresh a timestamp as the schedule allows
            metadata = self.repo.export_metadata()
            targets_md = self.repo.targets_md().signed
            chosen = [
                t
                for t in targets_md.targets.values()
                if (kind == "all" or t.custom.get("kind") == kind)
                and (area is None or t.custom.get("area") == area)
            ]
            if not chosen:
                where = f" for area {area}" if area else ""
                raise ConfigInvalid(
                    f"no {'' if kind == 'all' else kind + ' '}bundle is published{where}; nothing exported"
                )
            members: list[str] = []
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = _tmp_path(out)
            try:
                with tarfile.open(tmp, "w") as tar:
                    for name, path in metadata:
                        tar.add(path, arcname=f"metadata/{name}", recursive=False)
                        members.append(f"metadata/{name}")
                    for t in sorted(chosen, key=lambda t: t.path):
                        rel = t.get_prefixed_paths()[0]
                        tar.add(self.repo.targets_dir / rel, arcname=f"targets/{rel}", recursive=False)
                        members.append(f"targets/{rel}")
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, out)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            return members

    # -- reading -----------------------------------------------------------------------------------

    def bundles(self, area: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        sql, params = _where(f"SELECT {_BUNDLE_COLUMNS} FROM bundles", area=area, kind=kind)
        cols = [c.strip() for c in _BUNDLE_COLUMNS.split(",")]
        return self.store.read(
            lambda conn: [
                dict(zip(cols, r, strict=True))
                for r in conn.execute(sql + " ORDER BY area, kind, seq", params)
            ]
        )

    def audit_log(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` audit rows, newest first."""
        cols = ("id", "at", "operator", "action", "reason", "detail", "area", "kind", "seq", "target")

        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(f"SELECT {', '.join(cols)} FROM audit_log ORDER BY id DESC LIMIT ?", (limit,))
            result = []
            for r in rows:
                row = dict(zip(cols, r, strict=True))
                row["detail"] = json.loads(row["detail"])
                result.append(row)
            return result

        return self.store.read(run)


def stage_blacklist_csv(path: Path, now: str) -> tuple[sqlite3.Connection, int]:
    """Validate a blacklist CSV into a private temporary database (never held in memory whole).

    Raises ``DocumentInvalid`` naming every problem (line and column) and every repeated entry.
    """
    # A temporary file, deleted on close; read later on the store's writer thread.
    staging = sqlite3.connect("", isolation_level=None, check_same_thread=False)
    try:
        staging.execute(
            "CREATE TABLE rows (line INTEGER, list_type TEXT, id TEXT, reason TEXT, source TEXT, "
            "effective_at TEXT)"
        )
        problems: list[str] = []
        staging.execute("BEGIN")
        batch: list[tuple[Any, ...]] = []
        count = 0
        for line, row, found in read_blacklist_csv(path, now):
            if found:
                problems.extend(found)
                if len(problems) > 1000:
                    break
                continue
            batch.append((line, *row))
            if len(batch) >= 10_000:
                staging.executemany("INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?)", batch)
                count += len(batch)
                batch.clear()
        staging.executemany("INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?)", batch)
        count += len(batch)
        staging.execute("COMMIT")
        if not problems:
            staging.execute("CREATE INDEX rows_key ON rows (list_type, id)")
            for first, repeat, list_type in staging.execute(
                "SELECT min(line), max(line), list_type FROM rows GROUP BY list_type, id HAVING count(*) > 1 "
                "ORDER BY min(line) LIMIT 100"
            ):
                problems.append(f"line {repeat}, column id: repeats the {list_type} of line {first}")
        if not problems and count == 0:
            problems.append("the file holds no entries")
        if problems:
            raise DocumentInvalid(path.name, problems)
        return staging, count
    except BaseException:
        staging.close()
        raise


def audit_in(conn: sqlite3.Connection, actor: Actor, action: str, detail: dict[str, Any]) -> None:
    """Record an operator action that produced no bundle, in the caller's transaction (with its change)."""
    Policy._audit(conn, actor, action, detail)
