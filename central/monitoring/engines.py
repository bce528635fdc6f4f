"""The full screen on other SQL engines: the same templates' SQL on DuckDB or Spark, findings through the
same suspicion path (docs/MONITORING.md, "Engines").

Why: SQLite screens a city-year in a couple of minutes on two cores, but a province holds ~200
million visits a year; the rule library is SQL text, so the engines that scale out (Spark) or run
columnar on one machine (DuckDB) can run that same text. Nothing about a rule changes per engine:
``protocol.rules.compile_rule`` writes the SQLite text, ``protocol.rules.dialect.transpile`` carries
it to the engine's dialect, the parameters are bound by the engine (never pasted into the text),
and the rows go through ``protocol.rules.hits_from_rows`` and ``screening.finding_of`` into
``suspicions.record_findings``. So a suspicion's fact key is the same whichever engine found it.

The data: ``export_parquet`` writes the tables the templates read (``hist_visits``, ``hist_lines``,
``deaths``, ``hospitals``) from ``central.db`` to Parquet, every table from one read transaction
(a consistent snapshot while ingest goes on), each file written beside its final name and renamed
into place. It is a full export per screen (documented, not incremental: a screen reads all history
anyway); the area's knowledge base (``kb_*``) is written per area by ``export_knowledge``. An
engine puts ``cur_visits`` (the area's visits of the range) and ``cur_lines`` (their lines with the
person's columns) over those tables, as ``Screener.fill_range`` does in SQLite.

Where the engines differ from SQLite's own screen: SQLite screens in chunks of days (its
per-query costs grow with the chunk), the others take the whole range in one query per rule
(what a columnar or distributed engine is for); the object template (18) runs per window on every
engine (``screening.object_windows``). Template 17 with a peer ratio reads its medians from the
rule's own SQL on DuckDB and Spark (SQLite's screen precomputes them once per span): the same
medians, another route. ``tests/central/test_engines.py`` holds the three to the same hits per
template and to the same suspicions.

Numbers come back as SQLite gives them: a ``Decimal`` (Spark and DuckDB type ``x * 1.0`` as a
decimal) becomes a ``float``, as SQLite's REAL arithmetic would have it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from central.errors import CentralError
from central.storage.base import is_postgres
from central.storage.store import Store, now_iso
from protocol import rules as rl
from protocol.rules import centre as rc
from protocol.rules.dialect import transpile

from .pgscreen import PgScreeningConnection
from .screening import (
    AreaRules,
    _start_run,
    close_full_screen,
    finding_of,
    full_judged,
    object_windows,
    rules_in_force,
    screening_source,
)
from .suspicions import Finding, fact_key, record_findings

__all__ = [
    "ENGINES",
    "HISTORY_TABLES",
    "KB_TABLES",
    "DuckDbEngine",
    "Engine",
    "EngineFailed",
    "EngineUnavailable",
    "Export",
    "SparkEngine",
    "SqliteEngine",
    "export_knowledge",
    "export_parquet",
    "open_engine",
    "screen_on",
    "spark_session",
]

log = logging.getLogger(__name__)

#: The engines a full screen can run on (``yibao-central screen --engine``).
ENGINES = ("sqlite", "duckdb", "spark")
#: The centre's tables the templates read, exported to Parquet.
HISTORY_TABLES = ("hist_visits", "hist_lines", "deaths", "hospitals")
#: The knowledge base's tables (``protocol.rules.KNOWLEDGE_DDL``), per area.
KB_TABLES = ("kb_items", "kb_price", "kb_indications", "kb_frequency", "kb_exclusive", "kb_interactions")
JVM_PACKAGE = "openjdk-17-jre-headless"
_BATCH_ROWS = 100_000
#: Findings recorded per write (one transaction each).
_RECORD_BATCH = 5_000


class EngineUnavailable(CentralError):
    """The engine asked for is not installed here (its Python package, or Spark's Java runtime)."""

    code = "engine_unavailable"
    http_status = 503


class EngineFailed(CentralError):
    """The engine refused a rule's query or a table: the message names the rule and the engine's words."""

    code = "engine_failed"


# -- Parquet ---------------------------------------------------------------------------------------


def _arrow_type(declared: str) -> Any:
    """SQLite's affinity rules (section 3.1 of its datatype page) for a declared type, in Arrow."""
    import pyarrow as pa

    t = declared.upper()
    if "INT" in t:
        return pa.int64()
    if any(word in t for word in ("REAL", "FLOA", "DOUB", "NUMERIC")):
        return pa.float64()
    return pa.string()


def _columns(conn: Any, table: str) -> list[tuple[str, str]]:
    """(name, declared type) of each column of ``table``: SQLite's own, or PostgreSQL's (``bigint``,
    ``double precision``, ``text``: the same affinities under ``_arrow_type``)."""
    if getattr(conn, "dialect", "sqlite") == "postgres":
        rows = conn.raw.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped AND attname <> 'rowid' "
            "ORDER BY attnum",
            (table,),
        ).fetchall()
        return [(name, kind) for name, kind in rows]
    return [(r[1], r[2] or "") for r in conn.execute(f"PRAGMA table_info({table})")]


def _write_table(conn: Any, table: str, path: Path, batch_rows: int = _BATCH_ROWS) -> int:
    """``table`` of ``conn`` as the Parquet file ``path`` (typed by the declared column types; a value
    stored under another type in a non-STRICT table is cast the way SQLite casts it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = _columns(conn, table)
    if not cols:
        raise EngineFailed(f"table {table} is missing from the database: is it the centre's central.db?")
    schema = pa.schema([(name, _arrow_type(t)) for name, t in cols])
    cast = {pa.int64(): "INTEGER", pa.float64(): "REAL", pa.string(): "TEXT"}
    select = ", ".join(f"CAST({name} AS {cast[schema.field(name).type]})" for name, _ in cols)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        cur = conn.execute(f"SELECT {select} FROM {table}")
        while True:
            rows = cur.fetchmany(batch_rows)
            if not rows:
                break
            columns = zip(*rows, strict=True)
            arrays = [pa.array(list(values), type=f.type) for values, f in zip(columns, schema, strict=True)]
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
            n += len(rows)
    os.replace(tmp, path)
    return n


@dataclass(slots=True)
class Export:
    """Where the Parquet files are and what went in: rows per table, bytes, seconds."""

    directory: Path
    rows: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0

    def path(self, table: str) -> Path:
        return self.directory / f"{table}.parquet"


def export_parquet(
    source: Store | Path | str, directory: Path | str, *, tables: Iterable[str] = HISTORY_TABLES
) -> Export:
    """Every table of ``tables`` from ``source`` (the centre's store, or a ``central.db`` file) to
    ``directory/<table>.parquet``, from one snapshot.

    A full export each time (the screen reads every table in full anyway); ``manifest.json`` says
    when, from which database and how many rows, so an operator can tell what a screen read. A
    PostgreSQL store is read in one ``REPEATABLE READ`` transaction of a session of its own.
    """
    start = time.perf_counter()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    export = Export(out)
    where: str
    if isinstance(source, Path | str):
        db = Path(source)
        if not db.exists():
            raise EngineFailed(f"no database at {db}: export needs the centre's central.db")
        conn: Any = sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 10000")
        where = str(db.resolve())
    elif is_postgres(source):
        conn, where = PgScreeningConnection(source.dsn), source.where
    else:
        return export_parquet(source.path, directory, tables=tables)
    try:
        conn.execute("BEGIN")  # one read snapshot for every table
        for table in tables:
            export.rows[table] = _write_table(conn, table, export.path(table))
        conn.execute("COMMIT")
    finally:
        conn.close()
    export.bytes = sum(export.path(t).stat().st_size for t in export.rows)
    export.seconds = time.perf_counter() - start
    manifest = {"database": where, "exported_at": now_iso(), "rows": export.rows,
                "bytes": export.bytes}  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return export


def export_knowledge(knowledge: rl.Knowledge | None, directory: Path | str) -> Path:
    """The ``kb_*`` tables of ``knowledge`` (empty without one) as Parquet in ``directory``: built by
    ``protocol.rules.install_knowledge`` into an in-memory SQLite, the one builder of those tables."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(":memory:")
    try:
        for statement in rl.KNOWLEDGE_DDL.split(";"):
            if statement.strip():
                conn.execute(statement)
        if knowledge is not None:
            rl.install_knowledge(conn, knowledge)
        for table in KB_TABLES:
            _write_table(conn, table, out / f"{table}.parquet")
    finally:
        conn.close()
    return out


# -- engines ---------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    return value


class Engine:
    """What a full screen needs of an engine: the area's knowledge base, the visits screened, one
    rule's hits. Subclasses answer ``_scope`` and ``rows``; the rule's SQL and its hits are shared."""

    name = "engine"
    dialect = "sqlite"

    def install(self, rules: AreaRules, kb_dir: Path) -> None:
        raise NotImplementedError

    def scope(self, area: str, date_from: str, date_to: str, *, lines: bool = True) -> tuple[int, int]:
        """``cur_visits`` = the area's visits settled in [date_from, date_to], ``cur_lines`` their lines
        (none when not ``lines``); returns (visits, lines)."""
        raise NotImplementedError

    def rows(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def run(self, rule: rl.Rule) -> list[rl.Hit]:
        """The rule's hits over what ``cur_*`` hold: its compiled SQL in this engine's dialect."""
        compiled = rl.compile_rule(rule)
        sql = transpile(compiled.sql, self.dialect)
        try:
            rows = self.rows(sql, compiled.params)
        except CentralError:
            raise
        except Exception as exc:  # the engine's own exception types differ; the rule and words matter
            words = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
            raise EngineFailed(f"{self.name} refused rule {rule.id} ({rule.template}): {words}") from exc
        return rl.hits_from_rows(rule, rows)

    def close(self) -> None:
        pass

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SqliteEngine(Engine):
    """The existing path: a ``Screener``'s connection (``central.db`` attached read-only; on a PostgreSQL
    centre, its DSN: the screener's session there, ``central.monitoring.pgscreen``)."""

    name = "sqlite"
    dialect = "sqlite"

    def __init__(self, db_path: Path | str) -> None:
        from .screening import Screener

        self.screener = Screener(db_path)

    def install(self, rules: AreaRules, kb_dir: Path | None = None) -> None:
        self.screener._install(rules)

    def scope(self, area: str, date_from: str, date_to: str, *, lines: bool = True) -> tuple[int, int]:
        return self.screener.fill_range(area, date_from, date_to, lines=lines)

    def rows(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        cur = self.screener.conn.execute(sql, dict(params))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def close(self) -> None:
        self.screener.close()


def _cur_lines_select(visits: str, lines: str) -> str:
    hist = ", ".join(f"h.{c}" for c in rl.HIST_COLUMNS)
    person = ", ".join(f"v.{c}" for c in rl.PERSON_COLUMNS)
    return f"SELECT {hist}, {person} FROM {visits} AS v JOIN {lines} AS h ON h.setl_id = v.setl_id"


class DuckDbEngine(Engine):
    """DuckDB in process over the Parquet export: views over the files, ``cur_*`` as temp tables."""

    name = "duckdb"
    dialect = "duckdb"

    def __init__(
        self, export: Export, *, threads: int | None = None, memory_limit: str | None = None
    ) -> None:
        try:
            import duckdb
        except ImportError:
            raise EngineUnavailable(
                "DuckDB is not installed: pip install 'duckdb>=1.1' (or the project's [engines] extra)"
            ) from None
        self.export = export
        config: dict[str, Any] = {"threads": threads or os.cpu_count() or 1}
        if memory_limit:
            config["memory_limit"] = memory_limit
        self.conn = duckdb.connect(":memory:", config=config)
        for table in HISTORY_TABLES:
            self.conn.execute(
                f"CREATE VIEW {table} AS SELECT * FROM read_parquet({_quote(export.path(table))})"
            )

    def install(self, rules: AreaRules, kb_dir: Path) -> None:
        for table in KB_TABLES:
            self.conn.execute(
                f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM read_parquet({_quote(kb_dir / table)})"
            )

    def scope(self, area: str, date_from: str, date_to: str, *, lines: bool = True) -> tuple[int, int]:
        self.conn.execute(
            "CREATE OR REPLACE TEMP TABLE cur_visits AS SELECT * FROM hist_visits "
            "WHERE area = $area AND setl_date BETWEEN $lo AND $hi",
            {"area": area, "lo": date_from, "hi": date_to},
        )
        where = "" if lines else " WHERE false"
        lines_sql = _cur_lines_select("cur_visits", "hist_lines") + where
        self.conn.execute(f"CREATE OR REPLACE TEMP TABLE cur_lines AS {lines_sql}")
        n = self.conn.execute("SELECT count(*) FROM cur_visits").fetchone()[0]
        m = self.conn.execute("SELECT count(*) FROM cur_lines").fetchone()[0]
        return n, m

    def rows(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        used = {k: v for k, v in params.items() if f"${k}" in sql}
        cur = self.conn.execute(sql, used)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, map(_plain, row), strict=True)) for row in cur.fetchall()]

    def close(self) -> None:
        self.conn.close()


def _quote(path: Path) -> str:
    text = str(path if str(path).endswith(".parquet") else f"{path}.parquet")
    return "'" + text.replace("'", "''") + "'"


_SPARK: dict[str, Any] = {}


def spark_session(*, cores: int | None = None, memory: str = "4g", tmp: Path | str | None = None) -> Any:
    """The process's one local ``SparkSession`` (``local[cores]``; the JVM starts once, in seconds).

    ``EngineUnavailable`` names what to install when pyspark or a Java runtime is missing.
    """
    if "session" in _SPARK:
        return _SPARK["session"]
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise EngineUnavailable(
            "pyspark is not installed: pip install 'pyspark>=3.5' (or the project's [engines] extra); "
            f"Spark also needs Java 17: apt-get install {JVM_PACKAGE}"
        ) from None
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home) / "bin" / "java" if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise EngineUnavailable(
            f"Spark needs a Java runtime and none was found: apt-get install {JVM_PACKAGE}"
        )
    n = cores or os.cpu_count() or 1
    builder = (
        SparkSession.builder.master(f"local[{n}]")
        .appName("yibao-screen")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", memory)
        .config("spark.sql.shuffle.partitions", str(max(2, 2 * n)))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.ansi.enabled", "false")  # SQLite's semantics: a bad cast is NULL, not an error
        .config("spark.driver.extraJavaOptions", "-Dlog4j.rootLogger=ERROR")
    )
    if tmp is not None:
        builder = builder.config("spark.local.dir", str(tmp))
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # the JVM did not start: pyspark says why in its own words
        raise EngineUnavailable(
            f"Spark did not start ({exc}); it needs Java 17: apt-get install {JVM_PACKAGE}"
        ) from exc
    session.sparkContext.setLogLevel("ERROR")
    # pyspark logs each refused query's whole plan at ERROR; EngineFailed carries its first line instead
    logging.getLogger("SQLQueryContextLogger").setLevel(logging.CRITICAL)
    _SPARK["session"] = session
    return session


class SparkEngine(Engine):
    """Spark SQL over the Parquet export: temp views, the transpiled SQL, ``spark.sql(text, args=…)``.

    Temp views belong to the session, so one ``SparkEngine`` at a time per session (the screen opens
    one; the tests take turns)."""

    name = "spark"
    dialect = "spark"

    def __init__(
        self, export: Export, *, session: Any = None, cores: int | None = None, memory: str = "4g"
    ) -> None:
        self.spark = session if session is not None else spark_session(cores=cores, memory=memory)
        self.export = export
        for table in HISTORY_TABLES:
            self.spark.read.parquet(str(export.path(table))).createOrReplaceTempView(table)
        self._cached: list[Any] = []  # cur_visits, cur_lines of the scope
        self._kb: list[Any] = []

    def install(self, rules: AreaRules, kb_dir: Path) -> None:
        for df in self._kb:
            df.unpersist()
        self._kb = [self.spark.read.parquet(str(kb_dir / f"{table}.parquet")).cache() for table in KB_TABLES]
        for table, df in zip(KB_TABLES, self._kb, strict=True):
            df.createOrReplaceTempView(table)

    def _uncache(self) -> None:
        for df in self._cached:
            df.unpersist()
        self._cached.clear()

    def scope(self, area: str, date_from: str, date_to: str, *, lines: bool = True) -> tuple[int, int]:
        self._uncache()
        visits = self.spark.sql(
            "SELECT * FROM hist_visits WHERE area = :area AND setl_date BETWEEN :lo AND :hi",
            args={"area": area, "lo": date_from, "hi": date_to},
        ).cache()
        visits.createOrReplaceTempView("cur_visits")
        where = "" if lines else " WHERE false"
        cur_lines = self.spark.sql(_cur_lines_select("cur_visits", "hist_lines") + where).cache()
        cur_lines.createOrReplaceTempView("cur_lines")
        self._cached += [visits, cur_lines]
        return visits.count(), cur_lines.count()

    def rows(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        used = {k: v for k, v in params.items() if f":{k}" in sql}
        df = self.spark.sql(sql, args=used)
        names = df.columns
        return [dict(zip(names, map(_plain, row), strict=True)) for row in df.collect()]

    def close(self) -> None:
        self._uncache()
        for df in self._kb:
            df.unpersist()
        self._kb.clear()


def open_engine(name: str, db_path: Path | str, export: Export | None = None, **options: Any) -> Engine:
    """An engine by name (``ENGINES``); DuckDB and Spark read ``export`` (``export_parquet``)."""
    if name == "sqlite":
        return SqliteEngine(db_path)
    if name not in ENGINES:
        raise EngineFailed(f"engine {name!r} is not one of {', '.join(ENGINES)}")
    if export is None:
        raise EngineFailed(f"the {name} engine reads a Parquet export: export_parquet first")
    if name == "duckdb":
        return DuckDbEngine(export, **options)
    return SparkEngine(export, **options)


# -- the full screen on an engine ------------------------------------------------------------------


def _attribution(
    store: Store, setl_ids: list[str], with_lines: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, int]]]:
    """The hits' visits (object, hospital, money) and lines' amounts, read from the store as
    ``Screener`` reads them: attribution is the same whichever engine found the hit."""
    cols = (
        "setl_id",
        "psn_no",
        "fixmedins_code",
        "area",
        "dr_codg",
        "dept_codg",
        "medfee_sumamt",
        "setl_date",
    )
    visits: dict[str, dict[str, Any]] = {}
    amounts: dict[str, dict[str, int]] = {}

    def read(conn: Any) -> None:
        for i in range(0, len(setl_ids), 500):
            part = setl_ids[i : i + 500]
            marks = ",".join("?" * len(part))
            for row in conn.execute(
                f"SELECT {', '.join(cols)} FROM hist_visits WHERE setl_id IN ({marks})", part
            ):
                visits[row[0]] = dict(zip(cols, row, strict=True))
        for i in range(0, len(with_lines), 500):
            part = with_lines[i : i + 500]
            marks = ",".join("?" * len(part))
            for setl_id, sn, amount in conn.execute(
                f"SELECT setl_id, feedetl_sn, amount_fen FROM hist_lines WHERE setl_id IN ({marks})", part
            ):
                amounts.setdefault(setl_id, {})[sn] = amount

    store.read(read)
    return visits, amounts


def findings_of(store: Store, area: str, by_rule: Iterable[tuple[rl.Rule, list[rl.Hit]]]) -> list[Finding]:
    """Hits attributed to their objects (``screening.finding_of``)."""
    by_rule = [(r, h) for r, h in by_rule if h]
    setl_ids = sorted({h.setl_id for _, hits in by_rule for h in hits})
    with_lines = sorted({h.setl_id for _, hits in by_rule for h in hits if h.lines})
    visits, amounts = _attribution(store, setl_ids, with_lines)
    return [
        finding_of(rule, hit, visits.get(hit.setl_id), amounts.get(hit.setl_id, {}), area)
        for rule, hits in by_rule
        for hit in hits
    ]


def area_findings(
    engine: Engine, store: Store, rules: AreaRules, lo: str, hi: str, kb_dir: Path
) -> tuple[list[Finding], Counter, Counter, int, int]:
    """One area's findings over [lo, hi] on ``engine``: (findings, hits per rule, seconds per rule and
    step, visits, lines). Every rule but the object templates over the whole range at once, those per
    window (``object_windows``) as in SQLite's screen."""
    hits: Counter = Counter({r.id: 0 for r in rules.rules})
    seconds: Counter = Counter()
    by_rule: list[tuple[rl.Rule, list[rl.Hit]]] = []
    start = time.perf_counter()
    engine.install(rules, kb_dir)
    visits, lines = engine.scope(rules.area, lo, hi)
    seconds["fill"] += time.perf_counter() - start
    per_visit = [r for r in rules.rules if r.template not in rc.OBJECT_TEMPLATES]
    for rule in per_visit if visits else ():
        start = time.perf_counter()
        found = engine.run(rule)
        seconds[rule.id] += time.perf_counter() - start
        hits[rule.id] += len(found)
        by_rule.append((rule, found))
    ids = {r.id: r for r in rules.rules}
    for a, b, window in object_windows(rules, lo, hi):
        start = time.perf_counter()
        n, _ = engine.scope(rules.area, a, b, lines=False)
        seconds["fill_window"] += time.perf_counter() - start
        for rule_id in window if n else ():
            start = time.perf_counter()
            found = engine.run(ids[rule_id])
            seconds[rule_id] += time.perf_counter() - start
            hits[rule_id] += len(found)
            by_rule.append((ids[rule_id], found))
    start = time.perf_counter()
    findings = findings_of(store, rules.area, by_rule)
    seconds["findings"] += time.perf_counter() - start
    return findings, hits, seconds, visits, lines


def screen_on(
    store: Store,
    date_from: str,
    date_to: str,
    *,
    engine: str,
    export_dir: Path | str,
    repo: Any = None,
    areas: Mapping[str, AreaRules] | None = None,
    engine_options: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """A full screen of [date_from, date_to] on ``engine`` (``duckdb`` | ``spark``); a summary as
    ``screening.screen`` gives, plus ``engine`` and the export's figures.

    The tables are exported to ``export_dir`` first (``export_parquet``, a full export); the findings
    are recorded and what the range no longer shows is retracted, as SQLite's full screen does.
    """
    from .screening import screen

    lo, hi = str(date_from), str(date_to)
    if lo > hi:
        raise ValueError(f"--from {lo} is after --to {hi}")
    if engine == "sqlite":
        summary = screen(store, lo, hi, repo=repo, areas=areas, progress=progress)
        summary["engine"] = "sqlite"
        return summary
    if engine not in ENGINES:
        raise EngineFailed(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    areas = dict(areas) if areas is not None else rules_in_force(store, repo)
    started = time.perf_counter()
    export_root = Path(export_dir)
    export = export_parquet(store, export_root)
    run_id = _start_run(store, "full", lo, hi)
    at = now_iso()
    summary: dict[str, Any] = {
        "run_id": run_id, "kind": "full", "engine": engine, "date_from": lo, "date_to": hi,
        "settlements": 0, "lines": 0, "hits": 0, "new_suspicions": 0, "again": 0, "per_rule": {},
        "seconds": {}, "areas": sorted(areas),
        "export": {"rows": export.rows, "bytes": export.bytes, "seconds": round(export.seconds, 3)},
    }  # fmt: skip
    per_rule: Counter = Counter()
    seconds: Counter = Counter({"export": export.seconds})
    found: set[str] = set()
    judged = None
    try:
        with open_engine(engine, screening_source(store), export, **dict(engine_options or {})) as eng:
            for area in sorted(areas):
                rules = areas[area]
                if not rules.rules:
                    continue
                kb_dir = export_knowledge(rules.knowledge, export_root / "kb" / area)
                findings, hits, secs, visits, lines = area_findings(eng, store, rules, lo, hi, kb_dir)
                per_rule.update(hits)
                seconds.update(secs)
                summary["settlements"] += visits
                summary["lines"] += lines
                found.update(fact_key(f) for f in findings)
                for i in range(0, len(findings), _RECORD_BATCH):
                    part = findings[i : i + _RECORD_BATCH]
                    counts = store.write(lambda c, part=part: record_findings(c, part, run_id=run_id, at=at))
                    summary["new_suspicions"] += counts["new"]
                    summary["again"] += counts["again"]
                if progress is not None:
                    progress(visits)
        judged = full_judged(areas, lo, hi)
    finally:
        close_full_screen(store, run_id, summary, per_rule, seconds, started, judged, found)
    log.info(
        "screened %d settlements (%s..%s) on %s: %d hits, %d new suspicions, run %d", summary["settlements"],
        lo, hi, engine, summary["hits"], summary["new_suspicions"], run_id,
    )  # fmt: skip
    return summary
