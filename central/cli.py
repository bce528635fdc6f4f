"""``yibao-central``: a thin argparse shell; each verb calls one library function.

Exit codes: 0 success; 1 an error the message explains (bad arguments, uninitialised
home, unknown agent…); 2 ``reconcile`` found a chain that is not complete and verified.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from datetime import date

from .api import serve
from .config import DEFAULT_LISTEN, HOME_ENV, CentralConfig
from .enrol import check_hospital_code, issue_token, revoke_agent
from .errors import CentralError, ConfigInvalid
from .export import export_settlements
from .reconcile import reconcile, render_table
from .store import Store, agent_summary, list_agents

__all__ = ["build_parser", "init_home", "main"]

log = logging.getLogger("central")


def init_home(config: CentralConfig) -> list[str]:
    """Create the home and its database (idempotent); returns the migrations applied now."""
    with Store(config.db_path, create=True) as store:
        return store.applied_migrations


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yibao-central", description="Yibao Edge central collector")
    parser.add_argument("--home", help=f"directory holding central.db (default: ${HOME_ENV})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    verbs.add_parser("init", help="create the home directory and its database")
    serve_p = verbs.add_parser("serve", help="serve the HTTP API")
    serve_p.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT (default {DEFAULT_LISTEN})")

    token_p = verbs.add_parser("enroll-token", help="print a one-time enrolment token for a hospital")
    token_p.add_argument("--hospital", required=True, help="the hospital's fixmedins_code")
    token_p.add_argument("--ttl-hours", type=float, help="hours the token stays valid (default 24)")

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

    rec_p = verbs.add_parser("reconcile", help="daily totals and chain completeness for a hospital")
    rec_p.add_argument("--hospital", required=True)
    rec_p.add_argument("--from", dest="date_from", required=True, type=_date, help="YYYY-MM-DD")
    rec_p.add_argument("--to", dest="date_to", required=True, type=_date, help="YYYY-MM-DD")
    rec_p.add_argument("--json", action="store_true", help="JSON instead of a table")
    return parser


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-24") from None


def _run(args: argparse.Namespace) -> int:
    if args.verb == "serve":
        config = CentralConfig.from_home(args.home, listen=args.listen)
        Store(config.db_path).close()  # refuse an uninitialised home before binding the port
        asyncio.run(serve(config))
        return 0
    ttl = getattr(args, "ttl_hours", None)
    config = CentralConfig.from_home(args.home, **({"token_ttl_hours": ttl} if ttl is not None else {}))
    if args.verb == "init":
        applied = init_home(config)
        print(
            f"initialised {config.db_path}" if applied else f"{config.db_path} is up to date", file=sys.stderr
        )
        return 0
    with Store(config.db_path) as store:
        if args.verb == "enroll-token":
            check_hospital_code(args.hospital)
            print(issue_token(store, args.hospital, config.token_ttl_hours))
        elif args.verb == "agents" and args.agents_verb == "list":
            for agent in store.read(list_agents):
                row = agent_summary(agent)
                if args.json:
                    print(json.dumps(row))
                else:
                    state = "revoked" if row["revoked"] else "active"
                    print(f"{row['agent_id']:<24} {row['fixmedins_code']:<16} seq {row['last_seq']:<8} "
                          f"{state:<8} last seen {row['last_seen'] or 'never'}")  # fmt: skip
        elif args.verb == "agents" and args.agents_verb == "revoke":
            when = revoke_agent(store, args.agent_id)
            print(f"agent {args.agent_id} revoked at {when}", file=sys.stderr)
        elif args.verb == "export":
            count = export_settlements(store, sys.stdout, args.hospital)
            print(f"{count} settlements exported", file=sys.stderr)
        elif args.verb == "reconcile":
            result = reconcile(store, args.hospital, args.date_from, args.date_to)
            print(json.dumps(result.to_json(), indent=2) if args.json else render_table(result))
            return 0 if result.ok else 2
        else:  # pragma: no cover - argparse refuses unknown verbs
            raise ConfigInvalid(f"unknown verb {args.verb}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _run(args)
    except CentralError as exc:
        print(f"yibao-central: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
