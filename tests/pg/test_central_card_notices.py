"""The card corrections and notices suite (the ``cards`` bundle) on PostgreSQL, gathered alone: its
``maker`` and ``checker`` fixtures share the maker-checker and card-log suites' names."""

from tests.pg.suites import gather

globals().update(gather(("card_notices",)))
