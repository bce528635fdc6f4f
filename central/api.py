"""The collector's HTTP API (aiohttp).

Routes (``protocol.wire`` names the paths and the header):

- ``POST /v1/agents/enroll`` JSON ``EnrollRequest`` → 201 JSON ``EnrollResponse`` (200 when
  the same token and key are replayed); errors 400 ``decode_malformed``, 401
  ``token_invalid`` / ``token_expired`` / ``token_used``.
- ``POST /v1/batches`` msgpack batch → msgpack ``BatchAck``: 200 ``stored`` / ``duplicate``,
  409 ``gap``. Errors are msgpack ``{"error": {"code", "message"}}``: 400
  ``decode_malformed`` / ``protocol_unsupported``, 403 ``agent_unknown`` / ``agent_revoked``,
  409 ``chain_conflict``, 413 ``decode_limit_exceeded``, 415 ``content_type_unsupported``,
  422 ``signature_invalid`` / ``chain_broken``.
- ``GET /v1/agents`` JSON list of agents; ``GET /v1/health`` ``{"ok": true}``.

Every request may carry ``Yibao-Protocol``; answers carry the version chosen. No handler
touches SQLite on the event loop: reads, verification and writes run on the store's threads.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from aiohttp import web

from protocol.wire import BATCH_PATH, ENROLL_PATH, MSGPACK, PROTOCOL_HEADER, encode_ack, negotiate

from .config import CentralConfig
from .enrol import decode_enroll_request, enrol_agent
from .errors import CentralError, InternalError, LimitExceededError, ProtocolUnsupported, UnsupportedMediaType
from .ingest import Ingestor
from .store import Store, agent_summary, list_agents

__all__ = ["CONFIG_KEY", "INGESTOR_KEY", "STORE_KEY", "create_app", "serve"]

log = logging.getLogger(__name__)

CONFIG_KEY = web.AppKey("config", CentralConfig)
STORE_KEY = web.AppKey("store", Store)
INGESTOR_KEY = web.AppKey("ingestor", Ingestor)

_msgpack = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()


def _error(exc: CentralError, *, as_msgpack: bool, version: int | None = None) -> web.Response:
    headers = {PROTOCOL_HEADER: str(version)} if version else {}
    if as_msgpack:
        body = _msgpack.encode(exc.to_wire())
        return web.Response(status=exc.http_status, body=body, content_type=MSGPACK, headers=headers)
    body = _json.encode(exc.to_wire())
    return web.Response(status=exc.http_status, body=body, content_type="application/json", headers=headers)


def _internal(as_msgpack: bool) -> web.Response:
    exc = InternalError("the centre failed to handle the request; it was logged, retry later")
    return _error(exc, as_msgpack=as_msgpack)


def _version(request: web.Request) -> int:
    version = negotiate(request.headers.get(PROTOCOL_HEADER))
    if version is None:
        raise ProtocolUnsupported(
            f"{PROTOCOL_HEADER}: {request.headers.get(PROTOCOL_HEADER)!r} offers no version this centre "
            "speaks; upgrade the agent or the centre"
        )
    return version


async def _body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise LimitExceededError(f"body of {request.content_length} bytes exceeds the {limit} limit")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise LimitExceededError(f"body exceeds the {limit} limit; send smaller batches") from None


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def agents(request: web.Request) -> web.Response:
    rows = await request.app[STORE_KEY].read_async(list_agents)
    return web.json_response([agent_summary(row) for row in rows])


async def enroll(request: web.Request) -> web.Response:
    version = None
    try:
        version = _version(request)
        data = await _body(request, request.app[CONFIG_KEY].client_max_size)
        enrol_request = decode_enroll_request(data)
        store = request.app[STORE_KEY]
        response, created = await store.run_async(enrol_agent, store, enrol_request)
    except CentralError as exc:
        log.info("enrolment refused (%s) from %s", exc.code, request.remote)
        return _error(exc, as_msgpack=False, version=version)
    except Exception:
        log.exception("enrolment failed")
        return _internal(as_msgpack=False)
    log.info("agent %s enrolled for %s", response.agent_id, response.fixmedins_code)
    return web.Response(
        status=201 if created else 200,
        body=_json.encode(response),
        content_type="application/json",
        headers={PROTOCOL_HEADER: str(version)},
    )


async def batches(request: web.Request) -> web.Response:
    version = None
    try:
        version = _version(request)
        if request.content_type != MSGPACK:
            raise UnsupportedMediaType(f"batches are {MSGPACK}, not {request.content_type or 'untyped'}")
        data = await _body(request, request.app[CONFIG_KEY].client_max_size)
        ack = await request.app[INGESTOR_KEY].ingest_async(data, remote=request.remote)
    except CentralError as exc:
        log.info("batch refused (%s) from %s: %s", exc.code, request.remote, exc.message)
        return _error(exc, as_msgpack=True, version=version)
    except Exception:
        log.exception("batch ingestion failed")
        return _internal(as_msgpack=True)
    return web.Response(
        status=409 if ack.code == "gap" else 200,
        body=encode_ack(ack),
        content_type=MSGPACK,
        headers={PROTOCOL_HEADER: str(version)},
    )


def create_app(config: CentralConfig) -> web.Application:
    """The application; it opens the store on startup and closes it on cleanup."""
    app = web.Application(client_max_size=config.client_max_size)
    app[CONFIG_KEY] = config

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        store = await loop.run_in_executor(None, Store, config.db_path)
        app[STORE_KEY] = store
        app[INGESTOR_KEY] = Ingestor(store, config.batch_limits)
        try:
            yield
        finally:
            await loop.run_in_executor(None, store.close)

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/agents", agents)
    app.router.add_post(ENROLL_PATH, enroll)
    app.router.add_post(BATCH_PATH, batches)
    return app


async def serve(config: CentralConfig, *, on_started: Callable[[list[Any]], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or cancellation), then close the store cleanly."""
    host, port = config.host_port
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        addresses = list(runner.addresses)
        log.info("yibao-central serving %s on %s", config.home, addresses)
        if on_started is not None:
            on_started(addresses)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    finally:
        await runner.cleanup()
