"""The centre recomputes each settlement's benefit split and flags the ones that differ.

The agent computes the split at the desk (``protocol.benefit``) from the policy bundle and the
person's year-to-date as it knew it; the centre holds every hospital's settlements, so it can
recompute the same split with the same code and the policy it published, and flag differences —
a HIS that sent its own split, an agent that was offline and missed earlier settlements of the
person, or tampering upstream of the agent. Flags are for reviewers: nothing is refused here.

Runs after ingest (``yibao-central splits check``, and the server's background loop) over
settlements not yet audited, in rowid order; a cursor in ``settings`` makes it resumable and
each settlement audited once.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from central.policy.bundles import live_targets
from central.policy.tuf_repo import TufRepository
from central.storage.base import committed_upto
from central.storage.store import Store
from protocol.benefit import (
    BillLine,
    Policy,
    SplitInput,
    YearToDate,
    benefit_pool,
    check_split,
    compute_split,
    is_inpatient,
    load_policy,
)
from protocol.bundles import read_document
from protocol.chain import decode_body, decode_entry
from protocol.errors import BenefitNotFound, ProtocolError
from protocol.records import Settlement
from protocol.rules import Knowledge, load_knowledge

__all__ = ["audit_splits", "current_document"]

log = logging.getLogger(__name__)

_CURSOR = "split_audit_rowid"


def current_document(conn: sqlite3.Connection, repo: TufRepository, area: str, kind: str) -> Any | None:
    """The body of the newest published ``kind`` bundle for ``area`` (None if none)."""
    row = conn.execute(
        "SELECT target FROM bundles WHERE area = ? AND kind = ? AND path != '' ORDER BY seq DESC LIMIT 1",
        (area, kind),
    ).fetchone()
    if row is None:
        return None
    target = live_targets(conn).get(row[0])
    if target is None:
        return None
    with repo.target_path(target).open("rb") as f:
        return read_document(f)[1]


def _ytd(conn: sqlite3.Connection, psn_no: str, setl_time: str, rowid: int, in_pool: Any) -> YearToDate:
    """The person's year before this settlement, in its benefit pool (the agent's approximation)."""
    eligible = fund = large = admissions = 0
    for med_type, medfee, hifp, la, n in conn.execute(
        "SELECT med_type, coalesce(sum(medfee_sumamt), 0), coalesce(sum(hifp_pay), 0), "
        "coalesce(sum(coalesce(hifmi_pay, 0) + coalesce(hifob_pay, 0)), 0), count(*) FROM settlements "
        "WHERE psn_no = ? AND kind = 'setl' AND substr(setl_date, 1, 4) = ? AND rowid < ? "
        "AND setl_id NOT IN (SELECT orig_setl_id FROM settlements WHERE orig_setl_id IS NOT NULL) "
        "GROUP BY med_type",
        (psn_no, setl_time[:4], rowid),
    ):
        if in_pool(med_type):
            eligible, fund, large = eligible + medfee, fund + hifp, large + la
            admissions += n if is_inpatient(med_type) else 0
    return YearToDate(eligible=eligible, fund_paid=fund, large_amount_paid=large, admissions=admissions,
                      deductible_met=eligible)  # fmt: skip


def _split_of(rec: Settlement, policy: Policy, kb: Knowledge | None, hosp_lv: str, ytd: Any) -> Any:
    forced = {sn for hit in rec.rule_hits if hit.outcome == "self_pay" for sn in hit.lines}
    items = kb.items if kb is not None else {}
    lines = []
    for x in rec.feedetl:
        item = items.get(x.med_list_codg)
        lines.append(BillLine(x.feedetl_sn, x.det_item_fee_sumamt, item.item_class if item else None,
                              item.self_pay_ratio if item else None, x.feedetl_sn in forced))  # fmt: skip
    bill = SplitInput(insutype=rec.psn.insutype, psn_type=rec.psn.psn_type, hosp_lv=hosp_lv or "0",
                      med_type=rec.mdtrt.med_type, lines=tuple(lines))  # fmt: skip
    year = int(rec.setl_time[:4])
    pool = benefit_pool(policy, bill, year=year)

    def in_pool(med_type: str) -> bool:
        try:
            return benefit_pool(policy, replace(bill, med_type=med_type), year=year) == pool
        except BenefitNotFound:
            return False

    return compute_split(policy, bill, ytd(in_pool), year=year)


def audit_splits(store: Store, repo: TufRepository, *, batch: int = 500) -> dict[str, int]:
    """Audit settlements not yet audited; returns counts (checked, flagged, skipped)."""

    upto = committed_upto(store)

    def run(conn: sqlite3.Connection) -> dict[str, int]:
        row = conn.execute("SELECT value FROM settings WHERE key = ?", (_CURSOR,)).fetchone()
        cursor = int(row[0]) if row else 0
        counts = {"checked": 0, "flagged": 0, "skipped": 0}
        policies: dict[str, Policy | None] = {}
        kbs: dict[str, Knowledge | None] = {}
        rows = conn.execute(
            "SELECT s.rowid, s.setl_id, s.agent_id, s.fixmedins_code, s.psn_no, s.setl_time, r.raw, "
            "a.pooling_area, h.hosp_lv FROM settlements AS s "
            "JOIN records AS r ON r.agent_id = s.agent_id AND r.seq = s.seq "
            "JOIN agents AS a ON a.agent_id = s.agent_id "
            "LEFT JOIN hospitals AS h ON h.fixmedins_code = s.fixmedins_code "
            "WHERE s.rowid > ? AND s.rowid <= ? AND s.kind = 'setl' ORDER BY s.rowid LIMIT ?",
            (cursor, upto if upto is not None else 2**63 - 1, batch),
        ).fetchall()
        now = datetime.now(UTC).isoformat(timespec="seconds")
        for rowid, setl_id, agent_id, hospital, psn_no, setl_time, raw, area, hosp_lv in rows:
            cursor = rowid
            if area not in policies:
                try:
                    doc = current_document(conn, repo, area, "policy")
                    policies[area] = load_policy(doc) if doc is not None else None
                    cat = current_document(conn, repo, area, "catalogue")
                    kbs[area] = load_knowledge(cat) if cat is not None else None
                except (ProtocolError, OSError) as exc:
                    log.error("area %s: the published policy or catalogue does not load: %s", area, exc)
                    policies[area], kbs[area] = None, None
            policy = policies[area]
            try:
                rec = decode_body(decode_entry(raw))
            except ProtocolError:
                counts["skipped"] += 1
                continue
            if policy is None or not isinstance(rec, Settlement) or rec.fund_pay_sumamt is None:
                counts["skipped"] += 1
                continue
            try:
                split = _split_of(
                    rec, policy, kbs[area], hosp_lv or "",
                    lambda in_pool, p=psn_no, t=setl_time, r=rowid: _ytd(conn, p, t, r, in_pool),
                )  # fmt: skip
            except ProtocolError as exc:
                counts["skipped"] += 1
                log.info("settlement %s: no split to compare (%s)", setl_id, exc.code)
                continue
            counts["checked"] += 1
            differences = check_split(rec, split, account_known=False)
            if differences:
                counts["flagged"] += 1
                conn.execute(
                    "INSERT OR REPLACE INTO split_flags "
                    "(setl_id, agent_id, fixmedins_code, checked_at, differences) VALUES (?, ?, ?, ?, ?)",
                    (setl_id, agent_id, hospital, now, json.dumps(differences, ensure_ascii=False)),
                )
        conn.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (_CURSOR, str(cursor)),
        )
        return counts

    return store.write(run)
