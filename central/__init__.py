"""The central collector: enrols agents, verifies and stores their batches exactly once,
and reconciles what it holds; publishes the policy bundles agents obey.

Modules: ``config`` (settings), ``errors`` (the one exception family), ``store`` (SQLite,
one writer thread, queries), ``enrol`` (tokens and agent identities), ``ingest`` (batch
verification and storage, usable without HTTP), ``api`` (the aiohttp app), ``reconcile``
and ``export`` (what operators read), ``tuf_repo`` (the TUF repository), ``documents``
(operator input files and their schemas), ``policy`` (blacklist, bundles, audit, export),
``reports`` (agents' signed policy reports), ``lines`` (``hist_lines`` rows of a settlement),
``history`` (a person's cross-hospital history for signed agent requests, the access log),
``hospitals`` (hospital grades), ``cli`` (``yibao-central``). Imports ``protocol``, never ``agent``.
"""

from .api import create_app, serve
from .config import CentralConfig
from .enrol import decode_enroll_request, enrol_agent, issue_token, revoke_agent
from .errors import CentralError
from .export import export_settlements
from .history import answer_history
from .hospitals import set_hospital
from .ingest import Ingestor
from .policy import Actor, Policy, Published
from .reconcile import Reconciliation, reconcile, verify_stored_chain
from .store import Store
from .tuf_repo import TufRepository

__all__ = [
    "Actor",
    "CentralConfig",
    "CentralError",
    "Ingestor",
    "Policy",
    "Published",
    "Reconciliation",
    "Store",
    "TufRepository",
    "answer_history",
    "create_app",
    "decode_enroll_request",
    "enrol_agent",
    "export_settlements",
    "issue_token",
    "reconcile",
    "revoke_agent",
    "serve",
    "set_hospital",
    "verify_stored_chain",
]
