"""Enrolment: one-time tokens an operator hands to a hospital, traded for an agent identity.

Rules:

1. A token is random, shown once, and only its SHA-256 is stored: a copy of the database
   does not let anyone enrol.
2. A token is bound to one hospital code, expires (``token_ttl_hours``) and is used at
   most once. A wrong hospital, an expired or a used token is refused with its own code.
3. Replaying the very request that consumed a token (same token, same public key) returns
   the same agent again, so an agent whose first answer was lost can retry blindly.
4. A revoked agent stays in the table (its chain and settlements are history); it just
   cannot upload any more.
5. A token carries the pooling area its agent will obey (``docs/POLICY.md``): ``--area`` if the
   operator gave one, else derived from the hospital code (``H37021100001`` → ``370200``), else the
   centre's default area; the answer carries it with the TUF root the agent pins.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
from datetime import UTC, datetime, timedelta

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from central.errors import (
    AgentUnknown,
    AreaRequired,
    ConfigInvalid,
    MalformedRequest,
    TokenExpired,
    TokenInvalid,
    TokenUsed,
)
from central.storage.base import for_update
from central.storage.schema import _area_of
from central.storage.store import Store, now_iso
from protocol.batch import key_fingerprint
from protocol.chain import GENESIS
from protocol.wire import SUPPORTED_VERSIONS, EnrollRequest, EnrollResponse, root_fingerprint

__all__ = ["decode_enroll_request", "enrol_agent", "issue_token", "revoke_agent"]

_HOSPITAL_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_enroll_decoder = msgspec.json.Decoder(EnrollRequest)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_hospital_code(code: str) -> str:
    if not _HOSPITAL_RE.match(code):
        raise ConfigInvalid(
            f"hospital code {code!r} is not valid: use the fixmedins_code, 1-32 letters, digits, - or _"
        )
    return code


def issue_token(
    store: Store,
    hospital: str,
    ttl_hours: float = 24.0,
    *,
    now: datetime | None = None,
    area: str | None = None,
) -> str:
    """Create a one-time enrolment token for ``hospital``; the only time it is ever shown.

    ``area`` overrides the pooling area derived from the hospital code (rule 5).
    """
    check_hospital_code(hospital)
    if not ttl_hours > 0:
        raise ConfigInvalid("token TTL must be a positive number of hours")
    if area is not None and not (len(area) == 6 and area.isascii() and area.isdigit()):
        raise ConfigInvalid(f"--area {area!r} must be a 6-digit pooling area code like 370200")
    now = now or datetime.now(UTC)
    # A prefix, so the token never starts with "-": one in 64 random tokens did, and a shell script's
    # `yibao-agent init --token $TOKEN` then read it as an option.
    token = "yb1_" + secrets.token_urlsafe(24)
    expires = now + timedelta(hours=ttl_hours)

    def tx(conn: sqlite3.Connection) -> None:
        chosen = area or _area_of(hospital)
        if chosen is None:
            row = conn.execute("SELECT value FROM settings WHERE key = 'default_area'").fetchone()
            chosen = row[0] if row else None
        if chosen is None:
            raise AreaRequired(
                f"the pooling area of hospital {hospital} cannot be derived from its code; pass --area AREA"
            )
        conn.execute(
            "INSERT INTO enrol_tokens (token_hash, fixmedins_code, created_at, expires_at, pooling_area) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                _token_hash(token),
                hospital,
                now.isoformat(timespec="seconds"),
                expires.isoformat(timespec="seconds"),
                chosen,
            ),
        )

    store.write(tx)
    return token


def decode_enroll_request(data: bytes) -> EnrollRequest:
    """Typed request from untrusted JSON; any shape problem is ``decode_malformed``."""
    try:
        request = _enroll_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedRequest(f"enrolment request is not valid JSON of the expected shape: {exc}") from None
    try:
        key = bytes.fromhex(request.public_key)
        if len(key) != 32:
            raise ValueError
        Ed25519PublicKey.from_public_bytes(key)
    except ValueError:
        raise MalformedRequest("public_key must be the hex of a raw 32-byte Ed25519 public key") from None
    if not _HOSPITAL_RE.match(request.fixmedins_code):
        raise MalformedRequest("fixmedins_code must be 1-32 letters, digits, - or _")
    return request


def _next_agent_id(conn: sqlite3.Connection, hospital: str) -> str:
    (count,) = conn.execute("SELECT count(*) FROM agents WHERE fixmedins_code = ?", (hospital,)).fetchone()
    n = count + 1
    while True:
        candidate = f"{hospital}-{n:02d}"
        if conn.execute("SELECT 1 FROM agents WHERE agent_id = ?", (candidate,)).fetchone() is None:
            return candidate
        n += 1


def _response(
    agent_id: str, hospital: str, public_key: bytes, area: str | None, tuf_root: bytes | None
) -> EnrollResponse:
    return EnrollResponse(
        agent_id=agent_id,
        fixmedins_code=hospital,
        protocol_version=SUPPORTED_VERSIONS[-1],
        key_fingerprint=key_fingerprint(public_key),
        tuf_root=tuf_root.decode("utf-8") if tuf_root else "",
        root_fingerprint=root_fingerprint(tuf_root) if tuf_root else "",
        pooling_area=area or "",
    )


def enrol_agent(
    store: Store, request: EnrollRequest, *, now: datetime | None = None, tuf_root: bytes | None = None
) -> tuple[EnrollResponse, bool]:
    """Register the agent's key against its token; returns (response, newly_created).

    ``tuf_root``: the exact bytes of the current ``N.root.json`` (``TufRepository.current_root_bytes``),
    handed to the agent to pin with its fingerprint.
    """
    public_key = bytes.fromhex(request.public_key)
    when = now or datetime.now(UTC)

    def tx(conn: sqlite3.Connection) -> tuple[EnrollResponse, bool]:
        row = conn.execute(
            "SELECT fixmedins_code, expires_at, used_at, agent_id, pooling_area FROM enrol_tokens "
            "WHERE token_hash = ?" + for_update(conn),
            (_token_hash(request.token),),
        ).fetchone()
        if row is None:
            raise TokenInvalid("enrolment token is not known; ask the central operator for a new one")
        hospital, expires_at, used_at, used_by, area = row
        area = area or _area_of(hospital)  # a token issued before pooling areas existed
        if hospital != request.fixmedins_code:
            raise TokenInvalid(
                "enrolment token was issued for another hospital; ask for a token for "
                f"{request.fixmedins_code}"
            )
        if used_at is not None:
            held = conn.execute(
                "SELECT public_key, pooling_area FROM agents WHERE agent_id = ?", (used_by,)
            ).fetchone()
            if held is not None and held[0] == public_key:
                return _response(used_by, hospital, public_key, held[1], tuf_root), False
            raise TokenUsed("enrolment token was already used; ask the central operator for a new one")
        if datetime.fromisoformat(expires_at) <= when:
            raise TokenExpired(
                f"enrolment token expired at {expires_at}; ask the central operator for a new one"
            )
        agent_id = _next_agent_id(conn, hospital)
        stamp = when.isoformat(timespec="seconds")
        conn.execute(
            "INSERT INTO agents (agent_id, fixmedins_code, public_key, key_fingerprint, agent_version, "
            "enrolled_at, acked_seq, head_hash, pooling_area) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
            (
                agent_id,
                hospital,
                public_key,
                key_fingerprint(public_key),
                request.agent_version,
                stamp,
                GENESIS,
                area,
            ),
        )
        conn.execute(
            "UPDATE enrol_tokens SET used_at = ?, agent_id = ? WHERE token_hash = ?",
            (stamp, agent_id, _token_hash(request.token)),
        )
        return _response(agent_id, hospital, public_key, area, tuf_root), True

    return store.write(tx)


def revoke_agent(store: Store, agent_id: str) -> str:
    """Stop accepting the agent's batches from now on; returns the revocation time."""

    def tx(conn: sqlite3.Connection) -> str:
        row = conn.execute("SELECT revoked_at FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
        if row is None:
            raise AgentUnknown(f"no agent {agent_id!r}; `yibao-central agents list` shows the enrolled ones")
        if row[0] is not None:
            return str(row[0])
        stamp = now_iso()
        conn.execute("UPDATE agents SET revoked_at = ? WHERE agent_id = ?", (stamp, agent_id))
        return stamp

    return store.write(tx)
