"""The card corrections and notices suite (the ``cards`` bundle) on PostgreSQL, alone: its ``maker`` and
``checker`` fixtures share the maker-checker suite's names."""

from tests.central.test_card_notices import *  # noqa: F403

# Not yet on PostgreSQL, like the maker-checker suite's own CLI test: the CLI's approval waits (>15 s) when
# a second store opens the same database.
del test_the_cli_proposes_corrections_notices_and_withdrawals  # noqa: F821
