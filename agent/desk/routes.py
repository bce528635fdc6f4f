"""The desk pages under ``/desk/`` (``docs/DESK.md``): the cashier's and the doctor's screens.

Every action calls what the HIS API calls, with the signed-in user as the caller: the card reader and
the voucher verifier for identity, ``agent.intake.parse_settlement`` + ``agent.settle.refuse_blacklisted``
+ ``DeskChecks.settle`` for the preview (what ``POST /v1/settlements/preview`` does), and
``agent.settle.settle_record`` — the one settlement path — for the settlement. Refusals keep their code
and are shown as the sentence the person at the desk acts on (``i18n.refusal``); nothing is settled.

The HIS hands a visit over with its system token (``POST /desk/api/bills`` → the bill's page URLs for the
iframe) and reads the outcome back (``GET /desk/api/bills/{id}``). People sign in with their own ``ybu_``
token (``auth``); the HIS cannot sign anyone in, since that would let the HIS override in a doctor's name.

This module does not import ``agent.api`` (which registers it): ``add_desk_routes`` receives all it needs.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from agent.card import CardReader
from agent.cardlog import identify_and_log, report_lost
from agent.checks import DeskChecks, bill_from_request
from agent.config import AgentConfig
from agent.errors import (
    AgentError,
    NoReader,
    NotFound,
    OverrideNeedsDoctor,
    RoleForbidden,
    Unauthorized,
    VoucherRejected,
)
from agent.evoucher import VoucherVerifier
from agent.identity import Identity
from agent.intake import account_balance, parse_settlement
from agent.policy_store import PolicyStore
from agent.settle import error_answer, refuse_blacklisted, settle_record
from agent.store import Outbox
from agent.users import Principal, UserStore
from protocol.errors import ProtocolError, ValidationFailed
from protocol.records import SPLIT_FIELDS

from .auth import COOKIE, LOGIN_COOKIE, PATH, Sessions, check_csrf, set_cookie
from .bills import WALK_IN_LINES, Bill, Bills, mask_id, mask_name, parse_bill, walk_in_bill
from .errors import OverrideInvalid, SignInRefused
from .i18n import DEFAULT, LANGS, refusal, translator

__all__ = ["CARD_WAIT_S", "PREFIX", "add_desk_routes", "frame_ancestors", "yuan"]

log = logging.getLogger("yibao.agent.desk")

PREFIX = "/desk"
LANG_COOKIE = "yd_lang"
#: How long "read card" waits for a card being inserted (seconds).
CARD_WAIT_S = 3.0
HERE = Path(__file__).resolve().parent

Handler = Callable[[web.Request, Principal], Awaitable[Any]]


@dataclass
class _Desk:
    config: AgentConfig
    outbox: Outbox
    his_token: bytes
    users: UserStore
    card_reader: CardReader | None
    vouchers: VoucherVerifier | None
    policy: PolicyStore | None
    checks: DeskChecks | None
    env: jinja2.Environment
    embedded: bool
    sessions: Sessions = field(default_factory=Sessions)
    bills: Bills = field(default_factory=Bills)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)


DESK_KEY = web.AppKey("desk", _Desk)


class _Redirect(Exception):
    def __init__(self, location: str) -> None:
        self.location = location


def yuan(fen: int | None) -> str:
    """Integer fen as yuan with two decimals, exactly (never a float)."""
    if fen is None:
        return "—"
    sign, fen = ("-", -fen) if fen < 0 else ("", fen)
    return f"{sign}{fen // 100:,}.{fen % 100:02d}"


def frame_ancestors(config: AgentConfig) -> str:
    """The CSP ``frame-ancestors`` source list: this origin, and the HIS origins configured to embed."""
    return " ".join(["'self'", *config.desk_frame_ancestors])


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )  # fmt: skip
    env.filters["yuan"] = yuan
    env.filters["mask_id"] = mask_id
    env.filters["mask_name"] = mask_name
    return env


def _lang(request: web.Request) -> str:
    lang = request.query.get("lang") or request.cookies.get(LANG_COOKIE) or DEFAULT
    return lang if lang in LANGS else DEFAULT


def _render(request: web.Request, template: str, status: int = 200, **ctx: Any) -> web.Response:
    d, lang = request.app[DESK_KEY], _lang(request)
    session = request.get("session")
    flash = []
    if session is not None:
        flash, session.flash = session.flash, []
    html = d.env.get_template(template).render(
        t=translator(lang), lang=lang, user=request.get("user"), csrf=session.csrf if session else "",
        flash=flash, path=request.path_qs, prefix=PREFIX, **ctx,
    )  # fmt: skip
    response = web.Response(text=html, content_type="text/html", status=status)
    if "lang" in request.query and request.query["lang"] in LANGS:
        set_cookie(request, response, LANG_COOKIE, request.query["lang"], embedded=d.embedded)
    return response


def _wire(exc: AgentError | ProtocolError) -> dict[str, Any]:
    return error_answer(exc)[1]["error"]


def _refused(request: web.Request, exc: AgentError | ProtocolError) -> str:
    """The refusal's sentence in the page's language; logged by code only (never personal data)."""
    wire = _wire(exc)
    log.info("desk %s %s refused (%s)", request.method, request.match_info.route.resource.canonical
             if request.match_info.route.resource else request.path, wire["code"])  # fmt: skip
    return refusal(wire["code"], _lang(request), wire)


def _flash(request: web.Request, kind: str, message: str, code: str = "") -> None:
    request["session"].flash.append((kind, message, code))


def _safe_next(value: str | None, user: Principal | None = None) -> str:
    """Only a desk path: a sign-in link cannot send anyone to another site."""
    if value and value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return f"{PREFIX}/doctor" if user is not None and user.role == "doctor" else f"{PREFIX}/cashier"


def _page(role: str | None, *, post: bool = False) -> Callable[[Handler], Callable[..., Any]]:
    """The session's user, authenticated again, of ``role``; then the handler; refusals as pages."""

    def wrap(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.StreamResponse:
            d = request.app[DESK_KEY]
            t = translator(_lang(request))
            session = d.sessions.get(request.cookies.get(COOKIE))
            if session is None:
                if post:
                    return _render(request, "error.html", 403, message=t("session_over"), code="session")
                raise web.HTTPSeeOther(f"{PREFIX}/login?" + urlencode({"next": request.path_qs}))
            request["session"] = session
            try:
                user = d.users.authenticate(session.token)
            except Unauthorized as exc:  # disabled or rotated since sign-in: over at once
                d.sessions.drop(session.id)
                request["session"] = None
                return await _login_page(request, _refused(request, exc), 401)
            request["user"] = user
            if role is not None and user.role != role:
                who = f"{t('role_' + user.role)} {user.name}"
                message = t("wrong_role", role=t("role_" + role), who=who)
                return _render(request, "error.html", 403, message=message, code="role_forbidden")
            try:
                if post:
                    form = await request.post()
                    check_csrf(request, session.csrf, form.get("csrf"))
                    request["form"] = form
                result = await handler(request, user)
            except _Redirect as moved:
                raise web.HTTPSeeOther(moved.location) from None
            except (AgentError, ProtocolError) as exc:
                status = exc.http_status
                return _render(request, "error.html", status, message=_refused(request, exc),
                               code=_wire(exc)["code"])  # fmt: skip
            if isinstance(result, web.StreamResponse):
                return result
            template, ctx = result
            return _render(request, template, **ctx)

        return wrapped

    return wrap


# -- sign-in -----------------------------------------------------------------------------------


async def _login_page(request: web.Request, error: str | None = None, status: int = 200) -> web.Response:
    nonce = secrets.token_urlsafe(24)
    response = _render(request, "login.html", status, nonce=nonce, error=error,
                       next=_safe_next(request.query.get("next")))  # fmt: skip
    set_cookie(request, response, LOGIN_COOKIE, nonce, embedded=request.app[DESK_KEY].embedded)
    return response


async def login_form(request: web.Request) -> web.Response:
    return await _login_page(request)


async def login(request: web.Request) -> web.StreamResponse:
    d, t = request.app[DESK_KEY], translator(_lang(request))
    form = await request.post()
    nonce, given = request.cookies.get(LOGIN_COOKIE), form.get("nonce")
    if not nonce or not isinstance(given, str) or not hmac.compare_digest(nonce, given):
        return await _login_page(request, t("sign_in_stale"), 403)
    token = str(form.get("token") or "").strip()
    try:
        if hmac.compare_digest(token.encode(), d.his_token):
            raise SignInRefused("the HIS system token names no one: sign in with your own ybu_ token")
        user = d.users.authenticate(token)
    except (AgentError, ProtocolError) as exc:
        return await _login_page(request, _refused(request, exc), exc.http_status)
    session = d.sessions.create(token)
    log.info("desk sign-in: %s %s", user.role, user.name)
    response = web.Response(status=303, headers={"Location": _safe_next(str(form.get("next") or ""), user)})
    set_cookie(request, response, COOKIE, session.id, embedded=d.embedded)
    response.del_cookie(LOGIN_COOKIE, path=PATH)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    d = request.app[DESK_KEY]
    session = d.sessions.get(request.cookies.get(COOKIE))
    if session is not None:
        form = await request.post()
        try:
            check_csrf(request, session.csrf, form.get("csrf"))
        except AgentError as exc:
            request["session"] = session
            return _render(request, "error.html", exc.http_status, message=_refused(request, exc),
                           code=exc.code)  # fmt: skip
        d.sessions.drop(session.id)
    response = web.Response(status=303, headers={"Location": f"{PREFIX}/login"})
    response.del_cookie(COOKIE, path=PATH)
    return response


async def switch_lang(request: web.Request) -> web.StreamResponse:
    """A preference, not an action: a GET that only sets the language cookie."""
    lang = request.match_info["lang"]
    if lang not in LANGS:
        raise web.HTTPNotFound()
    response = web.Response(status=303, headers={"Location": _safe_next(request.query.get("next"))})
    set_cookie(request, response, LANG_COOKIE, lang, embedded=request.app[DESK_KEY].embedded)
    return response


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(f"{PREFIX}/cashier")


# -- identity ----------------------------------------------------------------------------------


async def _read_card(d: _Desk, user: Principal) -> Identity:
    """The card read and its card log chained (``agent.cardlog``), as the HIS API's ``GET /v1/card``."""
    if d.card_reader is None:
        raise NoReader("this agent runs without a card reader (started with card reading off)")
    return await identify_and_log(
        d.card_reader, d.outbox, CARD_WAIT_S, fixmedins_code=d.config.fixmedins_code, opter=user.name
    )


async def _verify_qr(d: _Desk, form: Any) -> Identity:
    if d.vouchers is None:
        raise VoucherRejected("this agent runs without an e-voucher verifier; call IT",
                              code="evoucher_unknown_issuer")  # fmt: skip
    qr = str(form.get("qr") or "").strip()
    if not qr or len(qr) > 4096:
        raise VoucherRejected("nothing scanned: scan the patient's code again", code="evoucher_malformed")
    return await asyncio.to_thread(d.vouchers.verify, qr)


# -- the cashier ---------------------------------------------------------------------------------


def _bill(request: web.Request) -> Bill:
    return request.app[DESK_KEY].bills.get(request.match_info["bill"])


def _caller_for(d: _Desk, bill: Bill, cashier: Principal) -> Principal:
    """Who signs the settlement's overrides: the doctor who made them, still enabled; else the cashier.

    ``parse_settlement`` accepts overrides only from a doctor; the doctor proved who they are when they
    overrode (their own sign-in), and is looked up again here so a doctor disabled since is refused.
    """
    if not bill.overrides:
        return cashier
    doctor = bill.doctor
    assert doctor is not None
    user = next((u for u in d.users.users() if u.name == doctor.name), None)
    if user is None or not user.enabled or user.dr_codg != doctor.dr_codg:
        raise OverrideNeedsDoctor(
            f"the overriding doctor {doctor.name}'s account is no longer enabled: their override cannot be "
            "honoured; ask another doctor to review the prompts on the doctor's page"
        )
    return doctor


async def _preview(d: _Desk, bill: Bill, cashier: Principal) -> None:
    """``POST /v1/settlements/preview``'s steps with the desk's person: nothing is written."""
    body = bill.settlement_body()
    record, _digest = parse_settlement(
        body, fixmedins_code=d.config.fixmedins_code or None, caller=_caller_for(d, bill, cashier)
    )
    refuse_blacklisted(d.policy, record)
    outcome = await d.checks.settle(record, acct_balance=account_balance(body)) if d.checks else None
    checks = outcome.to_json() if outcome is not None else {}
    split = checks.get("split") or {}
    bill.preview = {
        "amounts": {k: getattr(record, k) for k in ("medfee_sumamt", *SPLIT_FIELDS)},
        "computed": bool(split.get("computed")),
        "hits": [h for h in checks.get("hits", []) if h.get("mode") != "shadow"],
        "self_pay_lines": checks.get("self_pay_lines", []),
        "history_missing": checks.get("history_missing"),
    }


@_page("cashier")
async def cashier_home(request: web.Request, user: Principal) -> Any:
    return "cashier_home.html", {"lines": range(WALK_IN_LINES)}


@_page("cashier", post=True)
async def cashier_lost(request: web.Request, user: Principal) -> Any:
    """The cashier reports a card lost (the holder at the counter, card number from the HIS or the
    holder's papers): a ``lost`` card log goes up; the centre makes it a pending blacklist change."""
    d, form = request.app[DESK_KEY], request["form"]
    t = translator(_lang(request))
    try:
        receipt = await report_lost(
            d.outbox, fixmedins_code=d.config.fixmedins_code, opter=user.name,
            card_sn=str(form.get("card_sn") or ""), reason=str(form.get("reason") or ""),
        )  # fmt: skip
    except (AgentError, ProtocolError) as exc:
        _flash(request, "error", _refused(request, exc), _wire(exc)["code"])
    else:
        _flash(request, "ok", t("lost_reported", seq=receipt.seq), "lost_reported")
    raise _Redirect(f"{PREFIX}/cashier")


@_page("cashier", post=True)
async def cashier_new(request: web.Request, user: Principal) -> Any:
    d = request.app[DESK_KEY]
    try:
        body = walk_in_bill(request["form"], user, d.config)
    except (AgentError, ProtocolError) as exc:
        _flash(request, "error", _refused(request, exc), _wire(exc)["code"])
        raise _Redirect(f"{PREFIX}/cashier") from None
    raise _Redirect(f"{PREFIX}/cashier/{d.bills.add(body).id}")


@_page("cashier")
async def cashier_bill(request: web.Request, user: Principal) -> Any:
    bill = _bill(request)
    return "cashier_bill.html", {"bill": bill, "psn": bill.patient_psn()}


async def _identify(request: web.Request, user: Principal, how: str, then: Callable[[Bill], Awaitable[None]]
                    | None, page: str) -> Any:  # fmt: skip
    d, bill = request.app[DESK_KEY], _bill(request)
    if bill.receipt is not None:
        raise _Redirect(f"{PREFIX}/{page}/{bill.id}")
    try:
        identity = await (_read_card(d, user) if how == "card" else _verify_qr(d, request["form"]))
        bill.set_identity(identity)
        if identity.card_sn and d.policy is not None:
            # Shown even when the preview below refuses the card: the cashier sees why (replaced).
            bill.card_notes = d.policy.card_notes(identity.card_sn)
        if then is not None:
            await then(bill)
    except (AgentError, ProtocolError) as exc:
        _flash(request, "error", _refused(request, exc), _wire(exc)["code"])
    raise _Redirect(f"{PREFIX}/{page}/{bill.id}")


@_page("cashier", post=True)
async def cashier_card(request: web.Request, user: Principal) -> Any:
    d = request.app[DESK_KEY]
    return await _identify(request, user, "card", lambda b: _preview(d, b, user), "cashier")


@_page("cashier", post=True)
async def cashier_qr(request: web.Request, user: Principal) -> Any:
    d = request.app[DESK_KEY]
    return await _identify(request, user, "qr", lambda b: _preview(d, b, user), "cashier")


@_page("cashier", post=True)
async def cashier_settle(request: web.Request, user: Principal) -> Any:
    """Settle through the one path; a repeat (double click, reload) settles nothing again."""
    d, bill = request.app[DESK_KEY], _bill(request)
    t = translator(_lang(request))
    async with d.locks.setdefault(bill.id, asyncio.Lock()):
        if bill.receipt is not None:
            _flash(request, "ok", t("already_settled"), "duplicate")
            raise _Redirect(f"{PREFIX}/cashier/{bill.id}")
        if bill.identity is None or bill.preview is None:
            raise ValidationFailed(
                "identify the patient first (card or e-voucher)",
                details=[{"field": "identity", "message": "read the card first"}],
            )
        try:
            body = bill.settlement_body()
            record, digest = parse_settlement(
                body, fixmedins_code=d.config.fixmedins_code or None, caller=_caller_for(d, bill, user)
            )
            record.opter_name = user.name  # the cashier settles, also when a doctor's override rides along
            receipt, _outcome = await settle_record(
                record, digest, d.outbox, policy=d.policy, desk=d.checks, acct_balance=account_balance(body)
            )
        except (AgentError, ProtocolError) as exc:
            bill.preview = None
            _flash(request, "error", _refused(request, exc), _wire(exc)["code"])
            raise _Redirect(f"{PREFIX}/cashier/{bill.id}") from None
        amounts = {k: getattr(record, k) for k in ("medfee_sumamt", *SPLIT_FIELDS)}
        bill.receipt = {**receipt.to_json(), "amounts": amounts, "cashier": user.name}
        d.locks.pop(bill.id, None)
    log.info(
        "desk settlement %s by cashier %s (duplicate: %s)", receipt.setl_id, user.name, receipt.duplicate
    )
    _flash(request, "ok", t("already_settled") if receipt.duplicate else t("settled_ok"), "settled")
    raise _Redirect(f"{PREFIX}/cashier/{bill.id}")


# -- the doctor ----------------------------------------------------------------------------------


async def _medications(d: _Desk, psn_no: str) -> dict[str, Any]:
    if d.checks is None:
        raise NotFound("this agent runs without the rule library")
    return await d.checks.medications(psn_no, d.config.history_days)


@_page("doctor")
async def doctor_home(request: web.Request, user: Principal) -> Any:
    d = request.app[DESK_KEY]
    patient: Identity | None = request["session"].patient
    psn_no = patient.psn_no if patient is not None else None
    meds = await _medications(d, psn_no) if psn_no else None
    return "doctor.html", {"bill": None, "psn": {"psn_no": psn_no} if psn_no else None, "meds": meds,
                           "prompts": None, "identity": patient}  # fmt: skip


@_page("doctor", post=True)
async def doctor_card_home(request: web.Request, user: Principal) -> Any:
    try:
        request["session"].patient = await _read_card(request.app[DESK_KEY], user)
    except (AgentError, ProtocolError) as exc:
        _flash(request, "error", _refused(request, exc), _wire(exc)["code"])
    raise _Redirect(f"{PREFIX}/doctor")


@_page("doctor")
async def doctor_bill(request: web.Request, user: Principal) -> Any:
    d, bill = request.app[DESK_KEY], _bill(request)
    psn = bill.patient_psn()
    meds = prompts = None
    if psn.get("psn_no"):
        if d.checks is None:
            raise NotFound("this agent runs without the rule library")
        meds = await _medications(d, psn["psn_no"])
        try:
            check = bill_from_request(bill.prescription(), d.config.fixmedins_code, d.config.hosp_lv)
        except (ValueError, ProtocolError) as exc:
            raise ValidationFailed("the bill lacks what the prescription check needs (psn.gend, psn.brdy)",
                                   details=[{"field": "psn", "message": str(exc)}]) from None  # fmt: skip
        prompts = await d.checks.prescription(check)
        shown = [p for p in prompts["prompts"] if not p.get("shadow")]
        prompts["prompts"] = shown
        bill.prompts = {p["rule_id"]: p for p in shown}
    return "doctor.html", {"bill": bill, "psn": psn if psn.get("psn_no") else None, "meds": meds,
                           "prompts": prompts, "identity": bill.identity}  # fmt: skip


@_page("doctor", post=True)
async def doctor_card(request: web.Request, user: Principal) -> Any:
    return await _identify(request, user, "card", None, "doctor")


@_page("doctor", post=True)
async def doctor_override(request: web.Request, user: Principal) -> Any:
    """Record the signed-in doctor's override of a shown prompt; a reason is required."""
    bill, form = _bill(request), request["form"]
    rule_id, reason = str(form.get("rule_id") or ""), str(form.get("reason") or "").strip()
    problem = None
    prompt = bill.prompts.get(rule_id)
    if bill.receipt is not None:
        problem = ("settled", "this bill is settled already: an override now changes nothing")
    elif prompt is None:
        problem = ("not_shown", "this prompt was not shown for this bill: reload the page")
    elif not prompt.get("overridable"):
        problem = ("not_overridable", "this rule allows no override")
    elif len(reason) < 2 or len(reason) > 200:
        problem = ("no_reason", "an override needs the reason (2 to 200 characters)")
    elif bill.doctor is not None and bill.doctor.name != user.name:
        problem = ("other_doctor", f"doctor {bill.doctor.name} already overrode on this bill")
    try:
        if user.role != "doctor" or not user.dr_codg:
            raise RoleForbidden("an override is a doctor's decision")
        if problem is not None:
            raise OverrideInvalid(f"the override was not recorded: {problem[1]}", problem=problem[0])
    except AgentError as exc:
        _flash(request, "error", _refused(request, exc), exc.code)
        raise _Redirect(f"{PREFIX}/doctor/{bill.id}") from None
    bill.doctor = user
    bill.overrides[rule_id] = {"rule_id": rule_id, "reason": reason, "dr_codg": user.dr_codg,
                               "doctor": user.name}  # fmt: skip
    bill.preview = None  # the cashier previews again with the override
    log.info("desk override of %s by doctor %s", rule_id, user.name)
    _flash(request, "ok", translator(_lang(request))("override_recorded"), "override_recorded")
    raise _Redirect(f"{PREFIX}/doctor/{bill.id}")


# -- the HIS hands bills over (its system token) --------------------------------------------------


def _his(request: web.Request) -> None:
    d = request.app[DESK_KEY]
    auth = request.headers.get("Authorization", "")
    given = auth[7:].strip().encode() if auth.startswith("Bearer ") else b""
    if not given or not hmac.compare_digest(given, d.his_token):
        raise Unauthorized(
            "the desk's bill API takes the HIS system token (the agent's his.token file): send "
            "'Authorization: Bearer <token>'; people sign in on the pages with their own tokens"
        )


async def post_bill(request: web.Request) -> web.Response:
    _his(request)
    d = request.app[DESK_KEY]
    bill = d.bills.add(parse_bill(await request.read(), d.config))
    return web.json_response({"bill_id": bill.id, "his_setl_no": bill.his_setl_no,
                              "cashier_url": f"{PREFIX}/cashier/{bill.id}",
                              "doctor_url": f"{PREFIX}/doctor/{bill.id}"}, status=201)  # fmt: skip


async def get_bill(request: web.Request) -> web.Response:
    _his(request)
    bill = _bill(request)
    receipt = bill.receipt
    return web.json_response({
        "bill_id": bill.id, "his_setl_no": bill.his_setl_no, "settled": receipt is not None,
        "receipt": {k: v for k, v in receipt.items() if k != "amounts"} if receipt else None,
        "overrides": [{k: o[k] for k in ("rule_id", "reason", "dr_codg")} for o in bill.overrides.values()],
    })  # fmt: skip


# -- registration ----------------------------------------------------------------------------------


def add_desk_routes(
    app: web.Application,
    config: AgentConfig,
    outbox: Outbox,
    *,
    his_token: str,
    users: UserStore,
    card_reader: CardReader | None = None,
    vouchers: VoucherVerifier | None = None,
    policy: PolicyStore | None = None,
    desk: DeskChecks | None = None,
) -> None:
    """Add ``/desk/…`` to the HIS API's app. The API's bearer check skips ``/desk/`` (``PREFIX``):
    pages authenticate by session, the bill API by the HIS token, both here."""
    app[DESK_KEY] = _Desk(
        config=config, outbox=outbox, his_token=his_token.encode(), users=users, card_reader=card_reader,
        vouchers=vouchers, policy=policy, checks=desk, env=_env(), embedded=bool(config.desk_frame_ancestors),
    )  # fmt: skip
    csp = (f"default-src 'self'; frame-ancestors {frame_ancestors(config)}; form-action 'self'; "
           "base-uri 'none'; object-src 'none'")  # fmt: skip

    async def headers(request: web.Request, response: web.StreamResponse) -> None:
        if request.path.startswith(PREFIX + "/"):
            response.headers["Content-Security-Policy"] = csp
            if not config.desk_frame_ancestors:
                response.headers["X-Frame-Options"] = "SAMEORIGIN"
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["Referrer-Policy"] = "same-origin"
            if not request.path.startswith(PREFIX + "/static/"):
                response.headers["Cache-Control"] = "no-store"  # personal data on the pages

    app.on_response_prepare.append(headers)
    r = app.router
    r.add_get(PREFIX + "/", home)
    r.add_get(PREFIX + "/login", login_form)
    r.add_post(PREFIX + "/login", login)
    r.add_post(PREFIX + "/logout", logout)
    r.add_get(PREFIX + "/lang/{lang}", switch_lang)
    r.add_get(PREFIX + "/cashier", cashier_home)
    r.add_post(PREFIX + "/cashier/bills", cashier_new)
    r.add_post(PREFIX + "/cashier/lost", cashier_lost)
    r.add_get(PREFIX + "/cashier/{bill}", cashier_bill)
    r.add_post(PREFIX + "/cashier/{bill}/card", cashier_card)
    r.add_post(PREFIX + "/cashier/{bill}/qr", cashier_qr)
    r.add_post(PREFIX + "/cashier/{bill}/settle", cashier_settle)
    r.add_get(PREFIX + "/doctor", doctor_home)
    r.add_post(PREFIX + "/doctor/card", doctor_card_home)
    r.add_get(PREFIX + "/doctor/{bill}", doctor_bill)
    r.add_post(PREFIX + "/doctor/{bill}/card", doctor_card)
    r.add_post(PREFIX + "/doctor/{bill}/override", doctor_override)
    r.add_post(PREFIX + "/api/bills", post_bill)
    r.add_get(PREFIX + "/api/bills/{bill}", get_bill)
    r.add_static(PREFIX + "/static/", HERE / "static")
