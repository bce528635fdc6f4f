"""``yibao-agent``: a thin shell over ``enrol``, ``serve`` and the outbox status."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path

from protocol import backup
from protocol.logging_json import JsonFormatter

from .config import AgentConfig, load_config
from .enrol import enrol, pinned_root_fingerprint
from .errors import AgentError
from .policy import PolicyClient, policy_status
from .policy_store import PolicyStore
from .resync import mark_restored
from .service import open_outbox, serve
from .users import UserStore, open_users, users_db_path

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="yibao-agent", description="Yibao Edge agent beside a hospital's HIS")
    p.add_argument(
        "--home", default=os.environ.get("YIBAO_HOME"), help="agent directory (default $YIBAO_HOME)"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--log-json", action="store_true", help="log one JSON object per line (for a log shipper)")
    sub = p.add_subparsers(dest="verb", required=True)
    init = sub.add_parser("init", help="create the key and database and enrol with the centre")
    init.add_argument(
        "--central", required=True, help="central collector URL, e.g. https://centre.example:8720"
    )
    init.add_argument(
        "--ca-hash",
        help="sha256:… of the centre's TLS trust bundle, from the operator with the token "
        "(`yibao-central tls show`); required for https",
    )
    init.add_argument(
        "--insecure-dev",
        action="store_true",
        help="allow a plain http:// centre: a development machine only, never with real data",
    )
    init.add_argument("--token", required=True, help="one-time enrolment token from the central operator")
    init.add_argument("--hospital", required=True, help="fixmedins_code of this institution")
    srv = sub.add_parser("serve", help="run the HIS API and the uploader")
    srv.add_argument("--listen", help="host:port for the HIS API (default 127.0.0.1:8710)")
    sub.add_parser("status", help="print the outbox status as JSON")
    pol = sub.add_parser("policy", help="policy bundles (blacklists, rules, policy, catalogue, keys)")
    pol_sub = pol.add_subparsers(dest="policy_verb", required=True)
    apply = pol_sub.add_parser(
        "apply",
        help="apply an exported repository (tar from 'yibao-central bundle export') with every TUF check",
    )
    apply.add_argument("file", help="the exported tar file")
    pol_sub.add_parser("status", help="held bundle versions and ages, TUF versions, problems, alarms (JSON)")
    backup.add_parsers(sub, "agent")
    usr = sub.add_parser("users", help="cashiers' and doctors' own tokens for the HIS API")
    usr_sub = usr.add_subparsers(dest="users_verb", required=True)
    add = usr_sub.add_parser("add", help="add a user and print their token (shown once)")
    add.add_argument("--name", required=True, help="sign-in name, e.g. the staff's HIS operator code")
    add.add_argument("--role", required=True, choices=["cashier", "doctor"])
    add.add_argument("--dr-codg", help="a doctor's national doctor code (required for doctors)")
    add.add_argument("--dept-codg", help="the user's department code (optional)")
    ls = usr_sub.add_parser("list", help="the users, enabled or not (never their tokens)")
    ls.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    for verb, text in (
        ("disable", "stop a user's token at once"),
        ("rotate", "a new token; the old one stops"),
    ):
        usr_sub.add_parser(verb, help=text).add_argument("--name", required=True)
    return p


def _stamp(at: float | None) -> str:
    return datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds") if at else "-"


def _users(config: AgentConfig, args: argparse.Namespace) -> int:
    """The users verbs; the token is printed once, on stdout alone, so a script can capture it."""
    with open_users(config) as store:
        if args.users_verb == "add":
            token = store.add(args.name, args.role, dr_codg=args.dr_codg, dept_codg=args.dept_codg)
            _print_token(store, args.name, token, "added")
        elif args.users_verb == "rotate":
            _print_token(store, args.name, store.rotate(args.name), "has a new token; the old one stopped")
        elif args.users_verb == "disable":
            user = store.disable(args.name)
            print(f"{user.role} {user.name} disabled at {_stamp(user.disabled_at)}: their token is refused")
        else:
            users = store.users()
            if args.json:
                print(json.dumps([u.to_json() for u in users], indent=2))
            elif not users:
                print(f"no users yet ({users_db_path(config)}); add one with 'yibao-agent users add'")
            else:
                print(f"{'name':<20} {'role':<8} {'dr_codg':<16} {'dept':<10} {'created':<25} state")
                for u in users:
                    state = "enabled" if u.enabled else f"disabled {_stamp(u.disabled_at)}"
                    print(f"{u.name:<20} {u.role:<8} {u.dr_codg or '-':<16} {u.dept_codg or '-':<10} "
                          f"{_stamp(u.created_at):<25} {state}")  # fmt: skip
    return 0


def _print_token(store: UserStore, name: str, token: str, what: str) -> None:
    user = store.get(name)
    code = f" (doctor code {user.dr_codg})" if user.dr_codg else ""
    print(f"{user.role} {user.name}{code} {what}; their token, shown only now:", file=sys.stderr)
    print(token)
    print(
        "hand it to them privately; the HIS sends it as 'Authorization: Bearer <token>' for their requests",
        file=sys.stderr,
    )


def _policy(config: AgentConfig, args: argparse.Namespace) -> int:
    store = PolicyStore(config.policy_db_path)
    try:
        client = PolicyClient(config, store)
        if args.policy_verb == "status":
            print(json.dumps(policy_status(config, store), indent=2))
            return 0
        result = client.apply_export(args.file)
        for a in result.applied:
            how = "full" if a.base_seq is None else f"delta on seq {a.base_seq}"
            counts = f", +{a.added} -{a.removed}, {a.entries} entries" if a.entries is not None else ""
            print(f"applied {a.kind} seq {a.seq} ({how}{counts}) in {a.seconds:.2f} s")
        for kind in result.current:
            print(f"{kind}: already current")
        for kind in result.missing:
            print(f"{kind}: not in this file")
        for exc in result.refused:
            print(
                f"yibao-agent: refused{f' {exc.kind}' if exc.kind else ''} ({exc.code}): {exc.message}",
                file=sys.stderr,
            )
        if not result.ok:
            print(
                "yibao-agent: the held bundles are unchanged where refused and stay in force", file=sys.stderr
            )
            return 1
        return 0
    finally:
        store.close()


def _inside(home: Path, folder: Path | None) -> tuple[str, ...]:
    """The top-level name of a drop folder kept inside the home: its files are the HIS's, in transit,
    not the agent's state (what was settled from them is in the outbox)."""
    if folder is None:
        return ()
    try:
        return (folder.resolve().relative_to(home.resolve()).parts[0],)
    except (ValueError, IndexError):
        return ()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.log_json:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter({"service": "agent"}))
    try:
        if args.verb == "init":
            if not args.home:
                raise AgentError("no agent home: pass --home DIR or set YIBAO_HOME")
            config = asyncio.run(
                enrol(
                    Path(args.home),
                    args.central,
                    args.token,
                    args.hospital,
                    ca_hash=args.ca_hash,
                    insecure_dev=args.insecure_dev,
                )
            )
            print(f"enrolled as {config.agent_id}; HIS token in {config.token_path}")
            if config.insecure_dev:
                print("INSECURE DEV: plain HTTP to the centre, no client certificate; not for real data")
            else:
                print(f"centre's TLS trust bundle pinned and client certificate in {config.tls_dir}")
            fingerprint = pinned_root_fingerprint(config)
            if fingerprint:
                print(f"pooling area {config.pooling_area or '(none)'}; policy root pinned, fingerprint:")
                print(f"  {fingerprint}")
                print("compare it with the one the central operator reads out ('yibao-central root show')")
            else:
                print("the centre sent no TUF root: policy bundles (blacklists…) are off for this agent")
            return 0
        if args.verb == "restore":
            code = backup.run_cli(args, args.home, "agent")
            mark_restored(Path(args.home), backup.read_manifest(Path(args.archive)).created_at)
            print("on its next start the agent first takes back from the centre what it settled after this "
                  "backup; it refuses settlements (503 resync_pending) until then")  # fmt: skip
            return code
        config = load_config(args.home)
        if args.verb == "backup":
            keep_out = _inside(config.home, config.dropfolder_path)
            return backup.run_cli(args, args.home, "agent", exclude=keep_out)
        if args.verb == "serve":
            if args.listen:
                config.listen = args.listen
            asyncio.run(serve(config))
            return 0
        if args.verb == "policy":
            return _policy(config, args)
        if args.verb == "users":
            return _users(config, args)
        if args.verb == "status":
            outbox = open_outbox(config)
            store = PolicyStore(config.policy_db_path)
            try:
                policy = policy_status(config, store)
                print(
                    json.dumps(
                        {
                            "agent_id": config.agent_id,
                            "outbox": outbox.status(),
                            "alarms": list(outbox.alarms.values()) + policy["alarms"],
                            "policy": policy,
                        },
                        indent=2,
                    )
                )
            finally:
                outbox.close()
                store.close()
            return 0
    except AgentError as exc:
        print(f"yibao-agent: {exc.message}", file=sys.stderr)
        return 1
    except backup.BackupError as exc:
        print(f"yibao-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
