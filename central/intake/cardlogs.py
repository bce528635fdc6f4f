"""Card logs at the centre: the ``card`` records of an agent's chain (``protocol.records.CardLog``).

``central.intake.ingest`` calls ``card_log_row`` while it prepares a batch (off the write lock) and
``store_card_logs`` inside the batch's write transaction, for the new seqs only — which is what makes
each log stored exactly once, whatever the agent re-sends. Rules:

1. A log must name the agent's own hospital (else ``hospital_mismatch``, kept in the chain as
   rejected, like a settlement); a ``blacklist_applied`` log must name the agent's pooling area.
2. A ``lost`` log becomes a pending ``blacklist.add`` change request of the card in the agent's area
   (``central.policy.changes.propose_lost_card``; maker ``desk:AGENT_ID``) in the same transaction: a
   crash leaves both or neither. An operator approves it and the entry goes out in a signed bundle.
3. Nothing here logs the card number; log lines name the agent and the seq.

``card_history`` is what a reviewer asks of one card: every event of it at every institution, in the
order they happened, and which came after the card was reported lost or blacklisted. A ``used`` after
that moment is the double use the replacement gate exists to prevent (an institution that had not yet
applied the entry); an ``auth_failed`` with ``blacklisted`` or ``card_replaced`` is one that refused it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Collection
from datetime import datetime
from typing import Any

from central.errors import NotFound
from central.policy.changes import propose_lost_card
from protocol.records import CardLog

__all__ = ["CARD_LOG_COLUMNS", "card_history", "card_log_row", "store_card_logs", "used_after_loss"]

log = logging.getLogger(__name__)

CARD_LOG_COLUMNS = (
    "agent_id, seq, log_id, event, fixmedins_code, card_sn, code, reason, area, bundle_seq, opter, at, "
    "received_at, change_id"
)
_INSERT = f"INSERT INTO card_logs ({CARD_LOG_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) " \
    "ON CONFLICT DO NOTHING"  # fmt: skip
_OK, _STATUS = "ok", 4  # records-table row: (agent_id, seq, hash, kind, status, …)


class CardLogRefused(Exception):
    """A valid card log the centre still refuses (another hospital, another area)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def card_log_row(
    rec: CardLog, agent_id: str, seq: int, hospital: str, area: str | None, received: str
) -> tuple:
    """The ``card_logs`` row of a validated log (``change_id`` filled at store time)."""
    if rec.fixmedins_code != hospital:
        raise CardLogRefused(
            "hospital_mismatch", f"card log names another hospital than the agent's {hospital}"
        )
    if rec.event == "blacklist_applied" and rec.area != area:
        raise CardLogRefused(
            "field_invalid", f"blacklist_applied names area {rec.area}, the agent's is {area}"
        )
    return (
        agent_id, seq, rec.log_id, rec.event, rec.fixmedins_code, rec.card_sn, rec.code, rec.reason, rec.area,
        rec.bundle_seq, rec.opter, rec.at, received, None,
    )  # fmt: skip


def store_card_logs(conn: sqlite3.Connection, cards: dict[int, tuple], records: list[tuple]) -> int:
    """Insert the card logs among ``records`` (the batch's new rows) that are still ``ok``; returns how
    many. Lost-card logs become change requests first, so their row names the request."""
    rows = []
    for record in records:
        seq = record[1]
        row = cards.get(seq)
        if row is None or record[_STATUS] != _OK:
            continue
        if row[3] == "lost":
            area = conn.execute("SELECT pooling_area FROM agents WHERE agent_id = ?", (row[0],)).fetchone()[0]
            change_id = propose_lost_card(
                conn, agent_id=row[0], area=area, card_sn=row[5], reason=row[7], log_seq=seq
            )
            log.info("agent %s seq %d: lost-card report became change request %d", row[0], seq, change_id)
            row = (*row[:-1], change_id)
        rows.append(row)
    conn.executemany(_INSERT, rows)
    return len(rows)


#: Codes of an ``auth_failed`` that mean the institution refused the card because it is blocked.
REFUSED_BLOCKED = ("blacklisted", "card_replaced")


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.now().astimezone().tzinfo)


def card_history(
    conn: sqlite3.Connection, card_sn: str, areas: Collection[str] | None = None
) -> dict[str, Any]:
    """Every logged event of a card (within ``areas``, the agents' pooling areas; None: all), oldest
    first, each marked ``after_lost`` when it came after the card was first reported lost at a desk or
    put on a card blacklist; ``NotFound`` when the centre holds nothing of the card there."""
    events = [
        dict(zip(("at", "event", "code", "reason", "fixmedins_code", "agent_id", "area", "opter", "seq",
                  "change_id"), row, strict=True))
        for row in conn.execute(
            "SELECT l.at, l.event, l.code, l.reason, l.fixmedins_code, l.agent_id, a.pooling_area, l.opter, "
            "l.seq, l.change_id FROM card_logs AS l JOIN agents AS a USING (agent_id) WHERE l.card_sn = ?",
            (card_sn,),
        )
    ]  # fmt: skip
    entries = [
        {"area": area, "reason": reason, "added_seq": seq, "added_at": added_at}
        for area, reason, seq, added_at in conn.execute(
            "SELECT area, reason, added_seq, added_at FROM blacklist WHERE list_type = 'card' AND id = ? "
            "ORDER BY area",
            (card_sn,),
        )
    ]
    if areas is not None:
        events = [e for e in events if e["area"] in areas]
        entries = [e for e in entries if e["area"] in areas]
    if not events and not entries:
        raise NotFound(f"the centre holds no card log and no card blacklist entry of card {card_sn}"
                       + (" in your areas" if areas is not None else ""))  # fmt: skip
    events.sort(key=lambda e: (_moment(e["at"]), e["agent_id"], e["seq"]))
    marks = [_moment(e["at"]) for e in events if e["event"] == "lost"]
    marks += [_moment(e["added_at"]) for e in entries]
    lost_since = min(marks) if marks else None
    for e in events:
        # times are to the second: a refusal for the block in the very second the entry was added came
        # after it (only a held entry refuses); a use in that second may have come before
        e["refused_blocked"] = e["event"] == "auth_failed" and e["code"] in REFUSED_BLOCKED
        moment = _moment(e["at"])
        e["after_lost"] = lost_since is not None and (
            moment > lost_since or (moment == lost_since and e["refused_blocked"])
        )
    later = [e for e in events if e["after_lost"]]
    refused = [e for e in later if e["refused_blocked"]]
    return {
        "card_sn": card_sn,
        "lost_since": lost_since.isoformat() if lost_since else None,
        "blacklist": entries,
        "events": events,
        "used_after_lost": sum(e["event"] == "used" for e in later),
        "refused_after_lost": len(refused),
        "hospitals": sorted({e["fixmedins_code"] for e in events}),
    }


def used_after_loss(
    conn: sqlite3.Connection, areas: Collection[str] | None = None, *, limit: int = 100
) -> list[dict[str, Any]]:
    """The lost cards read at a desk after their loss (``card_history``'s ``used_after_lost``), the
    latest use first: a reviewer's list of possible double use. Only cards with a ``lost`` log or a card
    blacklist entry and a ``used`` log are looked at, so the cost is the lost cards', not the logs'."""
    candidates = [
        sn for (sn,) in conn.execute(
            "SELECT lost.card_sn FROM (SELECT card_sn FROM card_logs WHERE event = 'lost' "
            "UNION SELECT id FROM blacklist WHERE list_type = 'card') AS lost "
            "WHERE EXISTS (SELECT 1 FROM card_logs AS u WHERE u.card_sn = lost.card_sn AND u.event = 'used')"
        )
    ]  # fmt: skip
    found = []
    for sn in candidates:
        try:
            h = card_history(conn, sn, areas)
        except NotFound:  # held only outside ``areas``
            continue
        uses = [e for e in h["events"] if e["after_lost"] and e["event"] == "used"]
        if uses:
            found.append({
                "card_sn": sn, "lost_since": h["lost_since"], "used_after_lost": len(uses),
                "hospitals": sorted({e["fixmedins_code"] for e in uses}), "last_used": uses[-1]["at"],
                "refused_after_lost": h["refused_after_lost"],
            })  # fmt: skip
    found.sort(key=lambda f: (_moment(f["last_used"]), f["card_sn"]), reverse=True)
    return found[:limit]
