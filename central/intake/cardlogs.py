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
"""

from __future__ import annotations

import logging
import sqlite3

from central.policy.changes import propose_lost_card
from protocol.records import CardLog

__all__ = ["CARD_LOG_COLUMNS", "card_log_row", "store_card_logs"]

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
