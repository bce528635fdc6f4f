"""Centre screening: a full screen of a year of a city's settlements, and incremental latency after a batch.

Data (built once and cached in ``$TMPDIR/yibao-bench-screen/<shape>/central.db``; ``--rebuild``
makes it again): a ``central.db`` created by the centre's migrations, then ``hist_visits`` and
``hist_lines`` filled directly with SQL (HTTP ingest of 10 million lines would take an hour and
measure ingest, not screening): 1,000,000 visits of 100,000 persons at 200 hospitals (coordinates,
grades 1-3) over 2025, about 10 lines each (10 million lines) drawn from the sample catalogue —
each person's first lines repeat their own drugs (chronic care: duplicates and interactions happen),
prices sometimes over the ceiling, a few codes outside the catalogue, inpatient stays with fee dates,
0.5 % of persons dead in the registry with some care after death.

Rules: ``docs/samples/rules.json`` (every edge template the centre runs) plus one rule of each centre
template (13-18) that ``protocol.rules`` knows, with the sample catalogue, passed to ``screen`` as
the rules in force of the area. The headline is the full screen of the year (``screen``: chunks,
two worker processes on this 2-core machine, findings recorded as suspicions); aim ≤ 120 s.
Then settlements/s, seconds per rule (summed over chunks), and the incremental screen
(``screen_new``) after batches of 500 settlements ingested through the real ``Ingestor``.

``--small``: 20,000 visits (2,000 persons, 20 hospitals) for a quick run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from _common import ROOT, Failed, emit, parse_args

from central.intake.enrol import enrol_agent, issue_token
from central.intake.ingest import Ingestor
from central.monitoring.screening import AreaRules, load_area_rules, screen, screen_new
from central.storage.store import Store
from protocol import rules as rl
from protocol.batch import KeyPair, encode_batch, sign_batch
from protocol.chain import GENESIS, encode_body, encode_entry
from protocol.records import FeeDetail, Person, Settlement, Visit
from protocol.wire import EnrollRequest

AIM_S = 120.0
AREA = "370200"
YEAR_START = date(2025, 1, 1)
DAYS = 365
SAMPLES = ROOT / "docs" / "samples"
DISEASES = (
    "I10.x00",
    "E11.900",
    "J06.900",
    "J18.900",
    "K29.700",
    "M17.900",
    "I25.100",
    "I63.900",
    "N40.x00",
    "J20.900",
    "K35.800",
    "E78.500",
    "M06.900",
    "I20.900",
    "J15.900",
    "N10.x00",
    "R50.900",
    "K25.700",
)
#: Medical types of a visit that is not a chronic-care refill (outpatient, inpatient, special outpatient).
MED_TYPES = ("11",) * 18 + ("21",) + ("41",)
#: Days of supply of a chronic-care prescription; a chronic patient comes back for a refill after it ran out.
CHRONIC_SUPPLY = 14
DEPTS = ("A03.01", "A03.02", "A04.01", "A05.01", "A07.01", "A12.01", "A50.01")

# One rule per centre template (docs/MONITORING.md), run when protocol.rules knows the template.
CENTRE_RULES = [
    {
        "id": "readmission_15d",
        "version": 1,
        "template": "readmission",
        "severity": "warn",
        "mode": "enforce",
        "action": "prompt",
        "moments": ["post"],
        "params": {"within_days": 15},
    },
    {
        "id": "impersonation_far",
        "version": 1,
        "template": "impersonation_distance",
        "severity": "block",
        "mode": "enforce",
        "action": "prompt",
        "moments": ["post"],
        "params": {"max_minutes": 60, "min_km": 50},
    },
    {
        "id": "after_death",
        "version": 1,
        "template": "care_after_death",
        "severity": "block",
        "mode": "enforce",
        "action": "prompt",
        "moments": ["post"],
        "params": {"grace_days": 0},
    },
    {
        "id": "bed_hanging",
        "version": 1,
        "template": "bed_hanging",
        "severity": "warn",
        "mode": "enforce",
        "action": "prompt",
        "moments": ["post"],
        "params": {
            "min_idle_days": 3,
            "idle_codes": ["001201000010000", "001201000020000", "001201000030000"],
        },
    },
    {
        "id": "excessive_cost",
        "version": 1,
        "template": "excessive_cost",
        "severity": "warn",
        "mode": "enforce",
        "action": "prompt",
        "moments": ["post"],
        "params": {"peer_ratio": "3", "peer_days": 365, "min_peers": 20},
    },
    {
        "id": "doctor_cost_outlier",
        "version": 1,
        "template": "peer_outlier",
        "severity": "info",
        "mode": "shadow",
        "action": "prompt",
        "object": "doctor",
        "moments": ["post"],
        "params": {"measure": "cost_per_visit", "ratio": "2", "days": 90, "min_visits": 30},
    },
]


def rules_document() -> dict:
    doc = json.loads((SAMPLES / "rules.json").read_text())
    doc["area"] = AREA
    present = {r["template"] for r in doc["rules"]} | {r["id"] for r in doc["rules"]}
    doc["rules"] += [
        r for r in CENTRE_RULES if r["template"] in rl.TEMPLATES and not {r["template"], r["id"]} & present
    ]
    return doc


def catalogue_document() -> dict:
    doc = json.loads((SAMPLES / "catalogue.json").read_text())
    doc["area"] = AREA
    return doc


# -- data --------------------------------------------------------------------------------------------


def _shape(visits: int, persons: int, hospitals: int) -> str:
    text = f"v6:{visits}:{persons}:{hospitals}:{','.join(rl.HIST_COLUMNS)}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _hospital(i: int) -> str:
    return f"H3702{i:07d}"


def build_data(path: Path, visits: int, persons: int, hospitals: int, seed: int = 6) -> None:
    """The centre database with ``visits`` visits (and ~10× lines), made through the migrations."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    Store(path, create=True).close()
    rnd = random.Random(seed)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1048576")
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
        "AND tbl_name IN ('hist_lines', 'hist_visits') "
        "AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    conn.execute("BEGIN")
    # hospitals: grades 1-3, spread over ~200 km × 150 km around Qingdao
    grades = {}
    for h in range(hospitals):
        lat, lon = 35.6 + rnd.random() * 1.4, 119.5 + rnd.random() * 2.2
        x, y = lon * 111.32 * __import__("math").cos(__import__("math").radians(lat)), lat * 110.574
        grades[h] = rnd.choice("1223")
        conn.execute(
            "INSERT INTO hospitals (fixmedins_code, hosp_lv, name, admdvs, updated_at, lat, lon, x_km, y_km) "
            "VALUES (?, ?, ?, '370200', '2025-01-01T00:00:00+00:00', ?, ?, ?, ?)",
            (_hospital(h), grades[h], f"hospital {h}", lat, lon, x, y),
        )
    # persons: gender, birth date, a few home hospitals, a visit count (chronic patients more)
    people = []
    for p in range(persons):
        homes = [rnd.randrange(hospitals) for _ in range(3)]
        chronic = rnd.random() < 0.25
        people.append(
            (
                f"P{p:07d}",
                rnd.choice("12"),
                f"{rnd.randint(1935, 2022)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}",
                homes,
                chronic,
            )
        )
    weights = [1.2 if c else 0.5 for *_, c in people]
    scale = visits / sum(weights)
    rows = []
    for (psn, gend, brdy, homes, chronic), w in zip(people, weights, strict=True):
        n = max(1, round(w * scale * rnd.uniform(0.5, 1.5)))
        for _ in range(n):
            rows.append(
                (rnd.randrange(DAYS), rnd.randrange(8 * 60, 18 * 60), psn, gend, brdy, homes, chronic)
            )
    rnd.shuffle(rows)
    rows = sorted(rows[:visits], key=lambda r: (r[0], r[1]))
    out = []
    last_refill: dict[str, int] = {}
    for i, (day, minute, psn, gend, brdy, homes, chronic) in enumerate(rows):
        h = (
            homes[0]
            if rnd.random() < 0.7
            else (rnd.choice(homes) if rnd.random() < 0.9 else rnd.randrange(hospitals))
        )
        # a chronic patient's refill comes after the last one's supply ran out, never before
        if chronic and day - last_refill.get(psn, -CHRONIC_SUPPLY) >= CHRONIC_SUPPLY and rnd.random() < 0.6:
            med_type = "14"
            last_refill[psn] = day
        else:
            med_type = rnd.choice(MED_TYPES)
        d = YEAR_START + timedelta(days=day)
        ipt = rnd.randint(2, 14) if med_type == "21" else None
        begn = d - timedelta(days=ipt) if ipt else d
        setl_time = datetime(d.year, d.month, d.day, minute // 60, minute % 60).isoformat() + "+08:00"
        dise = rnd.choice(DISEASES) + ("," + rnd.choice(DISEASES) if rnd.random() < 0.3 else "")
        dept = DEPTS[hash((h, dise[:3])) % len(DEPTS)]
        dr = f"D{h:04d}{rnd.randrange(12):02d}"
        cost = int(rnd.lognormvariate(9.5 if med_type != "21" else 12.0, 0.55))
        out.append(
            (
                f"S{i:09d}",
                psn,
                _hospital(h),
                AREA,
                grades[h],
                setl_time,
                d.isoformat(),
                begn.isoformat(),
                d.isoformat(),
                med_type,
                dise,
                dise.split(",")[0],
                dr,
                dept,
                ipt,
                cost,
                cost // 2,
                gend,
                brdy,
                "310",
                "11",
            )
        )
        if len(out) >= 50_000:
            conn.executemany(f"INSERT INTO hist_visits VALUES ({','.join('?' * 21)})", out)
            out.clear()
    conn.executemany(f"INSERT INTO hist_visits VALUES ({','.join('?' * 21)})", out)
    # items: plain drugs and plain services (class A/B, no restriction, frequency limit or exclusive
    # pair, no interaction), and the special ones (restricted, limited, exclusive, interacting, class C)
    # plus two codes outside the catalogue, on 0.6 % of the lines. Each item's days of supply and price
    # stay within their limits but for 0.1 % of the lines; a person's chronic drug comes back at every
    # chronic-care refill. So hits are a few per cent of the visits, as in real data (most bills are
    # clean), and recording them does not dominate the measure.
    cat = catalogue_document()
    paired = {c for pair in cat.get("exclusive_pairs", []) for c in pair}
    interacting = {x[k] for x in cat.get("interactions", []) for k in ("a", "b")}
    kinds: dict[str, list[tuple]] = {"pd": [], "po": [], "sp": []}
    for item in cat["items"]:
        plain = (
            not item.get("restrictions")
            and not item.get("frequency")
            and item["code"] not in paired
            and item["code"] not in interacting
            and item.get("drug_class") not in interacting
            and item["class"] != "C"
        )
        kind = ("pd" if item["list_type"].startswith("10") else "po") if plain else "sp"
        ceiling = min((item.get("price_ceiling") or {"0": 1000}).values())
        kinds[kind].append(
            (
                item["code"],
                item["list_type"],
                ceiling,
                item.get("max_days_acute") or 7,
                item.get("max_days_chronic") or 30,
            )
        )
    kinds["sp"] += [("XZZ0000000000NOTIN01", "101", 500, 7, 30), ("XZZ0000000000NOTIN02", "201", 800, 7, 30)]
    npd, npo, nsp = (len(kinds[k]) for k in ("pd", "po", "sp"))
    # the plain drugs' first half are chronic drugs (a chronic-care refill: the person's own drug, and
    # services), the second half acute ones (other visits): a cold does not repeat the blood-pressure drug
    nch = max(1, npd // 2)
    conn.execute(
        "CREATE TEMP TABLE items (i INTEGER PRIMARY KEY, code TEXT, list_type TEXT, pric INTEGER, "
        "da INTEGER, dc INTEGER)"
    )
    conn.executemany(
        "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)",
        [(k, *it) for k, it in enumerate(kinds["pd"] + kinds["po"] + kinds["sp"])],
    )
    conn.execute("CREATE TEMP TABLE series (n INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO series VALUES (?)", [(n,) for n in range(19)])
    pick = (
        f"CASE WHEN s.n = 0 AND v.med_type = '14' THEN CAST(substr(v.psn_no, 2) AS INTEGER) * 13 % {nch} "
        f"WHEN (v.rowid * 13 + s.n * 7) % 1000 < 6 THEN {npd + npo} + (v.rowid * 31 + s.n * 17) % {nsp} "
        f"WHEN s.n IN (0, 3) AND v.med_type <> '14' THEN {nch} + (v.rowid * 31 + s.n * 17) % {npd - nch} "
        f"ELSE {npd} + (v.rowid * 31 + s.n * 17) % {npo} END"
    )
    fee = ", fee_date" if "fee_date" in rl.HIST_COLUMNS else ""
    fee_value = (
        ", CASE WHEN v.med_type = '21' "
        "THEN date(v.begn_date, '+' || (s.n % max(1, CASE WHEN v.rowid % 50 = 0 THEN v.ipt_days / 2 "
        "ELSE v.ipt_days END)) || ' days') "
        "ELSE v.setl_date END"
        if fee
        else ""
    )
    pric = "(CASE WHEN (v.rowid * 7 + s.n) % 997 = 0 THEN it.pric + 37 ELSE it.pric END)"
    days = (
        "CASE WHEN it.list_type IN ('101', '102', '103', '104') THEN "
        "(CASE WHEN v.med_type = '14' THEN min(it.dc, 14) ELSE min(it.da, 3 + v.rowid % 5) END) "
        "+ CASE WHEN (v.rowid * 3 + s.n) % 997 = 0 THEN 30 ELSE 0 END END"
    )
    conn.execute(
        "INSERT INTO hist_lines (psn_no, fixmedins_code, setl_id, setl_date, begn_date, med_type, dise_codg, "
        "dr_codg, dept_codg, hosp_lv, feedetl_sn, med_list_codg, list_type, cnt, pric_fen, amount_fen, "
        f"days{fee}) "
        "SELECT v.psn_no, v.fixmedins_code, v.setl_id, v.setl_date, v.begn_date, v.med_type, v.dise_codg, "
        "v.dr_codg, v.dept_codg, v.hosp_lv, CAST(s.n + 1 AS TEXT), it.code, it.list_type, 1, "
        f"{pric}, {pric}, "
        f"{days}{fee_value} FROM hist_visits AS v JOIN series AS s ON s.n < "
        "CASE WHEN v.med_type = '21' THEN 19 ELSE 1 + (v.rowid * 7919 + 3) % 19 END "
        f"JOIN items AS it ON it.i = {pick} ORDER BY v.rowid, s.n"
    )
    # the civil registry: 0.5 % of persons died during the year
    dead = rnd.sample(range(persons), max(1, persons // 200))
    conn.executemany(
        "INSERT INTO deaths (psn_no, death_date, source, imported_at) VALUES (?, ?, 'bench', '2025-12-31')",
        [(f"P{p:07d}", (YEAR_START + timedelta(days=rnd.randrange(DAYS))).isoformat()) for p in dead],
    )
    conn.execute("COMMIT")
    for _, sql in indexes:
        conn.execute(sql)
    # no ANALYZE: the centre never runs it, and with sqlite_stat1 SQLite 3.40 builds Bloom filters over
    # the whole history table in every history join (a fixed cost per query that dwarfs the join)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def cached_data(args: argparse.Namespace) -> tuple[Path, float | None]:
    base = Path(args.cache or Path(tempfile.gettempdir()) / "yibao-bench-screen")
    shape = _shape(args.visits, args.persons, args.hospitals)
    path = base / shape / "central.db"
    ready = path.with_suffix(".ready")
    if ready.exists() and path.exists() and not args.rebuild:
        return path, None
    ready.unlink(missing_ok=True)
    start = time.perf_counter()
    build_data(path, args.visits, args.persons, args.hospitals)
    ready.write_text("ok")
    return path, time.perf_counter() - start


def working_copy(src: Path, dst: Path) -> Path:
    """A fresh copy of the cached database (screening writes suspicions; the cache stays pristine)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    s = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    d = sqlite3.connect(dst)
    try:
        s.backup(d)
    finally:
        s.close()
        d.close()
    return dst


# -- incremental ---------------------------------------------------------------------------------


def _yuan(fen: int) -> str:
    """Canonical decimal text (no trailing zeros), as the records carry it."""
    return format(Decimal(fen).scaleb(-2).normalize(), "f")


def _settlement(
    i: int, psn: str, hospital: str, when: datetime, rnd: random.Random, items: list
) -> Settlement:
    lines = []
    total = 0
    for n in range(rnd.randint(3, 12)):
        code, list_type, pric = items[rnd.randrange(len(items))]
        cnt = rnd.randint(1, 3)
        amount = cnt * pric
        total += amount
        lines.append(
            FeeDetail(
                cnt=str(cnt),
                pric=_yuan(pric),
                det_item_fee_sumamt=amount,
                feedetl_sn=str(n + 1),
                list_type=list_type,
                med_list_codg=code,
                medins_list_name="item",
                days=28 if list_type.startswith("10") else None,
            )
        )
    stamp = when.isoformat() + "+08:00"
    return Settlement(
        feedetl=lines,
        fixmedins_code=hospital,
        his_setl_no=f"HIS-INC-{i:08d}",
        mdtrt=Visit(
            begntime=stamp,
            dise_codg=rnd.choice(DISEASES),
            mdtrt_id=f"M-INC-{i:08d}",
            med_type="11",
            dr_codg="D000101",
            dept_codg="A03.01",
        ),
        medfee_sumamt=total,
        opter="bench",
        psn=Person(
            brdy="1960-05-05",
            gend=rnd.choice("12"),
            insuplc_admdvs=AREA,
            insutype="310",
            psn_no=psn,
            psn_type="11",
        ),
        setl_id=f"INC{i:09d}",
        setl_time=stamp,
    )


def incremental(
    store: Store, areas: dict[str, AreaRules], persons: int, rounds: int, size: int
) -> list[float]:
    """Ingest ``size`` settlements of existing persons (real Ingestor), then time ``screen_new``."""
    rnd = random.Random(11)
    key = KeyPair.generate()
    hospital = _hospital(1)
    token = issue_token(store, hospital, area=AREA)
    response, _ = enrol_agent(
        store, EnrollRequest(token=token, fixmedins_code=hospital, public_key=key.public_bytes.hex())
    )
    agent_id = response.agent_id
    ingestor = Ingestor(store)
    items = [
        (i["code"], i["list_type"], (i.get("price_ceiling") or {}).get("2", 1000))
        for i in catalogue_document()["items"]
    ]
    # the screen starts level with what is held
    store.write(
        lambda c: c.execute(
            "INSERT INTO settings (key, value) "
            "VALUES ('screen_cursor', coalesce((SELECT max(rowid) FROM settlements), 0)) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        )
    )
    prev, seq, times = GENESIS, 0, []
    for r in range(rounds):
        entries = []
        for _ in range(size):
            seq += 1
            when = datetime(2025, 12, 20) + timedelta(minutes=rnd.randrange(60 * 24 * 10))
            rec = _settlement(seq, f"P{rnd.randrange(persons):07d}", hospital, when, rnd, items)
            entry = encode_entry(agent_id, seq, prev, "setl", encode_body(rec))
            prev = hashlib.sha256(entry).digest()
            entries.append(entry)
        ack = ingestor.ingest(encode_batch(sign_batch(key, agent_id, seq - size + 1, entries)))
        if ack.code != "stored" or ack.rejected:
            raise Failed(f"incremental batch {r}: {ack.code}, {len(ack.rejected)} rejected")
        start = time.perf_counter()
        summary = screen_new(store, areas=areas, limit=size)
        times.append(time.perf_counter() - start)
        if summary["settlements"] != size:
            raise Failed(f"screen_new screened {summary['settlements']} settlements, not {size}")
    return times


# -- run -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, tmp: Path) -> None:
    src, build_s = cached_data(args)
    doc = rules_document()
    if args.edge_only:  # templates 1-11: what the centre runs of the desk's library
        doc["rules"] = [r for r in doc["rules"] if not getattr(rl.TEMPLATES[r["template"]], "centre", False)]
    areas = {AREA: load_area_rules(doc, catalogue_document(), area=AREA)}
    n_rules = len(areas[AREA].rules)
    db = working_copy(src, tmp / "central.db")
    with Store(db) as store:
        counts = store.read(
            lambda c: (
                c.execute("SELECT count(*) FROM hist_visits").fetchone()[0],
                c.execute("SELECT count(*) FROM hist_lines").fetchone()[0],
            )
        )
        start = time.perf_counter()
        summary = screen(
            store,
            YEAR_START,
            YEAR_START + timedelta(days=DAYS - 1),
            areas=areas,
            workers=args.workers,
            chunk_visits=args.chunk_visits,
        )
        elapsed = time.perf_counter() - start
        if summary["settlements"] != counts[0]:
            raise Failed(f"screened {summary['settlements']} visits, {counts[0]} held")
        emit(
            "screen_full_s",
            elapsed,
            "s",
            ratio=elapsed / AIM_S,
            aim_s=AIM_S,
            visits=counts[0],
            lines=counts[1],
            rules=n_rules,
            templates=sorted({r.template for r in areas[AREA].rules}),
            workers=summary["workers"],
            chunk_visits=args.chunk_visits,
            hits=summary["hits"],
            new_suspicions=summary["new_suspicions"],
        )
        emit("screen_full_visits_per_s", counts[0] / elapsed, "per_s")
        emit("screen_full_lines_per_s", counts[1] / elapsed, "per_s")
        emit(
            "screen_rule_seconds",
            sum(summary["seconds"].values()),
            "s",
            note="summed over chunks and workers",
            per_rule=summary["seconds"],
            hits_per_rule=summary["per_rule"],
        )
        again = time.perf_counter()
        second = screen(
            store,
            YEAR_START,
            YEAR_START + timedelta(days=DAYS - 1),
            areas=areas,
            workers=args.workers,
            chunk_visits=args.chunk_visits,
        )
        if second["new_suspicions"]:
            raise Failed(
                f"a second full screen made {second['new_suspicions']} new suspicions (dedupe broken)"
            )
        emit(
            "screen_full_again_s",
            time.perf_counter() - again,
            "s",
            note="same range again: every fact found again, no new suspicion",
        )
        times = incremental(store, areas, args.persons, args.inc_rounds, args.inc_size)
        emit(
            "screen_incremental_p50_ms",
            statistics.median(times) * 1000,
            "ms",
            batch=args.inc_size,
            rounds=len(times),
            max_ms=round(max(times) * 1000, 1),
        )
    if build_s is not None:
        emit("data_build_s", build_s, "s", note="generating the cached database; not the measure")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="20,000 visits of 2,000 persons at 20 hospitals")
    ap.add_argument("--visits", type=int)
    ap.add_argument("--persons", type=int)
    ap.add_argument("--hospitals", type=int)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--chunk-visits", type=int, default=4000)
    ap.add_argument("--inc-rounds", type=int, default=5)
    ap.add_argument("--inc-size", type=int, default=500)
    ap.add_argument(
        "--cache", help="directory for the generated database (default: $TMPDIR/yibao-bench-screen)"
    )
    ap.add_argument("--rebuild", action="store_true", help="generate the data again")
    ap.add_argument("--edge-only", action="store_true", help="only the edge templates (1-11)")
    args = parse_args(ap, inc_rounds=1, inc_size=50, chunk_visits=1000)
    sizes = (1_000_000, 100_000, 200)
    if args.small:
        sizes = (20_000, 2_000, 20)
    if args.smoke:
        sizes = (2_000, 300, 10)
    small = sizes
    args.visits = args.visits or small[0]
    args.persons = args.persons or small[1]
    args.hospitals = args.hospitals or small[2]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-screen-") as d:
            run(args, Path(d))
    except Failed as exc:
        print(f"screen benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
