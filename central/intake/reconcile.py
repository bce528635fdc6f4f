"""Reconciliation: a hospital's per-day totals, each agent's chain proved whole, and how far that reaches.

The centre holds an agent's chain as far as the agent uploaded it. What the agent has settled
since, the centre learns from its signed heartbeat (``central.intake.heartbeats``): the agent's last seq
and chain head at a time. Per agent, reconcile says one of:

- **complete up to T**: the newest heartbeat (made at T, by the agent's clock) names a last seq the
  centre holds: everything the agent had settled at T is here;
- **behind by N** (as of T): the agent had N records the centre does not hold yet;
- **silent since T**: no heartbeat arrived for ``SILENT_AFTER_S`` (or ever); what it said last is
  still shown, but nothing says what it settled since.

A period (``--from`` .. ``--to``, local dates of ``setl_time``, China Standard Time) is
**complete** for an agent only when its chain checks below pass and a heartbeat made after the
period ended shows the centre holding everything settled before that end: either nothing was
pending, or the oldest pending record was made after the period's end. An agent revoked before
the period began counts as complete for it (the centre refuses its batches since). The period is
complete when it is for every agent of the hospital.

What "verified" means for an agent's stored chain (``verify_stored_chain``):

1. The records table holds every seq from 1 to the agent's acked seq, and nothing past it.
2. Re-reading the raw entries in seq order, each recomputed hash equals the hash stored
   with it, each entry names this agent and its own seq, and each ``prev_hash`` equals the
   previous entry's hash (``GENESIS`` before seq 1). A lost marker is its own hash.
3. The last hash equals the chain head the agent signed, and every record stored ``ok``
   has exactly one settlement row.
4. Where the centre holds the seq a heartbeat names, the hash held there equals the heartbeat's
   signed head: another hash means the agent and the centre hold different chains.

The first problem found is reported; nothing is repaired here. Days use the local date
written in ``setl_time``; security events are counted by their UTC date. ``last_upload`` is when
the centre last received a batch from the agent (``agents.last_seen``).
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

from central.errors import ConfigInvalid
from central.storage.store import AgentRow, Store, list_agents
from protocol.chain import GENESIS, LOST_MARKER_LEN, decode_entry, record_hash
from protocol.errors import ProtocolError
from protocol.records import fen_to_text

from .heartbeats import HeldHeartbeat, held_heartbeats

__all__ = ["AgentCheck", "DayTotals", "Reconciliation", "reconcile", "render_table", "verify_stored_chain"]

MAX_DAYS = 3660
#: The zone of ``setl_time``'s local dates, in which a period ends.
PERIOD_TZ = timezone(timedelta(hours=8))
_SUMS = ("medfee", "fund", "acct", "cash")


@dataclass
class DayTotals:
    """One day's counts and money (integer fen); ``net`` includes the (negative) reversals."""

    day: str
    settlements: int = 0
    reversals: int = 0
    #: Settlements and reversals of the day brought by a bulk import (``central.intake.bulk_import``): held
    #: and
    #: screened, but in no agent's chain, so outside the totals reconciled with the agents.
    imported: int = 0
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
    #: When the centre last received a batch from this agent (None: never).
    last_upload: str | None = None
    #: ``complete`` (up to ``since``), ``behind`` (by ``behind_by``, as of ``since``) or ``silent`` (since).
    state: str = "silent"
    since: str | None = None
    behind_by: int | None = None
    #: The newest heartbeat: the agent's last seq and when it made and the centre received it.
    heartbeat_seq: int | None = None
    heartbeat_at: str | None = None
    heartbeat_received_at: str | None = None
    #: Whether this agent's part of the period is provably all here (module rules).
    period_complete: bool = False

    @property
    def chain_ok(self) -> bool:
        # A lost record keeps the chain verifiable but its content is not here: not complete.
        return self.complete and self.verified and self.lost == 0

    @property
    def ok(self) -> bool:
        return self.chain_ok and self.period_complete

    def describe(self) -> str:
        """The per-agent state as the table says it."""
        if self.state == "complete":
            return f"complete up to {self.since}"
        if self.state == "behind":
            return f"behind by {self.behind_by} (as of {self.since})"
        said = f"; last said behind by {self.behind_by}" if self.behind_by else ""
        return f"silent since {self.since or 'enrolment (no heartbeat ever)'}{said}"


@dataclass
class Reconciliation:
    hospital: str
    date_from: str
    date_to: str
    days: list[DayTotals]
    agents: list[AgentCheck]
    #: False while the period's last day has not ended: nothing can prove it complete yet.
    period_ended: bool = True

    @property
    def chain_ok(self) -> bool:
        """Every stored chain is whole and verified (what was uploaded is right)."""
        return all(agent.chain_ok for agent in self.agents)

    @property
    def ok(self) -> bool:
        """The period is provably complete and verified for every agent."""
        return all(agent.ok for agent in self.agents)

    @property
    def exit_code(self) -> int:
        """0 complete and verified; 2 a stored chain is not whole or not verified; 3 the chains verify
        but the period is not provably complete (an agent behind or silent, or the period not over)."""
        if not self.chain_ok:
            return 2
        return 0 if self.ok else 3

    def to_json(self) -> dict[str, Any]:
        """JSON form; money as decimal yuan text like the exports."""

        def money(d: dict[str, int]) -> dict[str, str]:
            return {k: fen_to_text(v) for k, v in d.items()}

        days = [{**asdict(d), "gross": money(d.gross), "net": money(d.net)} for d in self.days]
        agents = [{**asdict(a), "ok": a.ok, "chain_ok": a.chain_ok} for a in self.agents]
        return {
            "hospital": self.hospital,
            "from": self.date_from,
            "to": self.date_to,
            "ok": self.ok,
            "chain_ok": self.chain_ok,
            "period_ended": self.period_ended,
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
        # Card logs (kind ``card``) are chain records too, held in card_logs, not settlements.
        ok_records, settlements, ok_cards, card_logs = conn.execute(
            "SELECT (SELECT count(*) FROM records WHERE agent_id = ? AND status = 'ok' AND kind != 'card'), "
            "(SELECT count(*) FROM settlements WHERE agent_id = ?), "
            "(SELECT count(*) FROM records WHERE agent_id = ? AND status = 'ok' AND kind = 'card'), "
            "(SELECT count(*) FROM card_logs WHERE agent_id = ?)",
            (agent.agent_id,) * 4,  # plain ``?``: numbered parameters have no PostgreSQL translation
        ).fetchone()
        if ok_records != settlements:
            problem = f"{ok_records} records were stored ok but {settlements} settlements are held"
        elif ok_cards != card_logs:
            problem = f"{ok_cards} card logs were stored ok but {card_logs} are held in card_logs"
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
        "FROM settlements WHERE fixmedins_code = ? AND setl_date BETWEEN ? AND ? AND import_id IS NULL "
        "GROUP BY setl_date",
        (hospital, first.isoformat(), last.isoformat()),
    )
    for setl_date, n in conn.execute(
        "SELECT setl_date, count(*) FROM settlements WHERE fixmedins_code = ? AND setl_date BETWEEN ? AND ? "
        "AND import_id IS NOT NULL GROUP BY setl_date",
        (hospital, first.isoformat(), last.isoformat()),
    ):
        days[setl_date].imported = n
    for setl_date, n_setl, n_revs, *sums in rows:
        totals = days[setl_date]
        totals.settlements, totals.reversals = n_setl, n_revs
        totals.gross = dict(zip(_SUMS, sums[:4], strict=True))
        totals.net = dict(zip(_SUMS, sums[4:], strict=True))
    return list(days.values())


def _head_problem(conn: sqlite3.Connection, agent: AgentRow, hb: HeldHeartbeat) -> str | None:
    """Rule 4: the chain the heartbeat signed is the chain the centre holds, where both reach."""
    if hb.last_seq > agent.acked_seq:
        return None
    if hb.last_seq == 0:
        held = GENESIS
    else:
        row = conn.execute(
            "SELECT hash FROM records WHERE agent_id = ? AND seq = ?", (agent.agent_id, hb.last_seq)
        ).fetchone()
        if row is None:
            return None  # the missing seq is already the chain's problem
        held = bytes(row[0])
    if held != hb.head:
        return (
            f"the agent's signed heartbeat names another chain head at seq {hb.last_seq} than the centre "
            "holds: the agent and the centre hold different chains (investigate both databases)"
        )
    return None


def _reach(
    check: AgentCheck, agent: AgentRow, hb: HeldHeartbeat | None, start: datetime, end: datetime,
    now: datetime,
) -> None:  # fmt: skip
    """Fill the state, and whether the period is provably complete for this agent (module rules)."""
    if agent.revoked_at is not None and datetime.fromisoformat(agent.revoked_at) <= start:
        check.state, check.since, check.period_complete = "silent", agent.revoked_at, True
        return
    if hb is None:
        check.state = "silent"
        return
    behind = max(0, hb.last_seq - agent.acked_seq)
    check.heartbeat_seq, check.heartbeat_at, check.heartbeat_received_at = hb.last_seq, hb.at, hb.received_at
    check.behind_by = behind
    if hb.silent(now):
        check.state, check.since = "silent", hb.received_at
    else:
        check.state, check.since = ("behind" if behind else "complete"), hb.at
    if datetime.fromisoformat(hb.at) < end:
        return  # no signed word from after the period's end
    if behind == 0:
        check.period_complete = True
    else:
        # Pending records all made after the end do not belong to the period.
        pending_since = hb.pending_since
        check.period_complete = pending_since is not None and pending_since >= end


def reconcile(
    store: Store, hospital: str, date_from: date, date_to: date, *, now: datetime | None = None
) -> Reconciliation:
    """Totals per day over [date_from, date_to], each agent's chain check and how far it reaches."""
    if date_from > date_to:
        raise ConfigInvalid(f"--from {date_from} is after --to {date_to}")
    if (date_to - date_from).days >= MAX_DAYS:
        raise ConfigInvalid(f"reconcile at most {MAX_DAYS} days at once")
    start = datetime.combine(date_from, time(0), PERIOD_TZ)
    end = datetime.combine(date_to + timedelta(days=1), time(0), PERIOD_TZ)
    now = now or datetime.now(UTC)

    def read(conn: sqlite3.Connection) -> Reconciliation:
        checks = []
        heartbeats = held_heartbeats(conn)
        for agent in list_agents(conn, hospital):
            complete, verified, problem = verify_stored_chain(conn, agent)
            hb = heartbeats.get(agent.agent_id)
            if problem is None and hb is not None:
                problem = _head_problem(conn, agent, hb)
                verified = problem is None
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
            check = AgentCheck(
                agent.agent_id, agent.acked_seq, complete, verified, problem, rejected, lost, events,
                agent.revoked, agent.last_seen,
            )  # fmt: skip
            _reach(check, agent, hb, start, end, now)
            checks.append(check)
        days = _days(conn, hospital, date_from, date_to)
        return Reconciliation(
            hospital, date_from.isoformat(), date_to.isoformat(), days, checks, period_ended=now >= end
        )

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
        total.imported += day.imported
        for k in _SUMS:
            total.net[k] += day.net[k]
            total.gross[k] += day.gross[k]
    for day in [*rec.days, total]:
        net = [fen_to_text(day.net[k]) for k in _SUMS]
        lines.append(
            fmt.format(day.day, day.settlements, day.reversals, *net, fen_to_text(day.gross["medfee"]))
        )
    if total.imported:
        lines.append(f"(besides these, {total.imported} settlements and reversals of the period came by a "
                     "bulk import: held and screened, in no agent's chain; `yibao-central import status`)")
    lines += ["", "{:<24} {:>8} {:>9} {:>9} {:>9} {:>5} {:>9}  {:<7}  {}".format(
        "agent", "acked", "1..acked", "verified", "rejected", "lost", "security", "period", "reach / problem"
    )]  # fmt: skip
    for a in rec.agents:
        name = a.agent_id + (" (revoked)" if a.revoked else "")
        complete, verified = ("yes" if a.complete else "NO"), ("yes" if a.verified else "NO")
        period = "whole" if a.period_complete else "OPEN"
        lines.append(
            f"{name:<24} {a.acked_seq:>8} {complete:>9} {verified:>9} {a.rejected:>9} {a.lost:>5} "
            f"{a.security_events:>9}  {period:<7}  {a.describe()}"
            + (f"; PROBLEM: {a.problem}" if a.problem else "")
        )
    if not rec.agents:
        lines.append(f"(no agent enrolled for {rec.hospital})")
    lines.append("")
    lost = sum(a.lost for a in rec.agents)
    if rec.ok:
        lines.append("RESULT: complete and verified: every agent's signed heartbeat from after the period "
                     "shows the centre holding all it settled in it")  # fmt: skip
    elif lost:
        lines.append(
            f"RESULT: NOT complete: {lost} record(s) lost to corruption at the agent (quarantined there; "
            "recover them from the HIS and the agent's quarantine table); see problems"
        )
    elif not rec.chain_ok:
        lines.append("RESULT: NOT verified: a stored chain is not whole or not right; see problems")
    else:
        why = (
            "the period has not ended yet"
            if not rec.period_ended
            else "an agent is behind or silent: its settlements of the period may not all be here"
        )
        lines.append(f"RESULT: verified as far as uploaded, but NOT provably complete: {why}")
        lines.append(
            "(an agent behind sends the rest when it can reach the centre; a silent agent needs a look at "
            "its machine: `yibao-agent status` there)"
        )
    return "\n".join(lines)
