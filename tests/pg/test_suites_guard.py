"""``tests/pg/suites.gather`` refuses two suites that define one fixture name (one would silently replace
the other's) and names both, so a suite added to the PostgreSQL run cannot change what another tests."""

import pytest

from tests.pg.suites import gather


def test_two_suites_defining_one_fixture_name_are_refused_naming_both() -> None:
    clash = r"published is defined by both .*test_backtest\.py and test_consistency"
    with pytest.raises(RuntimeError, match=clash):
        gather(("backtest", "consistency"))


def test_a_single_test_brings_its_suites_fixtures_and_no_other_test() -> None:
    found = gather((), {"engines": ("test_the_cli_screens_on_duckdb_and_spark_as_on_sqlite",)})
    tests = sorted(name for name in found if name.startswith("test_"))
    assert tests == ["test_the_cli_screens_on_duckdb_and_spark_as_on_sqlite"]
    assert {"centre", "spark"} <= set(found)
