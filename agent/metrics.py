"""``GET /metrics`` of the agent: Prometheus text format, read from the objects the agent already has.

Why it is shaped this way:

- **One registry per app**, never prometheus-client's global default: several agents (and the centre)
  run in one test process, and a module-level metric would count all of them together.
- **Read at scrape time.** Outbox depth and age, the uploader's state, the bundles held and the alarms
  are read from ``Outbox``, ``Uploader``, ``PolicyStore`` and ``PolicyClient`` when Prometheus asks, so
  nothing on the settlement path has to remember to update a gauge. Only what is not kept anywhere
  (request counts and latencies, card error counts, upload latencies) is counted as it happens.
- **No personal data, by construction.** Label values are codes only: the route *template*
  (``/v1/persons/{psn_no}/medications``, never the path, which holds a psn_no), the HTTP method and
  status, error codes checked against a pattern (or the known card error codes), bundle kinds, TUF
  roles, the agent id and hospital code. No metric is ever labelled with a value from a request body.
- **Auth.** ``/metrics`` is not one of ``create_app``'s open paths, so its middleware asks for the HIS
  bearer token there as on every other route: the counts tell anyone on the host how many settlements
  this hospital makes and when, and a Prometheus scrape job sends the token with
  ``authorization: {credentials_file: …/his.token}``.

Wiring (``agent.service.serve`` / ``agent.api.create_app``)::

    metrics = AgentMetrics(config=config, outbox=outbox, uploader=uploader, policy=policy_store,
                           policy_client=policy_client)
    install(app, metrics)

``install`` must run on the app ``create_app`` returned, before it starts: the request counter goes
in front of ``create_app``'s error and token middleware (so 401s and 404s are counted too) and a
second middleware behind it sees the ``CardError`` a handler raises before it becomes JSON.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from protocol.bundles import KINDS
from protocol.metrics import (
    CONTENT_TYPE,
    METRICS_PATH,
    TUF_ROLES,
    HttpMetrics,
    answer_observed,
    code_label,
    counter,
    epoch,
    gauge,
    read_sources,
)

from .errors import CardError

if TYPE_CHECKING:
    from .config import AgentConfig
    from .heartbeat import HeartbeatSender
    from .policy import PolicyClient
    from .policy_store import PolicyStore
    from .store import Outbox
    from .uploader import Uploader

__all__ = ["CONTENT_TYPE", "METRICS_PATH", "AgentMetrics", "install"]

log = logging.getLogger("yibao.agent.metrics")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_UPLOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _card_codes() -> frozenset[str]:
    found, todo = set(), [CardError]
    while todo:
        cls = todo.pop()
        found.add(cls.code)
        todo.extend(cls.__subclasses__())
    return frozenset(found)


#: The codes a card identification can fail with (``agent.errors``); a card error counts under its code.
CARD_ERROR_CODES = _card_codes()


class AgentMetrics:
    """Every metric of one agent, in its own registry; each source object is optional (tests pass some).

    ``card_errors_from_api``: count the ``CardError`` that handlers raise (``GET /v1/card``). Turn it off
    if ``count_card_error`` is wired into ``CardReader.identify`` instead, or each error counts twice.
    """

    def __init__(
        self,
        *,
        config: AgentConfig | None = None,
        outbox: Outbox | None = None,
        uploader: Uploader | None = None,
        policy: PolicyStore | None = None,
        policy_client: PolicyClient | None = None,
        heartbeats: HeartbeatSender | None = None,
        card_errors_from_api: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.uploader = uploader
        self.policy = policy if policy is not None else (policy_client.store if policy_client else None)
        self.policy_client = policy_client
        self.heartbeats = heartbeats
        self.card_errors_from_api = card_errors_from_api
        self.clock = clock
        self.registry = CollectorRegistry()
        self.http = HttpMetrics(
            "yibao_agent",
            self.registry,
            requests_doc="HIS API requests answered, by route template and status",
            duration_doc="Time to answer a HIS API request",
        )
        self.card_errors = Counter(
            "yibao_agent_card_errors",
            "Card identifications that failed, by error code",
            ["code"],
            registry=self.registry,
        )
        self.upload_duration = Histogram(
            "yibao_agent_upload_duration_seconds",
            "One batch upload attempt to the centre, by outcome (ok or the error code)",
            ["outcome"],
            buckets=_UPLOAD_BUCKETS,
            registry=self.registry,
        )
        #: Not in the registry: the state collector yields it after the sources, so a failure shows at once.
        self.collect_errors = Counter(
            "yibao_agent_metrics_collect_errors",
            "Scrapes where reading one source failed (it was left out)",
            ["source"],
            registry=None,
        )
        self._last_upload_s: float | None = None
        self.registry.register(_StateCollector(self))

    # ---- what callers report ----------------------------------------------------------------------

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http.observe(method, route, status, seconds)

    def count_card_error(self, code: str) -> None:
        """One failed identification; ``code`` is a ``CardError`` code (anything else counts as other)."""
        self.card_errors.labels(code if code in CARD_ERROR_CODES else "other").inc()

    def observe_upload(self, seconds: float, outcome: str) -> None:
        """One upload attempt took ``seconds``; ``outcome`` is ``ok`` or the attempt's error code."""
        self.upload_duration.labels(code_label(outcome)).observe(max(0.0, seconds))

    def exposition(self) -> bytes:
        """The whole text page (reads the outbox and policy databases: call it off the event loop)."""
        return generate_latest(self.registry)

    # ---- read at scrape time ----------------------------------------------------------------------

    def _outbox(self) -> Iterator[Metric]:
        if self.outbox is None:
            return
        st = self.outbox.status()
        yield gauge(
            "yibao_agent_outbox_pending_records", "Records not yet accepted by the centre", st["pending"]
        )
        yield gauge("yibao_agent_outbox_pending_bytes", "Bytes of the records not yet accepted", st["bytes"])
        yield gauge(
            "yibao_agent_outbox_oldest_pending_age_seconds",
            "Age of the oldest record the centre has not accepted (0 when none is waiting)",
            st["oldest_age_s"] or 0.0,
        )
        yield gauge("yibao_agent_outbox_acked_seq", "Highest seq the centre acknowledged", st["acked_seq"])
        yield gauge("yibao_agent_outbox_last_seq", "Highest seq in the outbox", st["last_seq"])
        yield gauge(
            "yibao_agent_outbox_quarantined_records",
            "Records quarantined as corrupt on disk",
            st["quarantined"],
        )
        yield gauge(
            "yibao_agent_outbox_dead_letter_records", "Records the centre refused for good", st["dead_letter"]
        )
        yield gauge(
            "yibao_agent_outbox_limit_records",
            "Records the outbox holds before it refuses work",
            st["limit_records"],
        )
        yield gauge(
            "yibao_agent_outbox_limit_bytes",
            "Bytes the outbox holds before it refuses work",
            st["limit_bytes"],
        )

    def _uploader(self) -> Iterator[Metric]:
        up = self.uploader
        if up is None:
            return
        if up.reachable is not None:
            yield gauge(
                "yibao_agent_central_reachable",
                "1 when the last upload attempt reached the centre",
                1.0 if up.reachable else 0.0,
            )
        yield counter("yibao_agent_upload_batches", "Batches the centre acknowledged", up.batches_sent)
        yield counter("yibao_agent_upload_records_acked", "Records the centre acknowledged", up.records_acked)
        yield gauge(
            "yibao_agent_upload_last_success_timestamp_seconds",
            "When a batch was last acknowledged (Unix time)",
            up.last_upload_at,
        )
        yield gauge(
            "yibao_agent_upload_last_attempt_timestamp_seconds",
            "When an upload was last attempted (Unix time)",
            up.last_attempt_at,
        )
        # The uploader stamps an attempt's start and its acknowledgement: their difference is the last
        # successful attempt's latency, kept while a newer attempt is under way or failing.
        done, began = up.last_upload_at, up.last_attempt_at
        if done is not None and began is not None and done >= began:
            self._last_upload_s = done - began
        yield gauge(
            "yibao_agent_upload_last_duration_seconds",
            "Latency of the last acknowledged upload attempt",
            self._last_upload_s,
        )
        failing = GaugeMetricFamily(
            "yibao_agent_upload_last_error",
            "1 labelled with the last upload's error code while it fails",
            labels=["code"],
        )
        if up.last_error is not None:
            failing.add_metric([code_label(up.last_error)], 1.0)
        yield failing

    def _heartbeat(self) -> Iterator[Metric]:
        hb = self.heartbeats
        if hb is None:
            return
        yield counter("yibao_agent_heartbeats", "Signed heartbeats the centre stored", hb.sent)
        yield gauge(
            "yibao_agent_heartbeat_last_success_timestamp_seconds",
            "When the centre last stored a heartbeat (Unix time); it calls the agent silent after 180 s",
            hb.last_sent_at,
        )

    def _policy(self) -> Iterator[Metric]:
        store = self.policy
        if store is None:
            return
        now = self.clock()
        held = store.held()
        meta = store.meta()
        confirmed = meta.get("confirmed_at") or {}

        def per_kind(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"yibao_agent_policy_bundle_{name}", doc, labels=["kind"])

        seq = per_kind("seq", "Sequence of the bundle held, per kind")
        age = per_kind("age_seconds", "Time since the held bundle was created at the centre")
        applied = per_kind("applied_timestamp_seconds", "When the held bundle was applied here (Unix time)")
        entries = per_kind("entries", "Entries (blacklist) or items of the held bundle")
        confirmed_age = per_kind(
            "confirmed_age_seconds", "Time since a verified update last confirmed the held bundle current"
        )
        for kind in KINDS:
            h = held.get(kind)
            if h is None:
                continue
            seq.add_metric([kind], h["seq"])
            created = epoch(h["created"])
            if created is not None:
                age.add_metric([kind], max(0.0, now - created))
            applied.add_metric([kind], h["applied_at"])
            if h["entries"] is not None:
                entries.add_metric([kind], h["entries"])
            if isinstance(confirmed.get(kind), int | float):
                confirmed_age.add_metric([kind], max(0.0, now - confirmed[kind]))
        yield from (seq, age, applied, entries, confirmed_age)
        tuf = meta.get("tuf") or {}
        version = GaugeMetricFamily(
            "yibao_agent_policy_tuf_version", "Version of the TUF metadata last verified", labels=["role"]
        )
        expires = GaugeMetricFamily(
            "yibao_agent_policy_tuf_expires_timestamp_seconds",
            "When that metadata expires (Unix time)",
            labels=["role"],
        )
        for role in TUF_ROLES:
            if isinstance(tuf.get(role), int):
                version.add_metric([role], tuf[role])
            exp = epoch(tuf.get(f"{role}_expires"))
            if exp is not None:
                expires.add_metric([role], exp)
        yield from (version, expires)
        yield gauge(
            "yibao_agent_policy_last_success_timestamp_seconds",
            "When a policy update last succeeded (Unix time)",
            epoch(meta.get("last_success_at")),
        )

    def _policy_client(self) -> Iterator[Metric]:
        client = self.policy_client
        if client is None:
            return
        yield counter("yibao_agent_policy_reports_sent", "Signed policy reports posted", client.reports_sent)
        yield gauge(
            "yibao_agent_policy_report_last_timestamp_seconds",
            "When a policy report was last accepted (Unix time)",
            client.last_report_at,
        )

    def _alarms(self) -> Iterator[Metric]:
        if self.outbox is None and self.policy is None:
            return
        family = GaugeMetricFamily(
            "yibao_agent_alarm_active", "1 for each alarm raised and not cleared", labels=["source", "code"]
        )
        if self.outbox is not None:
            for code in sorted(dict(self.outbox.alarms)):
                family.add_metric(["outbox", code_label(code)], 1.0)
        if self.policy is not None:
            for alarm in self.policy.alarms():
                family.add_metric(["policy", code_label(alarm["code"])], 1.0)
        yield family

    def _info(self) -> Iterator[Metric]:
        if self.config is None:
            return
        labels = {
            "agent_id": self.config.agent_id,
            "fixmedins_code": self.config.fixmedins_code,
            "pooling_area": self.config.pooling_area,
        }
        yield gauge("yibao_agent_info", "The agent this page describes (always 1)", 1.0, labels)

    def sources(self) -> Iterable[tuple[str, Callable[[], Iterator[Metric]]]]:
        return (
            ("info", self._info),
            ("outbox", self._outbox),
            ("uploader", self._uploader),
            ("heartbeat", self._heartbeat),
            ("policy", self._policy),
            ("policy_client", self._policy_client),
            ("alarms", self._alarms),
        )


class _StateCollector:
    """Reads every source at scrape time; a source that fails is left out and counted, never the page."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from read_sources(self.metrics.sources(), self.metrics.collect_errors, log)
        yield from self.metrics.collect_errors.collect()


def install(app: web.Application, metrics: AgentMetrics) -> None:
    """Count every request of ``app`` and serve ``GET /metrics`` (behind the app's HIS token check)."""

    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await answer_observed(request, handler, metrics.observe_request)

    @web.middleware
    async def count_card_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except CardError as exc:
            if metrics.card_errors_from_api:
                metrics.count_card_error(exc.code)
            raise

    async def get_metrics(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})

    app.middlewares.insert(0, count_requests)
    app.middlewares.append(count_card_errors)
    app.router.add_get(METRICS_PATH, get_metrics)
