"""What the centre's route modules share without importing ``central.api``: the application's keys
(its config, store and TUF repository) and the one way an error becomes a response.

Why a module of its own: ``central.api`` builds the application and registers every route module
(monitoring, risk, console); a route module that imported ``central.api`` back for these would make an
import circle. Route modules import this instead, and ``create_app`` hands them the rest.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from central.policy.tuf_repo import TufRepository
from central.storage.store import Store
from protocol.wire import MSGPACK, PROTOCOL_HEADER

from .config import CentralConfig
from .errors import CentralError

__all__ = ["CONFIG_KEY", "REPO_KEY", "STORE_KEY", "error_response"]

CONFIG_KEY = web.AppKey("config", CentralConfig)
STORE_KEY = web.AppKey("store", Store)
REPO_KEY = web.AppKey("tuf_repo", TufRepository)

_msgpack = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()


def error_response(exc: CentralError, *, as_msgpack: bool, version: int | None = None) -> web.Response:
    """The error's code and message on the wire, as msgpack (agents) or JSON (operators)."""
    headers = {PROTOCOL_HEADER: str(version)} if version else {}
    if as_msgpack:
        body = _msgpack.encode(exc.to_wire())
        return web.Response(status=exc.http_status, body=body, content_type=MSGPACK, headers=headers)
    body = _json.encode(exc.to_wire())
    return web.Response(status=exc.http_status, body=body, content_type="application/json", headers=headers)
