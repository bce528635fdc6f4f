"""The screening engine: the rule library over the whole population, hits → suspicions (docs/MONITORING.md).

Which rules: per pooling area, the rules document in force (the newest published ``rules`` bundle)
with the area's knowledge base (the newest ``catalogue`` bundle). A rule runs at the centre when
its mode is not ``off``, its ``moments`` include ``post`` and its template is SQL (not 12,
``blacklisted``, which agents enforce); a rule that reads the knowledge base is skipped while the
area has no catalogue (an empty catalogue would make every line "not in the catalogue"). Each
area's rules run over that area's visits (``hist_visits.area``); history is everyone's.

How: a screening connection is an in-memory database with ``central.db`` attached read-only.
The ``kb_*`` tables of the area being screened live in the in-memory main schema, ``cur_visits``
and ``cur_lines`` are TEMP tables, and the templates' unqualified ``hist_lines``/``hist_visits``/
``deaths``/``hospitals`` resolve to the attached file. So screening never holds the writer lock
while it queries: reads run on their own connection (or in worker processes, each with its own),
and only the findings go through ``Store.write`` (``central.monitoring.suspicions.record_findings``).

- **Full** (``screen``): a date range in chunks (about ``CHUNK_VISITS`` visits), each chunk's visits of an
  area
  into ``cur_visits`` and their lines into ``cur_lines``, every rule run once per chunk. Up to
  ``workers`` processes take disjoint chunks; the parent records what they find.
- **Incremental** (``screen_new``): the settlements ingested since ``settings.screen_cursor``
  (a ``settlements`` rowid). Scope: the persons they touch, their visits from the batch's earliest
  ``setl_date`` up to its latest plus the largest person-history window of the rules (a
  late-arriving older settlement is compared with the newer ones it now precedes; facts found again
  are absorbed by the fact key), plus, for rules about doctors, departments and hospitals, the
  visits of the objects the batch touched on the batch's dates. The cursor advances in the same
  write as the findings.
- **Backtest** (``backtest``): a rules file over a range beside the rules in force, nothing stored.

Findings: ``object_id`` per the rule's ``object`` (psn_no; dr_codg; fixmedins_code/dept_codg;
fixmedins_code) from the hit's visit; ``setl_ids`` the hit's settlement and any ``setl_id`` in its
evidence; ``amount_fen`` the hit's lines' amounts, or the visit's ``medfee_sumamt`` for a hit
without lines. Nothing personal is logged: counts, rule ids, areas and dates only.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from central.storage.base import committed_upto
from central.storage.store import Store, now_iso
from protocol import rules as rl
from protocol.errors import ProtocolError
from protocol.rules import centre as rc

from .pgscreen import PgScreeningConnection, is_dsn
from .suspicions import Finding, Judged, fact_key, record_findings, retract_missing

__all__ = [
    "AreaRules",
    "ChunkResult",
    "Screener",
    "backtest",
    "finding_of",
    "load_area_rules",
    "rules_in_force",
    "screen",
    "screen_new",
    "screened_rules",
]

log = logging.getLogger(__name__)

CURSOR_KEY = "screen_cursor"
#: Most days per chunk of a full screen, and the visits a chunk aims at: some template costs grow with
#: the chunk (the per-chunk work behind each history join, hits × chunk joins), others are fixed per
#: query, so chunks are cut by visit count (a day of a big city is ~3,000 visits), measured in
#: ``benchmarks/screen.py``.
CHUNK_DAYS = 31
CHUNK_VISITS = 4000
#: Settlements per incremental step (the background task loops until it is level).
INCREMENTAL_LIMIT = 5000
#: Most visits a reversal's cancelled settlement makes template 17 judge again in one incremental step.
REJUDGE_LIMIT = 50_000
#: Templates whose object is a group (doctor, department, hospital) measured over many visits.
GROUP_TEMPLATES = frozenset({"peer_outlier", "excessive_cost"})
#: Templates whose hit is an object over a window of days (``rc.OBJECT_TEMPLATES``): a full screen runs
#: them once per window of the range, not per chunk, and their fact is (object, window end).
OBJECT_TEMPLATES = rc.OBJECT_TEMPLATES
#: Templates whose hit is one visit of a run that passes a limit (visit 5, 6, 7… of a burst over 4):
#: the fact is the person's run, keyed by the date its window starts, so a reviewer sees one
#: suspicion per burst (found again with each later visit), not one per visit.
RUN_TEMPLATES = frozenset({"frequent_visits"})
#: Templates whose hit is a symmetric pair of settlements, found from either: the pair is the anchor.
PAIR_TEMPLATES = frozenset({"impersonation_distance"})
_DEFAULT_WEIGHTS = {"block": 90, "warn": 60, "info": 30}
_IN_CHUNK = 500

_VISIT_COLUMNS = getattr(rl, "VISIT_COLUMNS", None) or (
    "setl_id", "psn_no", "fixmedins_code", "area", "hosp_lv", "setl_time", "setl_date", "begn_date",
    "end_date", "med_type", "dise_codg", "dise_main", "dr_codg", "dept_codg", "ipt_days", "medfee_sumamt",
    "drug_fen", "gend", "brdy", "insutype", "psn_type",
)  # fmt: skip
_CUR_VISITS_DDL = """
CREATE TEMP TABLE IF NOT EXISTS cur_visits (
    setl_id TEXT PRIMARY KEY, psn_no TEXT NOT NULL, fixmedins_code TEXT NOT NULL, area TEXT,
    hosp_lv TEXT, setl_time TEXT NOT NULL, setl_date TEXT NOT NULL, begn_date TEXT, end_date TEXT,
    med_type TEXT NOT NULL, dise_codg TEXT, dise_main TEXT, dr_codg TEXT, dept_codg TEXT, ipt_days INTEGER,
    medfee_sumamt INTEGER NOT NULL, drug_fen INTEGER NOT NULL, gend TEXT, brdy TEXT, insutype TEXT,
    psn_type TEXT);
CREATE INDEX IF NOT EXISTS temp.cur_visits_psn_date ON cur_visits (psn_no, setl_date)
"""


# -- which rules ---------------------------------------------------------------------------------


def _is_sql(rule: rl.Rule) -> bool:
    return bool(getattr(rule.spec, "sql", True))


def screened_rules(ruleset: rl.RuleSet, *, kb_ready: bool) -> list[rl.Rule]:
    """The rules of ``ruleset`` the centre runs: not off, ``post`` among the moments, SQL templates,
    and (without a knowledge base) only those that do not read it."""
    return [
        r
        for r in ruleset.rules
        if r.mode != "off" and "post" in r.moments and _is_sql(r) and (kb_ready or not r.spec.knowledge)
    ]


def weight_of(rule: rl.Rule) -> int:
    """The rule's weight (``Rule.weight``), else the default of its severity."""
    weight = getattr(rule, "weight", None)
    return int(weight) if weight else _DEFAULT_WEIGHTS.get(rule.severity, 60)


def history_window(rule: rl.Rule, knowledge: rl.Knowledge | None = None) -> int:
    """How many days back a rule looks into one person's history (incremental scope)."""
    p = rule.params
    days = [rule.window_days]
    for name in ("days", "within_days"):
        if rule.template in ("frequent_visits", "readmission") and isinstance(p.get(name), int):
            days.append(p[name])
    if isinstance(p.get("max_minutes"), int):
        days.append(p["max_minutes"] // 1440 + 1)
    if rule.template == "frequency_limit" and knowledge is not None:
        for item in knowledge.items.values():
            per = item.frequency[0] if item.frequency else ""
            if per.startswith("period_days:"):
                days.append(int(per.split(":", 1)[1]))
    if rule.template == "care_after_death":
        days.append(1)
    return max(days)


@dataclass(frozen=True, slots=True)
class AreaRules:
    """An area's rules and knowledge base, and the documents they came from (to rebuild them in a worker)."""

    area: str
    ruleset: rl.RuleSet
    knowledge: rl.Knowledge | None
    rules_doc: Any = field(default=None, compare=False, repr=False)
    catalogue_doc: Any = field(default=None, compare=False, repr=False)

    @property
    def rules(self) -> list[rl.Rule]:
        return screened_rules(self.ruleset, kb_ready=self.knowledge is not None)

    def window(self) -> int:
        return max((history_window(r, self.knowledge) for r in self.rules), default=0)

    def docs(self) -> tuple[Any, Any]:
        return self.rules_doc, self.catalogue_doc


def load_area_rules(rules_doc: Any, catalogue_doc: Any = None, *, area: str | None = None) -> AreaRules:
    """``AreaRules`` from a rules document and an optional catalogue document (``RulesInvalid`` /
    ``KnowledgeInvalid`` with every problem)."""
    ruleset = rl.load_ruleset(rules_doc)
    knowledge = rl.load_knowledge(catalogue_doc) if catalogue_doc is not None else None
    return AreaRules(area or ruleset.area, ruleset, knowledge, rules_doc, catalogue_doc)


def _default_repo(store: Store) -> Any:
    from central.config import CentralConfig
    from central.policy.tuf_repo import TufRepository

    home = getattr(store, "path", None)
    if home is None:  # a PostgreSQL store has no home directory of its own: the caller names the repository
        raise ValueError("screening a PostgreSQL centre needs its TUF repository passed as `repo`")
    return TufRepository.open(CentralConfig(home=home.parent))


#: The rules in force last loaded per database, with the bundle seqs they came from: the incremental
#: screen asks every few seconds, and a catalogue of 500,000 items takes seconds to validate.
_IN_FORCE: dict[str, tuple[tuple, dict[str, AreaRules]]] = {}


def rules_in_force(store: Store, repo: Any = None) -> dict[str, AreaRules]:
    """Per area with a published ``rules`` bundle: its rules and catalogue in force (loaded again only
    when a newer ``rules`` or ``catalogue`` bundle was published).

    An area whose published documents no longer load is left out, with an error in the log (the
    publish path validates them, so this means a damaged repository).
    """
    from .split_audit import current_document

    seqs = store.read(
        lambda c: tuple(
            c.execute(
                "SELECT area, kind, max(seq) FROM bundles WHERE kind IN ('rules', 'catalogue') "
                "AND path != '' GROUP BY area, kind ORDER BY area, kind"
            ).fetchall()
        )
    )
    key = (screening_source(store), seqs)
    cached = _IN_FORCE.get(key[0])
    if cached is not None and cached[0] == seqs:
        return dict(cached[1])
    repo = repo if repo is not None else _default_repo(store)

    def read(conn: sqlite3.Connection) -> dict[str, tuple[Any, Any]]:
        areas = [
            r[0] for r in conn.execute("SELECT DISTINCT area FROM bundles WHERE kind = 'rules' ORDER BY 1")
        ]
        docs = {}
        for area in areas:
            try:
                docs[area] = (
                    current_document(conn, repo, area, "rules"),
                    current_document(conn, repo, area, "catalogue"),
                )
            except (OSError, ProtocolError) as exc:
                log.error("area %s: the published rules or catalogue cannot be read: %s", area, exc)
        return docs

    found: dict[str, AreaRules] = {}
    for area, (rules_doc, catalogue_doc) in store.read(read).items():
        if rules_doc is None:
            continue
        try:
            found[area] = load_area_rules(rules_doc, catalogue_doc, area=area)
        except ProtocolError as exc:
            log.error("area %s: the published rules or catalogue do not load: %s", area, exc)
    _IN_FORCE[key[0]] = (seqs, found)
    return dict(found)


# -- the screening connection ----------------------------------------------------------------------


def screening_source(store: Store) -> str:
    """What a screening connection opens for ``store``: its SQLite file, or its PostgreSQL DSN."""
    dsn = getattr(store, "dsn", None)
    return dsn if isinstance(dsn, str) else str(store.path)


def open_screening(db_path: Path | str) -> Any:
    """An in-memory database (kb_*, TEMP cur_*) with ``central.db`` attached read-only as ``db``; for a
    PostgreSQL DSN, a session of its own on the centre's database with the same tables TEMP
    (``central.monitoring.pgscreen``)."""
    if is_dsn(db_path):
        conn: Any = PgScreeningConnection(str(db_path))
    else:
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False, uri=True)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("ATTACH DATABASE ? AS db", (f"file:{Path(db_path).resolve()}?mode=ro",))
        conn.execute("PRAGMA db.cache_size = -262144")  # 256 MiB: history seeks over a big file
        conn.execute("PRAGMA db.mmap_size = 17179869184")
        conn.execute("PRAGMA cache_size = -65536")
    rl.create_current(conn)
    create_visits = getattr(rl, "create_current_visits", None)
    if create_visits is not None:
        create_visits(conn)
    else:
        for statement in _CUR_VISITS_DDL.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute(rc.PEER_MEDIANS_DDL)
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS scope_psn (psn_no TEXT PRIMARY KEY) WITHOUT ROWID")
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS scope_obj (fixmedins_code TEXT PRIMARY KEY) WITHOUT ROWID")
    for statement in rl.KNOWLEDGE_DDL.split(";"):
        if statement.strip():
            conn.execute(statement)
    return conn


@dataclass(slots=True)
class ChunkResult:
    """What one chunk (or one incremental scope) of one area found."""

    area: str
    date_from: str
    date_to: str
    settlements: int = 0
    lines: int = 0
    hits: Counter = field(default_factory=Counter)  # per rule id
    seconds: Counter = field(default_factory=Counter)  # per rule id (and "fill")
    findings: list[Finding] = field(default_factory=list)


def _setl_ids(hit: rl.Hit) -> tuple[str, ...]:
    ids = [hit.setl_id]
    for item in hit.evidence:
        other = item.get("setl_id") if isinstance(item, Mapping) else None
        if isinstance(other, str) and other and other not in ids:
            ids.append(other)
    return tuple(ids)


def finding_of(
    rule: rl.Rule, hit: rl.Hit, visit: Mapping[str, Any] | None, amounts: Mapping[str, int], area: str
) -> Finding:
    """A hit attributed to its object (docs/MONITORING.md, "Suspicions")."""
    hospital = visit["fixmedins_code"] if visit else None
    obj = rule.object
    if obj == "doctor":
        object_id = (visit or {}).get("dr_codg") or f"{hospital}/?"
    elif obj == "department":
        object_id = f"{hospital}/{(visit or {}).get('dept_codg') or '?'}"
    elif obj == "hospital":
        object_id = hospital or "?"
    else:
        object_id = hit.psn_no or (visit or {}).get("psn_no") or "?"
    if hit.lines:
        amount = sum(amounts.get(sn, 0) for sn in hit.lines)
    else:
        amount = int((visit or {}).get("medfee_sumamt") or 0)
    setl_ids, period = _setl_ids(hit), None
    anchor, anchor_date = hit.setl_id, (visit or {}).get("setl_date")
    if rule.template in PAIR_TEMPLATES and len(setl_ids) > 1:
        # one fact found from either visit of the pair: both name it, whichever was screened
        anchor = "|".join(sorted(setl_ids[:2]))
    if rule.template in OBJECT_TEMPLATES:
        # an object over a window: the hit's visit is only a representative (which one depends on the
        # batch), so the fact is the object and the window's end, with no settlements
        first = hit.evidence[0] if hit.evidence and isinstance(hit.evidence[0], Mapping) else {}
        object_id = first.get("object_id") or object_id
        setl_ids, period, amount = (), first.get("window_to"), 0
        anchor, anchor_date = None, period
    elif rule.template in RUN_TEMPLATES:
        dates = [e["setl_date"] for e in hit.evidence if isinstance(e, Mapping) and e.get("setl_date")]
        if visit and visit.get("setl_date"):
            dates.append(visit["setl_date"])
        period = f"run from {min(dates)}" if dates else None
    return Finding(
        hit=hit, object_type=obj, object_id=object_id, area=(visit or {}).get("area") or area,
        fixmedins_code=hospital, setl_ids=setl_ids, amount_fen=amount, weight=weight_of(rule), period=period,
        anchor=anchor, anchor_date=anchor_date, category=getattr(rule, "category", None) or None,
    )  # fmt: skip


def _chunks(items: list[str], size: int = _IN_CHUNK) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Screener:
    """One screening connection and the area whose knowledge base it has installed."""

    def __init__(self, db_path: Path | str, span: tuple[str, str] | None = None) -> None:
        """``span``: the whole range of a full screen this screener takes chunks of; template 17's peer
        medians are then computed once for every date of it (``_prepare_medians``)."""
        self.db_path = db_path
        self.conn = open_screening(db_path)
        self._kb_area: tuple[str, int] | None = None
        self.span = span
        self._medians: dict[int, dict[str, list[tuple]]] = {}  # peer_days → date → rows
        self._given = False  # cur_peer_medians holds every date of what cur_visits holds

    def close(self) -> None:
        self.conn.close()

    def _install(self, rules: AreaRules) -> None:
        key = (rules.area, id(rules.knowledge))
        if self._kb_area == key:
            return
        if rules.knowledge is not None:
            rl.install_knowledge(self.conn, rules.knowledge)
        else:  # kb_* empty: only rules that do not read them run (screened_rules)
            for table in ("kb_items", "kb_price", "kb_indications", "kb_frequency", "kb_exclusive",
                          "kb_interactions"):  # fmt: skip
                self.conn.execute(f"DELETE FROM main.{table}")
        self._kb_area = key

    # -- filling -----------------------------------------------------------------------------

    def _fill_lines(self) -> int:
        cols = ", ".join(rl.CURRENT_COLUMNS)
        hist = ", ".join(f"h.{c}" for c in rl.HIST_COLUMNS)
        person = ", ".join(f"v.{c}" for c in rl.PERSON_COLUMNS)
        cur = self.conn.execute(
            f"INSERT INTO cur_lines ({cols}) SELECT {hist}, {person} FROM cur_visits AS v "
            "CROSS JOIN db.hist_lines AS h ON h.setl_id = v.setl_id"
        )
        return cur.rowcount

    def _clear(self) -> None:
        self.conn.execute("DELETE FROM cur_lines")
        self.conn.execute("DELETE FROM cur_visits")
        if self._given:
            self.conn.execute("DELETE FROM cur_peer_medians")
            self._given = False

    def fill_range(self, area: str, date_from: str, date_to: str, *, lines: bool = True) -> tuple[int, int]:
        """The area's visits settled in [date_from, date_to] and (``lines``) their lines."""
        self._clear()
        cols = ", ".join(_VISIT_COLUMNS)
        n = self.conn.execute(
            f"INSERT INTO cur_visits ({cols}) SELECT {cols} FROM db.hist_visits "
            "WHERE setl_date BETWEEN ? AND ? AND area = ? ORDER BY psn_no, setl_date",
            (date_from, date_to, area),
        ).rowcount
        return n, self._fill_lines() if lines else 0

    # -- template 17's peer medians, once per full screen ------------------------------------------

    def _peer_rules(self, rules: AreaRules) -> list[rl.Rule]:
        return [
            r for r in rules.rules if r.template == "excessive_cost" and r.params["peer_ratio"] is not None
        ]

    def _compute_medians(self, peer_days: int) -> dict[str, list[tuple]]:
        """Every group's peer median for every date of ``span`` (``rc.peer_medians``): one sorted read of the
        visits from ``peer_days`` before the span to its end, where the rule's own SQL would re-read a
        year of a group's visits for each (group, date) of each chunk."""
        assert self.span is not None
        lo, hi = self.span
        start = (date.fromisoformat(lo) - timedelta(days=peer_days)).isoformat()
        rows = self.conn.execute(
            "SELECT substr(dise_main, 1, 3), hosp_lv, med_type, setl_date, medfee_sumamt FROM db.hist_visits "
            "WHERE setl_date >= ? AND setl_date < ? AND dise_main IS NOT NULL AND hosp_lv IS NOT NULL "
            "ORDER BY 1, 2, 3, 4",
            (start, hi),
        )
        days, d = [], date.fromisoformat(lo)
        while d.isoformat() <= hi:
            days.append(d.isoformat())
            d += timedelta(days=1)
        by_date: dict[str, list[tuple]] = {}
        for cat, lv, mt, day, n, median in rc.peer_medians(rows, days, peer_days):
            by_date.setdefault(day, []).append((peer_days, cat, lv, mt, day, n, median))
        return by_date

    def _scope_medians(self, rules: AreaRules, setl_ids: Iterable[str]) -> None:
        """``cur_peer_medians`` for the groups and dates of the settlements ``setl_ids`` (an incremental
        batch): each group's visits of the year before its dates read once from the ``hist_visits_peer``
        index (centre migration 9) and slid over its dates, where the rule's SQL re-reads them for each
        date. Only the batch's own visits are judged: a visit is judged against the peers before its
        date, so the new settlements change nothing a screen has not already found about the older
        visits in the scope (they get no median, hence no peer hit)."""
        peer_rules = self._peer_rules(rules)
        if not peer_rules:
            return
        groups: dict[tuple[str, str, str], set[str]] = {}
        for part in _chunks(sorted(set(setl_ids))):
            marks = ",".join("?" * len(part))
            for cat, lv, mt, day in self.conn.execute(
                "SELECT DISTINCT substr(dise_main, 1, 3), hosp_lv, med_type, setl_date FROM cur_visits "
                f"WHERE dise_main IS NOT NULL AND hosp_lv IS NOT NULL AND setl_id IN ({marks})",
                part,
            ):
                groups.setdefault((cat, lv, mt), set()).add(day)
        rows: list[tuple] = []
        for peer_days in sorted({r.params["peer_days"] for r in peer_rules}):
            for (cat, lv, mt), days in sorted(groups.items()):
                lo = (date.fromisoformat(min(days)) - timedelta(days=peer_days)).isoformat()
                peers = self.conn.execute(
                    "SELECT ?, ?, ?, setl_date, medfee_sumamt FROM db.hist_visits "
                    "WHERE med_type = ? AND hosp_lv = ? AND substr(dise_main, 1, 3) = ? "
                    "AND dise_main IS NOT NULL AND setl_date >= ? AND setl_date < ? ORDER BY setl_date",
                    (cat, lv, mt, mt, lv, cat, lo, max(days)),
                )
                rows.extend((peer_days, *m) for m in rc.peer_medians(peers, days, peer_days))
        self.conn.executemany("INSERT INTO cur_peer_medians VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        self._given = True

    def _prepare_medians(self, rules: AreaRules, date_from: str, date_to: str) -> None:
        """``cur_peer_medians`` for the chunk's dates (when this screener has a span covering them)."""
        peer_rules = self._peer_rules(rules)
        if not peer_rules or self.span is None or not (self.span[0] <= date_from <= date_to <= self.span[1]):
            return
        rows: list[tuple] = []
        for peer_days in sorted({r.params["peer_days"] for r in peer_rules}):
            if peer_days not in self._medians:
                self._medians[peer_days] = self._compute_medians(peer_days)
            by_date = self._medians[peer_days]
            d, end = date.fromisoformat(date_from), date.fromisoformat(date_to)
            while d <= end:
                rows.extend(by_date.get(d.isoformat(), ()))
                d += timedelta(days=1)
        self.conn.executemany("INSERT INTO cur_peer_medians VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        self._given = True

    def fill_scope(
        self,
        area: str,
        persons: Iterable[str],
        date_from: str,
        date_to: str,
        hospitals: Iterable[str] = (),
        objects_from: str | None = None,
        objects_to: str | None = None,
    ) -> tuple[int, int]:
        """The area's visits of ``persons`` in [date_from, date_to], plus (rules about doctors, departments
        and hospitals) every visit at ``hospitals`` in [objects_from, objects_to]: the touched doctors'
        and departments' visits are among them, and so are their peers' of that hospital."""
        self._clear()
        conn = self.conn
        conn.execute("DELETE FROM scope_psn")
        conn.execute("DELETE FROM scope_obj")
        conn.executemany("INSERT OR IGNORE INTO scope_psn VALUES (?)", ((p,) for p in persons))
        cols = ", ".join(_VISIT_COLUMNS)
        vcols = ", ".join(f"v.{c}" for c in _VISIT_COLUMNS)
        conn.execute(
            f"INSERT INTO cur_visits ({cols}) SELECT {vcols} FROM scope_psn AS s "
            "CROSS JOIN db.hist_visits AS v ON v.psn_no = s.psn_no AND v.setl_date BETWEEN ? AND ? "
            "WHERE v.area = ?",
            (date_from, date_to, area),
        )
        hospitals = sorted(set(hospitals))
        if hospitals and objects_from is not None:
            conn.executemany("INSERT INTO scope_obj VALUES (?)", ((h,) for h in hospitals))
            conn.execute(
                f"INSERT OR IGNORE INTO cur_visits ({cols}) SELECT {vcols} FROM scope_obj AS o "
                "CROSS JOIN db.hist_visits AS v ON v.fixmedins_code = o.fixmedins_code "
                "AND v.setl_date BETWEEN ? AND ? WHERE v.area = ?",
                (objects_from, objects_to, area),
            )
        n = conn.execute("SELECT count(*) FROM cur_visits").fetchone()[0]
        return n, self._fill_lines()

    def scope_ids(self) -> frozenset[str]:
        """The settlements ``cur_visits`` holds: what the rules run next judge."""
        return frozenset(r[0] for r in self.conn.execute("SELECT setl_id FROM cur_visits"))

    def fill_setl_ids(self, area: str, setl_ids: Iterable[str]) -> set[str]:
        """``cur_visits`` = the area's visits among ``setl_ids`` (no lines: template 17 reads visits only)."""
        self._clear()
        cols = ", ".join(_VISIT_COLUMNS)
        for part in _chunks(sorted(set(setl_ids))):
            marks = ",".join("?" * len(part))
            self.conn.execute(
                f"INSERT OR IGNORE INTO cur_visits ({cols}) SELECT {cols} FROM db.hist_visits "
                f"WHERE setl_id IN ({marks}) AND area = ?",
                (*part, area),
            )
        return set(self.scope_ids())

    def later_peers(
        self,
        rules: AreaRules,
        area: str,
        setl_ids: Iterable[str],
        reversed_: Iterable[tuple[str, str, str]] = (),
    ) -> set[str]:
        """The visits whose template-17 peers the settlements ``setl_ids`` join: same group (category,
        level, med_type), settled after the earliest of them and within ``peer_days`` of it. For settlements
        arriving in real time there are none; for an older one arriving late, these visits' medians moved,
        so an incremental screen judges them again and agrees with a full screen of the range.

        ``reversed_``: (date, med_type, hospital) of cancelled settlements, whose rows (and diagnosis) are
        gone: the visits of that med_type at hospitals of that level after it, any category (at most
        ``REJUDGE_LIMIT``; beyond it the log says so and a full screen of the range settles it)."""
        peer_rules = self._peer_rules(rules)
        if not peer_rules:
            return set()
        peer_days = max(r.params["peer_days"] for r in peer_rules)
        first: dict[tuple[str, str, str], str] = {}
        for part in _chunks(sorted(set(setl_ids))):
            marks = ",".join("?" * len(part))
            for cat, lv, mt, day in self.conn.execute(
                "SELECT substr(dise_main, 1, 3), hosp_lv, med_type, min(setl_date) FROM db.hist_visits "
                f"WHERE dise_main IS NOT NULL AND hosp_lv IS NOT NULL AND area = ? AND setl_id IN ({marks}) "
                "GROUP BY 1, 2, 3",
                (area, *part),
            ):
                key = (cat, lv, mt)
                first[key] = min(day, first.get(key, day))
        found: set[str] = set()
        for day, mt, hospital in sorted(reversed_):
            until = (date.fromisoformat(day) + timedelta(days=peer_days)).isoformat()
            rows = self.conn.execute(
                "SELECT v.setl_id FROM db.hist_visits AS v WHERE v.med_type = ? AND v.setl_date > ? "
                "AND v.setl_date <= ? AND v.area = ? AND v.dise_main IS NOT NULL AND v.hosp_lv = ("
                "SELECT hosp_lv FROM db.hist_visits WHERE fixmedins_code = ? AND hosp_lv IS NOT NULL "
                "LIMIT 1) LIMIT ?",
                (mt, day, until, area, hospital, REJUDGE_LIMIT + 1),
            ).fetchall()
            if len(rows) > REJUDGE_LIMIT:
                log.warning(
                    "a reversal of a settlement of %s touches more than %d later visits' peers; template 17 "
                    "judges the first %d, screen the range in full to settle the rest", day, REJUDGE_LIMIT,
                    REJUDGE_LIMIT,
                )  # fmt: skip
            found.update(r[0] for r in rows[:REJUDGE_LIMIT])
        for (cat, lv, mt), day in sorted(first.items()):
            until = (date.fromisoformat(day) + timedelta(days=peer_days)).isoformat()
            found.update(
                r[0]
                for r in self.conn.execute(
                    "SELECT setl_id FROM db.hist_visits WHERE med_type = ? AND hosp_lv = ? "
                    "AND substr(dise_main, 1, 3) = ? AND dise_main IS NOT NULL AND setl_date > ? "
                    "AND setl_date <= ? AND area = ?",
                    (mt, lv, cat, day, until, area),
                )
            )
        return found

    # -- running -----------------------------------------------------------------------------

    def run(self, rules: AreaRules, result: ChunkResult, *, only: Iterable[str] | None = None) -> None:
        """Every screened rule over what ``cur_*`` hold; hits → ``result`` (findings, counts)."""
        self._install(rules)
        wanted = set(only) if only is not None else None
        by_rule: list[tuple[rl.Rule, list[rl.Hit]]] = []
        for rule in rules.rules:
            if wanted is not None and rule.id not in wanted:
                continue
            start = time.perf_counter()
            if self._given and rule.template == "excessive_cost" and rule.params["peer_ratio"] is not None:
                hits = _run_compiled(self.conn, rule, rc.compile_excessive_given(rule))
            else:
                hits = rl.run_rule(self.conn, rule)
            result.seconds[rule.id] += time.perf_counter() - start
            result.hits[rule.id] += len(hits)
            if hits:
                by_rule.append((rule, hits))
        if not by_rule:
            return
        start = time.perf_counter()
        setl_ids = sorted({h.setl_id for _, hits in by_rule for h in hits})
        visits = self._visits(setl_ids)
        with_lines = sorted({h.setl_id for _, hits in by_rule for h in hits if h.lines})
        amounts = self._amounts(with_lines)
        for rule, hits in by_rule:
            for hit in hits:
                result.findings.append(
                    finding_of(rule, hit, visits.get(hit.setl_id), amounts.get(hit.setl_id, {}), rules.area)
                )
        result.seconds["findings"] += time.perf_counter() - start

    def _visits(self, setl_ids: list[str]) -> dict[str, dict[str, Any]]:
        cols = ("setl_id", "psn_no", "fixmedins_code", "area", "dr_codg", "dept_codg", "medfee_sumamt")
        cols += ("setl_date",)
        found: dict[str, dict[str, Any]] = {}
        for part in _chunks(setl_ids):
            for table in ("cur_visits", "db.hist_visits"):
                missing = [s for s in part if s not in found]
                if not missing:
                    break
                marks = ",".join("?" * len(missing))
                for row in self.conn.execute(
                    f"SELECT {', '.join(cols)} FROM {table} WHERE setl_id IN ({marks})", missing
                ):
                    found[row[0]] = dict(zip(cols, row, strict=True))
        return found

    def _amounts(self, setl_ids: list[str]) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for part in _chunks(setl_ids):
            marks = ",".join("?" * len(part))
            for setl_id, sn, amount in self.conn.execute(
                f"SELECT setl_id, feedetl_sn, amount_fen FROM db.hist_lines WHERE setl_id IN ({marks})", part
            ):
                found.setdefault(setl_id, {})[sn] = amount
        return found

    def screen_range(
        self, rules: AreaRules, date_from: str, date_to: str, *, objects: Iterable[str] | None = None
    ) -> ChunkResult:
        """One chunk of a full screen, in one read transaction (a consistent snapshot): every rule but
        those of ``OBJECT_TEMPLATES``; or, given ``objects`` (rule ids), a window of those rules only
        (its visits, no lines, not counted as screened settlements: a chunk counts them)."""
        result = ChunkResult(rules.area, date_from, date_to)
        self.conn.execute("BEGIN")
        try:
            start = time.perf_counter()
            if objects is None:
                result.settlements, result.lines = self.fill_range(rules.area, date_from, date_to)
                result.seconds["fill"] += time.perf_counter() - start
                start = time.perf_counter()
                self._prepare_medians(rules, date_from, date_to)
                result.seconds["medians"] += time.perf_counter() - start
                only = [r.id for r in rules.rules if r.template not in OBJECT_TEMPLATES]
                n = result.settlements
            else:
                n, _ = self.fill_range(rules.area, date_from, date_to, lines=False)
                only = list(objects)
                result.seconds["fill_window"] += time.perf_counter() - start
            if n and only:
                self.run(rules, result, only=only)
            self._clear()
        finally:
            self.conn.execute("COMMIT")
        return result


def _run_compiled(conn: sqlite3.Connection, rule: rl.Rule, compiled: rl.Compiled) -> list[rl.Hit]:
    """``rl.run_rule`` with another SQL text for the rule (same columns)."""
    cur = conn.cursor()
    cur.row_factory = None
    cur.execute(compiled.sql, compiled.params)
    columns = [d[0] for d in cur.description]
    rows = [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
    return rl.hits_from_rows(rule, rows)


def object_windows(rules: AreaRules, lo: str, hi: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """The windows a full screen of [lo, hi] runs the object templates over: per window length (the rule's
    ``days``), consecutive windows back from ``hi`` until ``lo`` is covered. A window's visits are its own,
    whatever the chunks, so the same range gives the same (object, window end) facts however it is cut."""
    by_days: dict[int, list[str]] = {}
    for r in rules.rules:
        if r.template in OBJECT_TEMPLATES:
            by_days.setdefault(int(r.params["days"]), []).append(r.id)
    out = []
    first = date.fromisoformat(lo)
    for days, ids in sorted(by_days.items()):
        end = date.fromisoformat(hi)
        while end >= first:
            out.append((max(first, end - timedelta(days=days - 1)).isoformat(), end.isoformat(), tuple(ids)))
            end -= timedelta(days=days)
    return out


# -- worker processes ------------------------------------------------------------------------------

_worker: dict[str, Any] = {}


def _worker_init(db_path: str, docs: dict[str, tuple[Any, Any]], span: tuple[str, str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    _worker["screener"] = Screener(db_path, span)
    _worker["areas"] = {area: load_area_rules(r, c, area=area) for area, (r, c) in docs.items()}


def _worker_chunk(
    area: str, date_from: str, date_to: str, objects: tuple[str, ...] | None = None
) -> ChunkResult:
    return _worker["screener"].screen_range(_worker["areas"][area], date_from, date_to, objects=objects)


def _date_chunks(
    per_day: Mapping[str, int], date_from: date, date_to: date, days: int, visits: int
) -> list[tuple[str, str]]:
    """Consecutive day ranges covering [date_from, date_to], each of at most ``days`` days and, where a
    day allows it, about ``visits`` visits (a busy day is a chunk of its own)."""
    out = []
    day = date_from
    while day <= date_to:
        end, n = day, per_day.get(day.isoformat(), 0)
        while end < date_to and (end - day).days + 1 < days:
            more = per_day.get((end + timedelta(days=1)).isoformat(), 0)
            if n and n + more > visits:
                break
            end += timedelta(days=1)
            n += more
        out.append((day.isoformat(), end.isoformat()))
        day = end + timedelta(days=1)
    return out


def _visits_per_day(store: Store, lo: str, hi: str) -> dict[str, int]:
    """Visits per settlement date (every area: the covering index answers it without the rows)."""
    return store.read(
        lambda c: dict(
            c.execute(
                "SELECT setl_date, count(*) FROM hist_visits WHERE setl_date BETWEEN ? AND ? "
                "GROUP BY setl_date",
                (lo, hi),
            ).fetchall()
        )
    )


def _iso(d: date | str) -> date:
    return d if isinstance(d, date) else date.fromisoformat(d)


def run_chunks(
    store: Store,
    areas: Mapping[str, AreaRules],
    date_from: date | str,
    date_to: date | str,
    *,
    chunk_days: int = CHUNK_DAYS,
    chunk_visits: int = CHUNK_VISITS,
    workers: int = 1,
    on_result: Callable[[ChunkResult], None],
) -> None:
    """Every (area, chunk) of the range through ``on_result``, in this process or ``workers`` processes."""
    lo, hi = _iso(date_from), _iso(date_to)
    per_day = _visits_per_day(store, lo.isoformat(), hi.isoformat())
    chunks = _date_chunks(per_day, lo, hi, chunk_days, chunk_visits)
    span = (lo.isoformat(), hi.isoformat())
    tasks: list[tuple[str, str, str, tuple[str, ...] | None]] = [
        (area, a, b, None) for area in sorted(areas) if areas[area].rules for a, b in chunks
    ]
    # the object templates' windows first: each is one big task, so the queue stays balanced at the end
    tasks[:0] = [
        (area, a, b, ids) for area in sorted(areas) for a, b, ids in object_windows(areas[area], *span)
    ]
    if not tasks:
        return
    if workers <= 1 or len(tasks) == 1:
        screener = Screener(screening_source(store), span)
        try:
            for area, a, b, objects in tasks:
                on_result(screener.screen_range(areas[area], a, b, objects=objects))
        finally:
            screener.close()
        return
    docs = {area: areas[area].docs() for area in areas}
    if any(r is None for r, _ in docs.values()):
        raise ValueError("worker processes need the rules documents (AreaRules.rules_doc)")
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=_worker_init,
        initargs=(screening_source(store), docs, span),
    ) as pool:
        pending = [pool.submit(_worker_chunk, *task) for task in tasks]
        try:
            for future in pending:  # in order: the range is recorded oldest first
                on_result(future.result())
        except BaseException:
            for future in pending:
                future.cancel()
            raise


# -- full screening --------------------------------------------------------------------------------


def _count_visits(store: Store, areas: Iterable[str], lo: str, hi: str) -> int:
    areas = sorted(areas)
    if not areas:
        return 0
    marks = ",".join("?" * len(areas))
    return store.read(
        lambda c: c.execute(
            f"SELECT count(*) FROM hist_visits WHERE setl_date BETWEEN ? AND ? AND area IN ({marks})",
            (lo, hi, *areas),
        ).fetchone()[0]
    )


def _start_run(store: Store, kind: str, date_from: str | None, date_to: str | None) -> int:
    return store.write(
        lambda c: (
            c.execute(
                "INSERT INTO screen_runs (kind, started_at, date_from, date_to) VALUES (?, ?, ?, ?)",
                (kind, now_iso(), date_from, date_to),
            ).lastrowid
        )
    )


#: What a run's ``detail`` keeps of its summary (each engine fills those it has).
_RUN_DETAIL = (
    "per_rule", "seconds", "areas", "engine", "export", "workers", "cursor",
    "retracted", "flagged", "rejudged",
)  # fmt: skip


def finish_run(conn: sqlite3.Connection, run_id: int, summary: dict[str, Any]) -> None:
    """Record the run's counts and end: a screen that failed part way too (its counts say how far it got)."""
    detail = {k: summary[k] for k in _RUN_DETAIL if k in summary}
    conn.execute(
        "UPDATE screen_runs SET finished_at = ?, settlements = ?, lines = ?, hits = ?, new_suspicions = ?, "
        "detail = ? WHERE id = ?",
        (now_iso(), summary["settlements"], summary["lines"], summary["hits"], summary["new_suspicions"],
         json.dumps(detail, sort_keys=True), run_id),
    )  # fmt: skip


def close_full_screen(
    store: Store,
    run_id: int,
    summary: dict[str, Any],
    per_rule: Counter,
    seconds: Counter,
    started: float,
    judged: list[Judged] | None,
    found: set[str],
) -> None:
    """The end of a full screen on any engine. ``judged`` is None when the screen failed part way: only
    one that ran to its end may say a fact no longer holds (retract what it did not find again)."""
    try:
        if judged is not None:
            counts = store.write(lambda c: retract_missing(c, judged, found, run_id=run_id, at=now_iso()))
            summary["retracted"], summary["flagged"] = counts["retracted"], counts["flagged"]
    finally:
        summary["per_rule"] = dict(per_rule)
        summary["hits"] = sum(per_rule.values())
        summary["seconds"] = {k: round(v, 3) for k, v in seconds.most_common()}
        summary["elapsed_s"] = round(time.perf_counter() - started, 3)
        store.write(lambda c: finish_run(c, run_id, summary))


def full_judged(areas: Mapping[str, AreaRules], lo: str, hi: str) -> list[Judged]:
    """What a full screen of [lo, hi] judged: per area and rule, every anchor settled in the range (a
    chunk holds every visit of its days and reads all history), and for the object templates the ends
    of the windows it ran (``object_windows``)."""
    out = []
    for area, rules in sorted(areas.items()):
        ends: dict[str, set[str]] = {}
        for _a, b, ids in object_windows(rules, lo, hi):
            for rid in ids:
                ends.setdefault(rid, set()).add(b)
        for r in rules.rules:
            if r.template in OBJECT_TEMPLATES:
                out.append(Judged(r.id, r.version, area, periods=frozenset(ends.get(r.id, ()))))
            else:
                out.append(Judged(r.id, r.version, area, dates=(lo, hi)))
    return out


def _default_workers() -> int:
    import os

    return max(1, min(2, os.cpu_count() or 1))


def screen(
    store: Store,
    date_from: date | str,
    date_to: date | str,
    *,
    repo: Any = None,
    areas: Mapping[str, AreaRules] | None = None,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
    chunk_days: int = CHUNK_DAYS,
    chunk_visits: int = CHUNK_VISITS,
    workers: int | None = None,
) -> dict[str, Any]:
    """Full screening of the visits settled in [date_from, date_to] with the rules in force; a summary.

    ``progress(n)`` is called with the visits each finished chunk screened, ``total(n)`` once with
    the visits in range. Findings are recorded chunk by chunk (one write each) under one
    ``screen_runs`` row, finished with the counts and per-rule hits and seconds.
    """
    lo, hi = _iso(date_from).isoformat(), _iso(date_to).isoformat()
    if lo > hi:
        raise ValueError(f"--from {lo} is after --to {hi}")
    areas = dict(areas) if areas is not None else rules_in_force(store, repo)
    if total is not None:
        total(_count_visits(store, [a for a in areas if areas[a].rules], lo, hi))
    n_workers = _default_workers() if workers is None else workers
    run_id = _start_run(store, "full", lo, hi)
    at = now_iso()
    summary: dict[str, Any] = {
        "run_id": run_id, "kind": "full", "date_from": lo, "date_to": hi, "settlements": 0, "lines": 0,
        "hits": 0, "new_suspicions": 0, "again": 0, "per_rule": {}, "seconds": {}, "areas": sorted(areas),
        "workers": n_workers,
    }  # fmt: skip
    per_rule: Counter = Counter({r.id: 0 for a in areas.values() for r in a.rules})
    seconds: Counter = Counter()
    started = time.perf_counter()
    found: set[str] = set()

    def take(result: ChunkResult) -> None:
        per_rule.update(result.hits)
        seconds.update(result.seconds)
        summary["settlements"] += result.settlements
        summary["lines"] += result.lines
        found.update(fact_key(f) for f in result.findings)
        if result.findings:
            counts = store.write(lambda c: record_findings(c, result.findings, run_id=run_id, at=at))
            summary["new_suspicions"] += counts["new"]
            summary["again"] += counts["again"]
        if progress is not None:
            progress(result.settlements)

    judged = None
    try:
        run_chunks(store, areas, lo, hi, chunk_days=chunk_days, chunk_visits=chunk_visits, workers=n_workers,
                   on_result=take)  # fmt: skip
        judged = full_judged(areas, lo, hi)
    finally:
        close_full_screen(store, run_id, summary, per_rule, seconds, started, judged, found)
    log.info(
        "screened %d settlements (%s..%s): %d hits, %d new suspicions, run %d", summary["settlements"], lo,
        hi, summary["hits"], summary["new_suspicions"], run_id,
    )  # fmt: skip
    return summary


# -- incremental screening -------------------------------------------------------------------------


def _cursor(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (CURSOR_KEY,)).fetchone()
    return int(row[0]) if row else 0


def _set_cursor(conn: sqlite3.Connection, value: int) -> None:
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (CURSOR_KEY, str(value)),
    )


@dataclass(frozen=True, slots=True)
class _Batch:
    cursor_from: int
    cursor_to: int
    settlements: int
    persons: frozenset[str]
    hospitals: frozenset[str]
    date_from: str | None
    date_to: str | None
    setl_ids: frozenset[str] = frozenset()
    reversals: int = 0
    #: (setl_date, med_type, fixmedins_code) of each settlement a reversal in the batch cancelled
    reversed_: frozenset[tuple[str, str, str]] = frozenset()


def _new_batch(conn: sqlite3.Connection, limit: int, upto: int | None = None) -> _Batch:
    """``upto``: the highest rowid every row below which is committed (``committed_upto``; PostgreSQL)."""
    cursor = _cursor(conn)
    rows = conn.execute(
        "SELECT s.rowid, s.kind, s.psn_no, s.setl_date, v.fixmedins_code, s.setl_id, o.psn_no, o.setl_date, "
        "o.fixmedins_code, o.med_type FROM settlements AS s "
        "LEFT JOIN hist_visits AS v ON v.setl_id = s.setl_id "
        "LEFT JOIN settlements AS o ON o.setl_id = s.orig_setl_id "
        "WHERE s.rowid > ? AND s.rowid <= ? ORDER BY s.rowid LIMIT ?",
        (cursor, upto if upto is not None else 2**63 - 1, limit),
    ).fetchall()
    persons, hospitals, dates, setl_ids = set(), set(), [], set()
    rev_persons, rev_dates, reversed_ = set(), [], set()
    for _rowid, kind, psn_no, setl_date, hospital, setl_id, o_psn, o_date, o_hosp, o_type in rows:
        if kind != "setl" and o_psn and o_date:
            reversed_.add((o_date, o_type, o_hosp))
            # a reversal: the person's other facts that rested on the cancelled settlement (the earlier stay
            # of a readmission, a dispensing overlapped) are judged again from its date on; the reversed
            # settlement's own suspicions stay as they are (their review decides)
            rev_persons.add(o_psn)
            rev_dates.append(o_date)
            hospitals.add(o_hosp)
            continue
        if kind != "setl" or hospital is None:  # a settlement reversed since
            continue
        persons.add(psn_no)
        setl_ids.add(setl_id)
        hospitals.add(hospital)
        dates.append(setl_date)
    every = dates + rev_dates
    return _Batch(
        cursor, rows[-1][0] if rows else cursor, len(dates), frozenset(persons | rev_persons),
        frozenset(hospitals), min(every) if every else None, max(every) if every else None,
        frozenset(setl_ids), len(rev_dates), frozenset(reversed_),
    )  # fmt: skip


def screen_new(
    store: Store,
    *,
    repo: Any = None,
    areas: Mapping[str, AreaRules] | None = None,
    limit: int = INCREMENTAL_LIMIT,
) -> dict[str, Any]:
    """Screen what was ingested since the cursor (at most ``limit`` settlements); returns a summary.

    Nothing new: nothing written, ``settlements`` 0. Otherwise one write records the findings, a
    ``screen_runs`` row (kind ``incremental``) and the new cursor.
    """
    started = time.perf_counter()
    upto = committed_upto(store)
    batch = store.read(lambda c: _new_batch(c, limit, upto))
    summary: dict[str, Any] = {
        "kind": "incremental", "settlements": batch.settlements, "lines": 0, "hits": 0, "new_suspicions": 0,
        "again": 0, "per_rule": {}, "cursor": [batch.cursor_from, batch.cursor_to],
        "date_from": batch.date_from, "date_to": batch.date_to, "run_id": None,
    }  # fmt: skip
    if batch.cursor_to == batch.cursor_from:
        return summary
    if not batch.settlements and not batch.reversals:  # only settlements reversed since: move on
        store.write(lambda c: _set_cursor(c, batch.cursor_to))
        return summary
    areas = dict(areas) if areas is not None else rules_in_force(store, repo)
    assert batch.date_from is not None and batch.date_to is not None
    results: list[ChunkResult] = []
    judged: list[Judged] = []
    rejudged = 0
    screener = Screener(screening_source(store))
    try:
        for area in sorted(areas):
            rules = areas[area]
            if not rules.rules:
                continue
            hi = (date.fromisoformat(batch.date_to) + timedelta(days=rules.window())).isoformat()
            result = ChunkResult(area, batch.date_from, hi)
            # template 17 judges each visit against the peers before its date, whatever its object: the
            # batch's own visits, and (an older settlement arriving late) the later visits of its groups
            excessive = [r for r in rules.rules if r.template == "excessive_cost"]
            group = [
                r
                for r in rules.rules
                if r.template != "excessive_cost" and (r.template in GROUP_TEMPLATES or r.object != "person")
            ]
            person = [r for r in rules.rules if r not in group and r not in excessive]
            screener.conn.execute("BEGIN")
            try:
                start = time.perf_counter()
                result.settlements, result.lines = screener.fill_scope(
                    area, batch.persons, batch.date_from, hi
                )
                result.seconds["fill"] += time.perf_counter() - start
                scope = screener.scope_ids()
                if result.settlements and person:
                    screener.run(rules, result, only=[r.id for r in person])
                judged += [Judged(r.id, r.version, area, anchors=scope) for r in person]
                if group:
                    # group rules: also the touched objects' visits on the batch's dates
                    screener.fill_scope(
                        area, batch.persons, batch.date_from, hi, batch.hospitals,
                        batch.date_from, batch.date_to,
                    )  # fmt: skip
                    screener.run(rules, result, only=[r.id for r in group])
                    wider = screener.scope_ids()
                    judged += [
                        Judged(r.id, r.version, area, anchors=wider)
                        for r in group
                        if r.template not in OBJECT_TEMPLATES
                    ]
                if excessive:
                    start = time.perf_counter()
                    later = screener.later_peers(rules, area, batch.setl_ids, batch.reversed_)
                    targets = screener.fill_setl_ids(area, batch.setl_ids | later)
                    screener._scope_medians(rules, targets)
                    result.seconds["medians"] += time.perf_counter() - start
                    rejudged += len(targets - batch.setl_ids)
                    if targets:
                        screener.run(rules, result, only=[r.id for r in excessive])
                    judged += [Judged(r.id, r.version, area, anchors=frozenset(targets)) for r in excessive]
                screener._clear()
            finally:
                screener.conn.execute("COMMIT")
            results.append(result)
    finally:
        screener.close()
    per_rule: Counter = Counter()
    seconds: Counter = Counter()
    findings: list[Finding] = []
    for result in results:
        per_rule.update(result.hits)
        seconds.update(result.seconds)
        findings.extend(result.findings)
        summary["lines"] += result.lines
    summary["per_rule"] = dict(per_rule)
    summary["seconds"] = {k: round(v, 3) for k, v in seconds.most_common()}
    summary["hits"] = sum(per_rule.values())
    summary["screened_visits"] = sum(r.settlements for r in results)
    summary["rejudged"] = rejudged

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        if _cursor(conn) != batch.cursor_from:  # another screen_new moved it meanwhile: redo next time
            return {"raced": True}
        run_id = conn.execute(
            "INSERT INTO screen_runs (kind, started_at, date_from, date_to) VALUES ('incremental', ?, ?, ?)",
            (now_iso(), batch.date_from, batch.date_to),
        ).lastrowid
        at = now_iso()
        counts = record_findings(conn, findings, run_id=run_id, at=at)
        gone = retract_missing(conn, judged, fact_keys(findings), run_id=run_id, at=at)
        summary.update(run_id=run_id, new_suspicions=counts["new"], again=counts["again"], **gone)
        finish_run(conn, run_id, summary)
        _set_cursor(conn, batch.cursor_to)
        return {"raced": False}

    if store.write(write)["raced"]:
        summary.update(settlements=0, hits=0, per_rule={})
        return summary
    summary["elapsed_s"] = round(time.perf_counter() - started, 3)
    if summary["new_suspicions"]:
        log.info("incremental screen of %d settlements: %d new suspicions", batch.settlements,
                 summary["new_suspicions"])  # fmt: skip
    return summary


# -- backtest --------------------------------------------------------------------------------------


def _fact(f: Finding) -> tuple:
    """A finding's identity across rule versions: object, settlements, lines (and period)."""
    return (f.object_type, f.object_id, tuple(sorted(set(f.setl_ids))), tuple(sorted(set(f.hit.lines))),
            f.period)  # fmt: skip


def _collect(
    store: Store, rules: AreaRules, lo: str, hi: str, chunk_days: int, workers: int
) -> tuple[dict[str, dict[tuple, Finding]], int]:
    found: dict[str, dict[tuple, Finding]] = {r.id: {} for r in rules.rules}
    visits = 0

    def take(result: ChunkResult) -> None:
        nonlocal visits
        visits += result.settlements
        for f in result.findings:
            found.setdefault(f.hit.rule_id, {})[_fact(f)] = f

    run_chunks(store, {rules.area: rules}, lo, hi, chunk_days=chunk_days, workers=workers, on_result=take)
    return found, visits


def _per_hospital(found: dict[str, dict[tuple, Finding]]) -> dict[str, int]:
    counts: Counter = Counter(f.fixmedins_code or "?" for facts in found.values() for f in facts.values())
    return dict(sorted(counts.items()))


def backtest(
    store: Store,
    ruleset_doc: Any,
    catalogue_doc: Any = None,
    date_from: date | str = "",
    date_to: date | str = "",
    *,
    repo: Any = None,
    in_force: Mapping[str, AreaRules] | None = None,
    chunk_days: int = CHUNK_DAYS,
    workers: int | None = None,
) -> dict[str, Any]:
    """Run a rules document over [date_from, date_to] beside the rules in force; nothing is stored.

    The candidate runs with ``catalogue_doc`` when given, else the area's catalogue in force. The
    report: visits screened; per rule the hits of each side and the difference (``new``: facts only
    the candidate finds, ``removed``: only the rules in force, ``changed``: both, with another
    message or evidence), facts compared across rule versions; hits per hospital for each side.
    """
    lo, hi = _iso(date_from).isoformat(), _iso(date_to).isoformat()
    if lo > hi:
        raise ValueError(f"--from {lo} is after --to {hi}")
    in_force = dict(in_force) if in_force is not None else rules_in_force(store, repo)
    candidate_ruleset = rl.load_ruleset(ruleset_doc)
    area = candidate_ruleset.area
    current = in_force.get(area)
    catalogue_from = "file" if catalogue_doc is not None else "none"
    if catalogue_doc is None and current is not None and current.catalogue_doc is not None:
        catalogue_doc, catalogue_from = current.catalogue_doc, "in force"
    candidate = load_area_rules(ruleset_doc, catalogue_doc, area=area)
    n_workers = _default_workers() if workers is None else workers
    new_found, visits = _collect(store, candidate, lo, hi, chunk_days, n_workers)
    old_found: dict[str, dict[tuple, Finding]] = {}
    if current is not None:
        old_found, _ = _collect(store, current, lo, hi, chunk_days, n_workers)
    rules_report = []
    for rule_id in sorted(set(new_found) | set(old_found)):
        new, old = new_found.get(rule_id, {}), old_found.get(rule_id, {})
        both = new.keys() & old.keys()
        changed = sum(
            1
            for k in both
            if (new[k].hit.message, new[k].hit.evidence) != (old[k].hit.message, old[k].hit.evidence)
        )
        rules_report.append({
            "rule_id": rule_id, "candidate": len(new), "in_force": len(old),
            "new": len(new.keys() - old.keys()),
            "removed": len(old.keys() - new.keys()), "changed": changed,
            "in_candidate": rule_id in {r.id for r in candidate.rules},
            "in_force_rule": current is not None and rule_id in {r.id for r in current.rules},
        })  # fmt: skip
    return {
        "area": area, "date_from": lo, "date_to": hi, "visits": visits,
        "catalogue": catalogue_from,
        "rules": rules_report,
        "hospitals": {"candidate": _per_hospital(new_found), "in_force": _per_hospital(old_found)},
        "totals": {"candidate": sum(len(v) for v in new_found.values()),
                   "in_force": sum(len(v) for v in old_found.values())},
    }  # fmt: skip


def fact_keys(findings: Iterable[Finding]) -> set[str]:
    """The suspicions' fact keys of findings (tests and tools compare runs with it)."""
    return {fact_key(f) for f in findings}
