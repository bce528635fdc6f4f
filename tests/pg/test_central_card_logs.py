"""The card-log suite on PostgreSQL, alone: its ``report`` and ``checker`` fixtures share others' names."""

from tests.central.test_card_logs import *  # noqa: F403
