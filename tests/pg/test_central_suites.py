"""The central suites again, on PostgreSQL: the same tests, with ``config`` and ``store`` on a real server.

``tests/pg/suites.gather`` brings each suite's tests and fixtures here; the fixtures of
``tests/pg/conftest.py`` put them on a fresh PostgreSQL database. Suites whose fixtures share a name with
one of these are gathered in ``test_central_suites_b.py``. The central suites named in neither do not
run on PostgreSQL (see docs/POSTGRES.md, "What runs on PostgreSQL").
"""

from tests.pg.suites import gather

SUITES = (
    "backtest", "bulk_import", "cards", "changes", "cli", "deaths", "declarations", "enrol",
    "heartbeats", "hist_lines", "history_http", "history_migration", "hospitals_cli", "identification",
    "ingest_direct", "ingest_http", "metrics", "operators", "policy", "policy_cli", "policy_http",
    "reconcile_export", "resync", "review", "risk", "screening", "split_audit", "store", "suspicions",
    "tuf_repo", "visits", "web_parts",
)  # fmt: skip
# The engines suite builds its own SQLite centre and is not gathered; the DuckDB and Spark screens of a
# PostgreSQL store read the same Parquet export, which tests/pg/test_pg_screening.py checks with DuckDB.
globals().update(gather(SUITES))
