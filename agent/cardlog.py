"""Card logs at the desk: what the agent chains about social-security cards (``protocol.records.CardLog``).

Why here and not in the reader: ``agent.card`` only talks PC/SC and knows nothing of the outbox; the
HIS API and the desk pages both read cards, and both must log the same way. So each goes through
``identify_and_log``, and the cashier's lost-card report through ``report_lost``, whichever client
asked. The rules:

1. A card read that proves the card genuine logs ``used``; a read that got as far as the card's number
   but refused the card (failed internal authentication, expired) logs ``auth_failed`` with the code
   the desk answered. Reads that never saw a card number (no card, no reader, removed mid-read) log
   nothing: there is no card to name.
2. The log is durable before the cashier is answered, like a settlement; if the outbox refuses it
   (full, disk nearly full) the cashier gets that error — an unlogged read would be an unaudited one.
   A settlement refused because of the card itself (on the card blacklist, or replaced by the card
   office) logs ``auth_failed`` with that code (``blacklisted``, ``card_replaced``): the attempt to
   settle with a lost card is what the centre's history of the card must show. The refusal is
   answered even when that log cannot be chained (the cashier must hear "blocked"); a preview logs
   nothing, and each refused attempt is one log (a HIS that sends the refused settlement again logs
   again).
3. A lost-card report is validated first (bad input → ``validation_failed``, nothing chained); the
   centre turns it into a pending blacklist change an operator approves (``central.policy.changes``).
4. Applying a blacklist bundle logs ``blacklist_applied`` with its seq; the centre's replacement gate
   (``central.policy.cards``) counts an institution only once it has applied *and* logged the entry.
5. No log carries the holder's name or ID number; the card number stays out of the log lines too.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from protocol.errors import ProtocolError, ValidationFailed
from protocol.records import CardLog, Settlement, card_log_problems

from .card import CardReader
from .errors import AgentError, Blacklisted, CardCounterfeit, CardExpired, CardReplaced
from .identity import Identity
from .intake import now_iso
from .store import Outbox, Receipt

__all__ = ["blacklist_applied_log", "identify_and_log", "log_refused_card", "new_log_id", "report_lost"]

log = logging.getLogger("yibao.agent.cardlog")


def new_log_id(fixmedins_code: str) -> str:
    """Unique, time-ordered log id (``C``-prefixed so it never looks like a ``setl_id``)."""
    return f"C{fixmedins_code}-{int(time.time() * 1000):013d}-{secrets.token_hex(4)}"


def _log(event: str, fixmedins_code: str, opter: str, **fields: object) -> CardLog:
    return CardLog(
        event=event, at=now_iso(), fixmedins_code=fixmedins_code, log_id=new_log_id(fixmedins_code),
        opter=opter, **fields,  # type: ignore[arg-type]
    )  # fmt: skip


async def identify_and_log(
    reader: CardReader, outbox: Outbox, wait: float, *, fixmedins_code: str, opter: str
) -> Identity:
    """Read the card (``reader.identify`` off the loop) and chain ``used`` or ``auth_failed``."""
    try:
        identity = await asyncio.to_thread(reader.identify, wait)
    except (CardCounterfeit, CardExpired) as exc:
        card_sn = getattr(exc, "card_sn", None)
        if card_sn:
            await outbox.append_card_log(
                _log("auth_failed", fixmedins_code, opter, card_sn=card_sn, code=exc.code)
            )
        raise
    if identity.card_sn:
        await outbox.append_card_log(_log("used", fixmedins_code, opter, card_sn=identity.card_sn))
    return identity


async def report_lost(
    outbox: Outbox, *, fixmedins_code: str, opter: str, card_sn: str, reason: str
) -> Receipt:
    """Chain a lost-card report; ``ValidationFailed`` (nothing chained) when a field is wrong."""
    record = _log("lost", fixmedins_code, opter, card_sn=card_sn.strip(), reason=reason.strip())
    problems = card_log_problems(record)
    if problems:
        raise ValidationFailed(
            "the lost-card report does not validate; correct the listed fields", details=problems
        )
    receipt = await outbox.append_card_log(record)
    log.info("lost-card report chained at seq %d by %s", receipt.seq, opter)  # never the card number
    return receipt


async def log_refused_card(outbox: Outbox, record: Settlement, refused: Blacklisted | CardReplaced) -> None:
    """Chain ``auth_failed`` when the settlement ``record`` was refused because of its card (on the card
    blacklist, or replaced); a refusal for the person, the employer or a doctor is not a card event. A
    log that cannot be chained (the outbox refused it, or the card number is not one a card log can
    carry) is a warning, never raised: the refusal must reach the cashier whatever happens here."""
    card_sn = record.psn.card_sn
    if not card_sn or (isinstance(refused, Blacklisted) and refused.extra.get("list_type") != "card"):
        return
    log_record = _log("auth_failed", record.fixmedins_code, record.opter, card_sn=card_sn, code=refused.code)
    try:
        await outbox.append_card_log(log_record)
    except (AgentError, ProtocolError) as exc:
        log.warning("a card refused with %s was not logged (%s): %s", refused.code, exc.code, exc.message)


def blacklist_applied_log(fixmedins_code: str, area: str, seq: int) -> CardLog:
    """The log that says this institution enforces every card entry up to blacklist bundle ``seq``."""
    return _log("blacklist_applied", fixmedins_code, "agent", area=area, bundle_seq=seq)
