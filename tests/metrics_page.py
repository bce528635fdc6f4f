"""Reading a ``GET /metrics`` page as Prometheus does: fetched with ``curl``, parsed by prometheus-client.

Shared by the agent's and the centre's metrics tests (``tests/agent/test_metrics.py``,
``tests/central/test_metrics.py``).
"""

from __future__ import annotations

import shutil
import subprocess

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["curl", "samples", "value"]

if shutil.which("curl") is None:  # make test installs it (Makefile SYSDEPS): fail, never skip
    raise RuntimeError("curl not found: apt-get install curl (make test does this)")


def curl(url: str, token: str | None) -> tuple[int, str]:
    """``curl`` as a scrape job runs it: (HTTP status, body). Blocking: from an event loop, on a thread."""
    args = ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}"]
    if token is not None:
        args += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, timeout=30, check=True).stdout
    text, _, status = out.rpartition("\n")
    return int(status), text


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the page by (name, sorted labels), as prometheus-client's parser reads it."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(page: dict, name: str, **labels: str) -> float | None:
    return page.get((name, tuple(sorted(labels.items()))))
