"""``GET /metrics`` of the centre: Prometheus text format, for the people who run the collector.

Why it is shaped this way:

- **One registry per app**, never prometheus-client's global default: tests run several centres and
  agents in one process, and a module-level metric would add them up.
- **Read at scrape time** from ``central.db`` and the TUF repository: agents' acked seq, last seen and
  bundles behind, the newest bundle per area and kind, the published TUF versions and expiries, the
  latest screening runs and how many settlements wait to be screened. Nothing on the ingest path has
  to keep a gauge up to date, and a restarted centre shows the truth at once. The page is built on a
  store reader thread (``Store.run_async``): no SQLite on the event loop.
- **Counted as it happens**: requests by route template and status with their latency, and ingest
  (batches by answer code, records stored / duplicate / rejected, seconds per batch), which the batch
  handler reports with ``observe_ingest`` from the ``BatchAck`` (or the error) it answers.
- **No personal data, by construction.** Label values are codes only: route templates (never the path:
  ``/v1/persons/{psn_no}/history`` holds a psn_no), methods, statuses, answer and error codes checked
  against a pattern, agent ids, pooling areas, bundle kinds, TUF roles, screening kinds.
- **Auth.** The page names every agent and what it runs, like ``GET /v1/agents``, so it answers an
  enabled operator's bearer token (``yibao-central operators add``; a Prometheus job sends it with
  ``authorization: {credentials_file: …}``), and agent and bundle series are narrowed to the
  operator's pooling areas as ``/v1/agents`` is. ``open_access=True`` serves it to anyone: a
  development machine only.

Wiring (``central.api.create_app``): ``install(app, metrics, store=…, repo=…)`` with getters of the
app's store and repository, so this module never imports ``central.api`` back.

Label rules, the HTTP counters and the scrape loop are ``protocol.metrics``, shared with the agent.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from protocol.bundles import KINDS
from protocol.metrics import (
    CONTENT_TYPE,
    METRICS_PATH,
    TUF_ROLES,
    HttpMetrics,
    answer_observed,
    code_label,
    epoch,
    gauge,
    read_sources,
)

from .errors import CentralError

if TYPE_CHECKING:
    from central.policy.tuf_repo import TufRepository
    from central.storage.store import Store

__all__ = ["CONTENT_TYPE", "METRICS_KEY", "METRICS_PATH", "CentralMetrics", "install"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Agent ids and pooling areas are the centre's own codes; a value that is not one is not shown.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SCREEN_KINDS = ("incremental", "full")
_INGEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _family(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class CentralMetrics:
    """Every metric of one centre; the store and repository are handed to ``install`` and ``exposition``."""

    def __init__(self, *, open_access: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.open_access = open_access
        self.clock = clock
        #: What is counted as it happens; the state read at scrape time is added by ``exposition``.
        self.registry = CollectorRegistry()
        self.http = HttpMetrics(
            "yibao_central",
            self.registry,
            requests_doc="Requests answered, by route template and status",
            duration_doc="Time to answer a request",
        )
        self.ingest_batches = Counter(
            "yibao_central_ingest_batches",
            "Batches answered, by answer code (stored, duplicate, gap) or error code",
            ["code"],
            registry=self.registry,
        )
        self.ingest_records = Counter(
            "yibao_central_ingest_records",
            "Records in batch answers: stored (newly held, refused ones too), duplicate, rejected (refused)",
            ["outcome"],
            registry=self.registry,
        )
        self.ingest_duration = Histogram(
            "yibao_central_ingest_duration_seconds",
            "Time to answer one batch (verify, chain check, store; refused batches too)",
            buckets=_INGEST_BUCKETS,
            registry=self.registry,
        )
        self.cluster_batches = Counter(
            "yibao_central_cluster_batches",
            "Batches any collector on this database stored, as NOTIFY announced them (SQLite: 0)",
            registry=self.registry,
        )
        self.collect_errors = Counter(
            "yibao_central_metrics_collect_errors",
            "Scrapes where reading one source failed (it was left out)",
            ["source"],
            registry=self.registry,
        )

    # ---- what callers report ----------------------------------------------------------------------

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http.observe(method, route, status, seconds)

    def observe_ingest(
        self, records: int, seconds: float, code: str = "stored", *, duplicates: int = 0, rejected: int = 0
    ) -> None:
        """One batch answered after ``seconds``: ``records`` newly stored, ``code`` the answer's code."""
        self.ingest_batches.labels(code_label(code)).inc()
        for outcome, count in (("stored", records), ("duplicate", duplicates), ("rejected", rejected)):
            if count > 0:
                self.ingest_records.labels(outcome).inc(count)
        self.ingest_duration.observe(max(0.0, seconds))

    def exposition(self, store: Store, repo: TufRepository | None, scope: frozenset[str] | None) -> bytes:
        """The page; agent and bundle series only of the areas in ``scope`` (None: every area).

        Reads ``central.db`` through ``store.read``: call it on a store thread (``Store.run_async``).
        """
        return generate_latest(_Page(self, store, repo, scope))

    # ---- read at scrape time ----------------------------------------------------------------------

    def _agents(self, conn: sqlite3.Connection, scope: frozenset[str] | None) -> Iterator[Metric]:
        from central.intake.reports import agent_views

        acked = _family(
            "yibao_central_agent_acked_seq", "Highest contiguous seq held of each agent", "agent_id"
        )
        seen = _family(
            "yibao_central_agent_last_seen_timestamp_seconds",
            "When each agent last uploaded a batch (Unix time)",
            "agent_id",
        )
        revoked = _family("yibao_central_agent_revoked", "1 for a revoked agent", "agent_id")
        reported = _family(
            "yibao_central_agent_policy_report_timestamp_seconds",
            "When each agent's newest policy report was received (Unix time)",
            "agent_id",
        )
        behind = _family(
            "yibao_central_agent_bundles_behind",
            "Bundle seqs each agent is behind the newest published for its area, per kind",
            "agent_id",
            "kind",
        )
        beat = _family(
            "yibao_central_agent_heartbeat_timestamp_seconds",
            "When each agent's newest signed heartbeat was received (Unix time); silent after 180 s",
            "agent_id",
        )
        records_behind = _family(
            "yibao_central_agent_records_behind",
            "Records each agent had settled, by its newest heartbeat, that the centre does not hold",
            "agent_id",
        )
        held = 0
        for view in agent_views(conn):
            area, agent_id = view.get("pooling_area"), str(view["agent_id"])
            if (scope is not None and area not in scope) or not _ID.match(agent_id):
                continue
            acked.add_metric([agent_id], view["last_seq"])
            held += view["last_seq"]
            if (last_seen := epoch(view["last_seen"])) is not None:
                seen.add_metric([agent_id], last_seen)
            revoked.add_metric([agent_id], 1.0 if view["revoked"] else 0.0)
            policy = view.get("policy") or {}
            if (received := epoch(policy.get("received_at"))) is not None:
                reported.add_metric([agent_id], received)
            for kind, lag in (view.get("behind") or {}).items():
                if lag is not None and kind in KINDS:
                    behind.add_metric([agent_id, kind], lag)
            if (hb := view.get("heartbeat")) is not None:
                if (received := epoch(hb["received_at"])) is not None:
                    beat.add_metric([agent_id], received)
                records_behind.add_metric([agent_id], hb["records_behind"])
        yield from (acked, seen, revoked, reported, behind, beat, records_behind)
        yield gauge(
            "yibao_central_records_held",
            "Chain records held (stored, rejected or lost) of the agents shown: the sum of their acked seqs",
            held,
        )

    def _bundles(self, conn: sqlite3.Connection, scope: frozenset[str] | None) -> Iterator[Metric]:
        now = self.clock()
        seq = _family(
            "yibao_central_bundle_seq", "Newest bundle published, per area and kind", "area", "kind"
        )
        age = _family(
            "yibao_central_bundle_age_seconds", "Time since the newest bundle was published", "area", "kind"
        )
        rows = conn.execute(
            "SELECT b.area, b.kind, b.seq, b.created FROM bundles AS b WHERE b.seq = (SELECT max(seq) "
            "FROM bundles WHERE area = b.area AND kind = b.kind) ORDER BY b.area, b.kind"
        ).fetchall()
        for area, kind, newest, created in rows:
            if (scope is not None and area not in scope) or not _ID.match(str(area)) or kind not in KINDS:
                continue
            seq.add_metric([area, kind], newest)
            if (at := epoch(created)) is not None:
                age.add_metric([area, kind], max(0.0, now - at))
        yield from (seq, age)

    def _screening(self, conn: sqlite3.Connection) -> Iterator[Metric]:
        from central.monitoring.screening import CURSOR_KEY

        runs = CounterMetricFamily(
            "yibao_central_screen_runs", "Screening runs recorded, per kind", labels=["kind"]
        )
        duration = _family(
            "yibao_central_screen_last_duration_seconds",
            "How long the latest finished run took (wall time; the sum of its phases per worker when that is "
            "longer than the one-second resolution of the run's timestamps)",
            "kind",
        )
        finished = _family(
            "yibao_central_screen_last_finished_timestamp_seconds", "When the latest run finished", "kind"
        )
        settlements = _family(
            "yibao_central_screen_last_settlements", "Settlements the latest finished run screened", "kind"
        )
        hits = _family("yibao_central_screen_last_hits", "Rule hits of the latest finished run", "kind")
        new = _family(
            "yibao_central_screen_last_new_suspicions", "New suspicions of the latest finished run", "kind"
        )
        counts = dict(conn.execute("SELECT kind, count(*) FROM screen_runs GROUP BY kind").fetchall())
        for kind in _SCREEN_KINDS:
            runs.add_metric([kind], counts.get(kind, 0))
            row = conn.execute(
                "SELECT started_at, finished_at, settlements, hits, new_suspicions, detail FROM screen_runs "
                "WHERE kind = ? AND finished_at IS NOT NULL ORDER BY id DESC LIMIT 1",
                (kind,),
            ).fetchone()
            if row is None:
                continue
            started_at, finished_at, n, h, s, detail = row
            done = epoch(finished_at)
            if done is not None:
                finished.add_metric([kind], done)
            duration.add_metric([kind], _run_seconds(epoch(started_at), done, detail))
            settlements.add_metric([kind], n)
            hits.add_metric([kind], h)
            new.add_metric([kind], s)
        yield from (runs, duration, finished, settlements, hits, new)
        cursor = conn.execute("SELECT value FROM settings WHERE key = ?", (CURSOR_KEY,)).fetchone()
        newest = conn.execute("SELECT coalesce(max(rowid), 0) FROM settlements").fetchone()[0]
        yield gauge(
            "yibao_central_screen_backlog_settlements",
            "Settlements and reversals ingested and not yet reached by incremental screening",
            max(0, newest - (int(cursor[0]) if cursor else 0)),
        )

    def _tuf(self, repo: TufRepository | None) -> Iterator[Metric]:
        if repo is None:
            return
        version = _family("yibao_central_tuf_version", "Published TUF metadata version, per role", "role")
        expires = _family(
            "yibao_central_tuf_expires_timestamp_seconds", "When the published metadata expires", "role"
        )
        for role, md in zip(
            TUF_ROLES,
            (repo.root_md(), repo.timestamp_md(), repo.snapshot_md(), repo.targets_md()),
            strict=True,
        ):
            version.add_metric([role], md.signed.version)
            expires.add_metric([role], md.signed.expires.timestamp())
        yield from (version, expires)

    def sources(
        self, store: Store, repo: TufRepository | None, scope: frozenset[str] | None
    ) -> Iterable[tuple[str, Callable[[], Iterable[Metric]]]]:
        return (
            ("agents", lambda: store.read(lambda c: list(self._agents(c, scope)))),
            ("bundles", lambda: store.read(lambda c: list(self._bundles(c, scope)))),
            ("screening", lambda: store.read(lambda c: list(self._screening(c)))),
            ("tuf", lambda: list(self._tuf(repo))),
        )


def _run_seconds(started: float | None, finished: float | None, detail: str) -> float:
    wall = finished - started if started is not None and finished is not None else 0.0
    try:
        info: dict[str, Any] = json.loads(detail or "{}")
        phases = sum(float(v) for v in (info.get("seconds") or {}).values())
        workers = max(1, int(info.get("workers") or 1))
    except (ValueError, TypeError, AttributeError):
        phases, workers = 0.0, 1
    return max(0.0, wall, phases / workers)


class _Page:
    """One scrape: the live counters, then each source read now; a failing source is left out and counted."""

    def __init__(
        self, metrics: CentralMetrics, store: Store, repo: TufRepository | None, scope: frozenset[str] | None
    ) -> None:
        self.metrics, self.store, self.repo, self.scope = metrics, store, repo, scope

    def collect(self) -> Iterator[Metric]:
        sources = self.metrics.sources(self.store, self.repo, self.scope)
        read = list(read_sources(sources, self.metrics.collect_errors, log))
        yield from self.metrics.registry.collect()
        yield from read


METRICS_KEY = web.AppKey("metrics", CentralMetrics)


def install(
    app: web.Application,
    metrics: CentralMetrics,
    *,
    store: Callable[[], Store],
    repo: Callable[[], TufRepository | None],
) -> None:
    """Count every request of ``app`` and serve ``GET /metrics``; ``store``/``repo`` give the app's own."""

    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await answer_observed(request, handler, metrics.observe_request)

    async def get_metrics(request: web.Request) -> web.Response:
        from .operators import operator_by_token

        held = store()
        scope: frozenset[str] | None = None
        if not metrics.open_access:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            bearer = token.strip() if scheme.lower() == "bearer" else None
            try:
                operator = await held.read_async(lambda c: operator_by_token(c, bearer))
            except CentralError as exc:
                return web.json_response(exc.to_wire(), status=exc.http_status)
            scope = operator.scope
        body = await held.run_async(metrics.exposition, held, repo(), scope)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})

    app[METRICS_KEY] = metrics
    app.middlewares.insert(0, count_requests)
    app.router.add_get(METRICS_PATH, get_metrics)
