"""Batch ingestion: verify a signed batch and store its new records exactly once.

The rules, in the order ``Ingestor.ingest`` applies them (nothing is stored unless every
step before the write passes, and all writes for a batch are one transaction):

1. Decode within ``BatchLimits`` (malformed → ``decode_malformed``, too big →
   ``decode_limit_exceeded``).
2. The agent must be enrolled and not revoked (``agent_unknown`` / ``agent_revoked``).
3. One signature check over the batch, then the batch's internal links
   (``verify_batch(prev_hash=None)``). A failure is a security event.
4. Against what is held — H, the highest contiguous seq, and h, its hash:
   - ``first_seq > H + 1``: a gap; answer ``gap`` with ``resend_from = H + 1``, store nothing.
   - every held seq the batch repeats must have the same hash, else ``chain_conflict``
     (a forked agent chain; security event).
   - ``last_seq <= H``: a duplicate; store nothing.
   - otherwise the record at ``H + 1`` must link to h (else ``chain_broken``) and only
     seq > H is stored.
5. Each new record is stored in the chain table whatever its body; a body that does not
   decode or validate, or repeats a ``setl_id`` already held, is stored as ``rejected`` and
   listed in the ack, and only valid bodies become settlements. Lost markers are kept as
   ``lost``.
6. In the same transaction, every settlement that became a settlements row adds its fee-detail
   lines to ``hist_lines`` (``central.intake.lines``) and its visit row to ``hist_visits``
   (``central.intake.visits``; area = the agent's pooling area), both built in ``prepare``; every reversal
   that became a row deletes the lines and the visit row of the settlement it cancels (same
   ``setl_id`` and hospital). A duplicate batch, a rejected record or a lost marker adds nothing.

7. A card log (chain kind ``card``) that decodes and validates, and names the agent's hospital, becomes
   a ``card_logs`` row in the same transaction (``central.intake.cardlogs``); a ``lost`` one also
   becomes a pending blacklist change request. Only new seqs are stored, so a re-sent log is once.

The ack always carries the highest contiguous seq held (``protocol.wire``): "resend from
``acked_seq + 1``" is always right for the agent.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime

from central.errors import (
    AgentMismatch,
    AgentRevoked,
    AgentUnknown,
    CentralError,
    ChainConflict,
    ChainInvalid,
    InternalError,
    SignatureInvalid,
    from_protocol,
)
from central.storage.base import DB_ERRORS, SETTLEMENTS_CHANNEL, for_update, notify
from central.storage.store import Store, get_agent, now_iso, record_security_event
from protocol.batch import Batch, BatchLimits, decode_batch, verify_batch
from protocol.chain import decode_body
from protocol.errors import BadSignature, ProtocolError
from protocol.records import CardLog, Reversal, Settlement
from protocol.rules import history_rows_from_settlement
from protocol.wire import BatchAck, Rejection

from .cardlogs import CardLogRefused, store_card_logs
from .cardlogs import card_log_row as _card_log_row
from .lines import HOSP_LV_INDEX, INSERT_HIST_LINE
from .visits import INSERT_VISIT, VISIT_HOSP_LV_INDEX, visit_row

__all__ = ["Ingestor", "Prepared"]

log = logging.getLogger(__name__)

_INT64 = 2**63
_MAX_MESSAGE = 500
_TIME_EXAMPLE = "2026-11-24T10:00:00+08:00"
_fromisoformat = datetime.fromisoformat
_CERT_EVOUCHER = "01"
_MONEY = ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay")

_INSERT_RECORD = (
    "INSERT INTO records (agent_id, seq, hash, kind, status, reject_code, reject_message, raw, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_SETTLEMENT = (
    "INSERT INTO settlements (setl_id, agent_id, seq, kind, his_setl_no, fixmedins_code, psn_no, mdtrt_id, "
    "med_type, setl_time, setl_date, medfee_sumamt, fund_pay_sumamt, acct_pay, psn_cash_pay, orig_setl_id, "
    "mdtrt_cert_type, mdtrt_cert_no, card_sn, hifp_pay, hifmi_pay, hifob_pay, insutype) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_DELETE_LINES = "DELETE FROM hist_lines WHERE setl_id = ? AND fixmedins_code = ?"
_DELETE_VISIT = "DELETE FROM hist_visits WHERE setl_id = ? AND fixmedins_code = ?"
_HOSP_LV = "SELECT hosp_lv FROM hospitals WHERE fixmedins_code = ?"
_AREA = "SELECT pooling_area FROM agents WHERE agent_id = ?"


class _Refused(Exception):
    """A record body the centre keeps in the chain but refuses as a settlement."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class Prepared:
    """A batch that passed steps 1-3, with every record's rows built, waiting for step 4."""

    batch: Batch
    hospital: str
    hashes: list[bytes]
    prevs: list[bytes | None]  # each record's prev_hash (None for a lost marker)
    records: list[tuple]  # rows for the records table, in seq order
    settlements: list[tuple | None]  # the settlement row of each record, None if not one
    lines: list[list[tuple] | None]  # each settlement's hist_lines rows, None if not a valid settlement
    hosp_lv: str | None  # the hospital's grade the lines were built with
    visits: list[tuple | None]  # each settlement's hist_visits row, None if not a valid settlement
    cards: dict[int, tuple] = field(default_factory=dict)  # seq → card_logs row of each valid card log


def _problem_text(exc: ProtocolError) -> str:
    text = exc.message
    if exc.details:
        text += ": " + "; ".join(f"{d.get('field', '?')}: {d.get('message', '')}" for d in exc.details)
    return text[:_MAX_MESSAGE]


def _amount_problem(rec: Settlement | Reversal) -> str | None:
    # msgpack carries integers up to 2**64-1; SQLite's are int64.
    for name in _MONEY:
        value = getattr(rec, name)
        if value is not None and not -_INT64 < value < _INT64:
            return f"{name} is outside the range of an amount"
    return None


def _settlement_row(
    rec: Settlement | Reversal, agent_id: str, seq: int, hospital: str, hosp_lv: str | None, area: str | None
) -> tuple[tuple, list[tuple] | None, tuple | None]:
    """The settlements-table row of a valid body, its ``hist_lines`` rows and its ``hist_visits`` row
    (both None for a reversal), or ``_Refused`` for what the centre adds to validation.

    Hot path (once per record): a validated settlement's split parts are non-negative and add up
    to ``medfee_sumamt``, so checking the total alone bounds them all; reversals check each amount.
    """
    if rec.fixmedins_code != hospital:
        raise _Refused("hospital_mismatch", f"record names another hospital than the agent's {hospital}")
    setl_time = rec.setl_time
    try:
        setl_date = _fromisoformat(setl_time).date().isoformat()
    except ValueError:
        raise _Refused("field_invalid", f"setl_time is not ISO 8601 time like {_TIME_EXAMPLE}") from None
    if type(rec) is Settlement:
        if rec.medfee_sumamt >= _INT64:
            raise _Refused("field_invalid", "medfee_sumamt is outside the range of an amount")
        mdtrt = rec.mdtrt
        return (
            rec.setl_id, agent_id, seq, "setl", rec.his_setl_no, hospital, rec.psn.psn_no, mdtrt.mdtrt_id,
            mdtrt.med_type, setl_time, setl_date, rec.medfee_sumamt, rec.fund_pay_sumamt, rec.acct_pay,
            rec.psn_cash_pay, None, rec.mdtrt_cert_type, rec.mdtrt_cert_no, rec.psn.card_sn, rec.hifp_pay,
            rec.hifmi_pay, rec.hifob_pay, rec.psn.insutype,
        ), history_rows_from_settlement(rec, hosp_lv, setl_date=setl_date), visit_row(
            rec, area=area, hosp_lv=hosp_lv, setl_date=setl_date
        )  # fmt: skip
    assert isinstance(rec, Reversal)
    problem = _amount_problem(rec)
    if problem:
        raise _Refused("field_invalid", problem)
    return (
        rec.setl_id, agent_id, seq, "revs", rec.his_setl_no, hospital, None, None, None, setl_time, setl_date,
        rec.medfee_sumamt, rec.fund_pay_sumamt, rec.acct_pay, rec.psn_cash_pay, rec.orig_setl_id,
        None, None, None, None, None, None, None,  # a reversal's insutype is its original's (a join)
    ), None, None  # fmt: skip


def _hosp_lv(conn: sqlite3.Connection, hospital: str) -> str | None:
    row = conn.execute(_HOSP_LV, (hospital,)).fetchone()
    return row[0] if row else None


def _grade_and_area(conn: sqlite3.Connection, hospital: str, agent_id: str) -> tuple[str | None, str | None]:
    row = conn.execute(_AREA, (agent_id,)).fetchone()
    return _hosp_lv(conn, hospital), row[0] if row else None


class Ingestor:
    """Verifies and stores batches; usable without HTTP (the benchmark drives it directly)."""

    def __init__(self, store: Store, limits: BatchLimits | None = None) -> None:
        self.store = store
        self.limits = limits or BatchLimits()

    def ingest(self, data: bytes, *, remote: str | None = None, peer_agent: str | None = None) -> BatchAck:
        """Steps 1-5 for one batch; returns the ack or raises a ``CentralError``.

        ``peer_agent``: the agent id of the TLS client certificate the batch came with; a batch signed
        by another agent is refused (``agent_mismatch``) — a stolen certificate does not let one agent
        speak for another, nor a stolen signing key without its certificate.
        """
        return self.commit(self.prepare(data, remote=remote, peer_agent=peer_agent), remote=remote)

    async def ingest_async(
        self, data: bytes, *, remote: str | None = None, peer_agent: str | None = None
    ) -> BatchAck:
        """``ingest`` off the event loop: CPU work on a reader thread, writes on the writer."""
        return await self.store.run_async(lambda: self.ingest(data, remote=remote, peer_agent=peer_agent))

    def _security_event(self, agent_id: str | None, exc: CentralError, remote: str | None) -> None:
        log.warning("security event from agent %s (%s): %s: %s", agent_id, remote, exc.code, exc.message)
        self.store.write(lambda conn: record_security_event(conn, agent_id, exc.code, exc.message, remote))

    def prepare(self, data: bytes, *, remote: str | None = None, peer_agent: str | None = None) -> Prepared:
        """Steps 1-3 and the record rows; needs only reads."""
        try:
            batch = decode_batch(data, self.limits)
        except ProtocolError as exc:
            raise from_protocol(exc) from None
        if peer_agent is not None and batch.agent_id != peer_agent:
            error: CentralError = AgentMismatch(
                f"the batch is signed by agent {batch.agent_id!r} but came with the client certificate of "
                f"{peer_agent!r}; each agent uploads with its own certificate"
            )
            self._security_event(batch.agent_id, error, remote)
            raise error
        agent = self.store.read(lambda conn: get_agent(conn, batch.agent_id))
        if agent is None:
            raise AgentUnknown(f"agent {batch.agent_id!r} is not enrolled; enrol it with a new token")
        if agent.revoked:
            raise AgentRevoked(f"agent {batch.agent_id} was revoked at {agent.revoked_at}; re-enrol it")
        try:
            linked = verify_batch(batch, agent.public_key, prev_hash=None)
        except BadSignature as exc:
            error = SignatureInvalid(exc.message)
            self._security_event(batch.agent_id, error, remote)
            raise error from None
        except ProtocolError as exc:
            # The signature is good, so records that fail to decode or link do not form the chain it signs.
            error = ChainInvalid(exc.message)
            self._security_event(batch.agent_id, error, remote)
            raise error from None
        agent_id, hospital, received = batch.agent_id, agent.fixmedins_code, now_iso()
        hosp_lv, area = self.store.read(lambda conn: _grade_and_area(conn, hospital, agent_id))
        hashes: list[bytes] = []
        prevs: list[bytes | None] = []
        records: list[tuple] = []
        settlements: list[tuple | None] = []
        lines: list[list[tuple] | None] = []
        visits: list[tuple | None] = []
        cards: dict[int, tuple] = {}
        for rec in linked:
            seq, digest, entry = rec.seq, rec.hash, rec.entry
            hashes.append(digest)
            if entry is None:
                prevs.append(None)
                records.append((agent_id, seq, digest, None, "lost", None, None, rec.raw, received))
                settlements.append(None)
                lines.append(None)
                visits.append(None)
                continue
            prevs.append(entry.prev_hash)
            try:
                body = decode_body(entry)
                if isinstance(body, CardLog):  # rule 7: a card log, not a settlement
                    cards[seq] = _card_log_row(body, agent_id, seq, hospital, area, received)
                    row, rows, visit = None, None, None
                else:
                    row, rows, visit = _settlement_row(body, agent_id, seq, hospital, hosp_lv, area)
            except ProtocolError as exc:
                code, message = exc.code, _problem_text(exc)
            except (_Refused, CardLogRefused) as exc:
                code, message = exc.code, exc.message
            except Exception as exc:  # untrusted body: any failure rejects the record, not the batch
                log.exception("record %s/%s could not be validated", agent_id, seq)
                code, message = "validation_failed", f"record could not be validated ({type(exc).__name__})"
            else:
                records.append((agent_id, seq, digest, entry.kind, "ok", None, None, rec.raw, received))
                settlements.append(row)
                lines.append(rows)
                visits.append(visit)
                continue
            records.append((agent_id, seq, digest, entry.kind, "rejected", code, message, rec.raw, received))
            settlements.append(None)
            lines.append(None)
            visits.append(None)
        return Prepared(batch, hospital, hashes, prevs, records, settlements, lines, hosp_lv, visits, cards)

    def commit(self, prepared: Prepared, *, remote: str | None = None) -> BatchAck:
        """Step 4 and 5 in one write transaction."""
        try:
            ack = self.store.write(lambda conn: self._commit(conn, prepared))
        except (ChainConflict, ChainInvalid) as exc:
            self._security_event(prepared.batch.agent_id, exc, remote)
            raise
        except DB_ERRORS as exc:
            log.exception("storing a batch of agent %s failed", prepared.batch.agent_id)
            raise InternalError(
                f"the centre could not store the batch ({type(exc).__name__}); check disk space and the "
                "central log; the agent will resend it"
            ) from exc
        batch = prepared.batch
        if ack.rejected:
            log.warning(
                "agent %s: %d record(s) rejected in batch %d-%d",
                batch.agent_id, len(ack.rejected), batch.first_seq, batch.last_seq,
            )  # fmt: skip
        log.debug(
            "agent %s batch %d-%d: %s, acked %d", batch.agent_id, batch.first_seq, batch.last_seq, ack.code,
            ack.acked_seq,
        )  # fmt: skip
        return ack

    def _commit(self, conn: sqlite3.Connection, p: Prepared) -> BatchAck:
        batch = p.batch
        agent_id, first, last = batch.agent_id, batch.first_seq, batch.last_seq
        # The agent's head decides what is stored; another collector on the same PostgreSQL database
        # may hold a batch of the same agent right now, so the head's row is locked until commit.
        row = conn.execute(
            "SELECT acked_seq, head_hash, revoked_at FROM agents WHERE agent_id = ?" + for_update(conn),
            (agent_id,),
        ).fetchone()
        if row is None:
            raise AgentUnknown(f"agent {agent_id!r} is not enrolled; enrol it with a new token")
        held_seq, held_head, revoked_at = row
        if revoked_at is not None:
            raise AgentRevoked(f"agent {agent_id} was revoked at {revoked_at}; re-enrol it")
        stamp = now_iso()
        if first > held_seq + 1:
            conn.execute("UPDATE agents SET last_seen = ? WHERE agent_id = ?", (stamp, agent_id))
            return BatchAck(code="gap", acked_seq=held_seq, resend_from=held_seq + 1)
        repeated: list[Rejection] = []
        n_dup = 0
        if first <= held_seq:
            top = min(last, held_seq)
            n_dup = top - first + 1
            held = conn.execute(
                "SELECT seq, hash, status, reject_code, reject_message FROM records "
                "WHERE agent_id = ? AND seq BETWEEN ? AND ? ORDER BY seq",
                (agent_id, first, top),
            ).fetchall()
            if len(held) != n_dup:
                raise InternalError(
                    f"central.db lacks records of agent {agent_id} below its acked seq {held_seq}; "
                    "run `yibao-central reconcile` and restore the database from backup"
                )
            for seq, digest, status, code, message in held:
                if digest != p.hashes[seq - first]:
                    raise ChainConflict(
                        f"record seq {seq} differs from the one already held: the agent's chain forked; "
                        "stop the agent and compare its outbox with `yibao-central reconcile`"
                    )
                if status == "rejected":
                    repeated.append(Rejection(seq=seq, code=code, message=message))
        if last <= held_seq:
            conn.execute("UPDATE agents SET last_seen = ? WHERE agent_id = ?", (stamp, agent_id))
            return BatchAck(code="duplicate", acked_seq=held_seq, duplicates=n_dup, rejected=repeated)
        k = held_seq + 1 - first
        prev = p.prevs[k]
        if prev is not None and prev != held_head:
            raise ChainInvalid(
                f"record seq {held_seq + 1} does not link to the record held for seq {held_seq}"
            )
        records = p.records[k:]
        setl_rows = [r for r in p.settlements[k:] if r is not None]
        if any(r[16] == _CERT_EVOUCHER for r in setl_rows):
            setl_rows = self._claim_vouchers(conn, setl_rows, records, first_index=held_seq + 1, at=stamp)
        self._store_settlements(conn, setl_rows, records, first_index=held_seq + 1)
        self._store_lines(conn, p, k, records)
        if p.cards:
            store_card_logs(conn, p.cards, records)
        conn.executemany(_INSERT_RECORD, records)
        conn.execute(
            "UPDATE agents SET acked_seq = ?, head_hash = ?, last_seen = ? WHERE agent_id = ?",
            (last, p.hashes[-1], stamp, agent_id),
        )
        notify(conn, SETTLEMENTS_CHANNEL, f"{agent_id}:{last}")
        rejected = [Rejection(seq=r[1], code=r[5], message=r[6]) for r in records if r[4] == "rejected"]
        return BatchAck(
            code="stored", acked_seq=last, stored=len(records), duplicates=n_dup, rejected=repeated + rejected
        )

    @staticmethod
    def _store_lines(conn: sqlite3.Connection, p: Prepared, k: int, records: list[tuple]) -> None:
        """Rule 6: the lines and visit rows of the records from index ``k`` that are still ``ok`` after
        the settlements were stored (a repeated ``setl_id`` or a replayed e-voucher turned theirs into
        rejections)."""
        lines: list[tuple] = []
        visits: list[tuple] = []
        cancelled: list[tuple[str, str]] = []
        built = zip(records, p.lines[k:], p.visits[k:], p.settlements[k:], strict=True)
        for record, rows, visit, setl in built:
            if record[4] != "ok":
                continue
            if rows is not None:
                lines += rows
                visits.append(visit)
            elif setl is not None and setl[3] == "revs":
                cancelled.append((setl[15], setl[5]))  # orig_setl_id, fixmedins_code
        if visits:
            held_lv = _hosp_lv(conn, p.hospital)
            if held_lv != p.hosp_lv:  # an operator set the grade between prepare and now
                i, j = HOSP_LV_INDEX, VISIT_HOSP_LV_INDEX
                lines = [(*r[:i], held_lv, *r[i + 1 :]) for r in lines]
                visits = [(*r[:j], held_lv, *r[j + 1 :]) for r in visits]
            conn.executemany(INSERT_HIST_LINE, lines)
            conn.executemany(INSERT_VISIT, visits)
        if cancelled:
            conn.executemany(_DELETE_LINES, cancelled)
            conn.executemany(_DELETE_VISIT, cancelled)

    @staticmethod
    def _claim_vouchers(
        conn: sqlite3.Connection, rows: list[tuple], records: list[tuple], *, first_index: int, at: str
    ) -> list[tuple]:
        """Hold each e-voucher nonce with the hospital that used it first; refuse it elsewhere.

        A voucher is shown once, at one hospital; the agent's local ledger stops a replay there,
        and this stops the same QR code (photographed, forwarded) being settled at a second one.
        The same hospital using its nonce again (a settlement after a cancelled one) is allowed.
        """
        kept = []
        for r in rows:
            if r[16] != _CERT_EVOUCHER:
                kept.append(r)
                continue
            setl_id, agent_id, seq, hospital, nonce = r[0], r[1], r[2], r[5], r[17]
            conn.execute(
                "INSERT INTO evoucher_uses (nonce, fixmedins_code, setl_id, agent_id, seq, used_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (nonce, hospital, setl_id, agent_id, seq, at),
            )
            first = conn.execute(
                "SELECT fixmedins_code FROM evoucher_uses WHERE nonce = ?", (nonce,)
            ).fetchone()[0]
            if first == hospital:
                kept.append(r)
                continue
            index = seq - first_index
            old = records[index]
            message = (
                f"this e-voucher was already used at hospital {first}: the patient must show a fresh "
                "code; ask the hospital to reverse this settlement and settle again"
            )
            records[index] = (*old[:4], "rejected", "evoucher_replayed", message, *old[7:])
            log.warning("agent %s seq %d: e-voucher already used at another hospital", agent_id, seq)
        return kept

    @staticmethod
    def _store_settlements(
        conn: sqlite3.Connection, rows: list[tuple], records: list[tuple], *, first_index: int
    ) -> None:
        """Insert settlements; a ``setl_id`` held already turns its record (in place) into a rejection."""
        if not rows:
            return
        before = conn.total_changes
        conn.executemany(_INSERT_SETTLEMENT, rows)
        if conn.total_changes - before == len(rows):
            return
        # Slow path, only when a setl_id repeats: find whose rows were not inserted.
        ids = [r[0] for r in rows]
        owner: dict[str, tuple[str, int]] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for setl_id, agent, seq in conn.execute(
                f"SELECT setl_id, agent_id, seq FROM settlements WHERE setl_id IN ({marks})", chunk
            ):
                owner[setl_id] = (agent, seq)
        message = "setl_id is already held at the centre; a settlement is counted once"
        for r in rows:
            if owner.get(r[0]) != (r[1], r[2]):
                index = r[2] - first_index
                old = records[index]
                records[index] = (*old[:4], "rejected", "setl_duplicate", message, *old[7:])
