"""Recording a screen's findings as suspicions: every one new, then the same run again (all found again).

What ``tests/central/test_suspicions.py`` used to time: ``central.monitoring.suspicions.record_findings`` in
one
write transaction of the centre's store (``central.storage.store.Store``, a fresh ``central.db``), with
findings that differ by settlement (each its own fact key), about persons of two pooling areas. The
second call is a re-screen: every fact is held, so each finding refreshes its suspicion. Limit (the
test's bound): 10 s per call for the test's 20,000 findings; a full screen finds ~100,000
(``--findings 100000``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import Failed, emit, parse_args

from central.monitoring.suspicions import Finding, record_findings
from central.storage.store import Store
from protocol.rules import Hit

LIMIT_S = 10.0
AREAS = (("110100", "H11010100001"), ("370200", "H37021100001"))


def findings(n: int) -> list[Finding]:
    out = []
    for i in range(n):
        area, hospital = AREAS[i % 2]
        psn = f"P{i % 5000:010d}"
        hit = Hit(
            rule_id="R-DUP", rule_version=1, template="duplicate_medication", severity="warn", mode="enforce",
            action="prompt", overridable=True, message="Drug X overlaps by 10 days.", lines=("1", "2"),
            evidence=({"value": 10 + i % 20, "threshold": 10},), psn_no=psn, setl_id=f"S{i:07d}",
        )  # fmt: skip
        finding = Finding(
            hit=hit, object_type="person", object_id=psn, area=area, fixmedins_code=hospital,
            setl_ids=(f"S{i:07d}", f"S{i:07d}-PREV"), amount_fen=5120 + i % 1000, weight=60,
        )  # fmt: skip
        out.append(finding)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--findings", type=int, default=20_000)
    args = parse_args(ap, findings=2_000)
    fs = findings(args.findings)
    with tempfile.TemporaryDirectory(prefix="bench-suspicions-") as d:
        with Store(Path(d) / "central.db", create=True) as store:
            t = time.perf_counter()
            first = store.write(lambda c: record_findings(c, fs, run_id=1, at="2026-11-24T10:00:00+00:00"))
            new_s = time.perf_counter() - t
            t = time.perf_counter()
            again = store.write(lambda c: record_findings(c, fs, run_id=2, at="2026-11-25T10:00:00+00:00"))
            again_s = time.perf_counter() - t
            count = "SELECT count(*), min(times_found) FROM suspicions"
            held = store.read(lambda c: c.execute(count).fetchone())
        size = sum(f.stat().st_size for f in Path(d).glob("central.db*"))
    if first != {"new": args.findings, "again": 0} or again != {"new": 0, "again": args.findings}:
        raise Failed(f"expected {args.findings} new then found again, got {first} then {again}")
    if tuple(held) != (args.findings, 2):
        raise Failed(f"the store holds {tuple(held)} (suspicions, least times found)")
    emit(
        "suspicions_record_new_s",
        new_s,
        "s",
        ratio=new_s / LIMIT_S,
        ratio_to=f"test_bound_{LIMIT_S:g}_s",
        findings=args.findings,
        note="record_findings, every finding a new suspicion, one transaction",
    )
    emit(
        "suspicions_record_again_s",
        again_s,
        "s",
        ratio=again_s / LIMIT_S,
        ratio_to=f"test_bound_{LIMIT_S:g}_s",
        note="the same findings again: every suspicion refreshed",
    )
    emit("suspicions_record_new_per_s", args.findings / new_s, "per_s")
    emit("suspicions_record_again_per_s", args.findings / again_s, "per_s")
    emit("suspicions_db_bytes", size, "bytes", findings=args.findings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
