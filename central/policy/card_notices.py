"""Card corrections and notices the card office sends down to the desks (the ``cards`` bundle, issue 18).

Card logs go *up* (``central.intake.cardlogs``); this is the way *down*. A card office corrects a card —
the card was replaced (``new_card_sn``), or data it carries is outdated (``fields``: a changed name, a
corrected birth date…) — or has something to tell its holder: a top-up put on the account, the balance,
a message, each shown between two dates. Agents show them when the card is read (``GET /v1/card``, the
desk) and refuse a settlement with a replaced card (``card_replaced``).

Like the blacklist, what agents enforce goes through maker-checker (``central.policy.changes``): ``yibao-
central cards correct|notify|withdraw`` validate the change and record it as a change request whose
document is the list of entries below (its digest covers exactly them); another ``policy`` operator
approves it and ``central.policy.bundles.Policy.cards_change`` applies it to ``card_corrections`` /
``card_notices`` and writes the bundle (a delta, or a full snapshot) in one transaction with the audit
row; ``central.policy.tuf_repo`` publishes it.

This module holds what both sides of that need: the change's entries as JSON (what the request holds),
the operator's amount in yuan to integer fen (exactly, never through a float), and the one-line
description the CLI prints.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from central.errors import DocumentInvalid
from protocol.bundles import CardCorrection, CardNotice, CardsEntry

__all__ = ["describe_entries", "entries_from_json", "entries_to_json", "yuan_to_fen"]

_YUAN = re.compile(r"\d{1,9}(\.\d{1,2})?")


def yuan_to_fen(text: str | None) -> int | None:
    """``"12.50"`` → 1250; None stays None. Refused: not plain digits, more than two decimals, negative,
    an exponent (``1e3`` is an amount nobody types on purpose)."""
    if text is None:
        return None
    if not _YUAN.fullmatch(text.strip()):
        raise DocumentInvalid(
            "the card notice", [f"--amount: {text!r} must be yuan like 50 or 50.00 (at most two decimals)"]
        )
    return int(Decimal(text.strip()) * 100)


def entries_to_json(entries: list[CardsEntry]) -> list[dict[str, Any]]:
    """The change request's document: every entry exactly as it will be published."""
    out: list[dict[str, Any]] = []
    for e in entries:
        row: dict[str, Any] = {"op": e.op, "item": e.item, "key": e.key}
        if e.correction is not None:
            c = e.correction
            row["correction"] = {"card_sn": c.card_sn, "new_card_sn": c.new_card_sn, "fields": list(c.fields),
                                 "reason": c.reason}  # fmt: skip
        if e.notice is not None:
            n = e.notice
            row["notice"] = {"id": n.id, "card_sn": n.card_sn, "type": n.type, "amount_fen": n.amount_fen,
                             "text": n.text, "valid_from": n.valid_from, "valid_to": n.valid_to}  # fmt: skip
        out.append(row)
    return out


def entries_from_json(document: list[dict[str, Any]]) -> list[CardsEntry]:
    """The entries a change request holds (written by ``entries_to_json``)."""
    entries = []
    for row in document:
        c, n = row.get("correction"), row.get("notice")
        correction = (
            CardCorrection(c["card_sn"], c["new_card_sn"], tuple(c["fields"]), c["reason"]) if c else None
        )
        notice = CardNotice(**n) if n else None
        entries.append(CardsEntry(row["op"], row["item"], row["key"], correction=correction, notice=notice))
    return entries


def describe_entries(entries: list[CardsEntry]) -> str:
    """What the change does, for ``changes list`` (card numbers, never a holder's name or number)."""
    parts = []
    for e in entries:
        if e.op == "-":
            parts.append(f"- {e.item} {e.key}")
        elif e.correction is not None:
            c = e.correction
            what = f"replaced by {c.new_card_sn}" if c.new_card_sn else "data corrected"
            fields = f" ({', '.join(c.fields)} outdated)" if c.fields else ""
            parts.append(f"+ correction {c.card_sn}: {what}{fields}")
        elif e.notice is not None:
            n = e.notice
            amount = (
                f" {n.amount_fen // 100}.{n.amount_fen % 100:02d} yuan" if n.amount_fen is not None else ""
            )
            parts.append(f"+ notice {n.id} for {n.card_sn}: {n.type}{amount}, {n.valid_from} to {n.valid_to}")
    return "; ".join(parts)
