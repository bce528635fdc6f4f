"""JSON API of the review workflow, ``/v1/monitor/…`` (``docs/MONITORING.md``); operators' bearer tokens.

Every route needs ``Authorization: Bearer <token>`` of an enabled operator (``yibao-central
operators add`` prints it) and answers within that operator's pooling areas. Errors are the
centre's JSON errors ``{"error": {"code", "message"}}``: 401 ``operator_token_invalid``, 403
``area_forbidden`` / ``role_forbidden``, 404 ``not_found`` (also for ids of another area), 409
``workflow_state`` / ``case_area_mismatch``, 400 ``input_invalid`` / ``decode_malformed``.
Listings take ``limit`` (default 100, at most ``MAX_LIMIT``) and ``offset``; a ``limit`` over the
maximum is refused (400 ``input_invalid``, naming the maximum), never cut to it silently, so a client
cannot take a shortened list for the whole one.

Routes:

- ``GET  /v1/monitor/operators/me``
- ``GET  /v1/monitor/suspicions?status=&rule=&severity=&min_score=&hospital=&area=&limit=&offset=``
  (``status`` default ``new``; ``all`` for every status)
- ``GET  /v1/monitor/suspicions/{id}``; ``POST …/{id}/review`` ``{"outcome": "confirm"|"dismiss", "reason"}``
- ``POST /v1/monitor/cases`` ``{"suspicions": [ids], "title", "assignee"?}`` → 201
- ``GET  /v1/monitor/cases?status=&assignee=&limit=&offset=``; ``GET /v1/monitor/cases/{id}``
- ``POST /v1/monitor/cases/{id}/assign`` ``{"assignee", "reason"?}``,
  ``…/notes`` ``{"text", "kind"?: "note"|"evidence", "detail"?: {}}`` → 201,
  ``…/suspicions`` ``{"suspicions": [ids]}``, ``…/close`` ``{"reason"}``,
  ``…/decisions`` ``{"kind", "target_type", "target_id", "reason", "amount"?: "1234.50", "until"?}`` → 201
- ``GET  /v1/monitor/decisions?case=&hospital=&kind=&status=``
- ``GET  /v1/monitor/rules/quality``
- ``GET  /v1/monitor/runs?limit=`` screening runs, newest first (``screen_runs``; ``limit`` default 20,
  at most ``MAX_RUNS``, no ``offset``)
- ``POST /v1/monitor/screen`` ``{"from", "to"}`` (supervisor) → 202: a full screen starts in the
  background (one at a time: 409 ``workflow_state`` while one runs); its row appears in ``runs``
- ``POST /v1/monitor/rules/backtest`` ``{"rules": {…}, "catalogue"?: {…}, "from", "to"}`` (supervisor):
  the candidate rules beside the rules in force over the range; nothing is stored or published
- ``GET  /v1/monitor/analysis?by=&measure=&from=&to=&area=`` rankings of the operator's area
  (``area`` default: the operator's main area)

A blacklist decision is signed with the operator keys in ``HOME/operators/`` when the server has
them (a demo or test home); a production server holds none, so the decision is ``pending_publish``
until ``yibao-central decisions publish`` signs it. Store work runs off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any

import msgspec
from aiohttp import web

from central.appkeys import CONFIG_KEY, REPO_KEY, STORE_KEY
from central.appkeys import error_response as _error
from central.errors import (
    CentralError,
    ConfigInvalid,
    InternalError,
    MalformedRequest,
    MonitorInputInvalid,
    WorkflowState,
)
from central.operators import Operator, home_signers, operator_by_token, require_area, require_supervisor
from central.policy.bundles import Policy
from protocol.errors import RulesInvalid

from .analysis import analyse
from .review import (
    add_note,
    add_suspicions,
    assign_case,
    close_case,
    get_case,
    list_cases,
    list_decisions,
    make_decision,
    open_case,
    review_suspicion,
    rule_quality,
    scoped_suspicions,
    visible_suspicion,
)
from .suspicions import STATUSES

__all__ = ["MAX_LIMIT", "MAX_RUNS", "PREFIX", "add_routes"]

log = logging.getLogger(__name__)

PREFIX = "/v1/monitor"
MAX_BODY = 64 * 1024
#: Most rows a listing (suspicions, cases, decisions) answers at once; page past it with ``offset``.
MAX_LIMIT = 1000
#: Most screening runs ``runs`` answers (the newest).
MAX_RUNS = 500
#: A backtest carries a whole rules document (and maybe a catalogue): the centre's document limit.
MAX_DOCUMENT_BODY = 16 * 1024 * 1024
#: The running full screen, if any (a mutable holder: the application is frozen once it serves).
_SCREEN_TASK = web.AppKey("monitor_screen_task", dict)
_json = msgspec.json.Encoder()

Handler = Callable[[web.Request, Operator], Awaitable[Any]]


def _reply(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=_json.encode(obj), content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )  # fmt: skip


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "-"


def _route(handler: Handler, status: int = 200) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Authenticate the operator, run the handler, answer JSON; errors in the centre's JSON shape."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        store = request.app[STORE_KEY]
        try:
            token = _bearer(request)
            op = await store.read_async(lambda c: operator_by_token(c, token))
            return _reply(await handler(request, op), status)
        except CentralError as exc:  # the route's template, not its path: a path may name a card
            log.info("monitor %s %s refused (%s)", request.method, _template(request), exc.code)
            return _error(exc, as_msgpack=False)
        except Exception:
            log.exception("monitor %s %s failed", request.method, _template(request))
            return _error(
                InternalError("the centre failed to handle the request; it was logged, retry later"),
                as_msgpack=False,
            )

    return wrapped


async def _body(request: web.Request, limit: int = MAX_BODY) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > limit:
        raise MalformedRequest(f"the body exceeds {limit} bytes")
    data = await request.read()
    try:
        obj = msgspec.json.decode(data) if data else {}
    except msgspec.DecodeError as exc:
        raise MalformedRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedRequest("the body must be a JSON object")
    return obj


def _field(
    body: dict[str, Any], name: str, kind: type | tuple[type, ...] = str, *, required: bool = True
) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise MonitorInputInvalid(f"{name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise MonitorInputInvalid(f"{name} has the wrong type")
    return value


def _int_query(request: web.Request, name: str, default: int | None = None) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise MonitorInputInvalid(f"{name}={text!r} is not an integer") from None


def _limit(request: web.Request, default: int, maximum: int = MAX_LIMIT, *, paged: bool = True) -> int:
    """The listing's ``limit``: over ``maximum`` is refused, so a cut list is never taken for the whole."""
    limit = _int_query(request, "limit", default) or default
    if limit > maximum:
        more = "; page through the rest with offset" if paged else ""
        raise MonitorInputInvalid(f"limit={limit} is more than the maximum, {maximum}{more}")
    return limit


def _id(request: web.Request) -> int:
    try:
        return int(request.match_info["id"])
    except ValueError:
        raise MonitorInputInvalid(f"{request.match_info['id']!r} is not an id") from None


def _store(request: web.Request) -> Any:

    return request.app[STORE_KEY]


# -- handlers ----------------------------------------------------------------------------------


async def me(request: web.Request, op: Operator) -> Any:
    return op.to_json()


async def suspicions(request: web.Request, op: Operator) -> Any:
    q = request.query
    status: str | None = q.get("status", "new")
    if status == "all":
        status = None
    elif status not in STATUSES:
        raise MonitorInputInvalid(f"status={status!r} is not one of {', '.join(STATUSES)} or all")
    filters = {
        "area": q.get("area"), "status": status, "rule_id": q.get("rule"), "severity": q.get("severity"),
        "min_score": _int_query(request, "min_score"), "hospital": q.get("hospital"),
        "limit": _limit(request, 100),
        "offset": _int_query(request, "offset", 0) or 0,
    }  # fmt: skip
    return await _store(request).read_async(lambda c: scoped_suspicions(c, op, **filters))


async def suspicion(request: web.Request, op: Operator) -> Any:
    sid = _id(request)

    def read(c: Any) -> dict[str, Any]:
        s = visible_suspicion(c, op, sid)
        rows = c.execute(
            "SELECT outcome, operator, at, reason FROM reviews WHERE suspicion_id = ? ORDER BY id", (sid,)
        ).fetchall()
        s["reviews"] = [dict(zip(("outcome", "operator", "at", "reason"), r, strict=True)) for r in rows]
        return s

    return await _store(request).read_async(read)


async def review(request: web.Request, op: Operator) -> Any:
    sid, body = _id(request), await _body(request)
    outcome, reason = _field(body, "outcome"), _field(body, "reason")
    store = _store(request)
    return await store.run_async(review_suspicion, store, op, sid, outcome, reason)


def _ids(body: dict[str, Any]) -> list[int]:
    ids = _field(body, "suspicions", list)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise MonitorInputInvalid("suspicions must be a list of integer ids")
    return ids


async def case_open(request: web.Request, op: Operator) -> Any:
    body = await _body(request)
    ids, title, assignee = _ids(body), _field(body, "title"), _field(body, "assignee", required=False)
    store = _store(request)
    return await store.run_async(lambda: open_case(store, op, ids, title, assignee=assignee))


async def cases(request: web.Request, op: Operator) -> Any:
    q = request.query
    limit = _limit(request, 100)
    offset = _int_query(request, "offset", 0) or 0
    return await _store(request).read_async(
        lambda c: list_cases(
            c, op.scope, status=q.get("status"), assignee=q.get("assignee"), limit=limit, offset=offset
        )
    )


async def case(request: web.Request, op: Operator) -> Any:
    case_id = _id(request)
    return await _store(request).read_async(lambda c: get_case(c, op, case_id))


async def case_assign(request: web.Request, op: Operator) -> Any:
    case_id, body = _id(request), await _body(request)
    assignee, reason = _field(body, "assignee"), _field(body, "reason", required=False) or ""
    store = _store(request)
    return await store.run_async(assign_case, store, op, case_id, assignee, reason)


async def case_note(request: web.Request, op: Operator) -> Any:
    case_id, body = _id(request), await _body(request)
    text, kind = _field(body, "text"), _field(body, "kind", required=False) or "note"
    detail = _field(body, "detail", dict, required=False)
    store = _store(request)
    return await store.run_async(lambda: add_note(store, op, case_id, text, kind=kind, detail=detail))


async def case_add(request: web.Request, op: Operator) -> Any:
    case_id, body = _id(request), await _body(request)
    ids = _ids(body)
    store = _store(request)
    return await store.run_async(add_suspicions, store, op, case_id, ids)


async def case_close(request: web.Request, op: Operator) -> Any:
    case_id, body = _id(request), await _body(request)
    reason = _field(body, "reason")
    store = _store(request)
    return await store.run_async(close_case, store, op, case_id, reason)


async def case_decide(request: web.Request, op: Operator) -> Any:

    case_id, body = _id(request), await _body(request)
    fields = {
        "kind": _field(body, "kind"), "target_type": _field(body, "target_type"),
        "target_id": _field(body, "target_id"), "reason": _field(body, "reason"),
        "amount": _field(body, "amount", (str, int), required=False),
        "until": _field(body, "until", required=False),
    }  # fmt: skip
    store, config = _store(request), request.app[CONFIG_KEY]

    def decide() -> dict[str, Any]:
        signers = home_signers(config) if fields["kind"] == "blacklist" else []
        policy = Policy(store, request.app[REPO_KEY], config)
        return make_decision(store, op, case_id, policy=policy, signers=signers, **fields)

    return await store.run_async(decide)


async def decisions(request: web.Request, op: Operator) -> Any:
    q = request.query
    limit = _limit(request, 100)
    case_id, offset = _int_query(request, "case"), _int_query(request, "offset", 0) or 0
    return await _store(request).read_async(
        lambda c: list_decisions(
            c, op.scope, case_id=case_id, hospital=q.get("hospital"), kind=q.get("kind"),
            status=q.get("status"), limit=limit, offset=offset,
        )
    )  # fmt: skip


async def quality(request: web.Request, op: Operator) -> Any:
    return await _store(request).read_async(lambda c: rule_quality(c, op.scope))


def _date_field(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise MonitorInputInvalid(f"{name} is required: a date like 2026-11-01")
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise MonitorInputInvalid(f"{name}={value!r} is not a date like 2026-11-01") from None


def _range(source: Any) -> tuple[str, str]:
    lo, hi = _date_field(source.get("from"), "from"), _date_field(source.get("to"), "to")
    if lo > hi:
        raise MonitorInputInvalid(f"from {lo} is after to {hi}")
    return lo, hi


async def runs(request: web.Request, op: Operator) -> Any:
    limit = _limit(request, 20, MAX_RUNS, paged=False)
    cols = ("id", "kind", "started_at", "finished_at", "date_from", "date_to", "settlements", "lines", "hits",
            "new_suspicions")  # fmt: skip

    def read(c: Any) -> list[dict[str, Any]]:
        rows = c.execute(f"SELECT {', '.join(cols)} FROM screen_runs ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(zip(cols, r, strict=True)) for r in rows]

    return await _store(request).read_async(read)


async def screen_start(request: web.Request, op: Operator) -> Any:
    """A full screen runs for minutes: started here, watched through ``runs``; one at a time."""
    from .screening import screen

    require_supervisor(op, "start a full screen")
    lo, hi = _range(await _body(request))
    holder = request.app[_SCREEN_TASK]
    running = holder.get("task")
    if running is not None and not running.done():
        raise WorkflowState("a full screen is already running; watch GET /v1/monitor/runs and retry after it")
    store, repo = _store(request), request.app[REPO_KEY]
    loop = asyncio.get_running_loop()

    async def job() -> None:
        try:
            summary = await loop.run_in_executor(None, lambda: screen(store, lo, hi, repo=repo))
            log.info("full screen %s..%s by %s: %d hits, %d new suspicions", lo, hi, op.name,
                     summary["hits"], summary["new_suspicions"])  # fmt: skip
        except Exception:
            log.exception("the full screen %s..%s failed", lo, hi)

    holder["task"] = asyncio.create_task(job(), name="monitor-screen")
    return {"status": "started", "from": lo, "to": hi}


async def backtest_run(request: web.Request, op: Operator) -> Any:
    from .screening import backtest

    require_supervisor(op, "backtest rules")
    body = await _body(request, MAX_DOCUMENT_BODY)
    lo, hi = _range(body)
    if not isinstance(body.get("rules"), dict):
        raise MonitorInputInvalid("rules is required: the rules document to try (docs/RULES.md)")
    store, repo = _store(request), request.app[REPO_KEY]
    try:
        return await store.run_async(
            lambda: backtest(store, body["rules"], body.get("catalogue"), lo, hi, repo=repo, workers=1)
        )
    except RulesInvalid as exc:
        problems = "; ".join(exc.problems[:20]) if getattr(exc, "problems", None) else exc.message
        raise MonitorInputInvalid(f"the rules or catalogue document is not valid: {problems}") from None


async def analysis(request: web.Request, op: Operator) -> Any:
    q = request.query
    area = q.get("area") or op.main_area
    require_area(op, area)
    lo, hi = _range(q)
    try:
        return await _store(request).run_async(
            lambda: analyse(
                _store(request), by=q.get("by", "hospital"), measure=q.get("measure", "cost_per_visit"),
                date_from=lo, date_to=hi, area=area,
            )
        )  # fmt: skip
    except ConfigInvalid as exc:
        raise MonitorInputInvalid(exc.message) from None


def add_routes(app: web.Application) -> None:
    app[_SCREEN_TASK] = {}
    """Register the monitoring routes on ``app``."""
    r = app.router
    r.add_get(f"{PREFIX}/operators/me", _route(me), allow_head=False)
    r.add_get(f"{PREFIX}/suspicions", _route(suspicions), allow_head=False)
    r.add_get(PREFIX + "/suspicions/{id}", _route(suspicion), allow_head=False)
    r.add_post(PREFIX + "/suspicions/{id}/review", _route(review))
    r.add_post(f"{PREFIX}/cases", _route(case_open, 201))
    r.add_get(f"{PREFIX}/cases", _route(cases), allow_head=False)
    r.add_get(PREFIX + "/cases/{id}", _route(case), allow_head=False)
    r.add_post(PREFIX + "/cases/{id}/assign", _route(case_assign))
    r.add_post(PREFIX + "/cases/{id}/notes", _route(case_note, 201))
    r.add_post(PREFIX + "/cases/{id}/suspicions", _route(case_add))
    r.add_post(PREFIX + "/cases/{id}/decisions", _route(case_decide, 201))
    r.add_post(PREFIX + "/cases/{id}/close", _route(case_close))
    r.add_get(f"{PREFIX}/decisions", _route(decisions), allow_head=False)
    r.add_get(f"{PREFIX}/rules/quality", _route(quality), allow_head=False)
    r.add_get(f"{PREFIX}/runs", _route(runs), allow_head=False)
    r.add_post(f"{PREFIX}/screen", _route(screen_start, 202))
    r.add_post(f"{PREFIX}/rules/backtest", _route(backtest_run))
    r.add_get(f"{PREFIX}/analysis", _route(analysis), allow_head=False)
