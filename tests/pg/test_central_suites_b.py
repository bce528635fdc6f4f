"""More central suites on PostgreSQL: those whose fixtures share a name with a suite of
``test_central_suites.py`` (analysis' ``held``, card logs' ``checker``, consistency's ``published``, the
monitor API's ``sup``), gathered apart so neither replaces the other."""

from tests.pg.suites import gather

globals().update(gather(("analysis", "card_logs", "consistency", "monitor_api")))
