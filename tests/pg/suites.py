"""Bringing central suites onto PostgreSQL: each suite's tests and fixtures, gathered into one test module.

Two suites defining a fixture (or a test) of the same name would make one silently replace the other in
the module gathering them, so ``gather`` refuses that at import, naming both: such suites go into different
files (``test_central_suites.py``, ``test_central_suites_b.py``, ``test_central_card_notices.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping

#: Tests of a suite that hold SQLite's own behaviour, with no PostgreSQL meaning (the schema parity,
#: failure and type tests of tests/pg/test_pg_store.py stand for them).
SQLITE_ONLY = {
    "ingest_direct": ("test_settlement_row_keeps_money_in_fen_and_the_local_date",),  # typeof()
    "hist_lines": ("test_every_line_of_a_settlement_becomes_a_row_with_the_contract_columns",),  # typeof()
    # SQLite's query plans; tests/pg/test_pg_store.py holds PostgreSQL's indexes to the same migrations
    "card_logs": ("test_the_lost_cards_are_found_by_index_not_by_scanning_every_card_read",),
}
#: Tests that make a home of their own on SQLite (they never read ``config``/``store``), so running them
#: here again would test SQLite twice: the changes and cards suites' CLI maker-checker runs (a dozen and
#: more CLI processes, 20-35 s each). A CLI approval on PostgreSQL, beside two running collectors, is in
#: tests/pg/test_two_collectors.py.
OWN_SQLITE_HOME = {
    "changes": ("test_the_cli_proposes_and_another_operator_approves",),
    "card_notices": ("test_the_cli_proposes_corrections_notices_and_withdrawals",),
}


def _is_fixture(value: object) -> bool:
    return hasattr(value, "_fixture_function") or hasattr(value, "_pytestfixturefunction")


def gather(suites: Iterable[str], single: Mapping[str, tuple[str, ...]] = {}) -> dict[str, object]:
    """The tests (and the fixtures they use) of ``tests/central/test_<suite>.py`` for each suite, and of
    ``single`` only the tests named; refuses two different objects under one name."""
    found: dict[str, object] = {}
    owner: dict[str, str] = {}
    wanted: dict[str, tuple[str, ...] | None] = {name: None for name in suites} | dict(single)
    for suite, only in wanted.items():
        module = importlib.import_module(f"tests.central.test_{suite}")
        for name, value in vars(module).items():
            fixture = _is_fixture(value)
            own_test = name.startswith("test_") and getattr(value, "__module__", None) == module.__name__
            if not (fixture or own_test):
                continue  # a test imported from another suite runs with that suite
            if (only is not None and not fixture and name not in only) or name in SQLITE_ONLY.get(suite, ()):
                continue
            if name in OWN_SQLITE_HOME.get(suite, ()):
                continue
            if name in found and found[name] is not value:
                raise RuntimeError(
                    f"{name} is defined by both tests/central/test_{owner[name]}.py and test_{suite}.py: one "
                    f"would replace the other here; gather test_{suite} in another file of tests/pg"
                )
            owner.setdefault(name, suite)
            found[name] = value
    return found
