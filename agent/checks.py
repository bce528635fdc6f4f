"""The rule library and the benefit split at the desk: prompts for doctors, control for cashiers.

The rules, the knowledge base and the benefit parameters arrive as signed bundles (``policy.db``);
the evaluation code is ``protocol.rules`` and ``protocol.benefit`` — the same the centre runs.
This module feeds them: the person's history from this hospital (``hist_lines`` in the outbox
database, written with each settlement) merged with every other hospital's from the centre
(``agent.history``, within a few hundred milliseconds or not at all), a bill built from the
request, and then it acts on the hits the way each rule says.

Evaluation happens on a private in-memory SQLite connection holding the knowledge base tables
(reinstalled when a new catalogue bundle arrives) and, per request, the person's history — a
few hundred rows at most, so copying them is cheaper than attaching databases. One request at a
time uses the connection (a lock); the work is well under a millisecond.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgspec

from protocol.benefit import (
    BillLine,
    Policy,
    SplitInput,
    YearToDate,
    benefit_pool,
    compute_split,
    is_inpatient,
    load_policy,
)
from protocol.errors import BenefitNotFound, ProtocolError
from protocol.records import RuleHit, Settlement, check_settlement
from protocol.rules import (
    HIST_COLUMNS,
    HISTORY_INSERT,
    Bill,
    Hit,
    Knowledge,
    Line,
    Rule,
    RuleSet,
    bill_from_settlement,
    ensure_tables,
    evaluate,
    install_knowledge,
    load_knowledge,
    load_ruleset,
)

from .errors import AgentError
from .history import CentralHistory, RemoteHistory
from .policy_store import PolicyStore

__all__ = ["DeskChecks", "DeskOutcome", "RuleRefused"]

log = logging.getLogger("yibao.agent.checks")

_DRUG_TYPES = ("101", "102", "103", "104")


_SETL_ID, _FEEDETL_SN = HIST_COLUMNS.index("setl_id"), HIST_COLUMNS.index("feedetl_sn")


@dataclass(frozen=True)
class _Bundles:
    rules: RuleSet | None
    knowledge: Knowledge | None
    benefits: Policy | None


class RuleRefused(AgentError):
    """An enforce-mode rule refuses the settlement; ``details`` say which rule, which lines and why."""

    code = "rule_refused"
    http_status = 422


@dataclass
class DeskOutcome:
    hits: list[Hit] = field(default_factory=list)
    recorded: list[RuleHit] = field(default_factory=list)
    self_pay_lines: set[str] = field(default_factory=set)
    split: dict[str, Any] | None = None
    cross_hospital: bool = False
    missing: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "hits": [
                h.to_dict() | {"outcome": r.outcome} for h, r in zip(self.hits, self.recorded, strict=True)
            ],
            "self_pay_lines": sorted(self.self_pay_lines),
            "split": self.split,
            "cross_hospital": self.cross_hospital,
            "history_missing": self.missing,
        }


class DeskChecks:
    def __init__(
        self,
        db_path: Path,
        policy: PolicyStore | None,
        history: CentralHistory | None,
        *,
        hosp_lv: str = "",
        history_days: int = 90,
    ) -> None:
        self.policy = policy
        self.history = history
        self.hosp_lv = hosp_lv
        self.history_days = history_days
        self._local = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, check_same_thread=False)
        self._conn = sqlite3.connect(":memory:", check_same_thread=False, cached_statements=512)
        ensure_tables(self._conn)
        self._lock = threading.Lock()
        self._seqs: dict[str, int] = {}
        self._ruleset: RuleSet | None = None
        self._knowledge: Knowledge | None = None
        self._benefits: Policy | None = None
        #: Bundles held in policy.db that the checks could not load (kind → alarm): shown in /v1/status.
        self.alarms: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        self._local.close()
        self._conn.close()

    # ---- bundles -----------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Pick up newer rules / catalogue / policy bundles; a bad one keeps the last good."""
        if self.policy is None:
            return
        for kind, load in (("rules", load_ruleset), ("catalogue", load_knowledge), ("policy", load_policy)):
            seq = self.policy.held_seq(kind)
            if seq == self._seqs.get(kind, 0):
                continue
            try:
                value = load(self.policy.document(kind))
            except ProtocolError as exc:
                log.error(
                    "the %s bundle seq %d does not load (%s); keeping the previous one", kind, seq, exc.code
                )
                self._seqs[kind] = seq
                self.alarms[kind] = {
                    "code": "checks_bundle_unusable",
                    "message": f"the {kind} bundle seq {seq} does not load ({exc.code}); the checks keep the "
                    "previous one: ask the central operators to publish a corrected one",
                }
                continue
            self.alarms.pop(kind, None)
            if kind == "rules":
                self._ruleset = value
            elif kind == "catalogue":
                install_knowledge(self._conn, value)
                self._knowledge = value
            else:
                self._benefits = value
            self._seqs[kind] = seq

    def _bundles(self) -> _Bundles:
        """The bundles in force for one request: refreshed once, then passed along, never re-read."""
        with self._lock:
            self._refresh()
            return _Bundles(self._ruleset, self._knowledge, self._benefits)

    # ---- history -----------------------------------------------------------------------------

    def _load_history(self, psn_no: str, since: str, remote: RemoteHistory, exclude: str | None) -> None:
        conn = self._conn
        conn.execute("DELETE FROM hist_lines")
        rows = self._local.execute(
            f"SELECT {', '.join(HIST_COLUMNS)} FROM hist_lines WHERE psn_no = ? AND setl_date >= ?",
            (psn_no, since),
        ).fetchall()
        seen = {(r[_SETL_ID], r[_FEEDETL_SN]) for r in rows}
        for line in remote.lines:
            key = (line.get("setl_id"), line.get("feedetl_sn"))
            if key in seen:
                continue
            seen.add(key)
            row = {**line, "psn_no": psn_no}
            rows.append(tuple(row.get(c) for c in HIST_COLUMNS))
        if exclude:
            rows = [r for r in rows if r[_SETL_ID] != exclude]
        conn.executemany(HISTORY_INSERT, rows)

    async def _remote(self, psn_no: str) -> RemoteHistory:
        if self.history is None:
            return RemoteHistory(missing="no central collector configured")
        return await self.history.fetch(psn_no, self.history_days)

    # ---- pre-event ---------------------------------------------------------------------------

    async def analyse(
        self, bill: Bill, moment: str, today: dt.date | None = None
    ) -> tuple[list[Hit], RemoteHistory]:
        """Every hit of the rules in force for ``bill`` at ``moment`` (pre / in) over the merged history,
        shadow ones included, and how the cross-hospital history went: the doctor's prompts and the
        national 3101/3102 analysis are this one evaluation."""
        bundles = self._bundles()
        remote = await self._remote(bill.psn_no)
        today = today or dt.date.today()
        hits = await asyncio.to_thread(self._evaluate, bundles, bill, remote, moment, today, None)
        return hits, remote

    def rule(self, rule_id: str) -> Rule | None:
        """The rule in force with this id (None when unknown or no rules bundle is held)."""
        rules = self._bundles().rules
        return rules.get(rule_id) if rules is not None else None

    async def prescription(self, bill: Bill, today: dt.date | None = None) -> dict[str, Any]:
        """Prompts for a doctor: every rule that applies before the fact, shadow ones marked."""
        hits, remote = await self.analyse(bill, "pre", today)
        return {
            "prompts": [h.to_dict() | {"shadow": h.shadow} for h in hits],
            "cross_hospital": remote.ok,
            "history_missing": remote.missing,
            "local_only": not remote.ok,
        }

    def _evaluate(
        self,
        bundles: _Bundles,
        bill: Bill,
        remote: RemoteHistory,
        moment: str,
        today: dt.date,
        exclude: str | None,
    ) -> list[Hit]:
        if bundles.rules is None:
            return []
        with self._lock:
            since = (today - dt.timedelta(days=self.history_days)).isoformat()
            self._load_history(bill.psn_no, since, remote, exclude)
            return evaluate(
                self._conn, bundles.rules, bill, moment=moment, today=today,
                kb_ready=bundles.knowledge is not None,
            )  # fmt: skip

    async def medications(self, psn_no: str, days: int) -> dict[str, Any]:
        remote = await self._remote(psn_no)
        since = (dt.date.today() - dt.timedelta(days=days)).isoformat()

        def read() -> list[dict[str, Any]]:
            with self._lock:
                self._load_history(psn_no, since, remote, None)
                cur = self._conn.execute(
                    f"SELECT {', '.join(HIST_COLUMNS)} FROM hist_lines WHERE setl_date >= ? "
                    f"AND list_type IN ({', '.join('?' * len(_DRUG_TYPES))}) "
                    "ORDER BY setl_date DESC, setl_id",
                    (since, *_DRUG_TYPES),
                )
                out = []
                for row in cur:
                    item = dict(zip(HIST_COLUMNS, row, strict=True))
                    item.pop("psn_no", None)
                    if item.get("days"):
                        start = dt.date.fromisoformat(item["setl_date"])
                        item["supply_until"] = (start + dt.timedelta(days=int(item["days"]))).isoformat()
                    out.append(item)
                return out

        items = await asyncio.to_thread(read)
        return {
            "days": days,
            "medications": items,
            "cross_hospital": remote.ok,
            "history_missing": remote.missing,
        }

    # ---- in-event ----------------------------------------------------------------------------

    async def settle(
        self, record: Settlement, *, today: dt.date | None = None, acct_balance: int | None = None
    ) -> DeskOutcome | None:
        """Run the in-event rules and the split on ``record`` (changed in place), or raise ``RuleRefused``.

        None when no rules and no policy bundle have arrived yet: nothing to check, nothing to compute.
        """
        bundles = self._bundles()
        if bundles.rules is None and bundles.benefits is None:
            return None
        today = today or dt.date.today()
        remote = await self._remote(record.psn.psn_no)
        bill = bill_from_settlement(record, self.hosp_lv)
        hits = await asyncio.to_thread(self._evaluate, bundles, bill, remote, "in", today, record.setl_id)
        outcome = DeskOutcome(hits=hits, cross_hospital=remote.ok, missing=remote.missing)
        # Signed: intake accepts overrides only from a doctor's own token and records that doctor's code.
        overrides = {o.rule_id: o for o in record.overrides}
        refused = []
        for hit in hits:
            if hit.mode != "enforce":
                result = "shadow"
            elif hit.overridable and hit.rule_id in overrides:
                result = "overridden"
            elif hit.action == "refuse":
                result = "refused"
                refused.append(hit)
            elif hit.action == "self_pay":
                result = "self_pay"
                outcome.self_pay_lines.update(hit.lines)
            else:
                result = "prompted"
            outcome.recorded.append(
                RuleHit(
                    action=hit.action, lines=list(hit.lines), mode=hit.mode, outcome=result,
                    rule_id=hit.rule_id, rule_version=hit.rule_version,
                )
            )  # fmt: skip
        unknown = sorted(set(overrides) - {h.rule_id for h in hits if h.overridable})
        if unknown:
            log.info("overrides for rules that did not fire or allow none: %s", ", ".join(unknown))
        if refused:
            raise RuleRefused(
                "the settlement breaks a rule that refuses it: " + "; ".join(h.message for h in refused)
                + (" — where the rule allows it, the doctor may override it: the settlement sent with the "
                   "doctor's own token, with overrides [{rule_id, reason}]"
                   if any(h.overridable for h in refused) else ""),
                details=[h.to_dict() for h in refused],
            )  # fmt: skip
        record.rule_hits = outcome.recorded
        outcome.split = await asyncio.to_thread(
            self._split, bundles, record, remote, outcome.self_pay_lines, today, acct_balance
        )
        return outcome

    def _split(
        self,
        bundles: _Bundles,
        record: Settlement,
        remote: RemoteHistory,
        forced: set[str],
        today: dt.date,
        acct_balance: int | None,
    ) -> dict[str, Any] | None:
        benefits, kb = bundles.benefits, bundles.knowledge
        if benefits is None or record.fund_pay_sumamt is not None:
            return None  # no policy bundle yet, or the HIS computed the split itself
        items = kb.items if kb is not None else {}
        lines = []
        classes: dict[str, str | None] = {}
        for x in record.feedetl:
            item = items.get(x.med_list_codg)
            cls = item.item_class if item is not None else None
            classes[x.feedetl_sn] = cls
            ratio = item.self_pay_ratio if item is not None else None
            lines.append(BillLine(x.feedetl_sn, x.det_item_fee_sumamt, cls, ratio, x.feedetl_sn in forced))
        bill = SplitInput(
            insutype=record.psn.insutype, psn_type=record.psn.psn_type, hosp_lv=self.hosp_lv or "0",
            med_type=record.mdtrt.med_type, lines=tuple(lines),
        )  # fmt: skip
        try:
            pool = benefit_pool(benefits, bill, year=today.year)
        except BenefitNotFound as exc:
            log.info("no benefit row applies: %s", exc.message)
            return {"computed": False, "reason": exc.message}

        def in_pool(med_type: str) -> bool:
            try:
                return benefit_pool(benefits, replace(bill, med_type=med_type), year=today.year) == pool
            except BenefitNotFound:
                return False

        ytd = self._year_to_date(record.psn.psn_no, today, remote, in_pool)
        try:
            split = compute_split(benefits, bill, ytd, year=today.year, acct_balance=acct_balance)
        except BenefitNotFound as exc:
            log.info("no benefit row applies: %s", exc.message)
            return {"computed": False, "reason": exc.message}
        for name, value in split.amounts().items():
            setattr(record, name, value)
        for x in record.feedetl:
            own = split.line_self_pay.get(x.feedetl_sn)
            if own:
                if x.feedetl_sn in forced or classes[x.feedetl_sn] in (None, "C"):
                    x.fulamt_ownpay_amt = own
                else:
                    x.preselfpay_amt = own
        check_settlement(record)
        return {
            "computed": True,
            "amounts": split.amounts(),
            "explanation": list(split.explanation),
            "ytd_from_centre": remote.ytd is not None,
            "ytd_partial": remote.ytd is None,
        }

    def _year_to_date(
        self, psn_no: str, today: dt.date, remote: RemoteHistory, in_pool: Callable[[str], bool]
    ) -> YearToDate:
        """The person's year so far in the bill's benefit pool: the centre's totals plus what this agent
        settled and has not yet uploaded; with no answer from the centre, this hospital's only
        (``ytd_partial``). ``in_pool(med_type)`` says whether a medical type shares the bill's pool.

        Approximations shared with the centre's audit (``central.monitoring.split_audit``), so the two agree:
        eligible ≈ the pool's total cost this year, and it counts towards a per-year deductible;
        pooled fund paid ≈ ``hifp_pay``.
        """
        eligible = fund = large = admissions = 0
        acked = 0
        if remote.ytd is not None:
            for med_type, t in (remote.ytd.get("by_med_type") or {}).items():
                if in_pool(med_type):
                    eligible += int(t.get("medfee_sumamt") or 0)
                    fund += int(t.get("hifp_pay") or 0)
                    large += int(t.get("large_amount_paid") or 0)
                    admissions += int(t.get("settlements") or 0) if is_inpatient(med_type) else 0
            row = self._local.execute("SELECT acked_seq FROM chain WHERE id=1").fetchone()
            acked = row[0] if row else 0
        local = self._local.execute(
            "SELECT h.med_type, s.medfee_sumamt, coalesce(s.fund_pay_sumamt, 0) FROM settlements AS s "
            "JOIN (SELECT DISTINCT setl_id, med_type FROM hist_lines "
            "WHERE psn_no = ? AND setl_date >= ?) AS h "
            "ON h.setl_id = s.setl_id WHERE s.reversal_setl_id IS NULL AND s.seq > ?",
            (psn_no, f"{today.year}-01-01", acked),
        ).fetchall()
        for med_type, medfee, paid in local:
            if in_pool(med_type):
                eligible += medfee
                fund += paid
                admissions += 1 if is_inpatient(med_type) else 0
        return YearToDate(
            eligible=eligible, fund_paid=fund, large_amount_paid=large, admissions=admissions,
            deductible_met=eligible,
        )  # fmt: skip


def bill_from_request(body: bytes, fixmedins_code: str = "", hosp_lv: str = "") -> Bill:
    """The pre-event request: ``{"psn": {...}, "mdtrt": {...}, "lines": [...]}`` → ``Bill``."""
    try:
        src = msgspec.json.decode(body, type=_PrescriptionIn)
    except msgspec.MsgspecError as exc:
        from protocol.errors import ValidationFailed

        raise ValidationFailed(
            "the prescription does not match the schema; correct the listed field",
            details=[{"field": "$", "message": str(exc)}],
        ) from None
    return Bill(
        psn_no=src.psn.psn_no, gend=src.psn.gend, brdy=src.psn.brdy, insutype=src.psn.insutype,
        psn_type=src.psn.psn_type, med_type=src.mdtrt.med_type, dise_codg=src.mdtrt.dise_codg,
        begntime=src.mdtrt.begntime, fixmedins_code=src.fixmedins_code or fixmedins_code,
        hosp_lv=src.hosp_lv or hosp_lv,
        dr_codg=src.mdtrt.dr_codg, dept_codg=src.mdtrt.dept_codg,
        lines=tuple(
            Line(feedetl_sn=x.feedetl_sn, med_list_codg=x.med_list_codg, cnt=x.cnt, pric=x.pric,
                 list_type=x.list_type, days=x.days, name=x.medins_list_name)
            for x in src.lines
        ),
    )  # fmt: skip


class _PsnPre(msgspec.Struct, forbid_unknown_fields=False):
    psn_no: str
    gend: str
    brdy: str
    insutype: str = "310"
    psn_type: str = "11"


class _MdtrtPre(msgspec.Struct, forbid_unknown_fields=False):
    med_type: str
    dise_codg: str
    begntime: str
    dr_codg: str | None = None
    dept_codg: str | None = None


class _LinePre(msgspec.Struct, forbid_unknown_fields=False):
    feedetl_sn: str
    med_list_codg: str
    cnt: str
    pric: str = "0"
    list_type: str = ""
    days: int | None = None
    medins_list_name: str = ""


class _PrescriptionIn(msgspec.Struct, forbid_unknown_fields=True):
    psn: _PsnPre
    mdtrt: _MdtrtPre
    lines: list[_LinePre]
    fixmedins_code: str = ""
    hosp_lv: str = ""
