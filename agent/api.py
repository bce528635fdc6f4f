"""The HIS-facing HTTP API.

Every answer that changes something is given only after the record is durable in the
outbox. Errors are JSON ``{"error": {"code", "message", "details"?}}`` with a stable code;
a bad request changes nothing.

Who is asking: every request but the open paths carries a bearer token — the HIS system token
(``his.token``: the HIS integration as a whole, role ``his``) or a cashier's or doctor's own token
(``agent.users``). The caller is ``request["caller"]`` (``GET /v1/whoami``). Roles matter where a
decision is a person's: only a doctor's token may carry overrides, and their code is the doctor's
from the users table; the medication history and prescription checks are the doctor's side (a
cashier's token is refused), reversals the cashier's (a doctor's is refused). The HIS system token
keeps everything it had, except overrides.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import msgspec
from aiohttp import web

from protocol.errors import ProtocolError, ValidationFailed
from protocol.records import SPLIT_FIELDS, decimal_text
from protocol.rules.model import Bill

from .card import CardReader
from .cardlog import identify_and_log, report_lost
from .checks import DeskChecks, bill_from_request
from .config import AgentConfig
from .desk import PREFIX as DESK_PREFIX
from .desk import add_desk_routes
from .errors import (
    AgentError,
    BodyTooLarge,
    NoReader,
    NotFound,
    RoleForbidden,
    Unauthorized,
    VoucherRejected,
)
from .evoucher import VoucherVerifier
from .heartbeat import HeartbeatSender
from .identity import Identity
from .intake import account_balance, parse_reversal, parse_settlement
from .policy import PolicyClient, policy_status
from .policy_store import PolicyStore
from .settle import (
    error_answer,
    refuse_blacklisted,
    settle_body,
)
from .store import Outbox
from .uploader import Uploader
from .users import HIS_SYSTEM, Principal, UserStore, open_users

__all__ = ["CALLER", "create_app", "error_answer", "settle_body"]

log = logging.getLogger("yibao.agent.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_OPEN_PATHS = {"/v1/health", "/openapi.json"}
#: The request key holding the ``Principal`` the bearer token proved.
CALLER = web.RequestKey("caller", Principal)
#: Where a role is the point: the doctor's side and the cashier's (the HIS system token may do both).
_DOCTOR_SIDE = frozenset({"his", "doctor"})
_CASHIER_SIDE = frozenset({"his", "cashier"})


def require_role(request: web.Request, allowed: frozenset[str], what: str) -> Principal:
    """The caller, if their role may do ``what``; else ``RoleForbidden`` naming who may."""
    caller: Principal = request[CALLER]
    if caller.role not in allowed:
        who = " or ".join(sorted(r for r in allowed if r != "his"))
        raise RoleForbidden(
            f"{what} is for a {who}: {caller.describe()} cannot use it; sign in with a {who}'s own token "
            "(or let the HIS use its system token)"
        )
    return caller


def _error(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status)


#: Longest a cashier's request may wait for a card to be inserted (seconds).
MAX_CARD_WAIT_S = 60.0


class _QrIn(msgspec.Struct, forbid_unknown_fields=True):
    qr: Annotated[str, msgspec.Meta(max_length=4096)]


_qr_decoder = msgspec.json.Decoder(_QrIn)


class _LostIn(msgspec.Struct, forbid_unknown_fields=True):
    card_sn: str
    reason: str


_lost_decoder = msgspec.json.Decoder(_LostIn)
_WAIT_HELP = f"seconds to wait for a card, 0 to {MAX_CARD_WAIT_S:g}"


def _identity_json(identity: Identity, **extra: object) -> web.Response:
    return web.json_response({"identity": msgspec.to_builtins(identity), **extra})


def prescription_bill(body: bytes, fixmedins_code: str, hosp_lv: str) -> Bill:
    """The doctor's bill, or ``ValidationFailed``: the rule engine assumes real dates and decimals.

    ``bill_from_request`` checks the shape only; a date that is not one, a repeated ``feedetl_sn``
    or a quantity such as ``"abc"`` used to reach the rule engine and answer 500.
    """
    try:
        bill = bill_from_request(body, fixmedins_code, hosp_lv)
    except ValueError as exc:  # Bill refuses dates that are not ISO dates and repeated line numbers
        raise ValidationFailed(
            "the prescription does not validate; correct the listed field",
            details=[
                {
                    "field": "$",
                    "message": f"{exc}: psn.brdy must be a date such as 1958-04-02, mdtrt.begntime a "
                    "date-time such as 2026-11-23T09:12:00+08:00, and each line needs its own feedetl_sn",
                }
            ],
        ) from None
    problems = []
    for i, line in enumerate(bill.lines):
        for name, places in (("cnt", 4), ("pric", 6)):
            try:
                decimal_text(Decimal(getattr(line, name)), places)
            except (ValueError, InvalidOperation):
                problems.append(
                    {
                        "field": f"lines[{i}].{name}",
                        "message": f"a decimal string with at most {places} decimals and 12 digits before "
                        "the point",
                    }
                )
    if problems:
        raise ValidationFailed(
            "the prescription does not validate; correct the listed fields", details=problems
        )
    return bill


def create_app(
    config: AgentConfig,
    outbox: Outbox,
    uploader: Uploader | None,
    his_token: str,
    *,
    card_reader: CardReader | None = None,
    vouchers: VoucherVerifier | None = None,
    policy: PolicyStore | None = None,
    policy_client: PolicyClient | None = None,
    desk: DeskChecks | None = None,
    dropfolder_status: Callable[[], dict[str, Any]] | None = None,
    users: UserStore | None = None,
    heartbeats: HeartbeatSender | None = None,
) -> web.Application:
    """The HIS API; the card reader, the voucher verifier and the policy store are optional (tests).

    ``policy``: the blacklist is checked at each settlement; ``policy_client`` adds its update state to
    ``GET /v1/status``, and so does ``dropfolder_status`` (the drop folder's files and counts).
    ``heartbeats``: the heartbeat sender's state (``GET /v1/status`` ``heartbeat``; null without one).
    ``users``: the cashiers' and doctors' tokens; by default ``HOME/users.db`` is opened here and
    closed with the app.
    """
    token_bytes = his_token.encode()
    own_users = users is None
    user_store = open_users(config) if users is None else users

    def caller_of(request: web.Request) -> Principal:
        auth = request.headers.get("Authorization", "")
        given = auth[7:].strip() if auth.startswith("Bearer ") else ""
        if not given:
            raise Unauthorized(
                "no bearer token: send 'Authorization: Bearer <token>' with the token from the agent's "
                "his.token file (the HIS integration) or the signed-in cashier's or doctor's own token"
            )
        if hmac.compare_digest(given.encode(), token_bytes):
            return HIS_SYSTEM
        return user_store.authenticate(given)

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path not in _OPEN_PATHS and not request.path.startswith(DESK_PREFIX + "/"):
                request[CALLER] = caller_of(request)
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            err = BodyTooLarge(f"request body is larger than {config.max_body_bytes} bytes")
            return _error(err.http_status, err.to_wire())
        except (AgentError, ProtocolError) as exc:
            return _error(*error_answer(exc))

    async def post_settlement(request: web.Request) -> web.Response:
        status, answer = await settle_body(
            await request.read(), config, outbox, vouchers=vouchers, policy=policy, desk=desk,
            caller=request[CALLER],
        )  # fmt: skip
        return web.json_response(answer, status=status)

    async def post_preview(request: web.Request) -> web.Response:
        body = await request.read()
        record, _digest = parse_settlement(
            body, fixmedins_code=config.fixmedins_code or None, caller=request[CALLER]
        )
        refuse_blacklisted(policy, record)
        outcome = await desk.settle(record, acct_balance=account_balance(body)) if desk is not None else None
        checks = outcome.to_json() if outcome is not None else None
        amounts = {k: getattr(record, k) for k in ("medfee_sumamt", *SPLIT_FIELDS)}
        return web.json_response({"preview": True, "amounts": amounts, "checks": checks})

    async def post_prescription(request: web.Request) -> web.Response:
        require_role(request, _DOCTOR_SIDE, "checking a prescription")
        if desk is None:
            raise NotFound("this agent runs without the rule library")
        bill = prescription_bill(await request.read(), config.fixmedins_code, config.hosp_lv)
        return web.json_response(await desk.prescription(bill))

    async def get_medications(request: web.Request) -> web.Response:
        require_role(request, _DOCTOR_SIDE, "a patient's medication history")
        if desk is None:
            raise NotFound("this agent runs without the rule library")
        try:
            days = int(request.query.get("days", "90"))
        except ValueError:
            days = 0
        if not 1 <= days <= 366:
            raise ValidationFailed(
                "bad query parameter", details=[{"field": "days", "message": "whole days, 1 to 366"}]
            )
        return web.json_response(await desk.medications(request.match_info["psn_no"], days))

    def policy_json() -> dict[str, Any] | None:
        if policy_client is not None:
            return policy_client.status()
        if policy is not None:
            return policy_status(config, policy)
        return None

    async def post_reversal(request: web.Request) -> web.Response:
        require_role(request, _CASHIER_SIDE, "reversing a settlement")
        req = parse_reversal(await request.read())
        receipt = await outbox.append_reversal(request.match_info["setl_id"], req, config.fixmedins_code)
        return web.json_response(receipt.to_json(), status=200 if receipt.duplicate else 201)

    async def get_status(request: web.Request) -> web.Response:
        policy_state = policy_json()
        alarms = list(outbox.alarms.values()) + (policy_state["alarms"] if policy_state else [])
        if desk is not None:
            alarms += list(desk.alarms.values())
        return web.json_response(
            {
                "agent_id": config.agent_id,
                "fixmedins_code": config.fixmedins_code,
                "outbox": outbox.status(),
                "central": uploader.status() if uploader else {"reachable": None, "last_upload_at": None},
                "alarms": sorted(alarms, key=lambda a: a["code"]),
                "policy": policy_state,
                "heartbeat": heartbeats.status() if heartbeats is not None else None,
                "caller": request[CALLER].to_json(),
                **({"dropfolder": dropfolder_status()} if dropfolder_status is not None else {}),
            }
        )

    async def get_card(request: web.Request) -> web.Response:
        if card_reader is None:
            raise NoReader("this agent runs without a card reader (started with card reading off)")
        text = request.query.get("wait", "0")
        try:
            wait = float(text)
        except ValueError:
            wait = -1.0
        if not 0 <= wait <= MAX_CARD_WAIT_S:
            raise ValidationFailed(
                "bad query parameter",
                details=[
                    {"field": "wait", "message": f"seconds to wait for a card, 0 to {MAX_CARD_WAIT_S:g}"}
                ],
            )
        identity = await identify_and_log(
            card_reader, outbox, wait, fixmedins_code=config.fixmedins_code, opter=request[CALLER].name
        )
        stats = card_reader.stats
        # The card office's word on this card (``cards`` bundle): replaced / data outdated, and notices.
        notes: dict[str, Any] = {"correction": None, "notices": []}
        if policy is not None:
            notes = policy.card_notes(identity.card_sn)
        return _identity_json(
            identity,
            read={
                "card_apdus": stats.card_apdus,
                "psam_apdus": stats.psam_apdus,
                "ms": round(stats.seconds * 1e3),
            },
            **notes,
        )

    async def post_card_lost(request: web.Request) -> web.Response:
        """The cashier reports a card lost: chained as a ``lost`` card log, 201 once durable."""
        caller = require_role(request, _CASHIER_SIDE, "report a lost card")
        try:
            body = _lost_decoder.decode(await request.read())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValidationFailed(
                "body must be JSON {\"card_sn\": \"…\", \"reason\": \"…\"}", details=[{"message": str(exc)}]
            ) from None
        receipt = await report_lost(
            outbox, fixmedins_code=config.fixmedins_code, opter=caller.name, card_sn=body.card_sn,
            reason=body.reason,
        )  # fmt: skip
        return web.json_response(
            {"log_id": receipt.setl_id, "seq": receipt.seq, "hash": receipt.hash.hex(), "event": "lost"},
            status=201,
        )

    async def post_evoucher(request: web.Request) -> web.Response:
        if vouchers is None:
            raise VoucherRejected(
                "this agent runs without an e-voucher verifier; call IT", code="evoucher_unknown_issuer"
            )
        try:
            qr = _qr_decoder.decode(await request.read()).qr
        except msgspec.MsgspecError as exc:
            raise ValidationFailed(
                'the body must be {"qr": "<the scanned text>"}',
                details=[{"field": "qr", "message": str(exc)}],
            ) from None
        return _identity_json(await asyncio.to_thread(vouchers.verify, qr))

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response(request[CALLER].to_json())

    # The description of this API, read once: HIS vendors generate clients from it (no token needed).
    openapi_doc = importlib.resources.files(__package__).joinpath("openapi.json").read_bytes()

    async def get_openapi(request: web.Request) -> web.Response:
        return web.Response(body=openapi_doc, content_type="application/json")

    app = web.Application(middlewares=[errors], client_max_size=config.max_body_bytes)
    app.router.add_post("/v1/settlements", post_settlement)
    app.router.add_post("/v1/settlements/{setl_id}/reversal", post_reversal)
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/v1/card", get_card)
    app.router.add_post("/v1/card/lost", post_card_lost)
    app.router.add_post("/v1/settlements/preview", post_preview)
    app.router.add_post("/v1/checks/prescription", post_prescription)
    app.router.add_get("/v1/persons/{psn_no}/medications", get_medications)
    app.router.add_post("/v1/evoucher", post_evoucher)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/whoami", whoami)
    app.router.add_get("/openapi.json", get_openapi)
    from .national import add_national_routes  # the national envelope, agent/national/ (docs/NATIONAL.md)

    add_national_routes(
        app, config, outbox, card_reader=card_reader, vouchers=vouchers, policy=policy, desk=desk
    )
    add_desk_routes(app, config, outbox, his_token=his_token, users=user_store, card_reader=card_reader,
                    vouchers=vouchers, policy=policy, desk=desk)  # the desk pages: docs/DESK.md  # fmt: skip
    if own_users:

        async def close_users(_app: web.Application) -> None:
            user_store.close()

        app.on_cleanup.append(close_users)
    return app
