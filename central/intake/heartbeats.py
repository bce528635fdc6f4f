"""Agents' signed heartbeats: what each agent has settled, so the centre knows what it lacks.

Rules:

1. A heartbeat is stored only when it verifies with the agent's enrolment key and comes with that
   agent's client certificate (``central.intake.statements``): nobody can claim an agent
   is caught up, or silence it by sending stale heartbeats for it.
2. Its claims must be coherent: ``0 <= acked_seq <= last_seq``, a 32-byte head, a non-negative
   pending age, and a time with an offset that is not ahead of the centre's clock by more than
   ``MAX_AHEAD``: a clock running ahead would make a period look complete before it ended.
3. Only the newest (by the agent's ``at``) is kept per agent, as with policy reports; the centre's
   receive time is kept too, because silence is judged by the centre's clock, not the agent's.
4. The answer carries the centre's acked seq for the agent (see ``record_heartbeat``).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from central.errors import MalformedRequest
from central.storage.store import Store, now_iso
from protocol.chain import GENESIS
from protocol.wire import HEARTBEAT_CODEC, HEARTBEAT_INTERVAL_S, Heartbeat

from .statements import newer_than_held, verified_statement

__all__ = [
    "MAX_AHEAD",
    "MAX_HEARTBEAT_BYTES",
    "SILENT_AFTER_S",
    "HeldHeartbeat",
    "held_heartbeats",
    "record_heartbeat",
]

MAX_HEARTBEAT_BYTES = 4096
MAX_AHEAD = timedelta(minutes=5)
#: An agent is *silent* when the centre received no heartbeat for this long: three missed beats.
SILENT_AFTER_S = 3 * HEARTBEAT_INTERVAL_S
_MAX_SEQ = 2**63 - 1


def _check(hb: Heartbeat) -> None:
    try:
        at = datetime.fromisoformat(hb.at)
    except ValueError:
        raise MalformedRequest("the heartbeat's 'at' is not an ISO-8601 time") from None
    if at.tzinfo is None:
        raise MalformedRequest("the heartbeat's 'at' has no UTC offset")
    if at > datetime.now(UTC) + MAX_AHEAD:
        raise MalformedRequest(
            f"the heartbeat's time {hb.at} is ahead of the centre's clock by more than {MAX_AHEAD}; "
            "set the agent machine's clock (NTP): a clock ahead would claim periods that have not ended"
        )
    if not (0 <= hb.acked_seq <= hb.last_seq <= _MAX_SEQ):
        raise MalformedRequest("a heartbeat needs 0 <= acked_seq <= last_seq")
    if len(hb.head) != 32:
        raise MalformedRequest("a heartbeat's head is the 32-byte chain hash at last_seq")
    if hb.oldest_pending_ms is not None and not (0 <= hb.oldest_pending_ms <= _MAX_SEQ):
        raise MalformedRequest("oldest_pending_ms is a non-negative age in milliseconds")
    if hb.last_seq == 0 and hb.head != GENESIS:
        raise MalformedRequest("an agent that has settled nothing has the genesis head")


def record_heartbeat(
    store: Store, data: bytes, *, remote: str | None = None, peer_agent: str | None = None
) -> dict[str, Any]:
    """Verify and store an agent's heartbeat → ``{"stored": newest?, "acked_seq": what the centre holds}``.

    The acked seq answers the agent: after the centre was restored from a backup it holds less than
    the agent was told, and an idle agent (no batch to be acked) learns it here and resends.
    """
    hb, agent = verified_statement(
        store, data, HEARTBEAT_CODEC, max_bytes=MAX_HEARTBEAT_BYTES, check=_check, remote=remote,
        peer_agent=peer_agent,
    )  # fmt: skip

    def tx(conn: sqlite3.Connection) -> bool:
        held = conn.execute(
            "SELECT agent_at FROM agent_heartbeats WHERE agent_id = ?", (hb.agent_id,)
        ).fetchone()
        if not newer_than_held(held[0] if held else None, hb.at):
            return False
        age_s = None if hb.oldest_pending_ms is None else hb.oldest_pending_ms / 1000
        conn.execute(
            "INSERT INTO agent_heartbeats (agent_id, last_seq, head, acked_seq, oldest_pending_s, agent_at, "
            "received_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET "
            "last_seq = excluded.last_seq, head = excluded.head, acked_seq = excluded.acked_seq, "
            "oldest_pending_s = excluded.oldest_pending_s, agent_at = excluded.agent_at, "
            "received_at = excluded.received_at, body = excluded.body",
            (hb.agent_id, hb.last_seq, hb.head.hex(), hb.acked_seq, age_s, hb.at, now_iso(), data),
        )
        return True

    stored = store.write(tx)
    return {"stored": stored, "acked_seq": agent.acked_seq}


@dataclass(frozen=True, slots=True)
class HeldHeartbeat:
    """The newest heartbeat the centre holds for an agent."""

    agent_id: str
    last_seq: int
    head: bytes
    acked_seq: int  # what the agent knew the centre had acknowledged
    oldest_pending_s: float | None
    at: str  # the agent's clock
    received_at: str  # the centre's clock

    @property
    def pending_since(self) -> datetime | None:
        """When the oldest record the agent still had to send was made (by the agent's clock)."""
        if self.oldest_pending_s is None:
            return None
        return datetime.fromisoformat(self.at) - timedelta(seconds=self.oldest_pending_s)

    def silent(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        return (now - datetime.fromisoformat(self.received_at)).total_seconds() > SILENT_AFTER_S


def held_heartbeats(conn: sqlite3.Connection) -> dict[str, HeldHeartbeat]:
    return {
        row[0]: HeldHeartbeat(row[0], row[1], bytes.fromhex(row[2]), row[3], row[4], row[5], row[6])
        for row in conn.execute(
            "SELECT agent_id, last_seq, head, acked_seq, oldest_pending_s, agent_at, received_at "
            "FROM agent_heartbeats"
        )
    }
