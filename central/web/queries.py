"""The few scoped reads the console needs that the monitoring library has no function for.

Everything else a page shows comes from the same library calls the JSON API makes
(``central.monitoring.review``,
``central.monitoring.suspicions``, ``central.monitoring.analysis``, ``central.intake.reports``,
``central.monitoring.screening``,
``central.policy.bundles``), with the same ``Operator`` scope. What is here reads tables the library owns but
does not list *per operator*: the audit log, the blacklist entries and each hospital's open
suspicions. Each narrows to the operator's areas in SQL (``central.storage.store.Where``), as the library's
listings do, so a page never holds another area's rows even briefly.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection
from typing import Any

from central.intake.reports import agent_views
from central.operators import Operator
from central.policy.bundles import area_of_hospital
from central.storage.store import Where

__all__ = [
    "OPEN_STATUSES", "audit_rows", "blacklist_entries", "card_notes", "fleet", "hospital_risk",
    "pending_changes", "publishes",
]

#: Suspicions still asking for work: the hospital map colours by these.
OPEN_STATUSES = ("new", "confirmed", "in_case")
_AUDIT = ("id", "at", "operator", "action", "reason", "detail", "area", "kind", "seq", "target")
_BLACKLIST = ("area", "list_type", "id", "reason", "source", "effective_at", "added_seq", "added_at")


def fleet(conn: sqlite3.Connection, op: Operator) -> list[dict[str, Any]]:
    """``GET /v1/agents`` as the operator sees it: ``agent_views`` narrowed to their areas."""
    return [v for v in agent_views(conn) if v.get("pooling_area") in op.scope]


def audit_rows(
    conn: sqlite3.Connection, op: Operator, *, action: str | None = None, limit: int = 50, offset: int = 0
) -> list[dict[str, Any]]:
    """Audit rows of the operator's areas, newest first (centre-wide rows, without an area, are the
    administrators' and stay on the CLI: ``yibao-central audit``)."""
    where = Where()
    if not where.any_of("area", op.scope):
        return []
    if action:
        escaped = action.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.add("action LIKE ? ESCAPE '\\'", escaped + "%")
    sql = f"SELECT {', '.join(_AUDIT)} FROM audit_log{where.sql} ORDER BY id DESC LIMIT ? OFFSET ?"
    rows = []
    for r in conn.execute(sql, [*where.params, max(0, limit), max(0, offset)]):
        row = dict(zip(_AUDIT, r, strict=True))
        row["detail"] = json.loads(row["detail"])
        rows.append(row)
    return rows


_BUNDLE = ("area", "kind", "seq", "base_seq", "entries", "created", "operator")
_CHANGE = ("id", "action", "kind", "area", "what", "entries", "maker", "reason", "created_at", "status")


def publishes(
    conn: sqlite3.Connection, scope: Collection[str], *, kind: str = "blacklist", limit: int = 50
) -> list[dict[str, Any]]:
    """The newest signed bundles of ``kind`` published for ``scope`` (the ``bundles`` log)."""
    where = Where()
    if not where.any_of("area", scope):
        return []
    where.equal(("kind", kind))
    sql = f"SELECT {', '.join(_BUNDLE)} FROM bundles{where.sql} ORDER BY created DESC, seq DESC LIMIT ?"
    return [dict(zip(_BUNDLE, r, strict=True)) for r in conn.execute(sql, [*where.params, limit])]


def pending_changes(
    conn: sqlite3.Connection, scope: Collection[str], *, limit: int = 100
) -> list[dict[str, Any]]:
    """Change requests of ``scope`` still waiting for their checkers (``change_requests``, migration 11),
    each with the operators who approved it so far."""
    where = Where()
    if not where.any_of("area", scope):
        return []
    where.add("status = ?", "pending")
    sql = f"SELECT {', '.join(_CHANGE)} FROM change_requests{where.sql} ORDER BY id DESC LIMIT ?"
    rows = [dict(zip(_CHANGE, r, strict=True)) for r in conn.execute(sql, [*where.params, limit])]
    for row in rows:
        row["approvals"] = [
            {"operator": who, "at": at}
            for who, at in conn.execute(
                "SELECT operator, at FROM change_approvals WHERE change_id = ? ORDER BY at", (row["id"],)
            )
        ]
    return rows


def blacklist_entries(
    conn: sqlite3.Connection,
    scope: Collection[str],
    *,
    list_type: str | None = None,
    entry_id: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """The centre's blacklist entries of ``scope``, a page at a time (a list may hold millions)."""
    where = Where()
    if not where.any_of("area", scope):
        return []
    where.equal(("list_type", list_type), ("id", entry_id))
    sql = (
        f"SELECT {', '.join(_BLACKLIST)} FROM blacklist{where.sql} ORDER BY area, list_type, id "
        "LIMIT ? OFFSET ?"
    )
    return [dict(zip(_BLACKLIST, r, strict=True)) for r in conn.execute(sql, [*where.params, limit, offset])]


def card_notes(
    conn: sqlite3.Connection, scope: Collection[str], *, card_sn: str | None = None, limit: int = 100
) -> dict[str, list[dict[str, Any]]]:
    """The card corrections and notices of ``scope`` (what the ``cards`` bundle sends), newest first."""
    out: dict[str, list[dict[str, Any]]] = {"corrections": [], "notices": []}
    for table, key, columns in (
        ("card_corrections", "corrections", ("area", "card_sn", "new_card_sn", "fields", "reason",
                                              "added_seq", "added_at")),
        ("card_notices", "notices", ("area", "id", "card_sn", "type", "amount_fen", "text", "valid_from",
                                     "valid_to", "added_seq", "added_at")),
    ):  # fmt: skip
        where = Where()
        if not where.any_of("area", scope):
            return out
        where.equal(("card_sn", card_sn))
        sql = f"SELECT {', '.join(columns)} FROM {table}{where.sql} ORDER BY added_seq DESC, card_sn LIMIT ?"
        rows = [dict(zip(columns, r, strict=True)) for r in conn.execute(sql, [*where.params, limit])]
        for row in rows:
            if "fields" in row:
                row["fields"] = json.loads(row["fields"])
        out[key] = rows
    return out


def hospital_risk(conn: sqlite3.Connection, scope: Collection[str]) -> list[dict[str, Any]]:
    """Each hospital of ``scope`` (its agents', suspicions' or code's area) with its coordinates, its
    open suspicions (``OPEN_STATUSES``) by light and the worst light (None: nothing open)."""
    areas = sorted(scope)
    if not areas:
        return []
    marks = ",".join("?" * len(areas))
    opened = ",".join("?" * len(OPEN_STATUSES))
    counts: dict[str, dict[str, int]] = {}
    for code, light, n in conn.execute(
        f"SELECT fixmedins_code, severity, count(*) FROM suspicions WHERE area IN ({marks}) "
        f"AND status IN ({opened}) AND fixmedins_code IS NOT NULL GROUP BY 1, 2",
        [*areas, *OPEN_STATUSES],
    ):
        counts.setdefault(code, {})[light] = n
    codes = set(counts)
    codes |= {r[0] for r in conn.execute(
        f"SELECT fixmedins_code FROM agents WHERE pooling_area IN ({marks})", areas)}  # fmt: skip
    held = {r[0]: r for r in conn.execute("SELECT fixmedins_code, name, hosp_lv, lat, lon FROM hospitals")}
    codes |= {c for c in held if area_of_hospital(c) in scope}
    out = []
    for code in sorted(codes):
        by_light = counts.get(code, {})
        light = next((s for s in ("red", "yellow", "green") if by_light.get(s)), None)
        _, name, level, lat, lon = held.get(code, (code, None, None, None, None))
        out.append({
            "fixmedins_code": code, "name": name, "hosp_lv": level, "lat": lat, "lon": lon,
            "open": sum(by_light.values()), "red": by_light.get("red", 0),
            "yellow": by_light.get("yellow", 0), "green": by_light.get("green", 0), "light": light,
        })  # fmt: skip
    return out
