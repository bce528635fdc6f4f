"""What every signed statement an agent sends (policy report, heartbeat) goes through before it is stored.

One path, so the rules cannot drift between kinds: decoded within a size limit, checked for shape
by the kind's own ``check``, sent with the signing agent's own client certificate, from an enrolled
and unrevoked agent, and signed by its enrolment key. Only the newest statement per agent is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from central.errors import (
    AgentMismatch,
    AgentRevoked,
    AgentUnknown,
    LimitExceededError,
    MalformedRequest,
    SignatureInvalid,
)
from central.storage.store import AgentRow, Store, get_agent, record_security_event
from protocol.errors import BadSignature, DecodeError
from protocol.wire import SignedCodec

__all__ = ["enrolled_agent", "newer_than_held", "verified_statement"]

_M = TypeVar("_M")

log = logging.getLogger(__name__)

#: A held statement dated further ahead than this is taken for a clock since corrected.
_FUTURE_SLACK = timedelta(minutes=5)


def _aware(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def enrolled_agent(store: Store, agent_id: str) -> AgentRow:
    """The agent named by a signed message, refused when it is unknown or revoked."""
    agent = store.read(lambda conn: get_agent(conn, agent_id))
    if agent is None:
        raise AgentUnknown(f"agent {agent_id!r} is not enrolled; enrol it with a new token")
    if agent.revoked:
        raise AgentRevoked(f"agent {agent_id} was revoked at {agent.revoked_at}; re-enrol it")
    return agent


def verified_statement(
    store: Store,
    data: bytes,
    codec: SignedCodec[_M],
    *,
    max_bytes: int,
    check: Callable[[_M], None],
    remote: str | None,
    peer_agent: str | None,
) -> tuple[_M, AgentRow]:
    """Decode, check and verify an agent's signed statement (a policy report, a heartbeat).

    Refused: malformed or oversized bytes; a statement of another agent than the client
    certificate (``peer_agent``); an unknown or revoked agent; a bad signature, which is also
    recorded as a security event because only a forger or a broken agent sends one.
    """
    try:
        message = codec.decode(data, max_bytes)
    except DecodeError as exc:
        if len(data) > max_bytes:
            raise LimitExceededError(exc.message) from None
        raise MalformedRequest(exc.message) from None
    check(message)
    agent_id = message.agent_id  # type: ignore[attr-defined]
    if peer_agent is not None and agent_id != peer_agent:
        raise AgentMismatch(
            f"the {codec.what} is signed by agent {agent_id!r} but came with the client certificate of "
            f"{peer_agent!r}; each agent sends with its own certificate"
        )
    agent = enrolled_agent(store, agent_id)
    try:
        codec.verify(message, agent.public_key)
    except BadSignature as exc:
        error = SignatureInvalid(exc.message)
        log.warning("security event from agent %s (%s): %s", agent_id, remote, error.code)
        store.write(lambda conn: record_security_event(conn, agent_id, error.code, error.message, remote))
        raise error from None
    return message, agent


def newer_than_held(held_at: str | None, at: str) -> bool:
    """Whether a statement made at ``at`` replaces one held from ``held_at`` (the newest is kept).

    An older one replayed later is genuine but must not overwrite a newer one, unless the held one
    claims a time in the future: an agent clock since corrected must not freeze the view.
    """
    if held_at is None:
        return True
    held = _aware(held_at)
    return not (held > _aware(at) and held <= datetime.now(UTC) + _FUTURE_SLACK)
