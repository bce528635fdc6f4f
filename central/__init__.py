"""The central collector: enrols agents, verifies and stores their batches exactly once,
and reconciles what it holds; screens them and feeds reviewers; publishes the policy bundles agents obey.

Rooms (``docs/ARCHITECTURE.md``): ``storage`` (the database), ``intake`` (what comes in),
``monitoring`` (screening, suspicions, review, analysis), ``policy`` (TUF, bundles, documents,
maker-checker), ``web`` (the console); at the top level ``config``, ``errors``, ``operators``,
``tls``, ``appkeys``, ``metrics``, ``api`` (the aiohttp app) and ``cli`` (``yibao-central``).
Imports ``protocol``, never ``agent``.
"""

from central.intake.enrol import decode_enroll_request, enrol_agent, issue_token, revoke_agent
from central.intake.export import export_settlements
from central.intake.history import answer_history
from central.intake.hospitals import set_hospital
from central.intake.ingest import Ingestor
from central.intake.reconcile import Reconciliation, reconcile, verify_stored_chain
from central.policy.bundles import Actor, Policy, Published
from central.policy.tuf_repo import TufRepository
from central.storage.store import Store

from .api import create_app, serve
from .config import CentralConfig
from .errors import CentralError

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
