"""The replacement-card gate: a lost card's successor only once every institution enforces the loss.

A reported lost (or stolen) social-security card is put on the card blacklist; the blacklist travels to
every agent of the pooling area in signed bundles. Issuing the replacement before every institution
refuses the old card leaves a window in which both cards settle — the classic double-use of a "lost"
card. So the card office asks the centre first: has every agent of the area applied the bundle that
blacklisted the old card?

The centre knows from each agent's signed policy report (``central.intake.reports``) which blacklist bundle
it holds; an agent applied the entry when its reported blacklist version is at least the bundle seq
that added it. A revoked agent does not count; an agent that never reported has not applied it.

Applying is not enough: the domain's rule is that every institution has applied the entry *and logged
it*. Each agent chains a ``blacklist_applied`` card log whenever it applies a blacklist bundle (and once at
start), signed in the same chain as its settlements (``agent.cardlog``, ``central.intake.cardlogs``); an
agent logged the entry when such a log of its area carries a bundle seq at least the entry's. The gate
opens only when every agent of every area holding the entry did both; ``waiting`` names the others and
what each still lacks (``applied``, ``logged``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import sys
from typing import Any

from central.errors import NotFound
from central.intake.cardlogs import card_history
from central.operators import Operator
from central.policy.bundles import audit_in
from central.storage.store import Store
from protocol.bundles import CORRECTION_FIELDS, NOTICE_TYPES, CardCorrection, CardNotice, CardsEntry

from .card_notices import yuan_to_fen

__all__ = [
    "add_parsers",
    "add_routes",
    "card_areas",
    "entries_of",
    "looked_up_history",
    "print_history",
    "print_list",
    "print_used_after_loss",
    "replacement_gate",
    "run",
]


def replacement_gate(conn: sqlite3.Connection, card_sn: str, area: str | None = None) -> dict[str, Any]:
    """Per area holding the card's entry: which agents applied it, which not yet, and the verdict."""
    sql = "SELECT area, added_seq, added_at, effective_at FROM blacklist WHERE list_type = 'card' AND id = ?"
    params: tuple[str, ...] = (card_sn,)
    if area:
        sql += " AND area = ?"
        params += (area,)
    entries = conn.execute(sql + " ORDER BY area", params).fetchall()
    if not entries:
        where = f" in area {area}" if area else ""
        raise NotFound(
            f"card {card_sn} is on no card blacklist{where}: report it lost first "
            "(`yibao-central blacklist add --type card --id CARD_SN`); the replacement waits until every "
            "agent of the area applied that entry"
        )
    reports = {
        agent_id: json.loads(versions).get("blacklist", 0)
        for agent_id, versions in conn.execute("SELECT agent_id, versions FROM agent_reports")
    }
    logged_seq = {
        (agent_id, log_area): seq
        for agent_id, log_area, seq in conn.execute(
            "SELECT agent_id, area, max(bundle_seq) FROM card_logs WHERE event = 'blacklist_applied' "
            "GROUP BY agent_id, area"
        )
    }
    areas = []
    for entry_area, added_seq, added_at, effective_at in entries:
        agents = conn.execute(
            "SELECT agent_id, fixmedins_code FROM agents WHERE pooling_area = ? AND revoked_at IS NULL "
            "ORDER BY agent_id",
            (entry_area,),
        ).fetchall()
        applied, logged, done, waiting = [], [], [], []
        for agent_id, hospital in agents:
            held = reports.get(agent_id)
            log_seq = logged_seq.get((agent_id, entry_area))
            has_applied = held is not None and held >= added_seq
            has_logged = log_seq is not None and log_seq >= added_seq
            row = {"agent_id": agent_id, "fixmedins_code": hospital, "blacklist_version": held,
                   "logged_seq": log_seq, "applied": has_applied, "logged": has_logged}  # fmt: skip
            if has_applied:
                applied.append(row)
            if has_logged:
                logged.append(row)
            (done if has_applied and has_logged else waiting).append(row)
        areas.append({
            "area": entry_area, "bundle_seq": added_seq, "added_at": added_at, "effective_at": effective_at,
            "agents": len(agents), "applied": applied, "logged": logged, "done": done, "waiting": waiting,
        })  # fmt: skip
    allowed = all(not a["waiting"] for a in areas)
    logged_by = sum(len(a["logged"]) for a in areas)
    return {"card_sn": card_sn, "replacement_allowed": allowed, "areas": areas, "logged_by_agents": logged_by}


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    cards = verbs.add_parser(
        "cards", help="the replacement gate of a lost card; card corrections and notices sent to the desks"
    )
    sub = cards.add_subparsers(dest="cards_verb", required=True, metavar="ACTION")
    gate = sub.add_parser(
        "gate", help="may the replacement be issued? (every agent applied and logged the old card's entry)"
    )
    gate.add_argument("card_sn", metavar="CARD_SN")
    gate.add_argument("--area", help="only this pooling area")
    gate.add_argument("--json", action="store_true", help="one JSON object")
    history = sub.add_parser(
        "history", help="every logged event of a card at every institution; which came after it was lost"
    )
    history.add_argument("card_sn", metavar="CARD_SN")
    history.add_argument("--json", action="store_true", help="one JSON object")
    misuse = sub.add_parser(
        "used-after-loss", help="lost cards read at a desk after their loss (possible double use)"
    )
    misuse.add_argument("--limit", type=int, default=100)
    misuse.add_argument("--json", action="store_true", help="one JSON object per card")

    # Corrections and notices sent down in the ``cards`` bundle (``central.policy.card_notices``):
    # proposed here, published when another policy operator approves (``changes approve``).
    signing = argparse.ArgumentParser(add_help=False)
    signing.add_argument("--key", action="append", metavar="FILE", help="operator private key (repeatable; "
                         "default: every *.pem in HOME/operators/)")  # fmt: skip
    signing.add_argument("--area", help="pooling area (6 digits; default: the centre's default area)")
    signing.add_argument("--why", default="", help="why, for the audit log")
    correct = sub.add_parser(
        "correct",
        parents=[signing],
        help="propose a correction of a card: replaced by another, or data outdated",
    )
    correct.add_argument("--card-sn", required=True, help="the card corrected (the old card if replaced)")
    correct.add_argument("--new-card-sn", default="", help="the card that replaced it")
    correct.add_argument(
        "--field", action="append", default=[], metavar="FIELD", choices=list(CORRECTION_FIELDS),
        help=f"a field the card carries that is outdated (repeatable; {', '.join(CORRECTION_FIELDS)})",
    )  # fmt: skip
    correct.add_argument("--reason", required=True, help="why (shown at the desk)")
    notify = sub.add_parser("notify", parents=[signing], help="propose a notice for a card's holder")
    notify.add_argument(
        "--id", dest="notice_id", required=True, help="the notice's id (1-64 letters, digits, ._-)"
    )
    notify.add_argument("--card-sn", required=True)
    notify.add_argument("--type", dest="notice_type", required=True, choices=list(NOTICE_TYPES))
    notify.add_argument("--amount", help="yuan, at most two decimals (topup and balance; none for a message)")
    notify.add_argument("--text", required=True, help="what the desk shows (up to 200 characters)")
    notify.add_argument("--valid-from", required=True, help="first day shown, YYYY-MM-DD")
    notify.add_argument("--valid-to", required=True, help="last day shown, YYYY-MM-DD")
    withdraw = sub.add_parser(
        "withdraw", parents=[signing], help="propose withdrawing a correction or notice"
    )
    which = withdraw.add_mutually_exclusive_group(required=True)
    which.add_argument("--correction", metavar="CARD_SN", help="the card whose correction is withdrawn")
    which.add_argument("--notice", metavar="ID", help="the notice withdrawn")
    listing = sub.add_parser("list", help="the corrections and notices held (what agents receive)")
    listing.add_argument("--area")
    listing.add_argument("--json", action="store_true", help="one JSON object")


def entries_of(args: argparse.Namespace) -> tuple[str, list[CardsEntry]]:
    """The action and entries a ``cards correct|notify|withdraw`` command line proposes."""
    if args.cards_verb == "correct":
        c = CardCorrection(args.card_sn, args.new_card_sn, tuple(args.field), args.reason.strip())
        return "cards.correct", [CardsEntry("+", "correction", c.card_sn, correction=c)]
    if args.cards_verb == "notify":
        amount = yuan_to_fen(args.amount)
        n = CardNotice(args.notice_id, args.card_sn, args.notice_type, amount, args.text.strip(),
                       args.valid_from, args.valid_to)  # fmt: skip
        return "cards.notify", [CardsEntry("+", "notice", n.id, notice=n)]
    if args.correction:
        return "cards.withdraw", [CardsEntry("-", "correction", args.correction)]
    return "cards.withdraw", [CardsEntry("-", "notice", args.notice)]


def print_list(held: dict[str, list[dict[str, Any]]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(held, ensure_ascii=False))
        return
    for c in held["corrections"]:
        what = f"replaced by {c['new_card_sn']}" if c["new_card_sn"] else "data corrected"
        fields = f"; outdated: {', '.join(c['fields'])}" if c["fields"] else ""
        print(
            f"{c['area']} correction {c['card_sn']}: {what}{fields} ({c['reason']}; bundle {c['added_seq']})"
        )
    for n in held["notices"]:
        amount = (
            "" if n["amount_fen"] is None else f" {n['amount_fen'] // 100}.{n['amount_fen'] % 100:02d} yuan"
        )
        print(f"{n['area']} notice {n['id']} for {n['card_sn']}: {n['type']}{amount} \"{n['text']}\" "
              f"{n['valid_from']}..{n['valid_to']} (bundle {n['added_seq']})")  # fmt: skip
    print(f"{len(held['corrections'])} corrections, {len(held['notices'])} notices", file=sys.stderr)


def run(args: argparse.Namespace, store: Store) -> int:
    gate = store.read(lambda c: replacement_gate(c, args.card_sn, args.area))
    if args.json:
        print(json.dumps(gate, ensure_ascii=False))
    else:
        verdict = "ALLOWED" if gate["replacement_allowed"] else "NOT YET"
        print(f"replacement card for {args.card_sn}: {verdict}")
        for a in gate["areas"]:
            print(f"  area {a['area']}: entry in blacklist bundle {a['bundle_seq']} ({a['added_at']}); "
                  f"{len(a['applied'])} of {a['agents']} agents applied it, "
                  f"{len(a['logged'])} logged it")  # fmt: skip
            for w in a["waiting"]:
                held, seq = w["blacklist_version"], w["logged_seq"]
                lacks = []
                if not w["applied"]:
                    lacks.append("never reported" if held is None else f"holds blacklist bundle {held}")
                if not w["logged"]:
                    lacks.append("no blacklist_applied log" if seq is None else f"logged bundle {seq}")
                print(f"    waiting for {w['agent_id']} ({w['fixmedins_code']}): {'; '.join(lacks)}")
    return 0 if gate["replacement_allowed"] else 2


def card_areas(op: Operator) -> frozenset[str] | None:
    """The pooling areas whose card logs ``op`` reads: their scope; an admin of no area, every area."""
    return op.scope if op.scope or not op.has("admin") else None


def looked_up_history(conn: sqlite3.Connection, op: Operator, card_sn: str) -> dict[str, Any]:
    """The card's history within the operator's areas (an admin of no area: every area), audited in the
    same transaction as ``card.history`` with a digest of the card number (the audit log is read by
    more people than the card logs are)."""
    history = card_history(conn, card_sn, card_areas(op))
    digest = hashlib.sha256(card_sn.encode()).hexdigest()[:16]
    audit_in(conn, op.actor(), "card.history", {"card_sha256": digest, "events": len(history["events"])})
    return history


def print_history(h: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(h, ensure_ascii=False))
        return
    since = h["lost_since"]
    print(f"card {h['card_sn']}: " + (f"lost or blacklisted since {since}" if since else "not reported lost"))
    for b in h["blacklist"]:
        print(f"  on the card blacklist of area {b['area']} since {b['added_at']} (bundle {b['added_seq']}; "
              f"{b['reason']})")  # fmt: skip
    for e in h["events"]:
        what = e["event"] + (f" {e['code']}" if e["code"] else "")
        what += f" ({e['reason']})" if e["reason"] else ""
        mark = "  AFTER LOST" if e["after_lost"] and e["event"] == "used" else ""
        print(f"  {e['at']}  {e['fixmedins_code']}  {what}  by {e['opter']} (agent {e['agent_id']} seq "
              f"{e['seq']}){mark}")  # fmt: skip
    print(f"{len(h['events'])} events at {len(h['hospitals'])} institutions; after the loss: "
          f"{h['used_after_lost']} used, {h['refused_after_lost']} refused")  # fmt: skip


def print_used_after_loss(found: list[dict[str, Any]], as_json: bool) -> None:
    for f in found:
        if as_json:
            print(json.dumps(f, ensure_ascii=False))
            continue
        print(f"{f['card_sn']}: lost since {f['lost_since']}; used {f['used_after_lost']} times after, "
              f"last {f['last_used']} at {', '.join(f['hospitals'])}; "
              f"refused {f['refused_after_lost']} times")  # fmt: skip
    print(f"{len(found)} lost cards used after their loss (`cards history CARD_SN` for each)",
          file=sys.stderr)  # fmt: skip


async def _history_route(request: Any, op: Any) -> dict[str, Any]:
    """``GET /v1/monitor/cards/{card_sn}/history``: ``looked_up_history`` for the signed-in operator (any
    role: ``_route`` has already refused a request without one)."""
    from central.monitoring import routes as m

    card_sn = request.match_info["card_sn"]
    return await m._store(request).write_async(lambda c: looked_up_history(c, op, card_sn))


async def _gate_route(request: Any, op: Any) -> dict[str, Any]:
    """``GET /v1/monitor/cards/{card_sn}/gate?area=``: the gate within the operator's areas (an area
    outside them is refused; a card blacklisted only outside them is ``not_found``)."""
    from central.monitoring import routes as m
    from central.operators import require_area

    area = request.query.get("area") or None
    if area:
        require_area(op, area)
    card_sn = request.match_info["card_sn"]

    def read(conn: sqlite3.Connection) -> dict[str, Any]:
        gate = replacement_gate(conn, card_sn, area)
        gate["areas"] = [a for a in gate["areas"] if a["area"] in op.scope]
        if not gate["areas"]:
            raise NotFound(f"card {card_sn} is on no card blacklist of your areas")
        gate["replacement_allowed"] = all(not a["waiting"] for a in gate["areas"])
        gate["logged_by_agents"] = sum(len(a["logged"]) for a in gate["areas"])
        return gate

    return await m._store(request).read_async(read)


def add_routes(app: Any) -> None:
    """Register the gate's and the history's JSON routes (from ``central.api.create_app``)."""
    from central.monitoring import routes as m

    app.router.add_get("/v1/monitor/cards/{card_sn}/gate", m._route(_gate_route), allow_head=False)
    app.router.add_get("/v1/monitor/cards/{card_sn}/history", m._route(_history_route), allow_head=False)
