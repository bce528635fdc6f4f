"""``yibao-central``: a thin argparse shell; each verb calls one library function.

Exit codes: 0 success; 1 an error the message explains (bad arguments, uninitialised
home, unknown agent, invalid input file, too few operator keys…; nothing was changed);
2 ``reconcile`` found a stored chain that is not whole or not verified (argparse also exits 2
on a malformed command line); 3 ``reconcile`` verified every chain but cannot prove the period
complete: an agent is behind or silent by its signed heartbeats, or the period has not ended;
4 the verb needs a registered operator and the token is missing, unknown, replaced or a disabled
operator's, or the operator's roles do not allow it (nothing was changed).

Who acts (``central.operators``): every verb that changes something is done by the operator whose
token is in ``--token-file FILE`` (before the verb) or ``$YIBAO_OPERATOR_TOKEN``, and is audited
under their name with ``--reason``. ``policy`` operators do the blacklist, document, bundle and
``changes`` verbs; ``admin`` operators the operators, enrolment, agent revocation, hospitals,
deaths, root and TLS verbs; reviewers and supervisors the review verbs (``central.monitoring.cli``).
Listings and reports (list, show, audit, reconcile, export, screen, analysis…) need no token.

Policy verbs (``docs/POLICY.md``; the input schemas are in ``central.policy.documents``). Blacklist
changes and document publishes are **proposed** (``central.policy.changes``: maker-checker) and published
when another policy operator approves them; verbs that sign with operator keys take ``--key FILE``
(repeatable; default: every ``*.pem`` in ``HOME/operators/``)::

    init [--area AREA] [--admin NAME] [--admin-token-file FILE]
                                            prints the TUF root fingerprint; the first admin's token
    changes list [--status S|all] [--area A] [--json] | changes show ID [--json]
    changes approve ID --digest D [--key FILE]... [--reason R] | changes reject ID --reason R
    enroll-token --hospital H [--area AREA] [--ttl-hours N] [--count N]
    enroll-token --hospitals-file CSV --out TOKENS.csv [--area AREA]   one token per hospital, file 0600
    blacklist add --type card|person|employer|doctor|hospital --id ID --reason R [--source S]
                  [--effective-at T] [--area A]
    blacklist remove --type T --id ID [--area A]
    blacklist import FILE.csv [--area A]
    blacklist list [--area A] [--type T] [--json]
    policy publish FILE | catalogue import FILE | rules publish FILE | keys publish FILE   [--area A]
    keys generate --out FILE                writes FILE (private, 0600) and FILE.pub
    bundle export --kind K|all --out FILE [--area A]
    bundle list [--area A] [--kind K] [--json] | bundle sync [--force]
    root show [--json]
    root rotate [--add-key PUB]... [--remove-key KEYID]... [--threshold N] [--targets-threshold N]
                [--rotate-online] [--key FILE]...
    audit [--limit N] [--json]

Hospitals and personal-data access (``central.intake.hospitals``, ``central.intake.history``)::

    hospitals set --hospital CODE [--level 0|1|2|3] [--name N] [--admdvs 6DIGITS] [--lat DEG --lon DEG]
                                            (audited; a new hospital needs --level)
    hospitals import FILE.csv               (audited; all rows or none; docs/IMPORT.md has the columns)
    hospitals list [--json]
    cards gate CARD_SN [--area A] [--json]  may a lost card's replacement be issued? (exit 2: not yet)
    cards history CARD_SN [--json]          the card's events at every institution; uses after the loss
                                            (reviewer, supervisor, policy or admin; audited)
    cards used-after-loss [--limit N] [--json]   lost cards read at a desk after their loss, latest first
    cards correct --card-sn SN [--new-card-sn NEW] [--field F]... --reason R [--area A]   (proposed)
    cards notify --id ID --card-sn SN --type topup|balance|message [--amount YUAN] --text T
                 --valid-from D --valid-to D [--area A]                                 (proposed)
    cards withdraw --correction SN | --notice ID [--area A]                              (proposed)
    cards list [--area A] [--json]          the corrections and notices agents receive (``cards`` bundle)
    access-log [--psn-no P] [--agent A] [--limit N] [--json]   who looked up whose history

Bulk import of historical settlements (``central.intake.bulk_import``, ``central.intake.cli``,
docs/IMPORT.md)::

    import settlements FILE… [--format jsonl|csv|parquet] [--money fen|yuan] [--strict] [--rejects OUT]
    import status [--json] | import rejects ID

Screening and analysis (issue 6, ``docs/MONITORING.md``; ``central.monitoring.screening``,
``central.monitoring.analysis``,
``central.intake.deaths``); the review workflow's verbs come from ``central.monitoring.cli``::

    screen --from D --to D [--workers N] [--quiet] [--json]   full screen, progress bar on stderr
    screen --from D --to D --engine duckdb|spark [--export-dir DIR]   the same on DuckDB / Spark local
    screen --new [--json]                   incremental: what was ingested since the last screen
    rules backtest FILE --from D --to D [--catalogue FILE] [--json]   nothing is stored
    rules quality [--json]                  per rule: found, reviewed, confirmed, precision
    deaths import FILE.csv                  psn_no,death_date[,source]; all rows or none (audited)
    deaths list [--count] [--limit N] [--json]
    analysis --by hospital|department|doctor --measure M --from D --to D [--area A] [--min-visits N]
             [--limit N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner

from central.intake import cli as cli_import
from central.intake.cardlogs import used_after_loss
from central.intake.enrol import check_hospital_code, issue_token, revoke_agent
from central.intake.export import export_settlements
from central.intake.history import access_log
from central.intake.hospitals import list_hospitals, set_hospital
from central.intake.reconcile import reconcile, render_table
from central.intake.reports import agent_views
from central.monitoring import cli as cli_monitor
from central.policy import cards, changes
from central.policy.bundles import Policy, default_area, set_default_area
from central.policy.tuf_repo import TufRepository, generate_key_file, load_public_key, load_signer
from central.storage.store import Store, open_store
from protocol import backup
from protocol.bundles import BLACKLIST_TYPES
from protocol.logging_json import JsonFormatter

from .api import serve
from .config import DEFAULT_LISTEN, HOME_ENV, CentralConfig
from .errors import (
    CentralError,
    ConfigInvalid,
    OperatorTokenInvalid,
    OperatorTokenRequired,
    RoleForbidden,
    SigningRefused,
)
from .operators import ROLES, TOKEN_ENV, Operator, acting_operator, bootstrap_admin
from .tls import TlsFiles, create_tls, import_server_cert, rotate_server_cert, trust_digest

__all__ = ["EXIT_OPERATOR", "build_parser", "ensure_repository", "init_home", "main", "operator_signers"]

log = logging.getLogger("central")

_DOCUMENT_VERBS = {"policy": "publish", "catalogue": "import", "rules": "publish"}
#: Exit code of a verb refused for want of an operator token or of the role it needs.
EXIT_OPERATOR = 4


def _acting(store: Store, args: argparse.Namespace, roles: str | Sequence[str], what: str) -> Operator:
    """The operator the token names, if their roles allow ``what`` (checked before anything else)."""
    return store.read(lambda conn: acting_operator(conn, args.token_file, roles, what))


def ensure_repository(config: CentralConfig) -> list[Path]:
    """Create the TUF repository if the home has none; returns the operator key files written."""
    if TufRepository.exists(config):
        return []
    _, paths = TufRepository.create(config)
    return paths


def init_home(config: CentralConfig, *, area: str | None = None) -> list[str]:
    """Create the home, its database and its TUF repository (idempotent); returns the migrations applied."""
    with open_store(config, create=True) as store:
        applied = store.applied_migrations
        if area is not None:
            set_default_area(store, area)
    ensure_repository(config)
    create_tls(config.tls_dir)
    return applied


def operator_signers(config: CentralConfig, key_files: list[str] | None) -> list[CryptoSigner]:
    """``--key FILE``s, or every ``*.pem`` in ``HOME/operators/`` when none is given."""
    if key_files:
        return [load_signer(Path(k)) for k in key_files]
    found = sorted(config.operators_dir.glob("*.pem")) if config.operators_dir.is_dir() else []
    if not found:
        raise SigningRefused(
            f"no operator keys given and none in {config.operators_dir}; pass --key FILE for each operator "
            "key"
        )
    return [load_signer(p) for p in found]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yibao-central", description="Yibao Edge central collector")
    parser.add_argument("--home", help=f"directory holding central.db (default: ${HOME_ENV})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"file holding the acting operator's token (default: ${TOKEN_ENV})",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    init_p = verbs.add_parser("init", help="create the home directory, its database and its TUF repository")
    init_p.add_argument("--area", help="default pooling area for policy commands without --area (6 digits)")
    init_p.add_argument(
        "--admin",
        default="admin",
        metavar="NAME",
        help="name of the first administrator, registered while the centre has no operator",
    )
    init_p.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help="write the first administrator's token to FILE (mode 0600) instead of stdout",
    )
    init_p.add_argument(
        "--tls-name",
        action="append",
        default=[],
        metavar="NAME",
        help="host name or IP agents use to reach the centre, for its server certificate (repeatable; "
        "localhost, 127.0.0.1 and ::1 are always included)",
    )
    serve_p = verbs.add_parser("serve", help="serve the HTTPS API (mutual TLS on agent routes)")
    serve_p.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT (default {DEFAULT_LISTEN})")
    serve_p.add_argument(
        "--insecure-dev",
        action="store_true",
        help="plain HTTP and no client certificates: a development machine only, never with real data",
    )
    serve_p.add_argument(
        "--tls-check-s", type=float, help="how often to look for a rotated server certificate (default 60 s)"
    )
    tls_p = verbs.add_parser("tls", help="the centre's CA and server certificate").add_subparsers(
        dest="tls_verb", required=True, metavar="ACTION"
    )
    show_p = tls_p.add_parser("show", help="the trust bundle's digest (for agents' --ca-hash) and expiries")
    show_p.add_argument("--json", action="store_true")
    rotate_p = tls_p.add_parser("rotate", help="a new server certificate from the centre's CA")
    rotate_p.add_argument("--tls-name", action="append", metavar="NAME", help="names (default: the current)")
    import_p = tls_p.add_parser("import", help="use the bureau's own server certificate (chain PEM) and key")
    import_p.add_argument("--cert", required=True, help="PEM: the certificate, then its chain up to the root")
    import_p.add_argument("--key", required=True, help="PEM private key of the certificate")
    serve_p.add_argument(
        "--policy-poll-s", type=float, help="longest wait of GET /v1/policy/changes in seconds (default 30)"
    )

    token_p = verbs.add_parser("enroll-token", help="print a one-time enrolment token for a hospital")
    one_or_file = token_p.add_mutually_exclusive_group(required=True)
    one_or_file.add_argument("--hospital", help="the hospital's fixmedins_code")
    one_or_file.add_argument(
        "--hospitals-file", type=Path, metavar="CSV", help="one token per hospital of a CSV (with --out)"
    )
    token_p.add_argument("--out", type=Path, help="with --hospitals-file: a new 0600 CSV for the tokens")
    token_p.add_argument("--ttl-hours", type=float, help="hours the token stays valid (default 24)")
    token_p.add_argument("--area", help="pooling area the agent obeys (default: from the hospital code)")
    token_p.add_argument(
        "--count",
        type=int,
        default=1,
        help="print N tokens, one per line (a fleet of agents for one hospital)",
    )

    agents_p = verbs.add_parser("agents", help="list or revoke enrolled agents")
    agent_verbs = agents_p.add_subparsers(dest="agents_verb", required=True, metavar="ACTION")
    list_p = agent_verbs.add_parser("list", help="list enrolled agents")
    list_p.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke_p = agent_verbs.add_parser("revoke", help="refuse an agent's batches from now on")
    revoke_p.add_argument("agent_id")

    export_p = verbs.add_parser("export", help="export data as JSON lines on stdout")
    export_verbs = export_p.add_subparsers(dest="export_what", required=True, metavar="WHAT")
    setl_p = export_verbs.add_parser("settlements", help="settlements, without personal data")
    setl_p.add_argument("--hospital", help="only this fixmedins_code")

    rec_p = verbs.add_parser("reconcile", help="daily totals, chain proofs, how far agents' heartbeats reach")
    rec_p.add_argument("--hospital", required=True)
    rec_p.add_argument("--from", dest="date_from", required=True, type=_date, help="YYYY-MM-DD")
    rec_p.add_argument("--to", dest="date_to", required=True, type=_date, help="YYYY-MM-DD")
    rec_p.add_argument("--json", action="store_true", help="JSON instead of a table")
    _policy_parsers(verbs)
    _hospital_parsers(verbs)
    cli_import.add_parsers(verbs, [_actor_parent()])
    cards.add_parsers(verbs)
    _screening_parsers(verbs)
    return parser


def _rules_quality_parsers(sub: argparse._SubParsersAction) -> None:
    bt_p = sub.add_parser("backtest", help="run a rules file over a date range beside the rules in force; "
                          "nothing is stored")  # fmt: skip
    bt_p.add_argument("file", help="a rules document (format 1)")
    bt_p.add_argument("--from", dest="date_from", required=True, type=_date, help="YYYY-MM-DD")
    bt_p.add_argument("--to", dest="date_to", required=True, type=_date, help="YYYY-MM-DD")
    bt_p.add_argument("--catalogue", help="a catalogue document to use (default: the area's in force)")
    bt_p.add_argument("--workers", type=int, help="worker processes (default: up to 2)")
    bt_p.add_argument("--json", action="store_true")
    q_p = sub.add_parser("quality", help="per rule: suspicions found, reviewed, confirmed and precision")
    q_p.add_argument("--json", action="store_true")


def _screening_parsers(verbs: argparse._SubParsersAction) -> None:
    scr = verbs.add_parser("screen", help="run the rules in force over held settlements (suspicions)")
    scr.add_argument("--from", dest="date_from", type=_date, help="first settlement date (YYYY-MM-DD)")
    scr.add_argument("--to", dest="date_to", type=_date, help="last settlement date (YYYY-MM-DD)")
    scr.add_argument(
        "--new", action="store_true", help="incremental: what was ingested since the last screen"
    )
    scr.add_argument("--workers", type=int, help="worker processes for a full screen (default: up to 2)")
    scr.add_argument("--engine", choices=("sqlite", "duckdb", "spark"), default="sqlite",
                     help="the SQL engine of a full screen (duckdb/spark read a Parquet export)")  # fmt: skip
    scr.add_argument("--export-dir", help="where duckdb/spark's Parquet export goes (default: HOME/parquet)")
    scr.add_argument("--quiet", action="store_true", help="no progress bar")
    scr.add_argument("--json", action="store_true", help="the summary as JSON")

    deaths = verbs.add_parser("deaths", help="dates of death from the civil registry (care after death)")
    d_verbs = deaths.add_subparsers(dest="deaths_verb", required=True, metavar="ACTION")
    imp = d_verbs.add_parser("import", help="import a CSV psn_no,death_date[,source]: all rows or none")
    imp.add_argument("file")
    imp.add_argument("--reason", default="", help="why, for the audit log")
    dls = d_verbs.add_parser("list", help="held dates of death")
    dls.add_argument("--count", action="store_true", help="only how many are held")
    dls.add_argument("--limit", type=int, default=100)
    dls.add_argument("--json", action="store_true")

    an = verbs.add_parser("analysis", help="rank hospitals, departments or doctors against their peers")
    an.add_argument("--by", required=True, choices=["hospital", "department", "doctor"])
    an.add_argument(
        "--measure",
        required=True,
        choices=["cost_per_visit", "drug_share", "visits_per_patient", "growth", "cost_per_disease"],
    )
    an.add_argument("--from", dest="date_from", required=True, type=_date, help="YYYY-MM-DD")
    an.add_argument("--to", dest="date_to", required=True, type=_date, help="YYYY-MM-DD")
    an.add_argument("--area", help="only this pooling area's visits")
    an.add_argument("--min-visits", type=int, help="leave out objects with fewer visits (default: keep "
                    "them, ranked after those with central.monitoring.analysis.MIN_VISITS visits)")
    an.add_argument("--limit", type=int, default=30, help="rows to print (all are stored)")
    an.add_argument("--json", action="store_true")  # fmt: skip


def _hospital_parsers(verbs: argparse._SubParsersAction) -> None:
    hosp_p = verbs.add_parser("hospitals", help="hospital grades (hosp_lv) the rules and history use")
    hosp_verbs = hosp_p.add_subparsers(dest="hospitals_verb", required=True, metavar="ACTION")
    set_p = hosp_verbs.add_parser("set", help="create or update a hospital (audited)")
    set_p.add_argument("--hospital", required=True, help="the hospital's fixmedins_code")
    set_p.add_argument("--level", choices=["0", "1", "2", "3"],
                       help="grade; 0: ungraded (required for a new hospital)")  # fmt: skip
    set_p.add_argument("--name", help="the hospital's name")
    set_p.add_argument("--admdvs", help="administrative division (6 digits)")
    set_p.add_argument("--lat", type=float, help="latitude in degrees (with --lon)")
    set_p.add_argument("--lon", type=float, help="longitude in degrees (with --lat)")
    set_p.add_argument("--reason", default="", help="why, for the audit log")
    cli_import.add_hospital_parsers(hosp_verbs, [_actor_parent()])
    hls_p = hosp_verbs.add_parser("list", help="the hospitals the centre knows")
    hls_p.add_argument("--json", action="store_true", help="one JSON object per line")
    acc_p = verbs.add_parser("access-log", help="answered history lookups, newest first (no psn_no kept)")
    acc_p.add_argument("--psn-no", help="only lookups of this person (matched by its SHA-256)")
    acc_p.add_argument("--agent", help="only lookups by this agent")
    acc_p.add_argument("--limit", type=int, default=50)
    acc_p.add_argument("--json", action="store_true", help="one JSON object per line")


def _actor_parent() -> argparse.ArgumentParser:
    """``--reason`` for the audit log; who acts is the token's operator (``--token-file``)."""
    actor = argparse.ArgumentParser(add_help=False)
    actor.add_argument("--reason", default="", help="why, for the audit log")
    return actor


def _policy_parsers(verbs: argparse._SubParsersAction) -> None:
    why = argparse.ArgumentParser(add_help=False)
    why.add_argument("--reason", default="", help="why, for the audit log")
    keys = argparse.ArgumentParser(add_help=False)
    keys.add_argument("--key", action="append", metavar="FILE", help="operator private key (repeatable; "
                      "default: every *.pem in HOME/operators/)")  # fmt: skip
    area = argparse.ArgumentParser(add_help=False)
    area.add_argument("--area", help="pooling area (6 digits; default: the centre's default area)")
    signing = [keys, area]

    bl = verbs.add_parser("blacklist", help="cards, persons and employers refused at every agent")
    bl_verbs = bl.add_subparsers(dest="bl_verb", required=True, metavar="ACTION")
    add_p = bl_verbs.add_parser("add", parents=signing, help="propose adding or replacing an entry")
    add_p.add_argument("--type", dest="list_type", required=True, choices=list(BLACKLIST_TYPES))
    add_p.add_argument("--id", dest="entry_id", required=True, help="card_sn, psn_no or emp_no")
    add_p.add_argument("--reason", required=True, help="why the entry is refused (shown at the desk)")
    add_p.add_argument("--source", default="", help="where the order came from")
    add_p.add_argument(
        "--effective-at", help="ISO-8601 time with offset it applies from (default: when it is published)"
    )
    add_p.add_argument("--why", default="", help="why, for the audit log (default: none)")
    rm_p = bl_verbs.add_parser("remove", parents=[*signing, why], help="propose removing an entry")
    rm_p.add_argument("--type", dest="list_type", required=True, choices=list(BLACKLIST_TYPES))
    rm_p.add_argument("--id", dest="entry_id", required=True)
    imp_p = bl_verbs.add_parser(
        "import", parents=[*signing, why], help="propose adding every entry of a CSV, all or none"
    )
    imp_p.add_argument("file", help="CSV: list_type,id,reason,source,effective_at")
    ls_p = bl_verbs.add_parser("list", parents=[area], help="show the entries held")
    ls_p.add_argument("--type", dest="list_type", choices=list(BLACKLIST_TYPES))
    ls_p.add_argument("--json", action="store_true", help="one JSON object per line")

    for kind, verb in _DOCUMENT_VERBS.items():
        p = verbs.add_parser(kind, help=f"{verb} a {kind} document (schema: central.policy.documents)")
        sub = p.add_subparsers(dest=f"{kind}_verb", required=True, metavar="ACTION")
        doc_p = sub.add_parser(
            verb, parents=[*signing, why], help=f"validate a {kind} JSON document and propose publishing it"
        )
        doc_p.add_argument("file")
        if kind == "rules":
            _rules_quality_parsers(sub)

    keys_p = verbs.add_parser("keys", help="e-voucher issuer keys bundle; operator key files")
    keys_verbs = keys_p.add_subparsers(dest="keys_verb", required=True, metavar="ACTION")
    kpub_p = keys_verbs.add_parser("publish", parents=[*signing, why],
                                   help="propose publishing e-voucher issuer keys")  # fmt: skip
    kpub_p.add_argument("file", help='JSON {"evoucher_issuers": {kid: base64url key}}')
    kgen_p = keys_verbs.add_parser("generate", help="make a new operator key (FILE and FILE.pub)")
    kgen_p.add_argument("--out", required=True, help="private key file to write (mode 0600)")

    bundle_p = verbs.add_parser("bundle", help="published bundles: export for offline sites, list, sync")
    bundle_verbs = bundle_p.add_subparsers(dest="bundle_verb", required=True, metavar="ACTION")
    exp_p = bundle_verbs.add_parser("export", parents=[why], help="tar of the repository for offline sites")
    exp_p.add_argument("--kind", required=True, help="blacklist, cards, rules, policy, catalogue, keys, all")
    exp_p.add_argument("--out", required=True, help="tar file to write")
    exp_p.add_argument("--area", help="only this pooling area's bundles")
    bls_p = bundle_verbs.add_parser("list", help="the bundle log")
    bls_p.add_argument("--area")
    bls_p.add_argument("--kind")
    bls_p.add_argument("--json", action="store_true")
    sync_help = "publish what the bundle log holds (after an interrupted publish)"
    sync_p = bundle_verbs.add_parser("sync", parents=[keys, why], help=sync_help)
    sync_p.add_argument("--force", action="store_true", help="new targets version even if nothing changed")

    root_p = verbs.add_parser("root", help="the TUF root of trust")
    root_verbs = root_p.add_subparsers(dest="root_verb", required=True, metavar="ACTION")
    show_p = root_verbs.add_parser("show", help="version, fingerprint and keys of the current root")
    show_p.add_argument("--json", action="store_true")
    rotate_help = "write the next root, signed by a threshold of old and new keys"
    rot_p = root_verbs.add_parser("rotate", parents=[keys, why], help=rotate_help)
    rot_p.add_argument(
        "--add-key", action="append", default=[], metavar="PUB", help="operator public key to add"
    )
    rot_p.add_argument(
        "--remove-key", action="append", default=[], metavar="KEYID", help="operator key to remove"
    )
    rot_p.add_argument("--threshold", type=int, help="new root threshold")
    rot_p.add_argument("--targets-threshold", type=int, help="new targets threshold")
    rot_p.add_argument("--rotate-online", action="store_true", help="replace the snapshot and timestamp keys")

    ch_p = verbs.add_parser("changes", help="maker-checker: proposed blacklist and document changes")
    ch_verbs = ch_p.add_subparsers(dest="changes_verb", required=True, metavar="ACTION")
    chl_p = ch_verbs.add_parser("list", help="change requests, newest first")
    chl_p.add_argument("--status", default="pending", help="pending|published|rejected|all (default pending)")
    chl_p.add_argument("--area")
    chl_p.add_argument("--limit", type=int, default=100)
    chl_p.add_argument("--json", action="store_true", help="one JSON object per line")
    chs_p = ch_verbs.add_parser("show", help="one change request: what it publishes, its digest, approvals")
    chs_p.add_argument("id", type=int)
    chs_p.add_argument("--entries", type=int, default=50, help="blacklist entries to show (default 50)")
    chs_p.add_argument("--json", action="store_true")
    cha_p = ch_verbs.add_parser(
        "approve",
        parents=[keys, why],
        help="approve another operator's change; the last approval publishes it",
    )
    cha_p.add_argument("id", type=int)
    cha_p.add_argument("--digest", required=True, help="the digest `changes show` printed")
    chr_p = ch_verbs.add_parser("reject", help="end a pending change unpublished")
    chr_p.add_argument("id", type=int)
    chr_p.add_argument("--reason", required=True)

    splits_p = verbs.add_parser(
        "splits", help="recompute held settlements' benefit splits and list those that differ"
    )
    splits_p.add_argument("action", choices=("check", "list"),
                          help="check: audit what is not yet audited; list: the flagged ones")  # fmt: skip
    splits_p.add_argument("--json", action="store_true")

    cli_monitor.add_parsers(verbs)
    _, restore_p = backup.add_parsers(verbs, "centre")
    restore_p.add_argument(
        "--database",
        metavar="DSN",
        help="a centre on PostgreSQL: load its dump into this empty database (no password in it: use "
        "~/.pgpass or PGPASSFILE) and name it in the restored central.json; default: the database the "
        "backup's central.json names",
    )

    audit_p = verbs.add_parser("audit", help="the operators' audit log, newest first")
    audit_p.add_argument("--limit", type=int, default=50)
    audit_p.add_argument("--json", action="store_true")


def _tls(args: argparse.Namespace, config: CentralConfig) -> int:
    files = TlsFiles(config.tls_dir)
    files.require()
    if args.tls_verb == "rotate":
        info = rotate_server_cert(config.tls_dir, args.tls_name)
        print(f"new server certificate {info.subject} until {info.not_after}; a running server loads it "
              "within a minute", file=sys.stderr)  # fmt: skip
        return 0
    if args.tls_verb == "import":
        info = import_server_cert(config.tls_dir, Path(args.cert), Path(args.key))
        print(f"installed {info.subject} until {info.not_after}; the trust bundle changed: agents enrolled "
              "from now on use the new --ca-hash", file=sys.stderr)  # fmt: skip
        print(f"TLS trust bundle {trust_digest(config.tls_dir)}")
        return 0
    server, ca = files.server_info(), files.ca_info()
    view = {"trust_digest": trust_digest(config.tls_dir), "server": server.to_json(), "ca": ca.to_json()}
    if args.json:
        print(json.dumps(view))
    else:
        print(f"trust bundle  {view['trust_digest']}")
        for name, info in (("server", server), ("ca", ca)):
            flag = "  EXPIRING: rotate it" if info.expiring else ""
            print(f"{name:<13} {info.subject}  until {info.not_after} ({info.days_left:.0f} days){flag}")
    return 0


def _print_admin(op: Operator, token: str, token_file: str | None) -> None:
    """The bootstrap admin's token, shown once: to FILE (0600) when asked, else on stdout."""
    if token_file:
        path = Path(token_file)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
        print(f"registered the first administrator {op.name}; their token is in {path} (keep it private)",
              file=sys.stderr)  # fmt: skip
        return
    print(f"operator token of the first administrator {op.name}: {token}")
    print(f"this token is shown once and only its hash is kept: save it now in a file only you can read "
          f"(`umask 077; cat > ~/.yibao-admin.token`) and act with `--token-file FILE` or ${TOKEN_ENV}; "
          f"`yibao-central operators token {op.name}` replaces a lost one (another admin's act)",
          file=sys.stderr)  # fmt: skip


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-24") from None


def _proposed(change: dict[str, Any], published: Any) -> int:
    """Say what a proposal did: pending with how to approve it, or published at the maker's word."""
    if published is not None:
        print(published.describe())
        print(f"maker-checker is off (approvals_required = 1): change {change['id']} was published at "
              f"{change['maker']}'s word alone", file=sys.stderr)  # fmt: skip
        return 0
    print(changes.describe(change))
    print(f"pending: another policy operator reviews it (`yibao-central changes show {change['id']}`) and "
          f"publishes it with `yibao-central changes approve {change['id']} --digest {change['digest']}`",
          file=sys.stderr)  # fmt: skip
    return 0


def _changes(args: argparse.Namespace, config: CentralConfig, store: Store, policy: Policy) -> int:
    verb = args.changes_verb
    if verb == "list":
        status = None if args.status == "all" else args.status
        rows = store.read(lambda c: changes.list_changes(c, status=status, area=args.area, limit=args.limit))
        for row in rows:
            print(json.dumps(row, ensure_ascii=False) if args.json else changes.describe(row))
        print(f"{len(rows)} change requests", file=sys.stderr)
        return 0
    if verb == "show":
        change = store.read(lambda c: changes.get_change(c, args.id, entries=args.entries))
        if args.json:
            print(json.dumps(change, ensure_ascii=False))
            return 0
        print(changes.describe(change))
        print(f"  proposed {change['created_at']} by {change['maker']}: {change['reason'] or '-'}")
        print(f"  against {change['base']}; {change['entries']} entries or items")
        for a in change["approvals"]:
            print(f"  approved by {a['operator']} at {a['at']}")
        if change["decided_by"]:
            print(f"  {change['status']} by {change['decided_by']} at {change['decided_at']}: "
                  f"{change['decision_reason'] or '-'}")  # fmt: skip
        if change["document"] is not None:
            print(json.dumps(change["document"], ensure_ascii=False, indent=2, sort_keys=True))
        for e in change["entries_shown"]:
            tail = f"  {e['reason']}  from {e['effective_at'] or 'publication'}" if e["op"] == "+" else ""
            print(f"  {e['op']} {e['list_type']:<8} {e['id']}{tail}")
        return 0
    if verb == "reject":
        op = _acting(store, args, "policy", "reject a change")
        change = changes.reject(store, op, args.id, args.reason)
        print(changes.describe(change))
        return 0
    op = _acting(store, args, "policy", "approve a change")
    change, published = changes.approve(
        store, policy, op, args.id, args.digest, operator_signers(config, args.key), args.reason
    )
    if published is None:
        more = config.approvals_required - 1 - len(change["approvals"])
        print(f"change {change['id']} approved by {op.name}; {more} more approval(s) needed to publish it")
        return 0
    print(published.describe())
    print(f"change {change['id']} approved by {op.name} and published", file=sys.stderr)
    return 0


def _policy(args: argparse.Namespace, config: CentralConfig, store: Store) -> int:
    """The policy verbs; each one that changes something is done by a token's operator and audited."""
    policy = Policy(store, TufRepository.open(config), config)
    area = getattr(args, "area", None)
    verb = args.verb

    def signers() -> list[CryptoSigner]:
        """Operator keys, needed at once only when there is no second operator to wait for."""
        return operator_signers(config, args.key) if config.approvals_required == 1 else []

    if verb == "changes":
        return _changes(args, config, store, policy)
    if verb == "blacklist":
        if args.bl_verb == "list":
            rows = policy.blacklist_list(area, args.list_type)
            for row in rows:
                if args.json:
                    print(json.dumps(row, ensure_ascii=False))
                else:
                    print(f"{row['area']} {row['list_type']:<8} {row['id']:<24} seq {row['added_seq']:<6} "
                          f"from {row['effective_at']}  {row['reason']}")  # fmt: skip
            print(f"{len(rows)} entries", file=sys.stderr)
            return 0
        op = _acting(store, args, "policy", f"propose a blacklist {args.bl_verb}")
        if args.bl_verb == "add":
            change, published = changes.propose_blacklist_add(
                store, policy, op, list_type=args.list_type, entry_id=args.entry_id, reason=args.reason,
                source=args.source, effective_at=args.effective_at, area=area, why=args.why,
                signers=signers(),
            )  # fmt: skip
        elif args.bl_verb == "remove":
            change, published = changes.propose_blacklist_remove(
                store, policy, op, list_type=args.list_type, entry_id=args.entry_id, area=area,
                why=args.reason, signers=signers(),
            )  # fmt: skip
        else:
            change, published = changes.propose_blacklist_import(
                store, policy, op, args.file, area=area, why=args.reason, signers=signers()
            )
        return _proposed(change, published)
    if verb in _DOCUMENT_VERBS or (verb == "keys" and args.keys_verb == "publish"):
        op = _acting(store, args, "policy", f"propose a {verb} document")
        action = f"{verb}.{_DOCUMENT_VERBS[verb]}" if verb in _DOCUMENT_VERBS else None
        change, published = changes.propose_document(
            store, policy, op, verb, args.file, area=area, action=action, why=args.reason, signers=signers()
        )
        return _proposed(change, published)
    if verb == "bundle":
        if args.bundle_verb == "export":
            actor = _acting(store, args, "policy", "export bundles").actor(args.reason)
            members = policy.export(args.out, args.kind, area)
            policy.audit(actor, "bundle.export", {"kind": args.kind, "area": area, "out": str(args.out),
                                                   "members": len(members)})  # fmt: skip
            for name in members:
                print(name)
            print(f"wrote {args.out} ({len(members)} files)", file=sys.stderr)
            return 0
        if args.bundle_verb == "list":
            for row in policy.bundles(args.area, args.kind):
                if args.json:
                    print(json.dumps(row))
                else:
                    shape = "full" if row["base_seq"] is None else f"delta on {row['base_seq']}"
                    print(f"{row['area']} {row['kind']:<9} seq {row['seq']:<6} {shape:<14} "
                          f"{row['entries']:>9} entries  {row['created']}  by {row['operator']}")  # fmt: skip
            return 0
        actor = _acting(store, args, "policy", "sync bundles").actor(args.reason)
        pending = policy.pending()
        ts = policy.sync(operator_signers(config, args.key), force=args.force)
        policy.audit(actor, "bundle.sync", {"pending": pending, "force": args.force, "timestamp_version": ts})
        print(
            f"published as timestamp v{ts}"
            if ts is not None
            else "nothing to publish: the metadata is current"
        )
        return 0
    if verb == "root":
        repo = policy.repo
        if args.root_verb == "show":
            info = repo.root_info()
            if args.json:
                print(json.dumps({**dataclasses.asdict(info), "published": repo.versions()}))
                return 0
            print(f"root v{info.version}, expires {info.expires}")
            print(f"fingerprint {info.fingerprint}")
            for role, keyids in info.keys.items():
                print(f"{role:<9} {info.thresholds[role]} of {len(keyids)}: {', '.join(keyids)}")
            v = repo.versions()
            print(
                f"published: timestamp v{v['timestamp']}, snapshot v{v['snapshot']}, targets v{v['targets']}"
            )
            return 0
        actor = _acting(store, args, "admin", "rotate the TUF root").actor(args.reason)
        add_keys = [load_public_key(Path(p)) for p in args.add_key]
        version = repo.rotate_root(
            operator_signers(config, args.key), add_keys=add_keys, remove_keyids=args.remove_key,
            root_threshold=args.threshold, targets_threshold=args.targets_threshold,
            rotate_online=args.rotate_online,
        )  # fmt: skip
        info = repo.root_info()
        policy.audit(actor, "root.rotate", {
            "version": version, "added": [k.keyid for k in add_keys], "removed": args.remove_key,
            "threshold": args.threshold, "targets_threshold": args.targets_threshold,
            "rotate_online": args.rotate_online, "fingerprint": info.fingerprint,
        })  # fmt: skip
        print(f"root v{version} written; fingerprint {info.fingerprint}")
        print(
            "agents move to it on their next update (they verify it against the root they pin)",
            file=sys.stderr,
        )
        return 0
    if verb == "audit":
        for row in policy.audit_log(args.limit):
            if args.json:
                print(json.dumps(row, ensure_ascii=False))
            else:
                bundle = f" → {row['area']} {row['kind']} seq {row['seq']}" if row["seq"] is not None else ""
                why = f"  ({row['reason']})" if row["reason"] else ""
                print(f"{row['id']:>5} {row['at']} {row['operator']:<12} {row['action']:<17}{bundle}{why}")
        return 0
    raise ConfigInvalid(f"unknown verb {verb}")  # pragma: no cover - argparse refuses unknown verbs


def _cards(args: argparse.Namespace, config: CentralConfig, store: Store) -> int:
    """``cards list`` reads; ``cards correct|notify|withdraw`` propose a ``cards`` change (maker-checker)."""
    policy = Policy(store, TufRepository.open(config), config)
    if args.cards_verb == "list":
        cards.print_list(policy.cards_list(args.area), args.json)
        return 0
    op = _acting(store, args, "policy", f"propose a card {args.cards_verb}")
    action, entries = cards.entries_of(args)
    signers = operator_signers(config, args.key) if config.approvals_required == 1 else []
    change, published = changes.propose_cards(
        store, policy, op, entries, action=action, area=args.area, why=args.why, signers=signers
    )
    return _proposed(change, published)


def _splits(args: argparse.Namespace, config: CentralConfig, store: Store) -> int:
    from central.monitoring.split_audit import audit_splits

    if args.action == "check":
        total = {"checked": 0, "flagged": 0, "skipped": 0}
        while True:
            counts = audit_splits(store, TufRepository.open(config))
            for k, v in counts.items():
                total[k] += v
            if not any(counts.values()):
                break
        print(json.dumps(total) if args.json else
              f"checked {total['checked']}, flagged {total['flagged']}, skipped {total['skipped']} "
              "(no policy bundle, no split, or no benefit row)")  # fmt: skip
        return 0
    sql = (
        "SELECT setl_id, agent_id, fixmedins_code, checked_at, differences FROM split_flags "
        "ORDER BY checked_at"
    )
    rows = store.read(lambda c: c.execute(sql).fetchall())
    for setl_id, agent_id, hospital, at, diffs in rows:
        if args.json:
            row = {"setl_id": setl_id, "agent_id": agent_id, "fixmedins_code": hospital, "checked_at": at,
                   "differences": json.loads(diffs)}  # fmt: skip
            print(json.dumps(row, ensure_ascii=False))
        else:
            fields = ", ".join(d["field"] for d in json.loads(diffs))
            print(f"{setl_id:<40} {hospital:<14} {at}  differs in {fields}")
    return 0


def _hospitals(args: argparse.Namespace, store: Store) -> int:
    if args.verb == "access-log":
        if not 1 <= args.limit <= 100_000:
            raise ConfigInvalid("--limit must be between 1 and 100000")
        for row in store.read(
            lambda c: access_log(c, psn_no=args.psn_no, agent_id=args.agent, limit=args.limit)
        ):
            if args.json:
                print(json.dumps(row))
            else:
                who = f"{row['agent_id']:<24} {row['fixmedins_code']:<16}"
                what = f"person {row['psn_hash'][:16]} {row['days']:>3} days {row['rows']:>6} lines"
                print(f"{row['at']} {who} {what}")
        return 0
    if args.hospitals_verb == "list":
        for row in store.read(list_hospitals):
            if args.json:
                print(json.dumps(row, ensure_ascii=False))
            else:
                print(f"{row['fixmedins_code']:<16} level {row['hosp_lv']}  {row['admdvs'] or '-':<6}  "
                      f"{row['name'] or ''}")  # fmt: skip
        return 0
    actor = _acting(store, args, "admin", "set a hospital").actor(args.reason)
    held = set_hospital(store, actor, args.hospital, args.level, name=args.name, admdvs=args.admdvs,
                        lat=args.lat, lon=args.lon)  # fmt: skip
    where = f", at {held['lat']:.5f}, {held['lon']:.5f}" if held["lat"] is not None else ""
    print(f"hospital {held['fixmedins_code']} level {held['hosp_lv']}{where} "
          f"({held['lines_updated']} history lines updated, {held['visits_updated']} visits)",
          file=sys.stderr)  # fmt: skip
    return 0


def _progress(quiet: bool) -> tuple[Any, Any, Any]:
    """A tqdm bar on stderr (visits screened) when stderr is a terminal and not --quiet."""
    if quiet or not sys.stderr.isatty():
        return None, None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="visits", unit_scale=True, file=sys.stderr, desc="screening")

    def total(n: int) -> None:
        bar.total = n
        bar.refresh()

    return bar.update, total, bar.close


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


def _screening(args: argparse.Namespace, config: CentralConfig, store: Store) -> int:
    """screen, rules backtest|quality, deaths, analysis."""
    from central.intake import deaths
    from central.monitoring import analysis, screening

    if args.verb == "screen":
        repo = TufRepository.open(config)
        if args.new:
            if args.engine != "sqlite":
                raise ConfigInvalid("--new (incremental) screens on SQLite: leave out --engine")
            if args.date_from or args.date_to:
                raise ConfigInvalid(
                    "--new screens what was ingested since the last screen: leave out --from/--to"
                )
            total = {"settlements": 0, "new_suspicions": 0, "hits": 0}
            while True:  # until level with what is held
                summary = screening.screen_new(store, repo=repo)
                for key in total:
                    total[key] += summary[key]
                if summary["cursor"][0] == summary["cursor"][1]:
                    break
            if args.json:
                _print_json(total)
            else:
                print(f"screened {total['settlements']} new settlements: {total['hits']} hits, "
                      f"{total['new_suspicions']} new suspicions")  # fmt: skip
            return 0
        if not (args.date_from and args.date_to):
            raise ConfigInvalid("screen needs --from and --to (a full screen of that range), or --new")
        update, total_cb, close = _progress(args.quiet)
        try:
            if args.engine != "sqlite":  # central.monitoring.engines: the same rules on DuckDB or Spark
                from central.monitoring.engines import screen_on

                summary = screen_on(store, str(args.date_from), str(args.date_to), engine=args.engine,
                                    export_dir=args.export_dir or config.home / "parquet", repo=repo,
                                    progress=update)  # fmt: skip
            else:
                summary = screening.screen(store, args.date_from, args.date_to, repo=repo, progress=update,
                                           total=total_cb, workers=args.workers)  # fmt: skip
        except ValueError as exc:
            raise ConfigInvalid(str(exc)) from None
        finally:
            close()
        if args.json:
            _print_json(summary)
        else:
            span = f"{summary['date_from']}..{summary['date_to']}"
            print(f"run {summary['run_id']}: screened {summary['settlements']} settlements and "
                  f"{summary['lines']} lines {span} in {summary['elapsed_s']:.1f} s: "
                  f"{summary['hits']} hits, {summary['new_suspicions']} new suspicions, "
                  f"{summary['again']} found again")  # fmt: skip
            for rule_id, hits in sorted(summary["per_rule"].items()):
                print(f"  {rule_id:<40} {hits:>8} hits")
        if not summary["areas"]:
            print("no area has a published rules bundle: nothing was screened "
                  "(`yibao-central rules publish`)", file=sys.stderr)  # fmt: skip
        return 0
    if args.verb == "rules":
        if args.rules_verb == "quality":
            from central.monitoring.review import rule_quality

            rows = store.read(rule_quality)
            if args.json:
                _print_json(rows)
            for row in [] if args.json else rows:
                precision = "-" if row["precision"] is None else f"{row['precision']:.2%}"
                print(
                    f"{row['rule_id']:<32} v{row['rule_version']:<4} found {row['found']:>7} "
                    f"reviewed {row['reviewed']:>6} confirmed {row['confirmed']:>6} precision {precision}"
                )
            return 0
        from central.policy.documents import load_json_document

        doc = load_json_document(args.file)
        catalogue = load_json_document(args.catalogue) if args.catalogue else None
        try:
            report = screening.backtest(store, doc, catalogue, args.date_from, args.date_to,
                                        repo=TufRepository.open(config), workers=args.workers)  # fmt: skip
        except ValueError as exc:
            raise ConfigInvalid(str(exc)) from None
        if args.json:
            _print_json(report)
            return 0
        print(f"area {report['area']} {report['date_from']}..{report['date_to']}: {report['visits']} visits; "
              f"{report['totals']['candidate']} hits with {Path(args.file).name}, "
              f"{report['totals']['in_force']} with the rules in force")  # fmt: skip
        print(f"  {'rule':<32} {'file':>8} {'in force':>9} {'new':>7} {'removed':>8} {'changed':>8}")
        for r in report["rules"]:
            print(f"  {r['rule_id']:<32} {r['candidate']:>8} {r['in_force']:>9} {r['new']:>7} "
                  f"{r['removed']:>8} {r['changed']:>8}")  # fmt: skip
        hospitals = report["hospitals"]
        print("  per hospital (file / in force):")
        for code in sorted(set(hospitals["candidate"]) | set(hospitals["in_force"])):
            new, old = hospitals["candidate"].get(code, 0), hospitals["in_force"].get(code, 0)
            print(f"    {code:<16} {new:>8} {old:>9}")
        return 0
    if args.verb == "deaths":
        if args.deaths_verb == "import":
            actor = _acting(store, args, "admin", "import dates of death").actor(args.reason)
            counts = deaths.import_deaths(store, actor, args.file)
            print(f"imported {counts['rows']} dates of death from {counts['file']}: {counts['new']} new, "
                  f"{counts['updated']} updated; {counts['held']} held", file=sys.stderr)  # fmt: skip
            return 0
        if args.count:
            n = store.read(deaths.count_deaths)
            print(json.dumps({"count": n}) if args.json else n)
            return 0
        for row in store.read(lambda c: deaths.list_deaths(c, limit=args.limit)):
            print(json.dumps(row, ensure_ascii=False) if args.json else
                  f"{row['psn_no']:<24} {row['death_date']}  {row['source']}")  # fmt: skip
        return 0
    result = analysis.analyse(store, by=args.by, measure=args.measure, date_from=args.date_from,
                              date_to=args.date_to, area=args.area, min_visits=args.min_visits)  # fmt: skip
    if args.json:  # one object per ranked row, like every listing's --json; each row names its run
        run = {key: result[key] for key in ("run_id", "by", "measure", "date_from", "date_to")}
        for row in result["results"][: args.limit]:
            print(json.dumps({**run, **row}, ensure_ascii=False))
        return 0
    print(
        f"run {result['run_id']}: {result['measure']} by {result['by']}, {result['date_from']}.."
        f"{result['date_to']}, {result['objects']} objects (top {min(args.limit, result['objects'])})"
    )
    print(f"  {'rank':>4} {'object':<28} {'visits':>7} {'value':>12} {'peers':>12} {'ratio':>7}")
    for r in result["results"][: args.limit]:
        value = "-" if r["value"] is None else f"{r['value']:.4g}"
        median = "-" if r["peer_median"] is None else f"{r['peer_median']:.4g}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"  {r['rank']:>4} {r['object_id']:<28} {r['visits']:>7} {value:>12} {median:>12} {ratio:>7}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.verb == "keys" and args.keys_verb == "generate":
        key = generate_key_file(Path(args.out))
        print(key.keyid)
        print(f"wrote {args.out} (private: keep it offline) and {args.out}.pub (public: give it to "
              "`yibao-central root rotate --add-key`)", file=sys.stderr)  # fmt: skip
        return 0
    if args.verb == "serve":
        extra: dict[str, Any] = {"insecure_dev": args.insecure_dev}
        if args.policy_poll_s is not None:
            extra["policy_poll_s"] = args.policy_poll_s
        if args.tls_check_s is not None:
            extra["tls_check_s"] = args.tls_check_s
        config = CentralConfig.from_home(args.home, listen=args.listen, **extra)
        open_store(config).close()  # refuse an uninitialised home before binding the port
        TufRepository.open(config)  # a home from before policy bundles: `init` adds the repository
        if not config.insecure_dev:
            TlsFiles(config.tls_dir).require()  # a home from before TLS: `init` adds the CA
        asyncio.run(serve(config))
        return 0
    if args.verb == "tls":
        config = CentralConfig.from_home(args.home)
        if args.tls_verb != "show":
            with open_store(config) as store:
                _acting(store, args, "admin", f"{args.tls_verb} the TLS certificate")
        return _tls(args, config)
    if args.verb in ("backup", "restore"):
        return _backup(args)
    ttl = getattr(args, "ttl_hours", None)
    config = CentralConfig.from_home(args.home, **({"token_ttl_hours": ttl} if ttl is not None else {}))
    if args.verb == "init":
        with open_store(config, create=True) as store:
            applied = store.applied_migrations
            if args.area is not None:
                set_default_area(store, args.area)
            area = store.read(default_area)
            admin = bootstrap_admin(store, args.admin)
        created = ensure_repository(config)
        tls_created = create_tls(config.tls_dir, args.tls_name)
        repo = TufRepository.open(config)
        print(
            f"initialised {config.db_path}" if applied else f"{config.db_path} is up to date", file=sys.stderr
        )
        if created:
            print(
                f"created the TUF repository in {config.tuf_dir} with {len(created)} operator keys in "
                f"{config.operators_dir} (root needs {config.root_threshold} of them). These are for a demo "
                "or test setup: production operators make their own (`yibao-central keys generate`), keep "
                "them offline and rotate the root to them (`yibao-central root rotate`)",
                file=sys.stderr,
            )
        if area:
            print(f"default pooling area {area}", file=sys.stderr)
        if tls_created:
            print(f"created the centre's CA and server certificate in {config.tls_dir}", file=sys.stderr)
        print(f"TUF root v{repo.root_version()} fingerprint: {repo.root_fingerprint()}")
        print(f"TLS trust bundle {trust_digest(config.tls_dir)} (agents enrol with --ca-hash this)")
        if admin is not None:
            _print_admin(admin[0], admin[1], args.admin_token_file)
        return 0
    with open_store(config) as store:
        if args.verb == "enroll-token" and args.hospitals_file:
            _acting(store, args, "admin", "issue enrolment tokens")
            if not args.out:
                raise ConfigInvalid("--hospitals-file needs --out FILE (the tokens are written there, 0600)")
            issued = cli_import.issue_tokens_file(
                store, args.hospitals_file, args.out, config.token_ttl_hours, args.area
            )
            print(f"{issued} enrolment tokens written to {args.out}", file=sys.stderr)
        elif args.verb == "enroll-token":
            _acting(store, args, "admin", "issue enrolment tokens")
            check_hospital_code(args.hospital)
            if not 1 <= args.count <= 10_000:
                raise ConfigInvalid("--count must be between 1 and 10000")
            for _ in range(args.count):
                print(issue_token(store, args.hospital, config.token_ttl_hours, area=args.area))
        elif args.verb == "agents" and args.agents_verb == "list":
            for row in store.read(agent_views):
                if args.json:
                    print(json.dumps(row))
                else:
                    state = "revoked" if row["revoked"] else "active"
                    behind = sum(v or 0 for v in row["behind"].values())
                    print(f"{row['agent_id']:<24} {row['fixmedins_code']:<16} seq {row['last_seq']:<8} "
                          f"{state:<8} last seen {row['last_seen'] or 'never':<26} "
                          f"area {row['pooling_area']} bundles behind {behind}  "
                          f"{_heartbeat_text(row)}")  # fmt: skip
        elif args.verb == "agents" and args.agents_verb == "revoke":
            _acting(store, args, "admin", "revoke an agent")
            when = revoke_agent(store, args.agent_id)
            print(f"agent {args.agent_id} revoked at {when}", file=sys.stderr)
        elif args.verb == "export":
            count = export_settlements(store, sys.stdout, args.hospital)
            print(f"{count} settlements exported", file=sys.stderr)
        elif args.verb == "reconcile":
            result = reconcile(store, args.hospital, args.date_from, args.date_to)
            print(json.dumps(result.to_json(), indent=2) if args.json else render_table(result))
            return result.exit_code
        elif args.verb == "import":
            actor = None  # status and rejects only read
            if args.import_verb == "settlements":
                actor = _acting(store, args, "admin", "import settlements").actor(args.reason)
            return cli_import.run(args, config, store, actor)
        elif args.verb == "cards" and args.cards_verb == "gate":
            return cards.run(args, store)
        elif args.verb == "cards" and args.cards_verb == "used-after-loss":
            op = _acting(store, args, ROLES, "list the lost cards used after their loss")
            found = store.read(lambda c: used_after_loss(c, cards.card_areas(op), limit=args.limit))
            cards.print_used_after_loss(found, args.json)
            return 0
        elif args.verb == "cards" and args.cards_verb == "history":
            op = _acting(store, args, ROLES, "read a card's history")
            history = store.write(lambda c: cards.looked_up_history(c, op, args.card_sn))
            cards.print_history(history, args.json)
            return 0
        elif args.verb == "cards":
            return _cards(args, config, store)
        elif args.verb == "declarations":
            actor = None  # list and reupload only read
            if args.declarations_verb in ("submit", "check"):
                what = f"{args.declarations_verb} a declaration"
                actor = _acting(store, args, ("admin", "supervisor"), what).actor(args.reason)
            return cli_import.run_declarations(args, store, actor)
        elif args.verb == "hospitals" and args.hospitals_verb == "import":
            actor = _acting(store, args, "admin", "register hospitals").actor(args.reason)
            return cli_import.run_hospitals_import(args, store, actor)
        elif args.verb in ("hospitals", "access-log"):
            return _hospitals(args, store)
        elif args.verb == "splits":
            return _splits(args, config, store)
        elif args.verb in ("screen", "deaths", "analysis") or (
            args.verb == "rules" and args.rules_verb in ("backtest", "quality")
        ):
            return _screening(args, config, store)
        elif args.verb in cli_monitor.VERBS:
            return cli_monitor.run(args, config, store)
        else:
            return _policy(args, config, store)
    return 0


def _backup(args: argparse.Namespace) -> int:
    """``backup``/``restore``: the home by ``protocol.backup``; a PostgreSQL database by pg_dump/pg_restore
    (``central.storage.pg_backup``), the dump one more member of the same archive."""
    from central.storage import pg_backup  # psycopg only when a backup runs

    home = args.home or os.environ.get(HOME_ENV)
    if args.verb == "backup":
        database = CentralConfig.from_home(home).database if home else "sqlite"
        dump = None if database == "sqlite" else pg_backup.dumper(database)
        return backup.run_cli(args, home, "central", dump=dump)
    if args.database is not None and backup.read_manifest(Path(args.archive)).dump is None:
        raise backup.BackupError(
            "--database is for a backup of a centre on PostgreSQL; this one holds no database dump (its "
            "centre ran on SQLite, the data is in the home): leave out --database"
        )
    return backup.run_cli(args, home, "central", load=pg_backup.loader(args.database))


def _heartbeat_text(row: dict) -> str:
    """What the agent's newest signed heartbeat says: how far the centre is behind it, or silence."""
    hb = row.get("heartbeat")
    if hb is None:
        return "heartbeat: none yet"
    if hb["silent"]:
        return f"heartbeat: SILENT since {hb['at']}"
    lag = f"behind by {hb['records_behind']}" if hb["records_behind"] else "caught up"
    return f"heartbeat {hb['at']}: {lag}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.log_json:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter({"service": "central"}))
    try:
        return _run(args)
    except (OperatorTokenRequired, OperatorTokenInvalid, RoleForbidden) as exc:
        print(f"yibao-central: error: {exc.message}", file=sys.stderr)
        return EXIT_OPERATOR
    except CentralError as exc:
        print(f"yibao-central: error: {exc.message}", file=sys.stderr)
        return 1
    except backup.BackupError as exc:
        print(f"yibao-central: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file an operator named (an input, --out, --key) or the home itself
        print(f"yibao-central: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
