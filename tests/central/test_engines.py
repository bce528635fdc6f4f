"""The full screen on SQLite, DuckDB and Spark local: the same hits per template, the same suspicions.

Data: the labelled fraud traffic (``simulators.fraud``: one pattern per template and its honest
look-alikes, at three hospitals) written into a real ``central.db`` as ingest writes it, stamped at
each visit's end so it spans a month. Rules: ``docs/samples/monitoring_rules.json`` (templates 1-11
and 13-18) plus one rule each of templates 19 and 20, with the sample catalogue: every SQL template
of the library, each firing (the agreement is not vacuous). One ``SparkSession`` for the whole run
(the JVM starts once); Spark and DuckDB read the Parquet export of the database.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from agent.intake import parse_settlement
from central.intake.visits import INSERT_VISIT, visit_row
from central.monitoring import engines as en
from central.monitoring.screening import AreaRules, load_area_rules, screen
from central.storage.store import Store
from protocol import rules as rl
from simulators.fraud import generate_traffic

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"
AREA = "370200"
LO, HI = "2026-10-01", "2026-11-30"
EXTRA_RULES = [
    {"id": "x_short_stay", "version": 1, "template": "unreasonable_admission", "severity": "warn",
     "mode": "enforce", "action": "prompt", "moments": ["post"], "params": {"max_stay_days": 30}},
    {"id": "x_repeated_treatment", "version": 1, "template": "repeated_treatment", "severity": "warn",
     "mode": "enforce", "action": "prompt", "moments": ["post"],
     "params": {"days": 30, "min_visits": 2, "list_types": ["201", "101"]}},
]  # fmt: skip


def rules_document() -> dict[str, Any]:
    doc = json.loads((SAMPLES / "monitoring_rules.json").read_text())
    doc["area"] = AREA
    doc["rules"] += EXTRA_RULES
    return doc


def build_centre(path: Path) -> None:
    """``central.db`` from the centre's migrations, the traffic's visits and lines as ingest stores them."""
    traffic = generate_traffic(5, size=900, today=date(2026, 11, 25))
    Store(path, create=True).close()
    conn = sqlite3.connect(path)
    grade = {h.code: h.hosp_lv for h in traffic.hospitals}
    for i, planned in enumerate(sorted(traffic.planned, key=lambda p: p.wave)):
        rec, _ = parse_settlement(json.dumps(planned.body).encode())
        rec.setl_id = f"S{i:06d}"
        rec.setl_time = planned.body["mdtrt"]["endtime"]
        day, lv = rec.setl_time[:10], grade[planned.hospital]
        conn.executemany(rl.HISTORY_INSERT, rl.history_rows_from_settlement(rec, lv, setl_date=day))
        conn.execute(INSERT_VISIT, visit_row(rec, area=AREA, hosp_lv=lv, setl_date=day))
    conn.executemany("INSERT INTO deaths VALUES (?, ?, ?, 'test')", traffic.deaths)
    for h in traffic.hospitals:
        x, y = h.plane()
        conn.execute(
            "INSERT INTO hospitals (fixmedins_code, hosp_lv, name, admdvs, updated_at, lat, lon, x_km, y_km) "
            "VALUES (?, ?, ?, ?, '2026-10-01T00:00:00+08:00', ?, ?, ?, ?)",
            (h.code, h.hosp_lv, h.name, AREA, h.lat, h.lon, x, y),
        )
    conn.commit()
    conn.close()


@pytest.fixture(scope="module")
def centre(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("engines") / "pristine" / "central.db"
    path.parent.mkdir()
    build_centre(path)
    return path


@pytest.fixture(scope="module")
def areas() -> dict[str, AreaRules]:
    catalogue = json.loads((SAMPLES / "catalogue.json").read_text())
    return {AREA: load_area_rules(rules_document(), catalogue, area=AREA)}


@pytest.fixture(scope="module")
def export(centre: Path) -> en.Export:
    return en.export_parquet(centre, centre.parent.parent / "parquet")


@pytest.fixture(scope="module")
def kb_dir(export: en.Export, areas: dict[str, AreaRules]) -> Path:
    return en.export_knowledge(areas[AREA].knowledge, export.directory / "kb" / AREA)


@pytest.fixture(scope="session")
def spark() -> Any:
    """The run's one local SparkSession (two cores). Missing pyspark or Java fails with what to install."""
    return en.spark_session(cores=2, memory="1g")


def _sorted(hits: list[rl.Hit]) -> list[rl.Hit]:
    return sorted(hits, key=lambda h: (h.psn_no, h.setl_id, h.lines, h.message))


@pytest.fixture(scope="module")
def hits(centre, export, kb_dir, areas, spark) -> dict[str, dict[str, list[rl.Hit]]]:
    """Per engine, per rule: the hits over the whole range (every engine scoped the same way)."""
    rules = areas[AREA]
    out: dict[str, dict[str, list[rl.Hit]]] = {}
    engines = {
        "sqlite": en.SqliteEngine(centre),
        "duckdb": en.DuckDbEngine(export, threads=2),
        "spark": en.SparkEngine(export, session=spark),
    }
    for name, engine in engines.items():
        with engine:
            engine.install(rules, kb_dir)
            assert engine.scope(AREA, LO, HI) == (899, 6868), name
            out[name] = {r.id: _sorted(engine.run(r)) for r in rules.rules}
    return out


def test_the_rules_cover_every_sql_template_of_the_library(areas) -> None:
    sql_templates = {name for name, t in rl.TEMPLATES.items() if t.sql}
    assert {r.template for r in areas[AREA].rules} == sql_templates


@pytest.mark.parametrize("rule_id", [r["id"] for r in rules_document()["rules"]])
def test_duckdb_and_spark_find_what_sqlite_finds(hits, rule_id: str) -> None:
    """Hit by hit: the same person, settlement, lines, message and evidence, for every template."""
    base = hits["sqlite"][rule_id]
    assert base, f"{rule_id} does not fire on the test data: the agreement would say nothing"
    assert hits["duckdb"][rule_id] == base
    assert hits["spark"][rule_id] == base


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _suspicions(path: Path) -> list[tuple]:
    cols = ("fact_key", "rule_id", "rule_version", "object_type", "object_id", "area", "fixmedins_code",
            "psn_no", "setl_ids", "lines", "amount_fen", "score", "mode", "status", "message", "evidence",
            "anchor", "anchor_date", "period", "category", "holds")  # fmt: skip
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT {', '.join(cols)} FROM suspicions ORDER BY fact_key").fetchall()
    finally:
        conn.close()


def test_a_spark_screen_writes_the_suspicions_a_sqlite_screen_writes(centre, areas, spark, tmp_path) -> None:
    lite = _copy(centre, tmp_path / "sqlite" / "central.db")
    with Store(lite) as store:
        summary = screen(store, LO, HI, areas=areas, workers=1, chunk_days=7)  # chunks of a week
    assert summary["new_suspicions"] > 0
    on_spark = _copy(centre, tmp_path / "spark" / "central.db")
    options = {"session": spark}
    with Store(on_spark) as store:
        got = en.screen_on(store, LO, HI, engine="spark", export_dir=tmp_path / "pq", areas=areas,
                           engine_options=options)  # fmt: skip
        assert _suspicions(on_spark) == _suspicions(lite)
        # the same range again (on DuckDB: a Spark screen costs most of a minute here): every fact
        # found again, none new, none retracted
        again = en.screen_on(store, LO, HI, engine="duckdb", export_dir=tmp_path / "pq", areas=areas)
        runs = store.read(lambda c: c.execute("SELECT kind, detail FROM screen_runs ORDER BY id").fetchall())
    assert got["per_rule"] == summary["per_rule"] and got["settlements"] == summary["settlements"] == 899
    assert got["new_suspicions"] == summary["new_suspicions"] and got["engine"] == "spark"
    assert got["export"]["rows"]["hist_lines"] == 6868
    assert again["new_suspicions"] == 0 and again["again"] == got["new_suspicions"] + got["again"]
    assert again["retracted"] == 0
    assert [k for k, _ in runs] == ["full", "full"]
    assert [json.loads(detail)["engine"] for _, detail in runs] == ["spark", "duckdb"]


def test_a_duckdb_screen_writes_the_same_suspicions_too(centre, areas, tmp_path) -> None:
    lite = _copy(centre, tmp_path / "sqlite" / "central.db")
    with Store(lite) as store:
        screen(store, LO, HI, areas=areas, workers=1)
    duck = _copy(centre, tmp_path / "duckdb" / "central.db")
    with Store(duck) as store:
        got = en.screen_on(store, LO, HI, engine="duckdb", export_dir=tmp_path / "pq", areas=areas)
    assert got["new_suspicions"] > 0
    assert _suspicions(duck) == _suspicions(lite)


def test_a_screen_that_fails_part_way_retracts_nothing_and_records_its_run(
    centre, areas, tmp_path, monkeypatch
) -> None:
    """Had the failed screen been taken as whole, it found nothing, so every suspicion would be retracted."""
    db = _copy(centre, tmp_path / "duckdb" / "central.db")
    with Store(db) as store:
        screen(store, LO, HI, areas=areas, workers=1)
        before = _suspicions(db)

        def refused(*_args, **_kw):
            raise en.EngineFailed("duckdb refused rule mon_price (price_over_ceiling): out of memory")

        monkeypatch.setattr(en, "area_findings", refused)
        with pytest.raises(en.EngineFailed, match="out of memory"):
            en.screen_on(store, LO, HI, engine="duckdb", export_dir=tmp_path / "pq", areas=areas)
        finished, hits, detail = store.read(lambda c: c.execute(
            "SELECT finished_at, hits, detail FROM screen_runs ORDER BY id DESC LIMIT 1"
        ).fetchone())  # fmt: skip
    assert before and _suspicions(db) == before
    assert finished and hits == 0 and json.loads(detail)["engine"] == "duckdb"
    assert "retracted" not in json.loads(detail)


def test_the_export_holds_every_row_typed_as_declared(centre, export) -> None:
    conn = sqlite3.connect(centre)
    try:
        for table in en.HISTORY_TABLES:
            held = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            assert export.rows[table] == held == pq.read_metadata(export.path(table)).num_rows, table
        first = conn.execute(
            "SELECT setl_id, cnt, pric_fen, days FROM hist_lines ORDER BY rowid LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    lines = pq.read_table(export.path("hist_lines"))
    assert (
        str(lines.schema.field("cnt").type) == "double"
        and str(lines.schema.field("pric_fen").type) == "int64"
    )
    row = lines.slice(0, 1).to_pylist()[0]
    assert (row["setl_id"], row["cnt"], row["pric_fen"], row["days"]) == first
    manifest = json.loads((export.directory / "manifest.json").read_text())
    assert manifest["rows"] == export.rows and not list(export.directory.glob("*.tmp"))


def test_an_export_of_no_database_is_refused_and_writes_nothing(tmp_path) -> None:
    with pytest.raises(en.EngineFailed, match="no database at"):
        en.export_parquet(tmp_path / "missing.db", tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_a_query_the_engine_refuses_names_the_rule(export, kb_dir, areas, spark) -> None:
    rules = areas[AREA]
    price = next(r for r in rules.rules if r.template == "price_over_ceiling")
    engine = en.SparkEngine(export, session=spark)
    engine.install(rules, kb_dir)
    engine.scope(AREA, LO, HI)
    spark.catalog.dropTempView("kb_price")
    try:
        with pytest.raises(
            en.EngineFailed, match=r"spark refused rule mon_price \(price_over_ceiling\)"
        ) as err:
            engine.run(price)
        assert len(err.value.message) < 700 and err.value.code == "engine_failed"
    finally:
        engine.install(rules, kb_dir)
        engine.close()
    assert engine.run(price)


def test_without_java_spark_says_what_to_install(monkeypatch, tmp_path) -> None:
    monkeypatch.delitem(en._SPARK, "session", raising=False)  # as in a process that has not started one
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))  # no bin/java there
    with pytest.raises(en.EngineUnavailable, match="apt-get install openjdk-17-jre-headless") as err:
        en.spark_session()
    assert err.value.code == "engine_unavailable"


def test_without_the_packages_each_engine_says_what_to_install(monkeypatch, export) -> None:
    monkeypatch.delitem(en._SPARK, "session", raising=False)
    monkeypatch.setitem(sys.modules, "pyspark", None)  # import pyspark → ImportError
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)
    with pytest.raises(en.EngineUnavailable, match=r"pip install 'pyspark>=3.5'"):
        en.spark_session()
    monkeypatch.setitem(sys.modules, "duckdb", None)
    with pytest.raises(en.EngineUnavailable, match=r"pip install 'duckdb>=1.1'"):
        en.DuckDbEngine(export)


def test_an_unknown_engine_or_a_missing_export_is_refused(centre) -> None:
    with pytest.raises(en.EngineFailed, match="not one of sqlite, duckdb, spark"):
        en.open_engine("oracle", centre)
    with pytest.raises(en.EngineFailed, match="export_parquet first"):
        en.open_engine("duckdb", centre)


def test_the_cli_screens_on_duckdb_and_spark_as_on_sqlite(
    config, store, policy, signers, chain, capsys
) -> None:
    """``yibao-central screen --engine``: the rules in force (published bundles), real ingest, the
    same suspicions found again on DuckDB and Spark; the export lands in HOME/parquet."""
    from central.cli import main
    from central.intake.hospitals import set_hospital

    from .conftest import ACTOR, HOSPITAL
    from .test_screening import CATALOGUE, RULES, dispensing, ingest

    set_hospital(store, ACTOR, HOSPITAL, "0")
    policy.publish_document(ACTOR, signers, "catalogue", CATALOGUE)
    policy.publish_document(ACTOR, signers, "rules", RULES)
    ingest(store, chain, dispensing("S1", "2026-11-01"), dispensing("S2", "2026-11-10"))
    home = ["--home", str(config.home)]
    span = ["--from", "2026-11-01", "--to", "2026-11-30", "--quiet"]
    assert main([*home, "screen", *span, "--workers", "1", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["new_suspicions"] == 3
    for engine in ("duckdb", "spark"):
        assert main([*home, "screen", *span, "--engine", engine, "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        assert (got["engine"], got["new_suspicions"], got["again"]) == (engine, 0, 3), got
        assert got["per_rule"] == first["per_rule"]
    assert (config.home / "parquet" / "hist_lines.parquet").exists()
    assert main([*home, "screen", "--new", "--engine", "spark"]) == 1
    assert "screens on SQLite" in capsys.readouterr().err
