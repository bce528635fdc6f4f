"""Read-only JSON routes for risk per object and suspicions by category (``central.monitoring.risk``).

``GET /v1/monitor/risk?by=hospital&from=&to=&area=&limit=&min_visits=`` and
``GET /v1/monitor/categories?from=&to=&area=``: operator bearer token, narrowed to the operator's scope
like every monitoring listing (``area`` narrows further to one of the operator's areas; another area is
refused). Kept apart from ``central.monitoring.routes`` and wired with one line in
``central.api.create_app``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from central.operators import Operator, require_area

from . import routes as m
from .risk import BY, by_category, object_risk

__all__ = ["add_routes"]

MAX_RISK = 1000


def _scope(request: web.Request, op: Operator) -> list[str]:
    """The areas to read: ``area`` if given (one of the operator's, else refused), else the whole scope."""
    area = request.query.get("area")
    if area:
        require_area(op, area)
        return [area]
    return sorted(op.scope)


async def risk(request: web.Request, op: Operator) -> Any:
    """The objects of ``by`` ranked by risk, each with the parts of its score."""
    by = request.query.get("by", "hospital")
    if by not in BY:
        raise m.MonitorInputInvalid(f"by={by!r} is not one of {', '.join(BY)}")
    lo, hi = m._range(request.query)
    limit = m._limit(request, 50, MAX_RISK, paged=False)
    min_visits = m._int_query(request, "min_visits")
    if min_visits is not None and min_visits < 0:
        raise m.MonitorInputInvalid(f"min_visits={min_visits} must be 0 or more")
    scope = _scope(request, op)

    def read(c: Any) -> list[dict[str, Any]]:
        found = object_risk(
            c, by=by, date_from=lo, date_to=hi, areas=scope, min_visits=min_visits, limit=limit
        )
        return [r.to_json() for r in found]

    return {"by": by, "date_from": lo, "date_to": hi, "results": await m._store(request).read_async(read)}


async def categories(request: web.Request, op: Operator) -> Any:
    """Suspicions per rule category over the range (held, retracted, reviewed, precision, money)."""
    lo, hi = m._range(request.query)
    scope = _scope(request, op)
    rows = await m._store(request).read_async(lambda c: by_category(c, date_from=lo, date_to=hi, areas=scope))
    return {"date_from": lo, "date_to": hi, "categories": rows}


def add_routes(app: web.Application) -> None:
    """Register the routes (call from ``central.api.create_app`` beside ``monitor_api.add_routes``)."""
    app.router.add_get("/v1/monitor/risk", m._route(risk))
    app.router.add_get("/v1/monitor/categories", m._route(categories))
