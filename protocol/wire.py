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

import hashlib
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .batch import KeyPair
from .canonical import encode_canonical
from .errors import BadSignature, DecodeError

__all__ = [
    "AGENT_HEADER",
    "BATCH_PATH",
    "CERT_RENEW_PATH",
    "ENROLL_PATH",
    "HEARTBEAT_CODEC",
    "HEARTBEAT_INTERVAL_S",
    "HEARTBEAT_PATH",
    "MSGPACK",
    "PERSON_HISTORY_PATH",
    "POLICY_CHANGES_PATH",
    "POLICY_REPORT_PATH",
    "PROTOCOL_HEADER",
    "RECORDS_PATH",
    "REPORT_CODEC",
    "REQUEST_SKEW_S",
    "SIGNATURE_HEADER",
    "SUPPORTED_VERSIONS",
    "TIME_HEADER",
    "TLS_TRUST_PATH",
    "TUF_METADATA_PATH",
    "TUF_TARGETS_PATH",
    "BatchAck",
    "EnrollRequest",
    "EnrollResponse",
    "Heartbeat",
    "PolicyChanges",
    "PolicyReport",
    "Rejection",
    "SignedCodec",
    "decode_ack",
    "decode_heartbeat",
    "decode_report",
    "encode_ack",
    "negotiate",
    "root_fingerprint",
    "sign_heartbeat",
    "sign_report",
    "sign_request",
    "verify_heartbeat",
    "verify_report",
    "verify_request",
]

SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
PROTOCOL_HEADER = "Yibao-Protocol"
MSGPACK = "application/msgpack"
ENROLL_PATH = "/v1/agents/enroll"
#: The centre's trust bundle (PEM), fetched once at enrolment and checked against ``--ca-hash``.
TLS_TRUST_PATH = "/v1/tls/trust.pem"
#: An agent's client-certificate renewal, over mTLS with its current certificate.
CERT_RENEW_PATH = "/v1/agents/cert"
BATCH_PATH = "/v1/batches"
#: Long-poll change signal: ``GET ?have=<timestamp version>`` → ``PolicyChanges`` (JSON).
POLICY_CHANGES_PATH = "/v1/policy/changes"
#: Signed report of what an agent runs: ``POST`` msgpack ``PolicyReport``.
POLICY_REPORT_PATH = "/v1/agents/report"
#: Signed heartbeat: ``POST`` msgpack ``Heartbeat`` → msgpack ``{"stored": bool}``.
HEARTBEAT_PATH = "/v1/agents/heartbeat"
#: An agent's own chain entries the centre holds, for an agent restored from an older backup
#: (``GET ?after=SEQ&limit=N``, signed like the history lookup; msgpack answer).
RECORDS_PATH = "/v1/agents/records"
#: The contract: an agent sends a heartbeat at least this often (seconds), idle or not.
HEARTBEAT_INTERVAL_S = 60.0
#: The TUF repository: ``/tuf/metadata/<role files>`` and ``/tuf/targets/<hash>.<name>``.
TUF_METADATA_PATH = "/tuf/metadata/"
TUF_TARGETS_PATH = "/tuf/targets/"


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
    #: PEM certificate signing request for the agent's TLS client key; empty from an agent enrolled
    #: with ``--insecure-dev`` (which then has no client certificate and cannot use a TLS centre).
    csr: str = ""


class EnrollResponse(msgspec.Struct, kw_only=True):
    agent_id: str
    fixmedins_code: str
    protocol_version: int
    key_fingerprint: str
    #: The TUF root metadata (``N.root.json``, exact bytes as text) the agent pins as its trust
    #: anchor for policy bundles, and its fingerprint (``root_fingerprint``), which both sides
    #: print so operators can compare them out of band.
    tuf_root: str = ""
    root_fingerprint: str = ""
    #: Pooling area whose bundles this agent obeys (6-digit ``admdvs``).
    pooling_area: str = ""
    #: The TLS client certificate (PEM) issued for the request's ``csr``; empty without one.
    client_cert: str = ""


def root_fingerprint(root_json: bytes) -> str:
    """SHA-256 of the exact root metadata bytes, grouped for reading aloud over the phone."""
    digest = hashlib.sha256(root_json).hexdigest()
    return " ".join(digest[i : i + 4] for i in range(0, 32, 4))


class PolicyChanges(msgspec.Struct, kw_only=True):
    """The change signal: the centre's current TUF timestamp version."""

    timestamp_version: int


class PolicyReport(msgspec.Struct, kw_only=True):
    """What an agent runs, signed with its enrolment key so no one can report for it.

    ``versions``: TUF role versions (``root``, ``timestamp``, ``snapshot``, ``targets``) and bundle
    sequences by kind (``blacklist``, ``rules``, ``policy``, ``catalogue``, ``keys``). ``problems``:
    refusals and alarms since the last report (codes only).
    """

    agent_id: str
    at: str
    versions: dict[str, int]
    problems: list[str] = []
    sig: bytes = b""


#: Cross-hospital history of a person, for the doctor's prompts: ``GET`` with signed headers.
PERSON_HISTORY_PATH = "/v1/persons/{psn_no}/history"
AGENT_HEADER = "Yibao-Agent"
TIME_HEADER = "Yibao-Time"
SIGNATURE_HEADER = "Yibao-Signature"
#: A signed request older or newer than this (seconds) is refused: a captured one cannot be replayed later.
REQUEST_SKEW_S = 300.0
_REQUEST_DOMAIN = "yibao-request/1"


def _request_signed_bytes(agent_id: str, method: str, path_qs: str, at: str) -> bytes:
    return encode_canonical([_REQUEST_DOMAIN, agent_id, method.upper(), path_qs, at])


def sign_request(key: KeyPair, agent_id: str, method: str, path_qs: str, at: str) -> dict[str, str]:
    """Headers that let the centre know an enrolled agent asked (used for personal data reads).

    ``path_qs`` is the path with its query string exactly as sent; ``at`` an ISO-8601 UTC time.
    """
    sig = key.sign(_request_signed_bytes(agent_id, method, path_qs, at))
    return {AGENT_HEADER: agent_id, TIME_HEADER: at, SIGNATURE_HEADER: sig.hex()}


def verify_request(
    public_key: bytes, agent_id: str, method: str, path_qs: str, at: str, sig_hex: str
) -> None:
    """Raise ``BadSignature`` unless the headers were made by ``sign_request`` with the agent's key."""
    try:
        sig = bytes.fromhex(sig_hex)
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            sig, _request_signed_bytes(agent_id, method, path_qs, at)
        )
    except (InvalidSignature, ValueError):
        raise BadSignature("the request's signature does not verify with the agent's key") from None


_M = TypeVar("_M", bound=msgspec.Struct)


class SignedCodec(Generic[_M]):
    """Sign, decode and verify one kind of agent statement: msgpack with an Ed25519 signature over
    canonical bytes that start with the kind's domain, so a signature of one kind cannot pass as another."""

    def __init__(self, what: str, kind: type[_M], signed_bytes: Callable[[_M], bytes]) -> None:
        self.what = what
        self.signed_bytes = signed_bytes
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(kind)

    def sign(self, key: KeyPair, message: _M) -> bytes:
        message.sig = key.sign(self.signed_bytes(message))  # type: ignore[attr-defined]
        return self._encoder.encode(message)

    def decode(self, data: bytes, max_bytes: int = 64 * 1024) -> _M:
        if len(data) > max_bytes:
            raise DecodeError(f"{self.what} is larger than {max_bytes} bytes")
        try:
            return self._decoder.decode(data)
        except msgspec.MsgspecError as exc:
            raise DecodeError(f"{self.what} is malformed: {exc}") from None

    def verify(self, message: _M, public_key: bytes) -> None:
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(
                message.sig,  # type: ignore[attr-defined]
                self.signed_bytes(message),
            )
        except (InvalidSignature, ValueError):
            raise BadSignature(f"the {self.what}'s signature does not verify with the agent's key") from None


REPORT_CODEC = SignedCodec(
    "policy report",
    PolicyReport,
    lambda r: encode_canonical(
        ["yibao-policy-report/1", r.agent_id, r.at, dict(r.versions), list(r.problems)]
    ),
)
#: The report as msgpack with its Ed25519 signature.
sign_report = REPORT_CODEC.sign
decode_report = REPORT_CODEC.decode
verify_report = REPORT_CODEC.verify


class Heartbeat(msgspec.Struct, kw_only=True):
    """An agent's signed statement of how far its chain reaches, sent every ``HEARTBEAT_INTERVAL_S``.

    Uploads tell the centre what it holds; only the agent knows what it has not sent. With this the
    centre can say "complete up to ``at``" (it holds ``last_seq``), "behind by N" or, when heartbeats
    stop, "silent since". ``head`` is the chain hash at ``last_seq``, so a heartbeat also pins the
    chain: a centre holding another hash at that seq holds a fork. ``oldest_pending_ms``: age at
    ``at`` of the oldest record the centre has not acknowledged (None: nothing pending), which lets
    a period that ended before that record be complete while newer ones still wait.
    """

    agent_id: str
    at: str
    last_seq: int
    head: bytes
    acked_seq: int
    oldest_pending_ms: int | None = None
    sig: bytes = b""


HEARTBEAT_CODEC = SignedCodec(
    "heartbeat",
    Heartbeat,
    lambda h: encode_canonical(
        ["yibao-heartbeat/1", h.agent_id, h.at, h.last_seq, h.head, h.acked_seq, h.oldest_pending_ms]
    ),
)
sign_heartbeat = HEARTBEAT_CODEC.sign
decode_heartbeat = HEARTBEAT_CODEC.decode
verify_heartbeat = HEARTBEAT_CODEC.verify


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


_ack_encoder = msgspec.msgpack.Encoder()
_ack_decoder = msgspec.msgpack.Decoder(BatchAck)


def encode_ack(ack: BatchAck) -> bytes:
    return _ack_encoder.encode(ack)


def decode_ack(data: bytes) -> BatchAck:
    return _ack_decoder.decode(data)
