"""Reconciliation: a hospital's per-day totals, and proof each agent's chain is whole up to its last upload.

The centre knows an agent's chain only as far as the agent has uploaded it: settlements made
since the last batch, or waiting at an agent that cannot reach the centre, are not here and
nothing tells the centre about them (signed heartbeats, ``docs/ARCHITECTURE.md`` "Not yet", do
not exist yet). So the best this module can say is "complete up to the last upload": the
period's totals count what was uploaded, and each agent's check stops at its acked seq.

What "complete up to the last upload and verified" means for an agent (``verify_stored_chain``):

1. The records table holds every seq from 1 to the agent's acked seq, and nothing past it.
2. Re-reading the raw entries in seq order, each recomputed hash equals the hash stored
   with it, each entry names this agent and its own seq, and each ``prev_hash`` equals the
   previous entry's hash (``GENESIS`` before seq 1). A lost marker is its own hash.
3. The last hash equals the chain head the agent signed, and every record stored ``ok``
   has exactly one settlement row.

The first problem found is reported; nothing is repaired here. Days use the local date
written in ``setl_time``; security events are counted by their UTC date. ``last_upload`` is when
the centre last received a batch from the agent (``agents.last_seen``).
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any

from protocol.chain import GENESIS, LOST_MARKER_LEN, decode_entry, record_hash
from protocol.errors import ProtocolError
from protocol.records import fen_to_text

from .errors import ConfigInvalid
from .store import AgentRow, Store, list_agents

__all__ = ["AgentCheck", "DayTotals", "Reconciliation", "reconcile", "render_table", "verify_stored_chain"]

MAX_DAYS = 3660
#: How far completeness reaches, in the JSON (``complete_up_to``) and the table: the agents' last uploads.
#: Signed heartbeats would let it reach a signed head past the period's end; until then it is this.
COMPLETE_UP_TO = "last_upload"
_SUMS = ("medfee", "fund", "acct", "cash")


@dataclass
class DayTotals:
    """One day's counts and money (integer fen); ``net`` includes the (negative) reversals."""

    day: str
    settlements: int = 0
    reversals: int = 0
    gross: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_SUMS, 0))
    net: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_SUMS, 0))


@dataclass
class AgentCheck:
    agent_id: str
    acked_seq: int
    complete: bool
    verified: bool
    problem: str | None
    rejected: int
    lost: int
    security_events: int
    revoked: bool
    #: When the centre last received a batch from this agent (None: never); completeness reaches this far.
    last_upload: str | None = None

    @property
    def ok(self) -> bool:
        # A lost record keeps the chain verifiable but its content is not here: not complete.
        return self.complete and self.verified and self.lost == 0


@dataclass
class Reconciliation:
    hospital: str
    date_from: str
    date_to: str
    days: list[DayTotals]
    agents: list[AgentCheck]

    @property
    def ok(self) -> bool:
        return all(agent.ok for agent in self.agents)

    def to_json(self) -> dict[str, Any]:
        """JSON form; money as decimal yuan text like the exports."""

        def money(d: dict[str, int]) -> dict[str, str]:
            return {k: fen_to_text(v) for k, v in d.items()}

        days = [{**asdict(d), "gross": money(d.gross), "net": money(d.net)} for d in self.days]
        agents = [{**asdict(a), "ok": a.ok} for a in self.agents]
        return {
            "hospital": self.hospital,
            "from": self.date_from,
            "to": self.date_to,
            "ok": self.ok,
            "complete_up_to": COMPLETE_UP_TO,
            "days": days,
            "agents": agents,
        }


def _chain_problem(conn: sqlite3.Connection, agent: AgentRow) -> str | None:
    prev = GENESIS
    expected = 1
    rows = conn.execute(
        "SELECT seq, hash, raw FROM records WHERE agent_id = ? ORDER BY seq", (agent.agent_id,)
    )
    for seq, stored_hash, raw in rows:
        if seq != expected:
            return f"seq {expected} is missing (next held is {seq})"
        digest = record_hash(raw)
        if digest != stored_hash:
            return f"record seq {seq} does not hash to the hash stored with it (its raw bytes changed)"
        if len(raw) != LOST_MARKER_LEN:
            try:
                entry = decode_entry(raw)
            except ProtocolError as exc:
                return f"record seq {seq} does not decode: {exc.message}"
            if entry.agent_id != agent.agent_id or entry.seq != seq:
                return f"record seq {seq} names agent {entry.agent_id} seq {entry.seq}"
            if entry.prev_hash != prev:
                return f"record seq {seq} does not link to the record held for seq {seq - 1}"
        prev = digest
        expected += 1
    if expected - 1 != agent.acked_seq:
        return f"records end at seq {expected - 1} but the acked seq is {agent.acked_seq}"
    if prev != agent.head_hash:
        return "the last record's hash differs from the chain head the agent signed"
    return None


def verify_stored_chain(conn: sqlite3.Connection, agent: AgentRow) -> tuple[bool, bool, str | None]:
    """(complete, verified, first problem) for one agent; see the module rules."""
    count, low, high = conn.execute(
        "SELECT count(*), min(seq), max(seq) FROM records WHERE agent_id = ?", (agent.agent_id,)
    ).fetchone()
    complete = count == agent.acked_seq and (count == 0 or (low == 1 and high == agent.acked_seq))
    problem = _chain_problem(conn, agent)
    if problem is None:
        ok_records, settlements = conn.execute(
            "SELECT (SELECT count(*) FROM records WHERE agent_id = ?1 AND status = 'ok'), "
            "(SELECT count(*) FROM settlements WHERE agent_id = ?1)",
            (agent.agent_id,),
        ).fetchone()
        if ok_records != settlements:
            problem = f"{ok_records} records were stored ok but {settlements} settlements are held"
    return complete, problem is None, problem


def _days(conn: sqlite3.Connection, hospital: str, first: date, last: date) -> list[DayTotals]:
    days = {}
    day = first
    while day <= last:
        days[day.isoformat()] = DayTotals(day.isoformat())
        day += timedelta(days=1)
    rows = conn.execute(
        "SELECT setl_date, sum(kind = 'setl'), sum(kind = 'revs'), "
        "coalesce(sum(CASE WHEN kind = 'setl' THEN medfee_sumamt END), 0), "
        "coalesce(sum(CASE WHEN kind = 'setl' THEN fund_pay_sumamt END), 0), "
        "coalesce(sum(CASE WHEN kind = 'setl' THEN acct_pay END), 0), "
        "coalesce(sum(CASE WHEN kind = 'setl' THEN psn_cash_pay END), 0), "
        "coalesce(sum(medfee_sumamt), 0), coalesce(sum(fund_pay_sumamt), 0), "
        "coalesce(sum(acct_pay), 0), coalesce(sum(psn_cash_pay), 0) "
        "FROM settlements WHERE fixmedins_code = ? AND setl_date BETWEEN ? AND ? GROUP BY setl_date",
        (hospital, first.isoformat(), last.isoformat()),
    )
    for setl_date, n_setl, n_revs, *sums in rows:
        totals = days[setl_date]
        totals.settlements, totals.reversals = n_setl, n_revs
        totals.gross = dict(zip(_SUMS, sums[:4], strict=True))
        totals.net = dict(zip(_SUMS, sums[4:], strict=True))
    return list(days.values())


def reconcile(store: Store, hospital: str, date_from: date, date_to: date) -> Reconciliation:
    """Totals per day over [date_from, date_to] and the chain check of each agent of ``hospital``."""
    if date_from > date_to:
        raise ConfigInvalid(f"--from {date_from} is after --to {date_to}")
    if (date_to - date_from).days >= MAX_DAYS:
        raise ConfigInvalid(f"reconcile at most {MAX_DAYS} days at once")

    def read(conn: sqlite3.Connection) -> Reconciliation:
        checks = []
        for agent in list_agents(conn, hospital):
            complete, verified, problem = verify_stored_chain(conn, agent)
            rejected, lost = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'rejected'), count(*) FILTER (WHERE status = 'lost') "
                "FROM records WHERE agent_id = ?",
                (agent.agent_id,),
            ).fetchone()
            (events,) = conn.execute(
                "SELECT coalesce(sum(1 + repeats), 0) FROM security_events "
                "WHERE agent_id = ? AND substr(time, 1, 10) BETWEEN ? AND ?",
                (agent.agent_id, date_from.isoformat(), date_to.isoformat()),
            ).fetchone()
            checks.append(
                AgentCheck(
                    agent.agent_id,
                    agent.acked_seq,
                    complete,
                    verified,
                    problem,
                    rejected,
                    lost,
                    events,
                    agent.revoked,
                    agent.last_seen,
                )
            )
        days = _days(conn, hospital, date_from, date_to)
        return Reconciliation(hospital, date_from.isoformat(), date_to.isoformat(), days, checks)

    return store.read(read)


def render_table(rec: Reconciliation) -> str:
    """The human-readable report ``yibao-central reconcile`` prints."""
    lines = [f"Reconciliation of {rec.hospital}, {rec.date_from} to {rec.date_to}", ""]
    head = ("date", "setl", "revs", "medfee net", "fund net", "acct net", "cash net", "medfee gross")
    fmt = "{:<10} {:>6} {:>5} {:>14} {:>14} {:>12} {:>12} {:>14}"
    lines.append(fmt.format(*head))
    total = DayTotals("total")
    for day in rec.days:
        total.settlements += day.settlements
        total.reversals += day.reversals
        for k in _SUMS:
            total.net[k] += day.net[k]
            total.gross[k] += day.gross[k]
    for day in [*rec.days, total]:
        net = [fen_to_text(day.net[k]) for k in _SUMS]
        lines.append(
            fmt.format(day.day, day.settlements, day.reversals, *net, fen_to_text(day.gross["medfee"]))
        )
    lines += ["", "{:<24} {:>8} {:<25} {:>9} {:>9} {:>9} {:>5} {:>9}  {}".format(
        "agent", "acked", "last upload", "1..acked", "verified", "rejected", "lost", "security", "problem"
    )]  # fmt: skip
    for a in rec.agents:
        name = a.agent_id + (" (revoked)" if a.revoked else "")
        complete, verified = ("yes" if a.complete else "NO"), ("yes" if a.verified else "NO")
        lines.append(
            f"{name:<24} {a.acked_seq:>8} {a.last_upload or 'never':<25} {complete:>9} {verified:>9} "
            f"{a.rejected:>9} {a.lost:>5} {a.security_events:>9}  {a.problem or '-'}"
        )
    if not rec.agents:
        lines.append(f"(no agent enrolled for {rec.hospital})")
    lines.append("")
    lost = sum(a.lost for a in rec.agents)
    if rec.ok:
        lines.append("RESULT: complete up to the last upload, and verified")
    elif lost:
        lines.append(
            f"RESULT: NOT complete: {lost} record(s) lost to corruption at the agent (quarantined there; "
            "recover them from the HIS and the agent's quarantine table); see problems"
        )
    else:
        lines.append("RESULT: NOT complete up to the last upload, or NOT verified; see problems")
    lines += [
        "(the centre holds what each agent uploaded, up to its acked seq; settlements made since, or waiting",
        " at an agent that cannot reach the centre, are not counted: there is no signed heartbeat yet)",
    ]
    return "\n".join(lines)
