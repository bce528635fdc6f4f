"""What the agent's and the centre's ``GET /metrics`` pages share: label rules, families, the scrape loop.

It lives in ``protocol`` because both sides serve such a page and must not import each other; it only
builds prometheus-client objects in memory and times a handler it is given (no server, no file, no
I/O), so the package stays pure. Each side keeps its own sources (``agent.metrics``, ``central.metrics``).

Rules every page follows:

1. One ``CollectorRegistry`` per app, never prometheus-client's global one: several agents and centres
   run in one test process, and a module-level metric would add them up.
2. Label values are codes only: a route *template*, never the path (``/v1/persons/{psn_no}/…``), a known
   method, a status, and error codes that match ``[a-z][a-z0-9_]*`` (anything else, a message or a value
   from a request, is folded into ``other``). So no person or card number can reach the page.
3. A source read at scrape time that fails is left out and counted (``…_metrics_collect_errors``); the
   rest of the page still comes back.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = [
    "CONTENT_TYPE",
    "METRICS_PATH",
    "TUF_ROLES",
    "HttpMetrics",
    "answer_observed",
    "code_label",
    "counter",
    "epoch",
    "gauge",
    "read_sources",
    "route_label",
]

METRICS_PATH = "/metrics"
#: The text format ``generate_latest`` writes (prometheus-client's own constant changed name across
#: versions; the format did not).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TUF_ROLES = ("root", "timestamp", "snapshot", "targets")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")

Source = Callable[[], Iterable[Metric]]


def code_label(value: object) -> str:
    """``value`` if it has the shape of an error or outcome code, else ``other`` (rule 2)."""
    text = str(value)
    return text if _CODE.match(text) else "other"


def route_label(request: Any) -> str:
    """The aiohttp route template that matched (``/v1/persons/{psn_no}/history``), never the path itself."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


async def answer_observed(
    request: Any, handler: Callable[[Any], Awaitable[Any]], observe: Callable[[str, str, int, float], None]
) -> Any:
    """``await handler(request)``, then ``observe(method, route, status, seconds)`` of the answer it gave.

    For an aiohttp middleware on either side: an ``HTTPException`` counts under its status, any other
    exception under 500 (what aiohttp answers), a request the client gave up on not at all.
    """
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except asyncio.CancelledError:  # the client went away: nobody was given a status
        status = 0
        raise
    except Exception as exc:
        status = exc.status if isinstance(getattr(exc, "status", None), int) else 500  # aiohttp HTTPException
        raise
    finally:
        if status:
            observe(request.method, route_label(request), status, time.perf_counter() - start)


def epoch(text: str | None) -> float | None:
    """Stored ISO-8601 text → Unix seconds (naive means UTC); None when absent or unreadable."""
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def gauge(name: str, doc: str, value: float | None = None, labels: dict[str, str] | None = None) -> Metric:
    """A gauge family with at most one sample; ``value`` None yields the family with none."""
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    if value is not None:
        family.add_metric(list((labels or {}).values()), float(value))
    return family


def counter(name: str, doc: str, value: float) -> Metric:
    """A counter family with one sample, for counts another object keeps (read at scrape time)."""
    family = CounterMetricFamily(name, doc)
    family.add_metric([], float(value))
    return family


class HttpMetrics:
    """Requests answered by method, route template and status, with their latency (rules 1-2)."""

    def __init__(
        self, prefix: str, registry: CollectorRegistry, *, requests_doc: str, duration_doc: str
    ) -> None:
        self.requests = Counter(
            f"{prefix}_http_requests", requests_doc, ["method", "route", "status"], registry=registry
        )
        self.duration = Histogram(
            f"{prefix}_http_request_duration_seconds", duration_doc, ["method", "route"], registry=registry
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "other"
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)


def read_sources(
    sources: Iterable[tuple[str, Source]], errors: Counter, log: logging.Logger
) -> Iterator[Metric]:
    """Every source's families, read now; one that raises is left out and counted in ``errors`` (rule 3)."""
    for name, read in sources:
        try:
            families = list(read())
        except Exception as exc:  # a damaged database or file must not take the other metrics with it
            log.warning("metrics: reading %s failed: %s", name, type(exc).__name__)
            errors.labels(name).inc()
            continue
        yield from families
