"""Console page times with a large queue: p95 of each main page's GET, logged in, 100,000 suspicions.

A real ``yibao-central serve`` (its own process, ``--insecure-dev``) over a centre database holding
``--suspicions`` suspicions (``central.monitoring.suspicions.record_findings``, half in each of two pooling
areas),
an operator logged in through the console's own form (nonce, session cookie). Each page is fetched
``--rounds`` times: the queue's first page, a filtered queue page, one suspicion, the fleet, the
analysis, the risk map and the audit log. The headline is the worst page's p95; the issue's bound is
300 ms (``ratio`` = value / 300).
"""

from __future__ import annotations

import argparse
import http.cookiejar
import re
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from _centre import Centre, central_cli
from _common import Failed, emit, parse_args
from suspicions import findings

from central.config import CentralConfig
from central.monitoring.suspicions import record_findings
from central.storage.store import Store

LIMIT_MS = 300.0


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suspicions", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=40)
    args = parse_args(ap, suspicions=2_000, rounds=5)
    with tempfile.TemporaryDirectory(prefix="bench-console-") as d:
        home = Path(d) / "central"
        centre = Centre(home, tls=False)
        try:
            with Store(CentralConfig.from_home(home).db_path) as store:
                store.write(lambda c: record_findings(c, findings(args.suspicions), run_id=1,
                                                      at="2026-11-24T10:00:00+00:00"))  # fmt: skip
                first = "SELECT id FROM suspicions WHERE area = '370200' ORDER BY id LIMIT 1"
                sid = store.read(lambda c: c.execute(first).fetchone()[0])
            token = central_cli(home, "operators", "add", "bench", "--area", "370200", "--role",
                                "supervisor").strip()  # fmt: skip
            jar = http.cookiejar.CookieJar()
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
            with opener.open(centre.url + "/console/login") as resp:
                nonce = re.search(r'name="nonce" value="([^"]+)"', resp.read().decode()).group(1)
            form = urllib.parse.urlencode({"nonce": nonce, "token": token, "next": "/console/suspicions"})
            with opener.open(centre.url + "/console/login", data=form.encode()) as resp:
                if 'id="operator"' not in resp.read().decode():
                    raise Failed("the console login did not reach the queue")
            pages = {
                "queue": "/console/suspicions",
                "queue_filtered": "/console/suspicions?rule=R-DUP&hospital=H37021100001&min_yuan=58",
                "suspicion": f"/console/suspicions/{sid}",
                "fleet": "/console/fleet",
                "analysis": "/console/analysis",
                "map": "/console/map",
                "audit": "/console/audit",
            }
            times: dict[str, list[float]] = {name: [] for name in pages}
            for _ in range(args.rounds):
                for name, path in pages.items():
                    t = time.perf_counter()
                    with opener.open(centre.url + path) as resp:
                        body = resp.read()
                        if resp.status != 200 or b'id="operator"' not in body:
                            raise Failed(f"{path} answered {resp.status} without the page")
                    times[name].append((time.perf_counter() - t) * 1000)
        finally:
            centre.stop()
    worst = max(p95(v) for v in times.values())
    emit("console_page_p95_ms", worst, "ms", worst / LIMIT_MS, suspicions=args.suspicions, rounds=args.rounds)
    for name, values in times.items():
        emit(f"console_{name}_p95_ms", p95(values), "ms", p95(values) / LIMIT_MS)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
