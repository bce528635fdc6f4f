"""The desk's checks: in-event rules + benefit split of a 20-line bill, and pre-event prompts.

In-event (the headline): for each settlement, the blacklist lookup (card, person, employer) in
a policy store holding a 10-million-entry card blacklist, then ``DeskChecks.settle`` — the
sample rule set over the person's history in an agent database holding 100,000 persons'
lines (30 each), the sample catalogue as the knowledge base, and the benefit split from the
sample policy. No centre (the agent's offline path; the centre's part is measured below).
Aim: p99 ≤ 2 ms.

Pre-event: ``DeskChecks.prescription`` with cross-hospital history fetched from a real
``yibao-central serve`` over loopback (signed request, access-logged), per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from _centre import Centre
from _common import ROOT, emit, median, parse_args

from agent.checks import DeskChecks, bill_from_request
from agent.enrol import enrol, load_key
from agent.history import CentralHistory
from agent.intake import parse_settlement
from agent.policy_store import PolicyStore
from agent.store import Outbox
from agent.tls import client_tls
from protocol.bundles import BlacklistEntry, BundleHeader, encode_blacklist
from protocol.rules import HIST_COLUMNS
from tests.conftest import example_settlement

AIM_P99_MS = 2.0
SAMPLES = ROOT / "docs" / "samples"
AREA = "370200"


def _catalogue_codes() -> list[tuple[str, str, int]]:
    doc = json.loads((SAMPLES / "catalogue.json").read_text())
    out = []
    for item in doc["items"]:
        if item["class"] in ("A", "B") and "restrictions" not in item and item.get("price_ceiling"):
            out.append((item["code"], item["list_type"], item["price_ceiling"].get("3", 100)))
    return out


def _setup_policy(tmp: Path, n_blacklist: int) -> PolicyStore:
    store = PolicyStore(tmp / "policy.db")
    for seq, kind in enumerate(("rules", "catalogue", "policy"), start=1):
        store.apply_document(
            BundleHeader(kind, AREA, seq, None, "2026-11-25T00:00:00Z"),
            json.loads((SAMPLES / f"{kind}.json").read_text()),
        )
    path = tmp / "blacklist.bin"
    with path.open("wb") as out:
        entries = (
            BlacklistEntry("+", "card", f"3702{i:012d}", "lost", "bureau", "") for i in range(n_blacklist)
        )
        encode_blacklist(out, BundleHeader("blacklist", AREA, 1, None, "2026-11-25T00:00:00Z"), entries)
    store.apply_file(path, area=AREA)
    return store


def _setup_history(db: Path, persons: int, per_person: int, codes: list[tuple[str, str, int]]) -> None:
    Outbox(db, agent_id="BENCH-01", hosp_lv="3").close()  # creates the schema, hist_lines included
    conn = sqlite3.connect(db)
    rng = random.Random(1)
    marks = ", ".join("?" * len(HIST_COLUMNS))
    conn.execute("BEGIN")
    for p in range(persons):
        rows = []
        for i in range(per_person):
            code, list_type, ceiling = codes[rng.randrange(len(codes))]
            day = f"2026-{rng.randrange(8, 12):02d}-{rng.randrange(1, 29):02d}"
            line = {
                "psn_no": f"3702{p:014d}",
                "fixmedins_code": "H37021100001",
                "setl_id": f"S{p}-{i // 5}",
                "setl_date": day,
                "begn_date": day,
                "med_type": "11",
                "dise_codg": "K21.9",
                "dr_codg": "D1",
                "dept_codg": "DEP1",
                "hosp_lv": "3",
                "feedetl_sn": f"{i}",
                "med_list_codg": code,
                "list_type": list_type,
                "cnt": 1.0,
                "pric_fen": ceiling,
                "amount_fen": ceiling,
                "days": 7,
                "fee_date": day,
            }
            # by name: a column added to the rule library's history must not shift the others
            rows.append(tuple(line[c] for c in HIST_COLUMNS))
        conn.executemany(f"INSERT INTO hist_lines ({', '.join(HIST_COLUMNS)}) VALUES ({marks})", rows)
    conn.execute("COMMIT")
    conn.close()


def _bill(psn_no: str, codes: list[tuple[str, str, int]], tag: str) -> bytes:
    d = example_settlement(tag)
    d["psn"]["psn_no"] = psn_no
    lines, total = [], 0
    for i, (code, list_type, ceiling) in enumerate(codes[:20]):
        total += ceiling
        lines.append(
            {
                "feedetl_sn": f"{tag}-{i}",
                "list_type": list_type,
                "med_list_codg": code,
                "medins_list_name": code,
                "cnt": "1",
                "pric": f"{ceiling / 100:.2f}",
                "det_item_fee_sumamt": f"{ceiling / 100:.2f}",
                "days": 7,
            }
        )
    d["feedetl"] = lines
    d["medfee_sumamt"] = f"{total / 100:.2f}"
    for name in ("fund_pay_sumamt", "hifp_pay", "hifmi_pay", "hifob_pay", "acct_pay", "psn_cash_pay"):
        d.pop(name, None)
    return json.dumps(d).encode()


async def _in_event(desk: DeskChecks, store: PolicyStore, bodies: list[bytes]) -> list[float]:
    times = []
    for body in bodies:
        record, _digest = parse_settlement(body)
        t = time.perf_counter()
        psn = record.psn
        if store.is_blacklisted(card_sn=psn.card_sn, psn_no=psn.psn_no, emp_no=psn.emp_no) is not None:
            raise SystemExit("the bench person should not be blacklisted")
        outcome = await desk.settle(record)
        times.append(time.perf_counter() - t)
        if not outcome.split or not outcome.split.get("computed"):
            raise SystemExit(f"the split was not computed: {outcome.split}")
    return times


async def _pre_event(tmp: Path, db: Path, store: PolicyStore, psn_no: str, n: int) -> tuple[list[float], int]:
    centre = Centre(tmp / "central", "H37021100001", area=AREA)
    url, token = centre.url, centre.token
    try:
        config = await enrol(tmp / "agent", url, token, "H37021100001", ca_hash=centre.ca_hash)
        tls = client_tls(config.home, url)
        assert tls is not None
        history = CentralHistory(
            url, config.agent_id, load_key(config), timeout_s=1.0, ssl_context=tls.context
        )
        desk = DeskChecks(db, store, history, hosp_lv="3")
        request = {
            "psn": {"psn_no": psn_no, "gend": "1", "brdy": "1958-04-02"},
            "mdtrt": {"med_type": "11", "dise_codg": "K21.9", "begntime": "2026-11-25T09:00:00+08:00"},
            "lines": [
                {
                    "feedetl_sn": "1",
                    "med_list_codg": "XA02BCA211A010010102134",
                    "cnt": "1",
                    "pric": "6.90",
                    "days": 14,
                    "list_type": "101",
                }
            ],
        }
        bill = bill_from_request(json.dumps(request).encode(), "H37021100001", "3")
        times, cross = [], 0
        for _ in range(n):
            t = time.perf_counter()
            answer = await desk.prescription(bill)
            times.append(time.perf_counter() - t)
            cross += answer["cross_hospital"]
        await history.close()
        desk.close()
        return times, cross
    finally:
        centre.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blacklist", type=int, default=10_000_000)
    ap.add_argument("--persons", type=int, default=100_000)
    ap.add_argument("--per-person", type=int, default=30)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--pre", type=int, default=200)
    args = parse_args(ap, blacklist=10_000, persons=200, per_person=5, n=50, pre=10)
    codes = _catalogue_codes()
    with tempfile.TemporaryDirectory(prefix="bench-checks-") as d:
        tmp = Path(d)
        t = time.perf_counter()
        store = _setup_policy(tmp, args.blacklist)
        _setup_history(tmp / "agent.db", args.persons, args.per_person, codes)
        setup_s = time.perf_counter() - t
        desk = DeskChecks(tmp / "agent.db", store, None, hosp_lv="3")
        rng = random.Random(2)
        bodies = [
            _bill(f"3702{rng.randrange(args.persons):014d}", rng.sample(codes, len(codes)), f"B{i}")
            for i in range(args.n)
        ]
        times = asyncio.run(_in_event(desk, store, bodies))
        desk.close()
        pre, cross = asyncio.run(_pre_event(tmp, tmp / "agent.db", store, "370200000000000042", args.pre))
        store.close()
    times.sort()
    p99 = times[int(0.99 * (len(times) - 1))] * 1e3
    emit(
        "in_event_check_split_p99_ms",
        p99,
        "ms",
        ratio=p99 / AIM_P99_MS,
        ratio_to=f"aim_{AIM_P99_MS:g}_ms",
        bills=args.n,
        lines_per_bill=20,
        blacklist=args.blacklist,
        persons=args.persons,
        history_lines=args.persons * args.per_person,
        note="blacklist lookup + rules (in) + split, offline",
    )
    emit("in_event_check_split_p50_ms", median(times) * 1e3, "ms")
    pre.sort()
    emit(
        "pre_event_prompts_p50_ms",
        median(pre) * 1e3,
        "ms",
        calls=len(pre),
        cross_hospital_answers=cross,
        note="rules (pre) + signed history fetch from yibao-central over loopback",
    )
    emit("pre_event_prompts_p99_ms", pre[int(0.99 * (len(pre) - 1))] * 1e3, "ms")
    emit("checks_setup_s", setup_s, "s", note="building the blacklist and history; not the measure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
