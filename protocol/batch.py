"""Signed batches: how chain entries travel from an agent to the centre.

One Ed25519 signature covers a whole batch: it signs the canonical encoding of
``["yibao-batch/1", agent_id, first_seq, last_seq, chain_head, lost]``. Because the chain
head commits to every entry before it, the one signature covers every record in the
batch, and the centre can prove completeness (no seq missing) as well as origin.
``lost`` lists the seqs the agent sends as lost markers (see ``protocol.chain``): signing
it means nobody on the path can blank a record by swapping it for its hash.

Verification order (``verify_batch``): size and shape first, then the signature (one
verify per batch), then each entry's link. Nothing is trusted before all three pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .canonical import encode_canonical
from .chain import LOST_MARKER_LEN, LinkedRecord, record_hash, verify_chain
from .errors import BadSignature, ChainBroken, DecodeError, LimitExceeded

__all__ = [
    "BATCH_VERSION",
    "Batch",
    "BatchLimits",
    "KeyPair",
    "decode_batch",
    "encode_batch",
    "key_fingerprint",
    "sign_batch",
    "verify_batch",
]

BATCH_VERSION = 1
_DOMAIN = "yibao-batch/1"


@dataclass(frozen=True)
class BatchLimits:
    """What a centre accepts in one batch; the agent's uploader stays below these."""

    max_bytes: int = 8 * 1024 * 1024
    max_records: int = 5000
    max_record_bytes: int = 256 * 1024


class Batch(msgspec.Struct, kw_only=True, frozen=True):
    agent_id: str
    chain_head: bytes
    first_seq: int
    last_seq: int
    lost: list[int] = []
    records: list[bytes]
    sig: bytes
    v: int = BATCH_VERSION


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Batch)


class KeyPair:
    """An agent's Ed25519 signing key; raw 32-byte forms on disk and on the wire."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_bytes = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> KeyPair:
        return cls(Ed25519PrivateKey.from_private_bytes(data))

    def private_bytes(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)


def key_fingerprint(public_key: bytes) -> str:
    """Short, stable fingerprint people can compare out of band."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def _signed_bytes(agent_id: str, first_seq: int, last_seq: int, chain_head: bytes, lost: list[int]) -> bytes:
    return encode_canonical([_DOMAIN, agent_id, first_seq, last_seq, chain_head, lost])


def sign_batch(key: KeyPair, agent_id: str, first_seq: int, entries: list[bytes]) -> Batch:
    """Sign ``entries`` (seq ``first_seq`` onwards) as one batch."""
    if not entries:
        raise ValueError("a batch holds at least one record")
    last_seq = first_seq + len(entries) - 1
    head = record_hash(entries[-1])
    lost = [first_seq + i for i, e in enumerate(entries) if len(e) == LOST_MARKER_LEN]
    sig = key.sign(_signed_bytes(agent_id, first_seq, last_seq, head, lost))
    return Batch(
        agent_id=agent_id,
        chain_head=head,
        first_seq=first_seq,
        last_seq=last_seq,
        lost=lost,
        records=entries,
        sig=sig,
    )


def encode_batch(batch: Batch) -> bytes:
    return _encoder.encode(batch)


def decode_batch(data: bytes, limits: BatchLimits | None = None) -> Batch:
    """Decode an untrusted batch; the typed decoder bounds its shape and depth."""
    limits = limits or BatchLimits()
    if len(data) > limits.max_bytes:
        raise LimitExceeded(f"batch of {len(data)} bytes exceeds the {limits.max_bytes} limit")
    try:
        batch = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"batch has the wrong shape: {exc}") from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"malformed batch msgpack: {exc}") from exc
    if batch.v != BATCH_VERSION:
        raise DecodeError(f"batch version {batch.v} is not supported (expected {BATCH_VERSION})")
    count = len(batch.records)
    if count == 0:
        raise DecodeError("batch holds no records")
    if count > limits.max_records:
        raise LimitExceeded(f"batch of {count} records exceeds the {limits.max_records} limit")
    if batch.first_seq < 1 or batch.last_seq != batch.first_seq + count - 1:
        raise DecodeError("first_seq/last_seq do not match the number of records")
    if len(batch.chain_head) != 32 or len(batch.sig) != 64:
        raise DecodeError("chain_head must be 32 bytes and sig 64 bytes")
    for raw in batch.records:
        if len(raw) > limits.max_record_bytes:
            raise LimitExceeded(f"a record of {len(raw)} bytes exceeds {limits.max_record_bytes}")
    return batch


def verify_batch(batch: Batch, public_key: bytes, *, prev_hash: bytes | None) -> list[LinkedRecord]:
    """Signature, then chain; ``prev_hash`` is the hash held for ``first_seq - 1``, if any."""
    signed = _signed_bytes(batch.agent_id, batch.first_seq, batch.last_seq, batch.chain_head, batch.lost)
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(batch.sig, signed)
    except (InvalidSignature, ValueError) as exc:
        raise BadSignature(
            f"batch {batch.first_seq}-{batch.last_seq} from agent {batch.agent_id} is not signed "
            "by its registered key"
        ) from exc
    linked = verify_chain(
        batch.records, agent_id=batch.agent_id, first_seq=batch.first_seq, prev_hash=prev_hash
    )
    if [x.seq for x in linked if x.lost] != batch.lost:
        raise ChainBroken("lost markers in the batch are not the ones its signature declares")
    if linked[-1].hash != batch.chain_head:
        raise ChainBroken("records do not hash to the signed chain head (tampered in transit?)")
    return linked
