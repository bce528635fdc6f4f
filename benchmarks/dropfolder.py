"""The drop folder of a real ``yibao-agent serve``: a burst of N settlement files, time until all are settled.

The setting of ``tests/integration/test_dropfolder_crash.py``'s burst, which used to assert the bound:
``yibao-central serve`` (``_centre.Centre``) and ``yibao-agent serve`` in their own processes, the
agent enrolled with ``yibao-agent init`` and a token from ``yibao-central enroll-token``, its drop
folder with 8 workers, a 100 ms stable wait and a 0.5 s periodic scan, the uploader draining the
outbox to the centre meanwhile over mutual TLS, as deployed (``--plain``: both in their
``--insecure-dev`` plain HTTP). The HIS writes each file under a ``.tmp`` name and renames it into
``inbox/`` (the contract), as fast as it can; the clock starts before the first file is written and
stops when ``done/`` holds every file. Then every file is checked settled exactly once (one outbox
settlement, one result naming it, the input in ``done/``, nothing rejected) and the outbox drained to
the centre. Limit (the test's bound): 60 s for 5,000 files (scaled to N for other sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from _centre import Centre, Failed, Served, agent_init, free_port
from _common import emit, example_settlement, parse_args

LIMIT_S = 60.0
LIMIT_FILES = 5_000
HOSPITAL = "H37021100001"


def start_agent(home: Path, centre: Centre, workers: int) -> tuple[Served, str]:
    agent_init(home, centre, HOSPITAL, centre.token)
    config = json.loads((home / "agent.json").read_text())
    config.update(
        {
            "backoff_initial_s": 0.05,
            "backoff_max_s": 0.5,
            "idle_poll_s": 0.2,
            "dropfolder": "drop",
            "dropfolder_stable_ms": 100,
            "dropfolder_poll_s": 0.5,
            "dropfolder_workers": workers,
        }
    )
    (home / "agent.json").write_text(json.dumps(config))
    port = free_port()
    url, listen = f"http://127.0.0.1:{port}", ["--listen", f"127.0.0.1:{port}"]
    agent = Served("yibao-agent", home, url, listen, log_name="yibao-agent.log")
    return agent, (home / "his.token").read_text().strip()


def status(agent: Served, token: str) -> dict[str, Any]:
    req = urllib.request.Request(agent.url + "/v1/status", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def count(root: Path, d: str) -> int:
    try:
        return sum(1 for n in os.listdir(root / d) if not n.startswith("."))
    except FileNotFoundError:
        return 0


def drop(root: Path, n: int) -> list[str]:
    """The HIS: each file under a .tmp name, then renamed into inbox/; returns the names in order."""
    (root / "inbox").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"B-{i:06d}.json"
        tmp = root / "inbox" / (name + ".tmp")
        tmp.write_text(json.dumps(example_settlement(f"B-{i:06d}")))
        os.rename(tmp, root / "inbox" / name)
        names.append(name)
    return names


def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise Failed(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


def check_exactly_once(agent_home: Path, root: Path, names: list[str]) -> int:
    """Each file settled once, its result naming the outbox's settlement; returns the seq drift."""
    if count(root, "inbox") or count(root, "processing") or count(root, "rejected"):
        raise Failed("files left in inbox/, processing/ or rejected/")
    if sorted(os.listdir(root / "done")) != sorted(names):
        raise Failed("done/ differs from the files dropped")
    with sqlite3.connect(agent_home / "agent.db") as db:
        held = dict(db.execute("SELECT his_setl_no, setl_id FROM settlements"))
    if len(held) != len(names):
        raise Failed(f"the outbox holds {len(held)} settlements for {len(names)} files")
    drift = 0
    for i, name in enumerate(names):
        answer = json.loads((root / "results" / name).read_text())
        if answer["setl_id"] != held[name.removesuffix(".json")]:
            raise Failed(f"{name}: the result names another settlement")
        drift = max(drift, abs(answer["seq"] - (i + 1)))
    return drift


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=LIMIT_FILES)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--plain", action="store_true", help="plain HTTP (--insecure-dev) instead of mutual TLS")
    args = parse_args(ap, files=200)
    with tempfile.TemporaryDirectory(prefix="bench-dropfolder-") as d:
        tmp = Path(d)
        centre = Centre(tmp / "central", HOSPITAL, tls=not args.plain)
        agent = None
        try:
            (tmp / "agent").mkdir()
            agent, token = start_agent(tmp / "agent", centre, args.workers)
            root = tmp / "agent" / "drop"
            t0 = time.perf_counter()
            names = drop(root, args.files)
            written_s = time.perf_counter() - t0
            wait(lambda: count(root, "done") + count(root, "rejected") >= args.files, 600, "every file done")
            settled_s = time.perf_counter() - t0
            drift = check_exactly_once(tmp / "agent", root, names)
            wait(lambda: status(agent, token)["outbox"]["pending"] == 0, 300, "the outbox drained")
            drained_s = time.perf_counter() - t0
            shown = status(agent, token)["dropfolder"]
            if (shown["settled"], shown["rejected_files"]) != (args.files, 0):
                raise Failed(f"GET /v1/status shows {shown}")
        finally:
            if agent is not None:
                agent.stop()
            centre.stop()
    limit = LIMIT_S * args.files / LIMIT_FILES
    emit(
        "dropfolder_settle_all_s",
        settled_s,
        "s",
        ratio=settled_s / limit,
        ratio_to=f"test_bound_{LIMIT_S:g}_s_per_{LIMIT_FILES}_files",
        files=args.files,
        workers=args.workers,
        transport="http (--insecure-dev)" if args.plain else "https, mutual TLS",
        note="first file written to every file in done/, yibao-agent serve, uploader running",
    )
    emit("dropfolder_files_per_s", args.files / settled_s, "per_s", files=args.files)
    emit("dropfolder_write_s", written_s, "s", note="the HIS writing and renaming the files")
    emit("dropfolder_drained_s", drained_s, "s", note="first file written to the outbox empty at the centre")
    emit("dropfolder_seq_drift_count", drift, "count",
         note="largest distance between a file's arrival position and its outbox seq")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
