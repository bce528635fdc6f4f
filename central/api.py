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
- ``GET /v1/agents`` JSON list of agents, each with its pooling area, last policy report and how many
  bundle seqs it is behind per kind; ``GET /v1/health`` ``{"ok": true}``.
- ``GET /tuf/metadata/<file>`` and ``GET /tuf/targets/<path>``: the TUF repository, static files
  (names checked against the repository's own naming, never a path outside it; 404 otherwise).
- ``GET /v1/policy/changes?have=N[&wait=S]`` → JSON ``{"timestamp_version": V}`` at once when V > N,
  else when a newer timestamp appears or after ``policy_poll_s`` (or ``wait``, if shorter).
  Publishes come from other processes (the CLI), so the server watches ``timestamp.json``.
- ``POST /v1/agents/report`` msgpack signed ``PolicyReport`` → msgpack ``{"stored": bool}``; errors
  as for batches: 403 ``agent_unknown`` / ``agent_revoked``, 422 ``signature_invalid``, 400
  ``decode_malformed``, 413, 415.
- ``POST /v1/agents/heartbeat`` msgpack signed ``Heartbeat`` (``central.intake.heartbeats``) → msgpack
  ``{"stored": bool, "acked_seq": N}``: the centre's held seq, so an idle agent learns when a
  restored centre holds less than it acknowledged and resends; the same errors.
- ``GET /v1/agents/records?after=SEQ&limit=N`` signed like the history lookup, by the agent itself →
  msgpack ``{"records": [chain entry bytes], "acked_seq": N}``: its own entries the centre holds after
  ``after`` (``central.intake.resync``), for an agent restored from an older backup.
- ``GET /v1/persons/{psn_no}/history?days=N`` signed by an enrolled agent (``protocol.wire.sign_request``
  headers) → JSON history and year-to-date totals (``central.intake.history``); JSON errors 401
  ``request_unsigned`` / ``request_stale``, 403 ``agent_unknown`` / ``agent_revoked``, 422
  ``signature_invalid``, 400 ``decode_malformed``. The access log of ``serve`` never shows a psn_no.

In the background the server re-signs the snapshot and timestamp before they expire, recomputes new
settlements' splits (``central.monitoring.split_audit``) and screens them
(``central.monitoring.screening.screen_new``)
seconds after their batch is ingested.

Every request may carry ``Yibao-Protocol``; answers carry the version chosen. No handler
touches SQLite on the event loop: reads, verification and writes run on the store's threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from central.intake.enrol import decode_enroll_request, enrol_agent
from central.intake.heartbeats import MAX_HEARTBEAT_BYTES, record_heartbeat
from central.intake.history import answer_history
from central.intake.ingest import Ingestor
from central.intake.reports import MAX_REPORT_BYTES, agent_views, record_report
from central.intake.resync import answer_records
from central.monitoring.risk_routes import add_routes as add_risk_routes
from central.monitoring.routes import add_routes as add_monitor_routes
from central.policy.cards import add_routes as add_card_gate_routes
from central.policy.tuf_repo import TufRepository
from central.storage.base import SETTLEMENTS_CHANNEL, is_postgres
from central.storage.store import Store, get_agent, open_store
from protocol.sdnotify import keep_watchdog, notify
from protocol.wire import (
    AGENT_HEADER,
    BATCH_PATH,
    CERT_RENEW_PATH,
    ENROLL_PATH,
    HEARTBEAT_PATH,
    MSGPACK,
    PERSON_HISTORY_PATH,
    POLICY_CHANGES_PATH,
    POLICY_REPORT_PATH,
    PROTOCOL_HEADER,
    RECORDS_PATH,
    TLS_TRUST_PATH,
    TUF_METADATA_PATH,
    TUF_TARGETS_PATH,
    PolicyChanges,
    encode_ack,
    negotiate,
)

from .appkeys import CONFIG_KEY, REPO_KEY, STORE_KEY, error_response
from .config import CentralConfig
from .errors import (
    AgentMismatch,
    AgentRevoked,
    AgentUnknown,
    CentralError,
    ClientCertRequired,
    InternalError,
    LimitExceededError,
    MalformedRequest,
    NotFound,
    ProtocolUnsupported,
    UnsupportedMediaType,
)
from .metrics import METRICS_KEY, CentralMetrics
from .metrics import install as install_metrics
from .tls import ServerTls, TlsFiles, issue_client_cert, peer_agent_id
from .web.routes import add_routes as add_console_routes

__all__ = [
    "CONFIG_KEY",
    "INGESTOR_KEY",
    "REPO_KEY",
    "STORE_KEY",
    "WATCHER_KEY",
    "ChangeWatcher",
    "RedactingAccessLogger",
    "app_runner",
    "create_app",
    "is_agent_route",
    "serve",
]

log = logging.getLogger(__name__)

INGESTOR_KEY = web.AppKey("ingestor", Ingestor)


class ChangeWatcher:
    """The published timestamp version, followed on disk, and the long-pollers waiting for a newer one.

    ``poll`` costs one ``stat`` unless ``timestamp.json`` was replaced; then it reads the version
    and wakes every waiter. ``close`` (server shutdown) wakes them all for good.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.version = 0
        self.closed = False
        self._seen: tuple[int, int, int] | None = None
        self._event = asyncio.Event()

    def poll(self) -> bool:
        try:
            st = os.stat(self.path)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if key == self._seen:
                return False
            version = int(json.loads(self.path.read_bytes())["signed"]["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        self._seen = key
        if version == self.version:
            return False
        self.version = version
        self._wake()
        return True

    def _wake(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def close(self) -> None:
        self.closed = True
        self._wake()

    async def wait_newer(self, have: int, timeout: float) -> int:
        """The version once it exceeds ``have``, or the current one after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.version <= have and not self.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), remaining)
        return self.version


WATCHER_KEY = web.AppKey("changes", ChangeWatcher)
_METADATA_FILE = re.compile(r"^(?:[1-9][0-9]{0,9}\.(?:root|snapshot|targets)|timestamp)\.json$")
_TARGET_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")

_msgpack = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()


_error = error_response


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
    """Enrolled agents with their versions and how far behind they are: for operators, of their areas.

    The list names every hospital's agent, its key and what it runs, so it answers only an operator's
    bearer token (``yibao-central operators add``), narrowed to the pooling areas the operator manages.
    """
    from .operators import operator_by_token

    store = request.app[STORE_KEY]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    try:
        op = await store.read_async(
            lambda c: operator_by_token(c, token.strip() if scheme.lower() == "bearer" else None)
        )
    except CentralError as exc:
        return _error(exc, as_msgpack=False)
    views = await store.read_async(agent_views)
    return web.json_response([v for v in views if v.get("pooling_area") in op.scope])


def _not_found(what: str) -> web.Response:
    return _error(NotFound(f"{what} is not in this repository"), as_msgpack=False)


async def tuf_metadata(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if not _METADATA_FILE.match(name):
        return _not_found("metadata file")
    path = request.app[REPO_KEY].metadata_dir / name
    if not path.is_file():
        return _not_found(f"metadata {name}")
    # Versioned files never change; timestamp.json is replaced on every publish and re-signing.
    cache = "no-cache" if name == "timestamp.json" else "public, max-age=31536000, immutable"
    return web.FileResponse(path, headers={"Cache-Control": cache, "Content-Type": "application/json"})


async def tuf_target(request: web.Request) -> web.StreamResponse:
    rel = request.match_info["path"]
    parts = rel.split("/")
    if len(parts) > 8 or not all(_TARGET_SEGMENT.match(p) for p in parts):
        return _not_found("target")
    root = request.app[REPO_KEY].targets_dir
    path = root.joinpath(*parts)
    try:
        if not path.resolve(strict=True).is_relative_to(root.resolve()) or not path.is_file():
            return _not_found("target")
    except OSError:
        return _not_found("target")
    return web.FileResponse(
        path,
        headers={
            "Cache-Control": "public, max-age=31536000, immutable",
            "Content-Type": "application/octet-stream",
        },
    )


def _query_number(request: web.Request, name: str, default: float, cast: type) -> Any:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = cast(text)
    except ValueError:
        raise MalformedRequest(f"{name}={text!r} is not a number") from None
    if value < 0:
        raise MalformedRequest(f"{name} must not be negative")
    return value


async def policy_changes(request: web.Request) -> web.Response:
    config = request.app[CONFIG_KEY]
    try:
        have = _query_number(request, "have", 0, int)
        wait = min(_query_number(request, "wait", config.policy_poll_s, float), config.policy_poll_s)
    except CentralError as exc:
        return _error(exc, as_msgpack=False)
    version = await request.app[WATCHER_KEY].wait_newer(have, wait)
    return web.Response(
        body=_json.encode(PolicyChanges(timestamp_version=version)),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _signed_statement_route(
    what: str, max_bytes: int, record: Callable[..., dict[str, Any]]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A route taking an agent's signed msgpack statement (policy report, heartbeat); answers what
    ``record`` returns (``{"stored": bool}``, and for a heartbeat the centre's ``acked_seq``)."""

    async def route(request: web.Request) -> web.Response:
        version = None
        try:
            version = _version(request)
            if request.content_type != MSGPACK:
                raise UnsupportedMediaType(f"{what}s are {MSGPACK}, not {request.content_type or 'untyped'}")
            data = await _body(request, max_bytes)
            store = request.app[STORE_KEY]
            peer = request.get(PEER_KEY)
            answer = await store.run_async(
                lambda: record(store, data, remote=request.remote, peer_agent=peer)
            )
        except CentralError as exc:
            log.info("%s refused (%s) from %s: %s", what, exc.code, request.remote, exc.message)
            return _error(exc, as_msgpack=True, version=version)
        except Exception:
            log.exception("storing a %s failed", what)
            return _internal(as_msgpack=True)
        return web.Response(
            body=_msgpack.encode(answer),
            content_type=MSGPACK,
            headers={PROTOCOL_HEADER: str(version)},
        )

    return route


agent_report = _signed_statement_route(
    "policy report", MAX_REPORT_BYTES, lambda *a, **kw: {"stored": record_report(*a, **kw)}
)
agent_heartbeat = _signed_statement_route("heartbeat", MAX_HEARTBEAT_BYTES, record_heartbeat)


async def enroll(request: web.Request) -> web.Response:
    version = None
    try:
        version = _version(request)
        data = await _body(request, request.app[CONFIG_KEY].client_max_size)
        enrol_request = decode_enroll_request(data)
        config = request.app[CONFIG_KEY]
        if not enrol_request.csr and not config.insecure_dev:
            # Checked before the token is spent: the agent can enrol again with a CSR.
            raise MalformedRequest(
                "this centre serves mutual TLS and the enrolment carries no certificate signing request: "
                "enrol with `yibao-agent init --central https://… --ca-hash sha256:…`"
            )
        store = request.app[STORE_KEY]
        root = await asyncio.get_running_loop().run_in_executor(
            None, request.app[REPO_KEY].current_root_bytes
        )
        response, created = await store.run_async(lambda: enrol_agent(store, enrol_request, tuf_root=root))
        if enrol_request.csr and TlsFiles(config.tls_dir).exists():
            cert = await asyncio.get_running_loop().run_in_executor(
                None,
                lambda: issue_client_cert(
                    config.tls_dir, enrol_request.csr, response.agent_id, days=config.client_cert_days
                ),
            )
            response = msgspec.structs.replace(response, client_cert=cert)
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
    metrics, started = request.app[METRICS_KEY], time.perf_counter()
    try:
        version = _version(request)
        if request.content_type != MSGPACK:
            raise UnsupportedMediaType(f"batches are {MSGPACK}, not {request.content_type or 'untyped'}")
        data = await _body(request, request.app[CONFIG_KEY].client_max_size)
        ack = await request.app[INGESTOR_KEY].ingest_async(
            data, remote=request.remote, peer_agent=request.get(PEER_KEY)
        )
    except CentralError as exc:
        log.info("batch refused (%s) from %s: %s", exc.code, request.remote, exc.message)
        metrics.observe_ingest(0, time.perf_counter() - started, exc.code)
        return _error(exc, as_msgpack=True, version=version)
    except Exception:
        log.exception("batch ingestion failed")
        metrics.observe_ingest(0, time.perf_counter() - started, InternalError.code)
        return _internal(as_msgpack=True)
    seconds = time.perf_counter() - started
    metrics.observe_ingest(
        ack.stored, seconds, ack.code, duplicates=ack.duplicates, rejected=len(ack.rejected)
    )
    return web.Response(
        status=409 if ack.code == "gap" else 200,
        body=encode_ack(ack),
        content_type=MSGPACK,
        headers={PROTOCOL_HEADER: str(version)},
    )


async def person_history(request: web.Request) -> web.Response:
    version = None
    try:
        version = _version(request)
        store = request.app[STORE_KEY]
        body = await store.run_async(
            lambda: answer_history(
                store,
                method=request.method,
                path_qs=request.raw_path,
                headers=request.headers,
                psn_no=request.match_info["psn_no"],
                days=request.query.getall("days", []),
                remote=request.remote,
            )
        )
    except CentralError as exc:
        log.info("history request refused (%s) from %s", exc.code, request.remote)
        return _error(exc, as_msgpack=False, version=version)
    except Exception:
        log.exception("answering a history request failed")
        return _internal(as_msgpack=False)
    return web.Response(
        body=body,
        content_type="application/json",
        headers={PROTOCOL_HEADER: str(version), "Cache-Control": "no-store"},
    )


async def agent_records(request: web.Request) -> web.Response:
    """An agent's own entries the centre holds (``central.intake.resync``), for an agent restored from a
    backup."""
    version = None
    try:
        version = _version(request)
        store = request.app[STORE_KEY]
        body = await store.run_async(
            lambda: answer_records(
                store,
                method=request.method,
                path_qs=request.raw_path,
                headers=request.headers,
                after=request.query.getall("after", []),
                limit=request.query.getall("limit", []),
                remote=request.remote,
                peer_agent=request.get(PEER_KEY),
            )
        )
    except CentralError as exc:
        log.info("records request refused (%s) from %s", exc.code, request.remote)
        return _error(exc, as_msgpack=True, version=version)
    except Exception:
        log.exception("answering a records request failed")
        return _internal(as_msgpack=True)
    return web.Response(
        body=body, content_type=MSGPACK, headers={PROTOCOL_HEADER: str(version), "Cache-Control": "no-store"}
    )


#: Routes only an enrolled agent uses: with TLS they need its client certificate (``central.tls`` rule 3).
_AGENT_EXACT = frozenset(
    {BATCH_PATH, POLICY_REPORT_PATH, HEARTBEAT_PATH, POLICY_CHANGES_PATH, CERT_RENEW_PATH, RECORDS_PATH}
)
_AGENT_PREFIXES = ("/tuf/", "/v1/persons/")
_MSGPACK_ROUTES = frozenset({BATCH_PATH, POLICY_REPORT_PATH, HEARTBEAT_PATH})
PEER_KEY = "peer_agent"


def is_agent_route(path: str) -> bool:
    return path in _AGENT_EXACT or path.startswith(_AGENT_PREFIXES)


def _mutual_tls(config: CentralConfig) -> Any:
    """Agent routes answer only a client certificate of an enrolled, unrevoked agent (unless insecure dev)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if config.insecure_dev or not is_agent_route(request.path):
            return await handler(request)
        as_msgpack = request.path in _MSGPACK_ROUTES
        transport = request.transport
        peer = peer_agent_id(transport.get_extra_info("peercert") if transport is not None else None)
        try:
            if peer is None:
                raise ClientCertRequired(
                    "this route needs the agent's TLS client certificate from enrolment; connect over "
                    "https with HOME/tls/client.crt (enrol again if the agent has none)"
                )
            agent = await request.app[STORE_KEY].read_async(lambda c: get_agent(c, peer))
            if agent is None:
                raise AgentUnknown(f"the client certificate names agent {peer!r}, which is not enrolled")
            if agent.revoked:
                raise AgentRevoked(f"agent {peer} was revoked at {agent.revoked_at}; its certificate is void")
            claimed = request.headers.get(AGENT_HEADER)
            if claimed is not None and claimed != peer:
                raise AgentMismatch(
                    f"the request is signed for agent {claimed!r} but came with the certificate of {peer!r}"
                )
        except CentralError as exc:
            log.info("agent route %s refused (%s) from %s", request.path, exc.code, request.remote)
            return _error(exc, as_msgpack=as_msgpack)
        request[PEER_KEY] = peer
        return await handler(request)

    return middleware


async def tls_trust(request: web.Request) -> web.StreamResponse:
    """The trust bundle agents pin at enrolment; its digest, not this answer, is what they trust."""
    path = TlsFiles(request.app[CONFIG_KEY].tls_dir).trust
    if not path.is_file():
        return _not_found("a TLS trust bundle (the centre serves --insecure-dev)")
    return web.Response(body=path.read_bytes(), content_type="application/x-pem-file")


async def renew_cert(request: web.Request) -> web.Response:
    """A new client certificate for the agent whose current one this request came with."""
    config = request.app[CONFIG_KEY]
    try:
        peer = request.get(PEER_KEY)
        if peer is None:
            raise ClientCertRequired("certificate renewal needs the agent's current client certificate")
        try:
            csr = json.loads(await _body(request, 64 * 1024)).get("csr")
        except (ValueError, AttributeError):
            csr = None
        if not isinstance(csr, str):
            raise MalformedRequest('renewal body must be JSON {"csr": "<PEM certificate signing request>"}')
        cert = await asyncio.get_running_loop().run_in_executor(
            None, lambda: issue_client_cert(config.tls_dir, csr, peer, days=config.client_cert_days)
        )
    except CentralError as exc:
        log.info("certificate renewal refused (%s) from %s", exc.code, request.remote)
        return _error(exc, as_msgpack=False)
    log.info("client certificate renewed for agent %s", peer)
    return web.json_response({"client_cert": cert})


_PERSON_SEGMENT = re.compile(r"^(/v1/persons/|/v1/monitor/cards/)[^/?]*")


class RedactingAccessLogger(AbstractAccessLogger):
    """The server's access log, with the psn_no in ``/v1/persons/…`` paths and the card number in
    ``/v1/monitor/cards/…`` replaced by ``-``."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = _PERSON_SEGMENT.sub(r"\1-", request.path)
        self.logger.info(
            '%s "%s %s" %d %d %.1f ms', request.remote, request.method, path, response.status,
            response.body_length, time * 1000,
        )  # fmt: skip


def create_app(config: CentralConfig, *, metrics: CentralMetrics | None = None) -> web.Application:
    """The application; it opens the store on startup and closes it on cleanup.

    ``metrics``: the registry ``GET /metrics`` serves (default: a new one, open only under insecure dev).
    """
    app = web.Application(client_max_size=config.client_max_size, middlewares=[_mutual_tls(config)])
    app[CONFIG_KEY] = config

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        repo = await loop.run_in_executor(None, TufRepository.open, config)
        store = await loop.run_in_executor(None, open_store, config)
        app[STORE_KEY] = store
        if is_postgres(store):
            counted = app[METRICS_KEY]

            def heard(_payload: str) -> None:
                counted.cluster_batches.inc()

            # Every collector hears every collector's stored batches (LISTEN/NOTIFY).
            store.listen(SETTLEMENTS_CHANNEL, heard)
        app[REPO_KEY] = repo
        app[INGESTOR_KEY] = Ingestor(store, config.batch_limits)
        watcher = ChangeWatcher(repo.metadata_dir / "timestamp.json")
        watcher.poll()
        app[WATCHER_KEY] = watcher
        tasks = [
            asyncio.create_task(_watch(watcher, config.changes_check_s), name="tuf-watch"),
            asyncio.create_task(_resign(store, repo, config, watcher), name="tuf-resign"),
            asyncio.create_task(_audit_splits(store, repo), name="split-audit"),
            asyncio.create_task(_screen_new(store, repo, SCREEN_INTERVAL_S), name="screen-new"),
            asyncio.create_task(_lift_suspensions(store, repo, config), name="lift-suspensions"),
        ]
        try:
            yield
        finally:
            watcher.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await loop.run_in_executor(None, store.close)

    async def on_shutdown(app: web.Application) -> None:
        if WATCHER_KEY in app:
            app[WATCHER_KEY].close()  # long-polls answer now rather than hold the shutdown

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/agents", agents)
    app.router.add_post(ENROLL_PATH, enroll)
    app.router.add_get(TLS_TRUST_PATH, tls_trust)
    app.router.add_post(CERT_RENEW_PATH, renew_cert)
    app.router.add_post(BATCH_PATH, batches)
    app.router.add_get(TUF_METADATA_PATH + "{name}", tuf_metadata)
    app.router.add_get(TUF_TARGETS_PATH + "{path:.+}", tuf_target)
    app.router.add_get(POLICY_CHANGES_PATH, policy_changes)
    app.router.add_post(POLICY_REPORT_PATH, agent_report)
    app.router.add_post(HEARTBEAT_PATH, agent_heartbeat)
    app.router.add_get(PERSON_HISTORY_PATH, person_history, allow_head=False)
    app.router.add_get(RECORDS_PATH, agent_records, allow_head=False)
    add_monitor_routes(app)
    add_risk_routes(app)
    add_card_gate_routes(app)
    add_console_routes(app, store=lambda: app[STORE_KEY], repo=lambda: app[REPO_KEY], config=config)
    install_metrics(
        app,
        metrics or CentralMetrics(open_access=config.insecure_dev),
        store=lambda: app[STORE_KEY],
        repo=lambda: app.get(REPO_KEY),
    )
    return app


def app_runner(config: CentralConfig, *, metrics: CentralMetrics | None = None) -> web.AppRunner:
    """The application's runner, with the access log that never shows a psn_no."""
    return web.AppRunner(create_app(config, metrics=metrics), access_log_class=RedactingAccessLogger)


async def _watch(watcher: ChangeWatcher, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        if watcher.poll():
            log.debug("timestamp version %d published", watcher.version)


def _one_collector(store: Store, job: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` unless another collector on the same database is doing ``job`` now (advisory lock); None then.

    With two collectors behind one address each runs the background jobs' loops; the lock makes one of
    them do each round's work, so TUF metadata is re-signed once and a settlement is audited once.
    """
    with store.exclusive(f"yibao-central:{job}") as held:
        return fn() if held else None


async def _audit_splits(store: Store, repo: TufRepository, interval: float = 5.0) -> None:
    """Recompute new settlements' splits shortly after ingest (``central.monitoring.split_audit``), off the
    hot path."""
    from central.monitoring.split_audit import audit_splits

    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        try:
            counts = await loop.run_in_executor(
                None, _one_collector, store, "split-audit", lambda: audit_splits(store, repo)
            )
            if counts and counts["flagged"]:
                log.warning("%d settlement(s) with a split that differs from the centre's", counts["flagged"])
        except Exception:
            log.exception("the split audit failed; retrying in %.0f s", interval)


#: Seconds between incremental screens (each one screens everything ingested since the last).
SCREEN_INTERVAL_S = 5.0


async def _screen_new(store: Store, repo: TufRepository, interval: float) -> None:
    """Screen new settlements seconds after a batch is ingested (``central.monitoring.screening.screen_new``):
    the persons and hospitals it touched, off the event loop, until level with what is held."""
    from central.monitoring.screening import screen_new

    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        try:
            while True:
                summary = await loop.run_in_executor(
                    None, _one_collector, store, "screen-new", lambda: screen_new(store, repo=repo)
                )
                if summary is None or summary["cursor"][0] == summary["cursor"][1]:
                    break
        except Exception:
            log.exception("the incremental screen failed; retrying in %.0f s", interval)


async def _lift_suspensions(
    store: Store, repo: TufRepository, config: CentralConfig, interval: float = 600.0
) -> None:
    """Lift suspensions whose ``until`` day has passed (``central.monitoring.review.lift_ended_suspensions``).

    Lifting is a signed blacklist removal: the server does it itself only when it holds operator keys
    (a demo or test home); a production server holds none, so it says, hourly, what an operator must run.
    """
    from central.monitoring.review import lift_ended_suspensions
    from central.policy.bundles import Actor, Policy

    from .operators import home_signers

    loop = asyncio.get_running_loop()
    actor = Actor("centre", "the suspension ended")
    warned = 0.0

    def lift(signers: list[Any]) -> list[dict[str, Any]]:
        policy = Policy(store, repo, config)
        done = _one_collector(
            store, "lift-suspensions", lambda: lift_ended_suspensions(store, actor, policy, signers)
        )
        return done or []

    def due(conn: sqlite3.Connection) -> int:
        return conn.execute(
            "SELECT count(*) FROM decisions WHERE kind = 'suspension' AND status = 'effective' AND until < ?",
            (date.today().isoformat(),),
        ).fetchone()[0]

    while True:
        try:
            signers = await loop.run_in_executor(None, home_signers, config)
            if signers:
                for d in await loop.run_in_executor(None, lift, signers):
                    log.info("suspension of a %s lifted (decision %d)", d["target_type"], d["id"])
            elif time.monotonic() - warned > 3600 and (n := await store.read_async(due)):
                log.warning("%d suspension(s) ended and are still enforced by the agents: run "
                            "`yibao-central decisions publish` with the operator keys", n)  # fmt: skip
                warned = time.monotonic()
        except Exception:
            log.exception("lifting ended suspensions failed; retrying in %.0f s", interval)
        await asyncio.sleep(interval)


async def _resign(store: Store, repo: TufRepository, config: CentralConfig, watcher: ChangeWatcher) -> None:
    """Re-sign snapshot and timestamp (online keys) before they expire; warn about operator roles."""
    loop = asyncio.get_running_loop()
    interval = min(config.resign_check_s, config.timestamp_expiry_s / 4, config.snapshot_expiry_s / 4)
    warned: float | None = None
    while True:
        try:
            version = await loop.run_in_executor(
                None, _one_collector, store, "tuf-resign", repo.resign_online
            )
            if version is not None:
                log.info("re-signed the online TUF roles: timestamp v%d", version)
                watcher.poll()
            if warned is None or time.monotonic() - warned > 3600:
                warnings = await loop.run_in_executor(None, repo.expiry_warnings)
                for text in warnings:
                    log.warning("%s", text)
                warned = time.monotonic()
        except Exception:
            log.exception("re-signing the online TUF roles failed; retrying in %.0f s", interval)
        await asyncio.sleep(interval)


async def _watch_tls(tls: ServerTls, interval: float = 60.0) -> None:
    """Pick up a rotated server certificate; warn daily while it is close to expiry."""
    warned = 0.0
    while True:
        await asyncio.sleep(interval)
        try:
            if tls.reload_if_changed():
                log.info("loaded the new server certificate (until %s)", tls.server_cert_info().not_after)
            info = tls.server_cert_info()
            if info.expiring and time.monotonic() - warned > 86_400:
                log.warning(
                    "the server certificate expires in %.0f days (%s): run `yibao-central tls rotate`",
                    info.days_left, info.not_after,
                )  # fmt: skip
                warned = time.monotonic()
        except Exception:
            log.exception("checking the server certificate failed; retrying in %.0f s", interval)


def server_tls(config: CentralConfig) -> ServerTls | None:
    """The server's TLS, or None with a loud warning under ``--insecure-dev``."""
    if config.insecure_dev:
        log.warning("INSECURE DEV MODE: plain HTTP, no client certificates on agent routes; not for use")
        return None
    return ServerTls(config.tls_dir)


async def serve(config: CentralConfig, *, on_started: Callable[[list[Any]], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or cancellation), then close the store cleanly."""
    host, port = config.host_port
    tls = server_tls(config)
    runner = app_runner(config)
    await runner.setup()
    watch = asyncio.create_task(_watch_tls(tls, config.tls_check_s)) if tls is not None else None
    try:
        site = web.TCPSite(
            runner, host, port, ssl_context=tls.context if tls else None, reuse_port=config.reuse_port or None
        )
        await site.start()
        addresses = list(runner.addresses)
        scheme = "https" if tls else "http"
        log.info("yibao-central serving %s on %s (%s)", config.home, addresses, scheme)
        if on_started is not None:
            on_started(addresses)
        notify(f"READY=1\nSTATUS=serving {scheme} on {addresses}")
        # The pings run on the event loop: a loop that hangs stops them and systemd restarts the centre.
        pings = asyncio.create_task(keep_watchdog())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            notify("STOPPING=1")
            pings.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    finally:
        if watch is not None:
            watch.cancel()
        await runner.cleanup()
