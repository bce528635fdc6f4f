"""CLI verbs of the review workflow (``docs/MONITORING.md``): suspicions, cases, decisions, operators.

Filled in by issue 6's workflow work; ``central.cli`` calls ``add_parsers`` and ``run``.
"""

from __future__ import annotations

import argparse

from .config import CentralConfig
from .store import Store

__all__ = ["VERBS", "add_parsers", "run"]

#: The top-level verbs this module owns.
VERBS: frozenset[str] = frozenset()


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    """Add this module's verbs to the ``yibao-central`` parser."""


def run(args: argparse.Namespace, config: CentralConfig, store: Store) -> int:
    """Run one of ``VERBS``; returns the exit code."""
    raise NotImplementedError(args.verb)
