"""The console's pages under ``/console/`` (``docs/CONSOLE.md``): server-rendered, scoped like the JSON API.

Every page and action looks the operator up again from the session's token (``central.operators``) and
calls the same library functions as ``central.monitoring.routes`` with that ``Operator``, so the scope, the
role checks and the refusals are the library's own: a ``CentralError`` becomes a page with its message
and its HTTP status (403 ``area_forbidden``/``role_forbidden``, 404 ``not_found``, 409 ...). A POST is
refused without the session's CSRF token; after one that succeeds the browser is sent back to a page
(post/redirect/get), with what happened shown once. This module does not import ``central.api`` (that
module imports this one): ``add_routes`` receives the store, the TUF repository and the configuration.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from central.config import CentralConfig
from central.errors import CentralError, ConfigInvalid, MonitorInputInvalid, NotFound, OperatorTokenInvalid
from central.intake.cardlogs import used_after_loss
from central.monitoring.analysis import BY, MEASURES, analyse
from central.monitoring.review import (
    add_note,
    assign_case,
    close_case,
    get_case,
    list_cases,
    make_decision,
    open_case,
    review_suspicion,
    rule_quality,
    scoped_suspicions,
    visible_suspicion,
    yuan_to_fen,
)
from central.monitoring.screening import backtest, rules_in_force
from central.monitoring.suspicions import STATUSES
from central.operators import Operator, home_signers, operator_by_token, require_area, require_supervisor
from central.policy.bundles import Policy
from central.policy.cards import card_areas, looked_up_history, replacement_gate
from protocol.errors import RulesInvalid

from . import charts, queries
from .auth import COOKIE, LOGIN_COOKIE, PATH, Sessions, check_csrf, set_cookie
from .i18n import DEFAULT, LANGS, translator

__all__ = ["PAGE_SIZE", "PREFIX", "add_routes"]

log = logging.getLogger(__name__)

PREFIX = "/console"
LANG_COOKIE = "yc_lang"
#: Rows a listing page shows; the next page is one ``offset`` away, never the whole table.
PAGE_SIZE = 50
#: A pasted candidate rules document may be large (the centre's document limit is 16 MiB).
MAX_FORM = 16 * 1024 * 1024
HERE = Path(__file__).resolve().parent
SESSIONS_KEY = web.AppKey("console_sessions", Sessions)
ENV_KEY = web.AppKey("console_jinja", jinja2.Environment)
DEPS_KEY = web.AppKey("console_deps", dict)
CSP = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
TARGET_TYPES = ("person", "card", "hospital", "doctor")
DECISION_KINDS = ("deduction", "warning", "suspension", "blacklist")

Page = Callable[[web.Request, Operator], Awaitable[Any]]


class _Redirect(Exception):
    def __init__(self, location: str) -> None:
        self.location = location


def yuan(fen: int | None) -> str:
    """Integer fen as yuan with two decimals, exactly (no float)."""
    if fen is None:
        return ""
    sign, fen = ("-", -fen) if fen < 0 else ("", fen)
    return f"{sign}{fen // 100:,}.{fen % 100:02d}"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["yuan"] = yuan
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, ensure_ascii=False, indent=1, sort_keys=True)
    return env


def _lang(request: web.Request) -> str:
    lang = request.cookies.get(LANG_COOKIE, DEFAULT)
    return lang if lang in LANGS else DEFAULT


def _render(
    request: web.Request, template: str, status: int = 200, *, op: Operator | None = None, **ctx: Any
) -> web.Response:
    session = request.get("session")
    lang = _lang(request)
    flash = []
    if session is not None:
        flash, session.flash = session.flash, []
    html = request.app[ENV_KEY].get_template(template).render(
        t=translator(lang), lang=lang, op=op, csrf=session.csrf if session else "", flash=flash,
        path=request.path_qs, prefix=PREFIX, **ctx,
    )  # fmt: skip
    return web.Response(text=html, content_type="text/html", status=status)


def _store(request: web.Request) -> Any:
    return request.app[DEPS_KEY]["store"]()


def _page(handler: Page, *, post: bool = False) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The session's operator, looked up again, then the handler; refusals as pages with their status."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        sessions = request.app[SESSIONS_KEY]
        session = sessions.get(request.cookies.get(COOKIE))
        if session is None:
            if post:
                message = translator(_lang(request))("login_expired")
                return _render(request, "error.html", 403, message=message)
            raise web.HTTPSeeOther(f"{PREFIX}/login?" + urlencode({"next": request.path_qs}))
        request["session"] = session
        op: Operator | None = None
        try:
            op = await _store(request).read_async(lambda c: operator_by_token(c, session.token))
            if post:
                form = await request.post()
                check_csrf(request, session.csrf, form.get("csrf"))
                request["form"] = form
            result = await handler(request, op)
        except _Redirect as moved:
            raise web.HTTPSeeOther(moved.location) from None
        except OperatorTokenInvalid:
            sessions.drop(session.id)
            raise web.HTTPSeeOther(f"{PREFIX}/login") from None
        except CentralError as exc:
            log.info("console %s %s refused (%s)", request.method, request.path, exc.code)
            return _render(request, "error.html", exc.http_status, op=op, message=exc.message, code=exc.code)
        if isinstance(result, web.StreamResponse):
            return result
        template, ctx = result
        return _render(request, template, op=op, **ctx)

    return wrapped


def _flash_to(request: web.Request, location: str, message: str) -> _Redirect:
    request["session"].flash.append(("ok", message))
    return _Redirect(location)


def _int(value: Any, name: str, default: int | None = None) -> int | None:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise MonitorInputInvalid(f"{name}={value!r} is not a whole number") from None


def _text(form: Any, name: str, *, required: bool = True) -> str | None:
    value = (form.get(name) or "").strip()
    if not value:
        if required:
            raise MonitorInputInvalid(f"{name} is required")
        return None
    return value


def _id(request: web.Request) -> int:
    value = _int(request.match_info["id"], "id")
    assert value is not None
    return value


def _safe_next(value: str | None) -> str:
    """Only a console path: a login link cannot send anyone to another site."""
    if value and value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return f"{PREFIX}/suspicions"


def _pager(base: str, q: Any, offset: int, more: bool) -> dict[str, str | None]:
    """Links to the previous and next page of a listing, keeping its filters."""
    kept = {k: v for k, v in q.items() if k != "offset" and v}
    return {
        "prev": f"{PREFIX}/{base}?" + urlencode({**kept, "offset": max(0, offset - PAGE_SIZE)})
        if offset else None,
        "next": f"{PREFIX}/{base}?" + urlencode({**kept, "offset": offset + PAGE_SIZE}) if more else None,
    }


def _see_other(location: str) -> web.Response:
    """A 303 that carries cookies (an answer returned, not an exception raised)."""
    return web.Response(status=303, headers={"Location": location})


# -- login -------------------------------------------------------------------------------------


async def login_form(request: web.Request, error: str | None = None, status: int = 200) -> web.Response:
    import secrets

    nonce = secrets.token_urlsafe(24)
    response = _render(
        request, "login.html", status, nonce=nonce, error=error, next=_safe_next(request.query.get("next"))
    )
    set_cookie(request, response, LOGIN_COOKIE, nonce)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    import hmac

    t = translator(_lang(request))
    form = await request.post()
    nonce, given = request.cookies.get(LOGIN_COOKIE), form.get("nonce")
    if not nonce or not isinstance(given, str) or not hmac.compare_digest(nonce, given):
        return await login_form(request, t("login_stale"), 403)
    token = str(form.get("token") or "").strip()
    try:
        op = await _store(request).read_async(lambda c: operator_by_token(c, token))
    except OperatorTokenInvalid:
        log.info("console login refused (operator_token_invalid) from %s", request.remote)
        return await login_form(request, t("login_bad"), 401)
    session = request.app[SESSIONS_KEY].create(token, op.name)
    log.info("console login: operator %s", op.name)
    response = _see_other(_safe_next(str(form.get("next") or "")))
    set_cookie(request, response, COOKIE, session.id)
    response.del_cookie(LOGIN_COOKIE, path=PATH)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    sessions = request.app[SESSIONS_KEY]
    session = sessions.get(request.cookies.get(COOKIE))
    if session is not None:
        form = await request.post()
        try:
            check_csrf(request, session.csrf, form.get("csrf"))
        except CentralError as exc:
            request["session"] = session
            return _render(request, "error.html", exc.http_status, message=exc.message, code=exc.code)
        sessions.drop(session.id)
        log.info("console logout: operator %s", session.name)
    response = _see_other(f"{PREFIX}/login")
    response.del_cookie(COOKIE, path=PATH)
    return response


async def switch_lang(request: web.Request) -> web.StreamResponse:
    """A preference, not an action: a GET that only sets the language cookie."""
    lang = request.match_info["lang"]
    if lang not in LANGS:
        raise web.HTTPNotFound()
    response = _see_other(_safe_next(request.query.get("next")))
    set_cookie(request, response, LANG_COOKIE, lang)
    return response


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(f"{PREFIX}/suspicions")


# -- suspicions and cases ----------------------------------------------------------------------


async def queue(request: web.Request, op: Operator) -> Any:
    q = request.query
    status: str | None = q.get("status") or "new"
    if status == "all":
        status = None
    elif status not in STATUSES:
        raise MonitorInputInvalid(f"status={status!r} is not one of {', '.join(STATUSES)} or all")
    min_yuan = (q.get("min_yuan") or "").strip()
    offset = max(0, _int(q.get("offset"), "offset", 0) or 0)
    filters = {
        "area": q.get("area") or None, "status": status, "rule_id": q.get("rule") or None,
        "severity": q.get("severity") or None, "hospital": q.get("hospital") or None,
        "object_type": q.get("object_type") or None, "object_id": q.get("object_id") or None,
        "min_score": _int(q.get("min_score"), "min_score"),
        "min_amount_fen": yuan_to_fen(min_yuan) if min_yuan else None,
        "limit": PAGE_SIZE + 1, "offset": offset,
    }  # fmt: skip
    rows = await _store(request).read_async(lambda c: scoped_suspicions(c, op, **filters))
    return "queue.html", {
        "rows": rows[:PAGE_SIZE], "q": q, "statuses": STATUSES, "offset": offset,
        **_pager("suspicions", q, offset, len(rows) > PAGE_SIZE),
    }  # fmt: skip


async def suspicion(request: web.Request, op: Operator) -> Any:
    sid = _id(request)

    def read(c: Any) -> dict[str, Any]:
        s = visible_suspicion(c, op, sid)
        rows = c.execute(
            "SELECT outcome, operator, at, reason FROM reviews WHERE suspicion_id = ? ORDER BY id", (sid,)
        ).fetchall()
        s["reviews"] = [dict(zip(("outcome", "operator", "at", "reason"), r, strict=True)) for r in rows]
        return s

    return "suspicion.html", {"s": await _store(request).read_async(read)}


async def review(request: web.Request, op: Operator) -> Any:
    sid, form = _id(request), request["form"]
    outcome, reason = _text(form, "outcome"), _text(form, "reason")
    store = _store(request)
    await store.run_async(review_suspicion, store, op, sid, outcome, reason)
    raise _flash_to(request, f"{PREFIX}/suspicions/{sid}", f"{outcome}: {sid}")


async def case_open(request: web.Request, op: Operator) -> Any:
    form = request["form"]
    ids = [_int(v, "suspicion") for v in form.getall("suspicion", [])]
    title, assignee = _text(form, "title"), _text(form, "assignee", required=False)
    store = _store(request)
    case = await store.run_async(lambda: open_case(store, op, ids, title, assignee=assignee))
    raise _flash_to(request, f"{PREFIX}/cases/{case['id']}", f"#{case['id']}")


async def cases(request: web.Request, op: Operator) -> Any:
    q = request.query
    offset = max(0, _int(q.get("offset"), "offset", 0) or 0)
    rows = await _store(request).read_async(
        lambda c: list_cases(c, op.scope, status=q.get("status") or None, assignee=q.get("assignee") or None,
                             limit=PAGE_SIZE + 1, offset=offset)
    )  # fmt: skip
    return "cases.html", {"rows": rows[:PAGE_SIZE], **_pager("cases", q, offset, len(rows) > PAGE_SIZE)}


async def case(request: web.Request, op: Operator) -> Any:
    case_id = _id(request)
    found = await _store(request).read_async(lambda c: get_case(c, op, case_id))
    return "case.html", {"c": found, "target_types": TARGET_TYPES, "kinds": DECISION_KINDS}


async def case_note(request: web.Request, op: Operator) -> Any:
    case_id, form = _id(request), request["form"]
    text, kind = _text(form, "text"), _text(form, "kind", required=False) or "note"
    store = _store(request)
    await store.run_async(lambda: add_note(store, op, case_id, text, kind=kind))
    raise _flash_to(request, f"{PREFIX}/cases/{case_id}", translator(_lang(request))("done"))


async def case_assign(request: web.Request, op: Operator) -> Any:
    case_id, form = _id(request), request["form"]
    assignee, reason = _text(form, "assignee"), _text(form, "reason", required=False) or ""
    store = _store(request)
    await store.run_async(assign_case, store, op, case_id, assignee, reason)
    raise _flash_to(request, f"{PREFIX}/cases/{case_id}", translator(_lang(request))("done"))


async def case_close(request: web.Request, op: Operator) -> Any:
    case_id, form = _id(request), request["form"]
    reason = _text(form, "reason")
    store = _store(request)
    await store.run_async(close_case, store, op, case_id, reason)
    raise _flash_to(request, f"{PREFIX}/cases/{case_id}", translator(_lang(request))("done"))


async def case_decide(request: web.Request, op: Operator) -> Any:
    """The decision form: the amount is yuan text, made exact fen by the library (``yuan_to_fen``)."""
    case_id, form = _id(request), request["form"]
    fields = {
        "kind": _text(form, "kind"), "target_type": _text(form, "target_type"),
        "target_id": _text(form, "target_id"), "reason": _text(form, "reason"),
        "amount": _text(form, "amount", required=False), "until": _text(form, "until", required=False),
    }  # fmt: skip
    store, deps = _store(request), request.app[DEPS_KEY]

    def decide() -> dict[str, Any]:
        signers = home_signers(deps["config"]) if fields["kind"] == "blacklist" else []
        policy = Policy(store, deps["repo"](), deps["config"])
        return make_decision(store, op, case_id, policy=policy, signers=signers, **fields)

    made = await store.run_async(decide)
    raise _flash_to(request, f"{PREFIX}/cases/{case_id}", f"{made['kind']}: {made['status']}")


# -- fleet, rules, blacklists ------------------------------------------------------------------


async def fleet(request: web.Request, op: Operator) -> Any:
    return "fleet.html", {"agents": await _store(request).read_async(lambda c: queries.fleet(c, op))}


def _rules_ctx(store: Any, repo: Any, op: Operator) -> dict[str, Any]:
    in_force = {a: r for a, r in rules_in_force(store, repo).items() if a in op.scope}

    def read(c: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        shadow = scoped_suspicions(c, op, status="shadow", limit=PAGE_SIZE)
        return rule_quality(c, op.scope), shadow

    quality, shadow = store.read(read)
    return {"in_force": in_force, "quality": quality, "shadow": shadow, "areas": sorted(op.scope),
            "report": None}  # fmt: skip


async def rules(request: web.Request, op: Operator) -> Any:
    store, repo = _store(request), request.app[DEPS_KEY]["repo"]()
    ctx = await store.run_async(_rules_ctx, store, repo, op)
    today = date.today()
    ctx["default_from"], ctx["default_to"] = (today - timedelta(days=30)).isoformat(), today.isoformat()
    return "rules.html", ctx


def _date(value: Any, name: str) -> str:
    try:
        return date.fromisoformat(str(value or "")).isoformat()
    except ValueError:
        raise MonitorInputInvalid(f"{name}={value!r} is not a date like 2026-11-01") from None


async def rules_backtest(request: web.Request, op: Operator) -> Any:
    """A candidate beside the rules in force, through ``central.monitoring.screening.backtest``; nothing
    stored."""
    require_supervisor(op, "backtest rules")
    form = request["form"]
    lo, hi = _date(form.get("from"), "from"), _date(form.get("to"), "to")
    if lo > hi:
        raise MonitorInputInvalid(f"from {lo} is after to {hi}")
    try:
        doc = json.loads(str(form.get("rules") or ""))
    except ValueError as exc:
        raise MonitorInputInvalid(f"the rules document is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MonitorInputInvalid("the rules document must be a JSON object (docs/RULES.md)")
    require_area(op, str(doc.get("area")))
    store, repo = _store(request), request.app[DEPS_KEY]["repo"]()
    try:
        report = await store.run_async(lambda: backtest(store, doc, None, lo, hi, repo=repo, workers=1))
    except RulesInvalid as exc:
        problems = "; ".join(exc.problems[:20]) if getattr(exc, "problems", None) else exc.message
        raise MonitorInputInvalid(f"the rules document is not valid: {problems}") from None
    ctx = await store.run_async(_rules_ctx, store, repo, op)
    ctx.update(report=report, default_from=lo, default_to=hi)
    return "rules.html", ctx


async def blacklists(request: web.Request, op: Operator) -> Any:
    q = request.query
    offset = max(0, _int(q.get("offset"), "offset", 0) or 0)
    list_type, entry_id = q.get("list_type") or None, q.get("id") or None

    def read(c: Any) -> dict[str, Any]:
        entries = queries.blacklist_entries(c, op.scope, list_type=list_type, entry_id=entry_id,
                                            limit=PAGE_SIZE + 1, offset=offset)  # fmt: skip
        return {
            "entries": entries[:PAGE_SIZE], "more": len(entries) > PAGE_SIZE,
            "bundles": queries.publishes(c, op.scope), "changes": queries.pending_changes(c, op.scope),
        }  # fmt: skip

    ctx = await _store(request).read_async(read)
    ctx.update(_pager("blacklists", q, offset, ctx["more"]))
    return "blacklists.html", ctx


async def cards(request: web.Request, op: Operator) -> Any:
    """Lost cards of the operator's areas, each with its replacement gate (``central.policy.cards``: which
    agents applied and logged the old card's blacklist entry, who is still waiting), and the card
    corrections and notices the ``cards`` bundle sends down. A page of lost cards at a time."""
    q = request.query
    offset = max(0, _int(q.get("offset"), "offset", 0) or 0)
    card_sn = (q.get("card_sn") or "").strip() or None

    def read(c: Any) -> dict[str, Any]:
        entries = queries.blacklist_entries(c, op.scope, list_type="card", entry_id=card_sn,
                                            limit=PAGE_SIZE + 1, offset=offset)  # fmt: skip
        gates = []
        for e in entries[:PAGE_SIZE]:
            gate = replacement_gate(c, e["id"], e["area"])
            gates.append({"card_sn": e["id"], "areas": gate["areas"]})
        held = queries.card_notes(c, op.scope, card_sn=card_sn, limit=PAGE_SIZE)
        misused = [] if card_sn else used_after_loss(c, card_areas(op), limit=PAGE_SIZE)
        return {"gates": gates, "more": len(entries) > PAGE_SIZE, "card_sn": card_sn, "misused": misused,
                **held}  # fmt: skip

    store = _store(request)
    ctx = await store.read_async(read)
    ctx.update(_pager("cards", q, offset, ctx["more"]))
    ctx["history"] = None
    if card_sn:  # one card asked for: its history too (audited, as `cards history`)
        try:
            ctx["history"] = await store.write_async(lambda c: looked_up_history(c, op, card_sn))
        except NotFound:
            pass  # nothing held of it: the page says so in its tables
    return "cards.html", ctx


# -- analysis, map, audit ----------------------------------------------------------------------

#: Measures ``central.monitoring.analysis`` gives in fen (money per visit or per disease).
FEN_MEASURES = ("cost_per_visit", "cost_per_disease")
#: Periods the "over time" chart splits the range into (one ranking each).
PERIODS = 4


def _analysis(store: Any, area: str, by: str, measure: str, lo: date, hi: date) -> dict[str, Any]:
    ranking = analyse(store, by=by, measure=measure, date_from=lo.isoformat(), date_to=hi.isoformat(),
                      area=area)  # fmt: skip
    top = [r["object_id"] for r in ranking["results"][:5]]
    span = max(1, (hi - lo).days + 1)
    step = max(1, span // PERIODS)
    labels, series = [], {o: [] for o in top}
    start = lo
    while start <= hi and len(labels) < PERIODS:
        end = hi if len(labels) == PERIODS - 1 else min(hi, start + timedelta(days=step - 1))
        part = analyse(store, by=by, measure=measure, date_from=start.isoformat(), date_to=end.isoformat(),
                       area=area)  # fmt: skip
        values = {r["object_id"]: r["value"] for r in part["results"]}
        labels.append(start.isoformat()[5:])
        for o in top:
            series[o].append(values.get(o))
        start = end + timedelta(days=1)
    return {"ranking": ranking, "labels": labels, "series": series}


async def analysis(request: web.Request, op: Operator) -> Any:
    q = request.query
    area = q.get("area") or op.main_area
    require_area(op, area)
    by, measure = q.get("by") or "hospital", q.get("measure") or "cost_per_visit"
    today = date.today()
    lo = date.fromisoformat(_date(q.get("from") or (today - timedelta(days=89)).isoformat(), "from"))
    hi = date.fromisoformat(_date(q.get("to") or today.isoformat(), "to"))
    if lo > hi:
        raise MonitorInputInvalid(f"from {lo} is after to {hi}")
    store = _store(request)
    try:
        found = await store.run_async(_analysis, store, area, by, measure, lo, hi)
    except ConfigInvalid as exc:
        raise MonitorInputInvalid(exc.message) from None
    t = translator(_lang(request))
    results = [dict(r) for r in found["ranking"]["results"][:20]]
    series = found["series"]
    if measure in FEN_MEASURES:  # shown in yuan, like every other amount on the console
        for r in results:
            for key in ("value", "peer_median"):
                r[key] = r[key] / 100 if r[key] is not None else None
        series = {o: [v / 100 if v is not None else None for v in vs] for o, vs in series.items()}
    return "analysis.html", {
        "area": area, "areas": sorted(op.scope), "by": by, "measure": measure, "bys": BY,
        "measures": MEASURES, "from": lo.isoformat(), "to": hi.isoformat(), "results": results,
        "bars": charts.bar_chart([(r["object_id"], r["ratio"]) for r in results], label=t("ranking")),
        "lines": charts.line_chart(found["labels"], series, label=t("trend")),
    }  # fmt: skip


async def risk_map(request: web.Request, op: Operator) -> Any:
    hospitals = await _store(request).read_async(lambda c: queries.hospital_risk(c, op.scope))
    t = translator(_lang(request))
    return "map.html", {"hospitals": hospitals, "svg": charts.risk_map(hospitals, label=t("map"))}


async def audit(request: web.Request, op: Operator) -> Any:
    q = request.query
    offset = max(0, _int(q.get("offset"), "offset", 0) or 0)
    action = q.get("action") or None
    rows = await _store(request).read_async(
        lambda c: queries.audit_rows(c, op, action=action, limit=PAGE_SIZE + 1, offset=offset)
    )
    return "audit.html", {"rows": rows[:PAGE_SIZE], **_pager("audit", q, offset, len(rows) > PAGE_SIZE)}


# -- wiring ------------------------------------------------------------------------------------


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every console answer: no framing, no inline script or style, nothing cached but static files."""
    if not request.path.startswith(PREFIX + "/") and request.path != PREFIX:
        return
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if not request.path.startswith(f"{PREFIX}/static/"):
        response.headers["Cache-Control"] = "no-store"


def add_routes(
    app: web.Application,
    *,
    store: Callable[[], Any],
    repo: Callable[[], Any],
    config: CentralConfig,
) -> None:
    """Register the console on ``app`` under ``/console/``; ``store``/``repo`` give the running ones."""
    app[SESSIONS_KEY] = Sessions()
    app[ENV_KEY] = _env()
    app[DEPS_KEY] = {"store": store, "repo": repo, "config": config}
    app.on_response_prepare.append(_headers)
    r = app.router
    get = functools.partial(r.add_get, allow_head=False)
    get(PREFIX, home)
    get(f"{PREFIX}/", home)
    get(f"{PREFIX}/login", login_form)
    r.add_post(f"{PREFIX}/login", login)
    r.add_post(f"{PREFIX}/logout", logout)
    get(PREFIX + "/lang/{lang}", switch_lang)
    get(f"{PREFIX}/suspicions", _page(queue))
    get(PREFIX + "/suspicions/{id}", _page(suspicion))
    r.add_post(PREFIX + "/suspicions/{id}/review", _page(review, post=True))
    get(f"{PREFIX}/cases", _page(cases))
    r.add_post(f"{PREFIX}/cases", _page(case_open, post=True))
    get(PREFIX + "/cases/{id}", _page(case))
    r.add_post(PREFIX + "/cases/{id}/notes", _page(case_note, post=True))
    r.add_post(PREFIX + "/cases/{id}/assign", _page(case_assign, post=True))
    r.add_post(PREFIX + "/cases/{id}/decisions", _page(case_decide, post=True))
    r.add_post(PREFIX + "/cases/{id}/close", _page(case_close, post=True))
    get(f"{PREFIX}/fleet", _page(fleet))
    get(f"{PREFIX}/rules", _page(rules))
    r.add_post(f"{PREFIX}/rules/backtest", _page(rules_backtest, post=True))
    get(f"{PREFIX}/blacklists", _page(blacklists))
    get(f"{PREFIX}/cards", _page(cards))
    get(f"{PREFIX}/analysis", _page(analysis))
    get(f"{PREFIX}/map", _page(risk_map))
    get(f"{PREFIX}/audit", _page(audit))
    r.add_static(f"{PREFIX}/static/", HERE / "static", append_version=False)
