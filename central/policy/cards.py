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
import json
import sqlite3
from typing import Any

from central.errors import NotFound
from central.storage.store import Store

__all__ = ["add_parsers", "add_routes", "replacement_gate", "run"]


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
    cards = verbs.add_parser("cards", help="the replacement gate of a lost card")
    sub = cards.add_subparsers(dest="cards_verb", required=True, metavar="ACTION")
    gate = sub.add_parser(
        "gate", help="may the replacement be issued? (every agent applied and logged the old card's entry)"
    )
    gate.add_argument("card_sn", metavar="CARD_SN")
    gate.add_argument("--area", help="only this pooling area")
    gate.add_argument("--json", action="store_true", help="one JSON object")


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
    """Register the gate's JSON route (from ``central.api.create_app``)."""
    from central.monitoring import routes as m

    app.router.add_get("/v1/monitor/cards/{card_sn}/gate", m._route(_gate_route), allow_head=False)
