"""CLI verbs of the review workflow (``docs/MONITORING.md``): operators, suspicions, cases, decisions.

``central.cli`` calls ``add_parsers`` and, for ``VERBS``, ``run``. Every verb but ``operators list``
is done by the operator whose token is in ``--token-file FILE`` or ``$YIBAO_OPERATOR_TOKEN``
(``central.operators.operator_from_token``): the review verbs by a reviewer or supervisor, who sees
only their pooling areas; the ``operators`` verbs that change something by an admin::

    operators add NAME [--area A] [--manage B]... [--role R[,R]...]   prints the API token once
    operators list [--json] | operators areas NAME --manage B... [--area A] [--role R[,R]...]
    operators disable NAME | operators token NAME                     (a new token, printed once)
    suspicions list [--status S] [--rule R] [--severity red|yellow|green] [--min-score N]
                    [--hospital H] [--area A] [--limit N] [--json]
    suspicions show ID [--json]
    suspicions review ID confirm|dismiss --reason R
    cases open SUSPICION_ID... --title T [--assignee NAME]
    cases list [--status S] [--assignee NAME] [--json] | cases show ID [--json]
    cases assign ID NAME [--reason R] | cases note ID TEXT [--evidence] [--detail JSON]
    cases add ID SUSPICION_ID... | cases close ID --reason R
    decisions make CASE --kind deduction|warning|suspension|blacklist --target-type T --target-id X
                   [--amount YUAN] [--until DATE] --reason R [--key FILE]... [--no-publish]
    decisions list [--case ID] [--hospital H] [--kind K] [--status S] [--json]
    decisions publish [--key FILE]...
    risk --by hospital|department|doctor|person --from D --to D [--area A] [--min-visits N]
         [--limit N] [--json]                     objects ranked by risk, each score's contributions
    risk --categories --from D --to D [--area A] [--json]   suspicions per rule category

Roles are ``reviewer``, ``supervisor``, ``policy`` and ``admin`` (several joined by commas). A
blacklist or suspension decision needs a supervisor other than the reviewer who confirmed the case's
suspicions (``central.monitoring.review``). ``rules quality`` is added by ``central.cli`` and calls
``central.monitoring.review.rule_quality``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from typing import Any

from central.config import CentralConfig
from central.errors import ConfigInvalid, MonitorInputInvalid
from central.operators import (
    MONITORING_ROLES,
    ROLES,
    Operator,
    acting_operator,
    add_operator,
    disable_operator,
    home_signers,
    issue_token,
    list_operators,
    require_area,
    set_areas,
)
from central.policy.bundles import Policy
from central.policy.tuf_repo import TufRepository
from central.storage.store import Store

from .review import (
    DECISION_TARGETS,
    OUTCOMES,
    add_note,
    add_suspicions,
    assign_case,
    close_case,
    get_case,
    list_cases,
    list_decisions,
    make_decision,
    open_case,
    publish_pending,
    review_suspicion,
    scoped_suspicions,
    visible_suspicion,
)
from .risk import BY as RISK_BY
from .risk import by_category, object_risk
from .suspicions import SEVERITIES, STATUSES

__all__ = ["VERBS", "add_parsers", "run"]

#: The top-level verbs this module owns.
VERBS: frozenset[str] = frozenset({"operators", "suspicions", "cases", "decisions", "risk"})


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    """Add this module's verbs to the ``yibao-central`` parser."""
    acting = argparse.ArgumentParser(add_help=False)  # the token (central.cli's --token-file) says who
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="JSON (one object per line for listings)")
    paging = argparse.ArgumentParser(add_help=False)
    paging.add_argument("--limit", type=int, default=100)
    paging.add_argument("--offset", type=int, default=0)
    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument("--reason", default="", help="why, for the audit log")

    ops = verbs.add_parser("operators", help="operators, their roles, pooling areas and API tokens")
    ops_verbs = ops.add_subparsers(dest="operators_verb", required=True, metavar="ACTION")
    add_p = ops_verbs.add_parser(
        "add", parents=[admin], help="register an operator; prints the API token once"
    )
    add_p.add_argument("name")
    add_p.add_argument("--area", help="main pooling area (6 digits; not needed for an admin only)")
    add_p.add_argument(
        "--manage", action="append", default=[], metavar="AREA", help="another area (repeatable)"
    )
    add_p.add_argument("--role", default="reviewer", help=f"one or more of {', '.join(ROLES)}, comma-joined")
    ops_verbs.add_parser("list", parents=[as_json], help="the registered operators")
    areas_p = ops_verbs.add_parser("areas", parents=[admin], help="replace an operator's managed areas")
    areas_p.add_argument("name")
    areas_p.add_argument("--manage", action="append", default=[], metavar="AREA",
                         help="managed area (repeatable; none: the main area only)")  # fmt: skip
    areas_p.add_argument("--area", help="a new main pooling area")
    areas_p.add_argument("--role", help=f"new roles: {', '.join(ROLES)}, comma-joined")
    dis_p = ops_verbs.add_parser("disable", parents=[admin], help="disable an operator and their token")
    dis_p.add_argument("name")
    tok_p = ops_verbs.add_parser("token", parents=[admin], help="a new API token (the old one stops working)")
    tok_p.add_argument("name")

    sus = verbs.add_parser("suspicions", help="what screening found: the review queue")
    sus_verbs = sus.add_subparsers(dest="suspicions_verb", required=True, metavar="ACTION")
    ls_p = sus_verbs.add_parser(
        "list", parents=[acting, as_json, paging], help="suspicions, highest score first"
    )
    ls_p.add_argument("--status", default="new", help=f"{'|'.join(STATUSES)}|all (default new: the queue)")
    ls_p.add_argument("--rule", help="rule id")
    ls_p.add_argument("--severity", choices=SEVERITIES)
    ls_p.add_argument("--min-score", type=int)
    ls_p.add_argument("--hospital", help="fixmedins_code")
    ls_p.add_argument("--area", help="one of the operator's areas")
    show_p = sus_verbs.add_parser("show", parents=[acting, as_json], help="one suspicion with its evidence")
    show_p.add_argument("id", type=int)
    rev_p = sus_verbs.add_parser("review", parents=[acting], help="initial review: confirm or dismiss")
    rev_p.add_argument("id", type=int)
    rev_p.add_argument("outcome", choices=sorted(OUTCOMES))
    rev_p.add_argument("--reason", required=True)

    cases = verbs.add_parser("cases", help="cases gathering confirmed suspicions of one area")
    case_verbs = cases.add_subparsers(dest="cases_verb", required=True, metavar="ACTION")
    open_p = case_verbs.add_parser(
        "open", parents=[acting, as_json], help="open a case from confirmed suspicions"
    )
    open_p.add_argument("suspicions", type=int, nargs="+", metavar="SUSPICION_ID")
    open_p.add_argument("--title", required=True)
    open_p.add_argument("--assignee", help="operator who works the case")
    cls_p = case_verbs.add_parser(
        "list", parents=[acting, as_json, paging], help="cases of the operator's areas"
    )
    cls_p.add_argument("--status", choices=("open", "decided", "closed"))
    cls_p.add_argument("--assignee")
    cshow_p = case_verbs.add_parser("show", parents=[acting, as_json], help="a case, its notes and decisions")
    cshow_p.add_argument("id", type=int)
    asg_p = case_verbs.add_parser("assign", parents=[acting, as_json], help="give the case to an operator")
    asg_p.add_argument("id", type=int)
    asg_p.add_argument("assignee")
    asg_p.add_argument("--reason", default="")
    note_p = case_verbs.add_parser("note", parents=[acting, as_json], help="add a note or evidence")
    note_p.add_argument("id", type=int)
    note_p.add_argument("text")
    note_p.add_argument("--evidence", action="store_true", help="record it as evidence")
    note_p.add_argument("--detail", help="JSON object kept with the note (references, figures)")
    cadd_p = case_verbs.add_parser("add", parents=[acting, as_json], help="add confirmed suspicions")
    cadd_p.add_argument("id", type=int)
    cadd_p.add_argument("suspicions", type=int, nargs="+", metavar="SUSPICION_ID")
    close_p = case_verbs.add_parser("close", parents=[acting, as_json], help="close the case (supervisor)")
    close_p.add_argument("id", type=int)
    close_p.add_argument("--reason", required=True)

    keys = argparse.ArgumentParser(add_help=False)
    keys.add_argument("--key", action="append", metavar="FILE", help="operator private key (repeatable; "
                      "default: every *.pem in HOME/operators/)")  # fmt: skip
    dec = verbs.add_parser("decisions", help="decisions on cases and their effect")
    dec_verbs = dec.add_subparsers(dest="decisions_verb", required=True, metavar="ACTION")
    make_p = dec_verbs.add_parser(
        "make", parents=[acting, keys, as_json], help="decide on a case (supervisor)"
    )
    make_p.add_argument("case", type=int)
    make_p.add_argument("--kind", required=True, choices=list(DECISION_TARGETS))
    make_p.add_argument("--target-type", required=True,
                        choices=sorted({t for ts in DECISION_TARGETS.values() for t in ts}))  # fmt: skip
    make_p.add_argument(
        "--target-id", required=True, help="hospital code, doctor code, psn_no, card_sn, emp_no…"
    )
    make_p.add_argument("--amount", help="deduction in yuan, like 1234.50")
    make_p.add_argument("--until", help="suspension end date, like 2027-06-30")
    make_p.add_argument("--reason", required=True)
    make_p.add_argument(
        "--no-publish", action="store_true", help="record a blacklist decision pending_publish"
    )
    dls_p = dec_verbs.add_parser(
        "list", parents=[acting, as_json, paging], help="decisions of the operator's areas"
    )
    dls_p.add_argument("--case", type=int)
    dls_p.add_argument("--hospital", help="decisions targeting this hospital")
    dls_p.add_argument("--kind", choices=list(DECISION_TARGETS))
    dls_p.add_argument("--status", choices=("effective", "pending_publish"))
    dec_verbs.add_parser(
        "publish", parents=[acting, keys], help="sign and publish pending blacklist decisions"
    )

    risk = verbs.add_parser(
        "risk", parents=[acting, as_json], help="persons, doctors, departments or hospitals ranked by risk"
    )
    risk.add_argument("--by", choices=RISK_BY, default="hospital", help="object type (default hospital)")
    risk.add_argument("--categories", action="store_true", help="suspicions per rule category instead")
    risk.add_argument("--from", dest="date_from", required=True, type=_date, help="YYYY-MM-DD")
    risk.add_argument("--to", dest="date_to", required=True, type=_date, help="YYYY-MM-DD")
    risk.add_argument("--area", help="one of the operator's areas (default: all of them)")
    risk.add_argument("--min-visits", type=int, help="volume at which the small-volume shrink halves a score")
    risk.add_argument("--limit", type=int, default=30, help="objects to print (default 30)")


def _date(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-24") from None


def _yuan(fen: int | None) -> str:
    if fen is None:
        return "-"
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False))


def _operators(args: argparse.Namespace, store: Store) -> int:
    """Operators' verbs: listing is open to whoever reads the home, the rest is an admin's."""
    verb = args.operators_verb
    if verb == "list":
        for op in store.read(list_operators):
            if args.json:
                _print_json(op.to_json())
            else:
                state = f"disabled {op.disabled_at}" if op.disabled_at else "active"
                manage = f" manages {', '.join(op.areas)}" if op.areas else ""
                print(f"{op.name:<20} {op.role:<18} area {op.main_area or '-'}{manage}  {state}")
        return 0
    admin = store.read(lambda c: acting_operator(c, args.token_file, "admin", f"{verb} operators"))
    actor = admin.actor(args.reason)
    if verb == "add":
        op, token = add_operator(store, actor, args.name, area=args.area, manage=args.manage, role=args.role)
        print(token)
        scope = ", ".join(sorted(op.scope)) or "the whole centre"
        print(f"operator {op.name} ({op.role}) for {scope}; the token above is shown once: give it to the "
              "operator to keep in a private file (`--token-file FILE`, $YIBAO_OPERATOR_TOKEN, or "
              "`Authorization: Bearer <token>`)", file=sys.stderr)  # fmt: skip
    elif verb == "areas":
        op = set_areas(store, actor, args.name, manage=args.manage, main=args.area, role=args.role)
        print(f"operator {op.name} ({op.role}) now sees {', '.join(sorted(op.scope))}", file=sys.stderr)
    elif verb == "disable":
        op = disable_operator(store, actor, args.name)
        print(f"operator {op.name} disabled at {op.disabled_at}", file=sys.stderr)
    else:
        print(issue_token(store, actor, args.name))
        print(f"new token for {args.name}; the previous one no longer works", file=sys.stderr)
    return 0


def _suspicion_line(s: dict[str, Any]) -> str:
    return (
        f"{s['id']:>7} {s['severity']:<6} {s['score']:>3} {_yuan(s['amount_fen']):>12} {s['status']:<9} "
        f"{s['area']} {s['fixmedins_code'] or '-':<14} {s['rule_id']}@{s['rule_version']} "
        f"{s['object_type']} {s['object_id']}  ×{s['times_found']}  {s['message']}"
    )


def _suspicions(args: argparse.Namespace, store: Store, op: Operator) -> int:
    verb = args.suspicions_verb
    if verb == "list":
        status = None if args.status == "all" else args.status
        if status is not None and status not in STATUSES:
            raise MonitorInputInvalid(f"--status {status!r} is not one of {', '.join(STATUSES)} or all")
        rows = store.read(
            lambda c: scoped_suspicions(
                c, op, area=args.area, status=status, rule_id=args.rule, severity=args.severity,
                min_score=args.min_score, hospital=args.hospital, limit=args.limit, offset=args.offset,
            )
        )  # fmt: skip
        for s in rows:
            _print_json(s) if args.json else print(_suspicion_line(s))
        print(f"{len(rows)} suspicions", file=sys.stderr)
        return 0
    if verb == "show":
        s = store.read(lambda c: visible_suspicion(c, op, args.id))
        review = store.read(
            lambda c: c.execute(
                "SELECT outcome, operator, at, reason FROM reviews WHERE suspicion_id = ? ORDER BY id",
                (args.id,),
            ).fetchall()
        )
        s["reviews"] = [dict(zip(("outcome", "operator", "at", "reason"), r, strict=True)) for r in review]
        if args.json:
            _print_json(s)
            return 0
        print(_suspicion_line(s))
        print(f"  settlements {', '.join(s['setl_ids'])}; lines {', '.join(s['lines']) or '-'}")
        print(
            f"  found {s['first_found']} … {s['last_found']} ({s['times_found']} times); "
            f"case {s['case_id'] or '-'}"
        )
        if s["psn_no"]:
            print(f"  person {s['psn_no']}")
        for e in s["evidence"]:
            print(f"  evidence {json.dumps(e, ensure_ascii=False)}")
        for r in s["reviews"]:
            print(f"  reviewed: {r['outcome']} by {r['operator']} at {r['at']}: {r['reason']}")
        return 0
    s = review_suspicion(store, op, args.id, args.outcome, args.reason)
    print(f"suspicion {s['id']} {s['status']}", file=sys.stderr)
    return 0


def _print_case(case: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(case)
        return
    print(f"case {case['id']} [{case['status']}] area {case['area']}: {case['title']}")
    print(f"  assignee {case['assignee'] or '-'}; opened by {case['created_by']} at {case['created_at']}; "
          f"{len(case['suspicions'])} suspicions, {_yuan(case['amount_fen'])} yuan at stake")  # fmt: skip
    for s in case["suspicions"]:
        print("  " + _suspicion_line(s))
    for n in case["notes"]:
        print(f"  {n['at']} {n['operator']:<12} {n['kind']:<8} {n['text']}")
    for d in case["decisions"]:
        print(f"  decision {_decision_line(d)}")


def _decision_line(d: dict[str, Any]) -> str:
    extra = ""
    if d["amount_fen"] is not None:
        extra += f" {_yuan(d['amount_fen'])} yuan"
    if d["until"]:
        extra += f" until {d['until']}"
    if d["bundle_seq"] is not None:
        extra += f" (blacklist {d['bundle_area']} seq {d['bundle_seq']})"
    return (
        f"{d['id']:>6} case {d['case_id']:<6} {d['kind']:<10} {d['target_type']} {d['target_id']}{extra} "
        f"[{d['status']}] by {d['operator']} at {d['at']}: {d['reason']}"
    )


def _cases(args: argparse.Namespace, store: Store, op: Operator) -> int:
    verb = args.cases_verb
    if verb == "list":
        rows = store.read(
            lambda c: list_cases(
                c, op.scope, status=args.status, assignee=args.assignee, limit=args.limit, offset=args.offset
            )
        )
        for r in rows:
            if args.json:
                _print_json(r)
            else:
                print(f"{r['id']:>6} {r['status']:<8} {r['area']} score {r['score']:>3} "
                      f"{_yuan(r['amount_fen']):>12} {r['suspicions']:>4} susp. {r['assignee'] or '-':<12} "
                      f"{r['title']}")  # fmt: skip
        print(f"{len(rows)} cases", file=sys.stderr)
        return 0
    if verb == "show":
        case = store.read(lambda c: get_case(c, op, args.id))
    elif verb == "open":
        case = open_case(store, op, args.suspicions, args.title, assignee=args.assignee)
    elif verb == "assign":
        case = assign_case(store, op, args.id, args.assignee, args.reason)
    elif verb == "note":
        try:
            detail = json.loads(args.detail) if args.detail else None
        except ValueError as exc:
            raise MonitorInputInvalid(f"--detail is not JSON: {exc}") from None
        case = add_note(
            store, op, args.id, args.text, kind="evidence" if args.evidence else "note", detail=detail
        )
    elif verb == "add":
        case = add_suspicions(store, op, args.id, args.suspicions)
    elif verb == "close":
        case = close_case(store, op, args.id, args.reason)
    else:  # pragma: no cover - argparse refuses others
        raise ConfigInvalid(f"unknown cases action {verb}")
    _print_case(case, args.json)
    return 0


def _decisions(args: argparse.Namespace, config: CentralConfig, store: Store, op: Operator) -> int:
    verb = args.decisions_verb
    if verb == "list":
        rows = store.read(
            lambda c: list_decisions(
                c, op.scope, case_id=args.case, hospital=args.hospital, kind=args.kind, status=args.status,
                limit=args.limit, offset=args.offset,
            )
        )  # fmt: skip
        for d in rows:
            _print_json(d) if args.json else print(_decision_line(d))
        print(f"{len(rows)} decisions", file=sys.stderr)
        return 0
    policy = Policy(store, TufRepository.open(config), config)
    if verb == "publish":
        signers = home_signers(config, args.key)
        if not signers:
            raise ConfigInvalid(f"no operator keys given and none in {config.operators_dir}; pass --key FILE")
        done = publish_pending(store, op, policy, signers)
        for d in done:
            print(_decision_line(d))
        print(f"{len(done)} pending decisions published", file=sys.stderr)
        return 0
    signers = [] if args.no_publish or args.kind != "blacklist" else home_signers(config, args.key)
    decision = make_decision(
        store, op, args.case, kind=args.kind, target_type=args.target_type, target_id=args.target_id,
        reason=args.reason, amount=args.amount, until=args.until, policy=policy, signers=signers,
    )  # fmt: skip
    if args.json:
        _print_json(decision)
    else:
        print(_decision_line(decision))
    if decision.get("publish_error") and not args.no_publish:
        print(f"yibao-central: decision {decision['id']} is recorded but not published: "
              f"{decision['publish_error']}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _contributions(r: dict[str, Any]) -> str:
    """The parts of one score in a line: what a reviewer reads to see why the object is where it is."""
    p = r["parts"]
    bits = [f"rules {p['rules']:.2f}", f"money {p['money']:.2f}", f"indicators {p['indicators']:.2f}"]
    if p.get("combination_bonus"):
        bits.append(f"combination +{p['combination_bonus']:.2f}")
    if p.get("providers"):
        bits.append(f"providers {p['providers']:.2f}")
    bits.append(f"volume ×{p['volume_shrink']:.2f}")
    top = [x for x in sorted(r["rules"], key=lambda x: -x["part"]) if x["part"] > 0][:3]
    if top:
        bits.append("top rules " + ", ".join(f"{x['rule_id']}×{x['suspicions']}" for x in top))
    ind = r["indicators"]
    measures = sorted(((k, v) for k, v in ind.items() if "z" in v), key=lambda kv: -kv[1]["part"])
    bits += [f"{name} {v['ratio']:.2f}× peers (z {v['z']:.1f})" for name, v in measures[:2] if v["part"] > 0]
    if ind.get("worst_doctor", {}).get("part"):
        bits.append(f"worst doctor {ind['worst_doctor']['doctor']} ({ind['worst_doctor']['score']:.0f})")
    return "; ".join(bits)


def _risk(args: argparse.Namespace, store: Store, op: Operator) -> int:
    if args.area is not None:
        require_area(op, args.area)
    areas = [args.area] if args.area is not None else sorted(op.scope)
    if args.date_from > args.date_to:
        raise MonitorInputInvalid(f"--from {args.date_from} is after --to {args.date_to}")
    if args.categories:
        rows = store.read(
            lambda c: by_category(c, date_from=args.date_from, date_to=args.date_to, areas=areas)
        )
        for row in rows:
            if args.json:
                _print_json(row)
                continue
            precision = "-" if row["precision"] is None else f"{row['precision']:.2f}"
            print(f"{row['category']:<28} {row['holding']:>6} holding {row['no_longer_holds']:>5} retracted "
                  f"{row['confirmed']:>5} confirmed {row['dismissed']:>5} dismissed precision {precision:>4} "
                  f"{_yuan(row['at_stake_fen']):>14} yuan  {row['objects']} objects")  # fmt: skip
        print(f"{len(rows)} categories", file=sys.stderr)
        return 0
    if args.min_visits is not None and args.min_visits < 0:
        raise MonitorInputInvalid("--min-visits must be 0 or more")
    if args.limit < 1:
        raise MonitorInputInvalid("--limit must be at least 1")
    rows = store.read(
        lambda c: object_risk(c, by=args.by, date_from=args.date_from, date_to=args.date_to, areas=areas,
                              min_visits=args.min_visits, limit=args.limit)
    )  # fmt: skip
    for r in (x.to_json() for x in rows):
        if args.json:
            _print_json(r)
            continue
        print(f"{r['rank']:>4} {r['object_id']:<24} score {r['score']:>5.1f} visits {r['visits']:>6} "
              f"total {_yuan(r['total_fen']):>13} at stake {_yuan(r['at_stake_fen']):>12}  "
              f"{_contributions(r)}")  # fmt: skip
    print(f"{len(rows)} {args.by} objects by risk, {args.date_from}..{args.date_to}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace, config: CentralConfig, store: Store) -> int:
    """Run one of ``VERBS``; returns the exit code."""
    if args.verb == "operators":
        return _operators(args, store)
    if args.verb == "risk":
        op = store.read(lambda c: acting_operator(c, args.token_file, MONITORING_ROLES, "read risk"))
        return _risk(args, store, op)
    what = f"{args.verb} {getattr(args, args.verb + '_verb')}"
    op = store.read(lambda c: acting_operator(c, args.token_file, MONITORING_ROLES, what))
    if args.verb == "suspicions":
        return _suspicions(args, store, op)
    if args.verb == "cases":
        return _cases(args, store, op)
    if args.verb == "decisions":
        return _decisions(args, config, store, op)
    raise ConfigInvalid(f"unknown verb {args.verb}")  # pragma: no cover - argparse refuses unknown verbs
