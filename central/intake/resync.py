"""An agent's own chain entries back from the centre, for an agent restored from an older backup.

A restored agent's outbox ends where the backup was taken; the centre may hold records the agent made
after it. Settling on from the old head would fork the chain, so the restored agent first asks for
what the centre holds beyond its head (``GET /v1/agents/records?after=SEQ&limit=N``), checks that each
entry links to the one before, and appends them as already acknowledged (``agent.resync``).

Who may read: the agent itself only — the request is signed with its enrolment key (as the history
lookup is, ``central.intake.history.authenticate``) and, with TLS, comes with its own client certificate.
The answer is what the agent signed and sent, nothing of another agent's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from central.errors import AgentMismatch, MalformedRequest
from central.storage.store import Store
from protocol import canonical

from .history import authenticate

__all__ = ["MAX_RECORDS", "answer_records"]

log = logging.getLogger(__name__)

#: Entries per answer (a settlement entry is ~1-4 kB: at most a few MB an answer).
MAX_RECORDS = 1000


def _int(values: Sequence[str], name: str, lo: int, hi: int, default: int | None) -> int:
    if not values:
        if default is None:
            raise MalformedRequest(f"{name} is required")
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise MalformedRequest(f"{name} must be a whole number") from None
    if not lo <= value <= hi:
        raise MalformedRequest(f"{name} must be between {lo} and {hi}")
    return value


def answer_records(
    store: Store,
    *,
    method: str,
    path_qs: str,
    headers: Mapping[str, str],
    after: Sequence[str],
    limit: Sequence[str],
    remote: str | None,
    peer_agent: str | None,
) -> bytes:
    """msgpack ``{"records": [entry bytes…], "acked_seq": N}``: the agent's entries after ``after``."""
    agent = authenticate(store, method, path_qs, headers, remote=remote)
    if peer_agent is not None and peer_agent != agent.agent_id:
        raise AgentMismatch(
            f"the request is signed by agent {agent.agent_id!r} but came with the client certificate of "
            f"{peer_agent!r}; each agent asks with its own certificate"
        )
    first = _int(after, "after", 0, 2**62, None)
    n = _int(limit, "limit", 1, MAX_RECORDS, MAX_RECORDS)
    rows = store.read(
        lambda conn: conn.execute(
            "SELECT seq, raw FROM records WHERE agent_id = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (agent.agent_id, first, agent.acked_seq, n),
        ).fetchall()
    )
    log.info("agent %s fetched %d of its own records after seq %d", agent.agent_id, len(rows), first)
    records = [bytes(raw) for _, raw in rows]
    return canonical.encode_canonical({"records": records, "acked_seq": agent.acked_seq})
