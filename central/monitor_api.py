"""JSON API of the review workflow, ``/v1/monitor/…`` (``docs/MONITORING.md``); operators' bearer tokens.

Filled in by issue 6's workflow work; ``central.api.create_app`` calls ``add_routes``.
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["add_routes"]


def add_routes(app: web.Application) -> None:
    """Register the monitoring routes on ``app``."""
