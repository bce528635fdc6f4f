"""Checking one bill at the agent: fill ``cur_lines``, run every rule that applies, collect ``Hit``s."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from .definitions import MOMENTS, Rule, RuleSet
from .model import Bill, Hit
from .tables import CURRENT_COLUMNS, CURRENT_SETL_ID, create_current
from .templates import run_rule

__all__ = ["BlacklistMatch", "blacklist_hit", "evaluate"]

_INSERT = (
    f"INSERT INTO cur_lines ({', '.join(CURRENT_COLUMNS)}) VALUES ({', '.join('?' * len(CURRENT_COLUMNS))})"
)
_LIST_NAMES = {"card": "social-security card", "person": "person", "employer": "employer"}


class BlacklistMatch(Protocol):
    """What the caller's blacklist lookup found (``agent.policy_store.BlacklistHit`` has these)."""

    @property
    def list_type(self) -> str: ...  # card | person | employer
    @property
    def reason(self) -> str: ...
    @property
    def list_version(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Blacklisted:
    """A plain ``BlacklistMatch`` for callers and tests."""

    list_type: str
    reason: str
    list_version: int = 0


def blacklist_hit(
    rule: Rule, match: BlacklistMatch, *, psn_no: str = "", setl_id: str = CURRENT_SETL_ID
) -> Hit:
    """Template 12: the caller's blacklist finding as a ``Hit`` of ``rule`` (its mode and action)."""
    if rule.template != "blacklisted":
        raise ValueError(f"rule {rule.id} is a {rule.template} rule, not blacklisted")
    what = _LIST_NAMES.get(match.list_type, match.list_type)
    message = (
        f"The {what} is on the blacklist (reason: {match.reason}; list version {match.list_version}); "
        "the medical-insurance fund cannot be used."
    )
    evidence = {"list_type": match.list_type, "reason": match.reason, "list_version": match.list_version}
    return Hit(
        rule_id=rule.id, rule_version=rule.version, template=rule.template, severity=rule.severity,
        mode=rule.mode, action=rule.action, overridable=rule.overridable, message=message, lines=(),
        evidence=(evidence,), psn_no=psn_no, setl_id=setl_id,
    )  # fmt: skip


def applicable(ruleset: RuleSet, bill: Bill, *, moment: str, kb_ready: bool = True) -> list[Rule]:
    """The rules that run for ``bill`` at ``moment``: not off, moment and filters match, knowledge ready.

    Centre templates (13-18) never run here: they need the whole population's visits.
    """
    if moment not in MOMENTS:
        raise ValueError(f"moment {moment!r} is not one of {', '.join(MOMENTS)}")
    return [
        rule
        for rule in ruleset.rules
        if (kb_ready or not rule.spec.knowledge)
        and not rule.spec.centre
        and rule.applies(
            moment=moment, med_type=bill.med_type, insutype=bill.insutype, hosp_lv=bill.hosp_lv,
            dise_codg=bill.dise_codg,
        )
    ]  # fmt: skip


def evaluate(
    conn: sqlite3.Connection,
    ruleset: RuleSet,
    bill: Bill,
    *,
    moment: str,
    today: date,
    kb_ready: bool = True,
    blacklist: Iterable[BlacklistMatch] = (),
) -> list[Hit]:
    """Check ``bill`` at ``moment`` (pre | in | post) on ``today``; hits in rule order, then bill order.

    ``conn`` holds ``hist_lines`` (the person's history, local or from the centre) and the
    ``kb_*`` tables (``install_knowledge``; empty tables from ``ensure_tables`` when there is no
    catalogue yet). The bill goes into the connection's TEMP ``cur_lines`` with ``setl_id``
    ``"CURRENT"`` and ``setl_date`` ``today``. With ``kb_ready=False`` the rules that read the
    knowledge base are skipped (an empty catalogue must not make every line "not in the
    catalogue"). ``off`` rules never run; ``shadow`` hits come back marked (``Hit.mode``).
    ``blacklist``: what the caller's blacklist lookup found for this bill's card, person or
    employer; each ``blacklisted`` rule that applies turns the matches of its ``list_types`` into hits.
    """
    rules = applicable(ruleset, bill, moment=moment, kb_ready=kb_ready)
    hits: list[Hit] = []
    sql_rules = [r for r in rules if r.spec.sql]
    if sql_rules and bill.lines:
        names = {line.med_list_codg: line.name for line in bill.lines if line.name}
        began = not conn.in_transaction
        if began:
            conn.execute("BEGIN")
        try:
            create_current(conn)
            conn.execute("DELETE FROM cur_lines")
            conn.executemany(_INSERT, bill.rows(today))
            found = {rule.id: run_rule(conn, rule, names=names) for rule in sql_rules}
            conn.execute("DELETE FROM cur_lines")
        except BaseException:
            if began:
                conn.rollback()
            raise
        if began:
            conn.commit()
    else:
        found = {}
    matches = list(blacklist)
    position = {line.feedetl_sn: i for i, line in enumerate(bill.lines)}

    def in_bill_order(hit: Hit) -> int:
        return min((position.get(sn, 0) for sn in hit.lines), default=-1)

    for rule in rules:
        if rule.spec.sql:
            hits.extend(sorted(found.get(rule.id, ()), key=in_bill_order))
        else:
            for match in matches:
                if match.list_type in rule.params["list_types"]:
                    hits.append(blacklist_hit(rule, match, psn_no=bill.psn_no))
    return hits
