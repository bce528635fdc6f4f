"""The central collector: enrols agents, verifies and stores their batches exactly once,
and reconciles what it holds.

Modules: ``config`` (settings), ``errors`` (the one exception family), ``store`` (SQLite,
one writer thread, queries), ``enrol`` (tokens and agent identities), ``ingest`` (batch
verification and storage, usable without HTTP), ``api`` (the aiohttp app), ``reconcile``
and ``export`` (what operators read), ``cli`` (``yibao-central``). Imports ``protocol``,
never ``agent``.
"""

from .api import create_app, serve
from .config import CentralConfig
from .enrol import decode_enroll_request, enrol_agent, issue_token, revoke_agent
from .errors import CentralError
from .export import export_settlements
from .ingest import Ingestor
from .reconcile import Reconciliation, reconcile, verify_stored_chain
from .store import Store

__all__ = [
    "CentralConfig",
    "CentralError",
    "Ingestor",
    "Reconciliation",
    "Store",
    "create_app",
    "decode_enroll_request",
    "enrol_agent",
    "export_settlements",
    "issue_token",
    "reconcile",
    "revoke_agent",
    "serve",
    "verify_stored_chain",
]
