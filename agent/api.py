"""The HIS-facing HTTP API.

Every answer that changes something is given only after the record is durable in the
outbox. Errors are JSON ``{"error": {"code", "message", "details"?}}`` with a stable code;
a bad request changes nothing.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from protocol.errors import ProtocolError

from .config import AgentConfig
from .errors import AgentError, BodyTooLarge, Unauthorized
from .intake import parse_reversal, parse_settlement
from .store import Outbox
from .uploader import Uploader

__all__ = ["create_app"]

log = logging.getLogger("yibao.agent.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_OPEN_PATHS = {"/v1/health"}


def _error(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status)


def create_app(
    config: AgentConfig, outbox: Outbox, uploader: Uploader | None, his_token: str
) -> web.Application:
    token_bytes = his_token.encode()

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path not in _OPEN_PATHS:
                auth = request.headers.get("Authorization", "")
                given = auth[7:].strip().encode() if auth.startswith("Bearer ") else b""
                if not given or not hmac.compare_digest(given, token_bytes):
                    raise Unauthorized(
                        "missing or wrong HIS token: send 'Authorization: Bearer <token>' with the "
                        "token from the agent's his.token file"
                    )
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            err = BodyTooLarge(f"request body is larger than {config.max_body_bytes} bytes")
            return _error(err.http_status, err.to_wire())
        except AgentError as exc:
            return _error(exc.http_status, exc.to_wire())
        except ProtocolError as exc:
            return _error(exc.http_status, {"error": exc.to_wire()})

    async def post_settlement(request: web.Request) -> web.Response:
        body = await request.read()
        record, digest = parse_settlement(body, fixmedins_code=config.fixmedins_code or None)
        receipt = await outbox.append_settlement(record, digest)
        return web.json_response(receipt.to_json(), status=200 if receipt.duplicate else 201)

    async def post_reversal(request: web.Request) -> web.Response:
        req = parse_reversal(await request.read())
        receipt = await outbox.append_reversal(request.match_info["setl_id"], req, config.fixmedins_code)
        return web.json_response(receipt.to_json(), status=200 if receipt.duplicate else 201)

    async def get_status(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "agent_id": config.agent_id,
                "fixmedins_code": config.fixmedins_code,
                "outbox": outbox.status(),
                "central": uploader.status() if uploader else {"reachable": None, "last_upload_at": None},
                "alarms": sorted(outbox.alarms.values(), key=lambda a: a["code"]),
            }
        )

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[errors], client_max_size=config.max_body_bytes)
    app.router.add_post("/v1/settlements", post_settlement)
    app.router.add_post("/v1/settlements/{setl_id}/reversal", post_reversal)
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/v1/health", health)
    return app
