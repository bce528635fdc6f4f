"""The centre on a real PostgreSQL server: one scratch cluster for the session, a fresh database per test.

``simulators.pgserver`` runs ``initdb`` and ``pg_ctl`` from Debian's ``postgresql`` package (``make test``
installs it; without it these tests fail saying what to install, never skip). Each test gets its own
database, copied from a template migrated once, so tests stay independent and fast.

The central suites re-run here (``test_central_suites.py``) take their fixtures from
``tests/central/conftest.py``; ``config`` and ``store`` below replace the SQLite ones with PostgreSQL.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from central.cli import init_home
from central.config import CONFIG_NAME, CentralConfig
from central.storage.postgres import PgStore
from central.storage.store import open_store
from protocol.batch import BatchLimits
from simulators.pgserver import PgServer
from tests.central.conftest import *  # noqa: F403 - the central fixtures, with config and store replaced below

TEMPLATE = "yibao_template"
_names = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    with PgServer() as server:
        with PgStore(server.create_database(TEMPLATE), create=True):
            pass
        yield server


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """A new database holding the current schema and nothing else."""
    name = f"t{next(_names)}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
    return pg_server.dsn(name)


@pytest.fixture
def config(tmp_path: Path, pg_dsn: str) -> CentralConfig:
    cfg = CentralConfig(
        home=tmp_path / "central",
        listen="127.0.0.1:0",
        batch_limits=BatchLimits(),
        insecure_dev=True,
        database=pg_dsn,
    )
    init_home(cfg)
    # The CLI verbs the suites run read the home's settings: they reach the same database.
    (cfg.home / CONFIG_NAME).write_text(json.dumps({"database": pg_dsn}))
    return cfg


@pytest.fixture
def store(config: CentralConfig) -> Iterator[PgStore]:
    with open_store(config) as s:
        assert isinstance(s, PgStore)
        yield s
