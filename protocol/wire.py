"""Messages between agent and centre, and the version handshake.

Enrolment is JSON (rare, people debug it with curl); batches and their acknowledgements
are msgpack (hot path). Every request carries ``Yibao-Protocol: <versions>``; the centre
answers with the version it chose, or ``protocol_unsupported``.

The acknowledgement always states the highest *contiguous* seq the centre holds for the
agent. The agent's only job is to continue from there: after a lost ack, a duplicate
delivery, a central restore from backup, or a gap, "resend from ``acked_seq + 1``" is
always the right and safe move.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "BATCH_PATH",
    "ENROLL_PATH",
    "MSGPACK",
    "PROTOCOL_HEADER",
    "SUPPORTED_VERSIONS",
    "AgentStatusReport",
    "BatchAck",
    "EnrollRequest",
    "EnrollResponse",
    "Rejection",
    "decode_ack",
    "encode_ack",
    "negotiate",
]

SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
PROTOCOL_HEADER = "Yibao-Protocol"
MSGPACK = "application/msgpack"
ENROLL_PATH = "/v1/agents/enroll"
BATCH_PATH = "/v1/batches"


def negotiate(offered: str | None) -> int | None:
    """Highest version both sides speak, from a header like ``"1, 2"``; None if none."""
    if not offered:
        return SUPPORTED_VERSIONS[-1]
    try:
        versions = {int(part) for part in offered.split(",") if part.strip()}
    except ValueError:
        return None
    common = versions.intersection(SUPPORTED_VERSIONS)
    return max(common) if common else None


class EnrollRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    token: str
    fixmedins_code: str
    public_key: str  # hex of the raw Ed25519 public key
    agent_version: str = ""


class EnrollResponse(msgspec.Struct, kw_only=True):
    agent_id: str
    fixmedins_code: str
    protocol_version: int
    key_fingerprint: str


class Rejection(msgspec.Struct, kw_only=True):
    """A record the centre holds in the chain but refuses as a settlement (permanent)."""

    seq: int
    code: str
    message: str


class BatchAck(msgspec.Struct, kw_only=True):
    """The centre's answer to a batch. ``acked_seq`` is the highest contiguous seq held.

    ``code``: ``stored`` (something new was stored), ``duplicate`` (everything was already
    held; nothing stored) or ``gap`` (the batch starts past ``acked_seq + 1``; resend from
    ``resend_from``). ``rejected`` lists records that were chained but refused as
    settlements; the agent moves them to its dead-letter table.
    """

    acked_seq: int
    code: str
    stored: int = 0
    duplicates: int = 0
    resend_from: int | None = None
    rejected: list[Rejection] = []


class AgentStatusReport(msgspec.Struct, kw_only=True):
    agent_id: str
    outbox_pending: int
    acked_seq: int


_ack_encoder = msgspec.msgpack.Encoder()
_ack_decoder = msgspec.msgpack.Decoder(BatchAck)


def encode_ack(ack: BatchAck) -> bytes:
    return _ack_encoder.encode(ack)


def decode_ack(data: bytes) -> BatchAck:
    return _ack_decoder.decode(data)
