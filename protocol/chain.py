"""The per-agent hash chain.

Each record an agent writes becomes a chain entry: the canonical msgpack array
``[version, agent_id, seq, prev_hash, kind, body]``, whose SHA-256 is the record hash.
Rules:

1. ``seq`` starts at 1 and grows by exactly 1; the first entry's ``prev_hash`` is 32 zero
   bytes (``GENESIS``).
2. ``prev_hash`` is the hash of the entry with ``seq - 1``; so the hash of the newest entry
   (the chain head) commits to every record before it. A gap, a reorder, a changed byte
   anywhere changes the head.
3. ``kind`` says how ``body`` decodes: ``setl`` a ``Settlement``, ``revs`` a ``Reversal``,
   ``card`` a ``CardLog`` (card usage, failed authentication, lost card, blacklist applied).
4. The hash is computed over the bytes as stored and sent; nobody re-encodes to verify.
5. A record an agent can no longer read (corrupted on its disk) travels as its 32-byte
   hash alone, a *lost marker*: the agent vouches for the hash with its batch signature,
   the next record's ``prev_hash`` must still equal it, and the centre keeps the gap
   visible instead of the chain stopping there. Real entries are always longer than
   32 bytes, so the two cannot be confused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from .errors import ChainBroken, DecodeError
from .records import CardLog, Reversal, Settlement, check_card_log, check_reversal, check_settlement

__all__ = [
    "ENTRY_VERSION",
    "GENESIS",
    "KINDS",
    "LOST_MARKER_LEN",
    "Entry",
    "LinkedRecord",
    "decode_body",
    "decode_entry",
    "encode_body",
    "encode_entry",
    "record_hash",
    "verify_chain",
]

ENTRY_VERSION = 1
GENESIS = bytes(32)
Record = Settlement | Reversal | CardLog
KINDS: dict[str, type[Settlement] | type[Reversal] | type[CardLog]] = {
    "setl": Settlement,
    "revs": Reversal,
    "card": CardLog,
}

_body_encoder = msgspec.msgpack.Encoder()
_body_decoders = {kind: msgspec.msgpack.Decoder(cls) for kind, cls in KINDS.items()}


class Entry(msgspec.Struct, array_like=True, frozen=True):
    version: int
    agent_id: str
    seq: int
    prev_hash: bytes
    kind: str
    body: msgspec.Raw


_entry_decoder = msgspec.msgpack.Decoder(Entry)


def encode_body(record: Record) -> bytes:
    """Canonical bytes of a record body (fields are declared in canonical key order)."""
    return _body_encoder.encode(record)


def encode_entry(agent_id: str, seq: int, prev_hash: bytes, kind: str, body: bytes) -> bytes:
    """Build an entry around an already-encoded body without re-encoding the body.

    A msgpack array is its header followed by its elements, so the writer thread can
    chain a record in microseconds while the body was encoded earlier by the caller.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}")
    # msgspec emits the canonical form for a list of str/int/bytes (shortest forms, no maps);
    # test_body_fast_path holds it to encode_canonical.
    head = _body_encoder.encode([ENTRY_VERSION, agent_id, seq, prev_hash, kind])
    # head is fixarray(5); an entry is fixarray(6): same header byte family, one more element.
    return b"\x96" + head[1:] + body


LOST_MARKER_LEN = 32


def record_hash(entry: bytes) -> bytes:
    """SHA-256 of an entry; a lost marker *is* the hash it stands for."""
    if len(entry) == LOST_MARKER_LEN:
        return bytes(entry)
    return hashlib.sha256(entry).digest()


def decode_entry(data: bytes) -> Entry:
    """Decode an entry's envelope; the body stays raw until ``decode_body``."""
    try:
        entry = _entry_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise DecodeError(f"malformed chain entry: {exc}") from exc
    if entry.version != ENTRY_VERSION:
        raise DecodeError(f"chain entry version {entry.version} is not supported (expected 1)")
    if entry.kind not in KINDS:
        raise DecodeError(f"unknown record kind {entry.kind!r}")
    if len(entry.prev_hash) != 32:
        raise DecodeError("prev_hash must be 32 bytes")
    return entry


def decode_body(entry: Entry) -> Record:
    """Typed, validated body of an entry; refuses bodies that are not canonical."""
    raw = bytes(entry.body)
    try:
        record = _body_decoders[entry.kind].decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise DecodeError(f"malformed {entry.kind} record at seq {entry.seq}: {exc}") from exc
    if _body_encoder.encode(record) != raw:
        raise DecodeError(f"record at seq {entry.seq} is not canonical (unknown or reordered fields)")
    if isinstance(record, Settlement):
        check_settlement(record)
    elif isinstance(record, Reversal):
        check_reversal(record)
    else:
        check_card_log(record)
    return record


@dataclass(frozen=True, slots=True)
class LinkedRecord:
    """One entry that was checked to continue the chain."""

    seq: int
    hash: bytes
    entry: Entry | None  # None for a lost marker
    raw: bytes

    @property
    def lost(self) -> bool:
        return self.entry is None


def verify_chain(
    entries: Iterable[bytes],
    *,
    agent_id: str,
    first_seq: int,
    prev_hash: bytes | None,
) -> list[LinkedRecord]:
    """Check that ``entries`` are this agent's records ``first_seq, first_seq+1, …``.

    ``prev_hash`` is the hash the verifier holds for ``first_seq - 1`` (``GENESIS`` before
    seq 1); ``None`` means the verifier does not hold it and only checks internal links.
    """
    linked: list[LinkedRecord] = []
    expected_prev = prev_hash
    seq = first_seq
    for raw in entries:
        if len(raw) == LOST_MARKER_LEN:
            linked.append(LinkedRecord(seq=seq, hash=bytes(raw), entry=None, raw=raw))
            expected_prev = bytes(raw)
            seq += 1
            continue
        entry = decode_entry(raw)
        if entry.agent_id != agent_id:
            raise ChainBroken(f"record at seq {entry.seq} belongs to another agent")
        if entry.seq != seq:
            raise ChainBroken(f"expected seq {seq}, found {entry.seq} (gap or reorder)")
        if expected_prev is not None and entry.prev_hash != expected_prev:
            raise ChainBroken(f"record at seq {seq} does not link to the record before it")
        digest = record_hash(raw)
        linked.append(LinkedRecord(seq=seq, hash=digest, entry=entry, raw=raw))
        expected_prev = digest
        seq += 1
    return linked
