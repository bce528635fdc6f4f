"""Schema and numbered migrations of ``central.db``.

Rules:

1. ``MIGRATIONS`` only grows; a shipped migration is never edited or reordered.
2. Each migration runs once, inside one transaction together with the row that records
   it in ``_migrations``; a crash mid-way leaves the database at the previous version.
3. ``PRAGMA user_version`` mirrors the number of applied migrations so tools can read it
   without knowing our tables; a database newer than this code is refused, not guessed at.

Money columns are INTEGER fen; STRICT tables make SQLite refuse anything else.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime

import sqlite_utils

from central.errors import SchemaTooNew
from protocol.chain import decode_body, decode_entry
from protocol.errors import ProtocolError
from protocol.records import Settlement
from protocol.rules import history_rows_from_settlement

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate", "schema_version"]

log = logging.getLogger(__name__)


def _m001_initial(db: sqlite_utils.Database) -> None:
    db.create_table(
        "agents",
        {
            "agent_id": str,
            "fixmedins_code": str,
            "public_key": bytes,
            "key_fingerprint": str,
            "agent_version": str,
            "enrolled_at": str,
            "acked_seq": int,
            "head_hash": bytes,
            "last_seen": str,
            "revoked_at": str,
        },
        pk="agent_id",
        not_null=["fixmedins_code", "public_key", "key_fingerprint", "enrolled_at", "acked_seq", "head_hash"],
        defaults={"acked_seq": 0},
        strict=True,
    )
    db.create_table(
        "enrol_tokens",
        {
            "token_hash": str,
            "fixmedins_code": str,
            "created_at": str,
            "expires_at": str,
            "used_at": str,
            "agent_id": str,
        },
        pk="token_hash",
        not_null=["fixmedins_code", "created_at", "expires_at"],
        strict=True,
    )
    # The chain as received: every entry, valid or not, so the chain stays continuous.
    db.create_table(
        "records",
        {
            "agent_id": str,
            "seq": int,
            "hash": bytes,
            "kind": str,
            "status": str,  # ok | rejected | lost
            "reject_code": str,
            "reject_message": str,
            "raw": bytes,
            "received_at": str,
        },
        pk=("agent_id", "seq"),
        not_null=["hash", "status", "raw", "received_at"],
        strict=True,
    )
    db.create_table(
        "settlements",
        {
            "setl_id": str,
            "agent_id": str,
            "seq": int,
            "kind": str,
            "his_setl_no": str,
            "fixmedins_code": str,
            "psn_no": str,
            "mdtrt_id": str,
            "med_type": str,
            "setl_time": str,
            "setl_date": str,
            "medfee_sumamt": int,
            "fund_pay_sumamt": int,
            "acct_pay": int,
            "psn_cash_pay": int,
            "orig_setl_id": str,
        },
        pk="setl_id",
        not_null=["agent_id", "seq", "kind", "fixmedins_code", "setl_time", "setl_date", "medfee_sumamt"],
        strict=True,
    )
    db["settlements"].create_index(["fixmedins_code", "setl_date"])
    db["settlements"].create_index(["agent_id", "seq"], unique=True)
    db.create_table(
        "security_events",
        {
            "id": int,
            "time": str,
            "agent_id": str,
            "code": str,
            "message": str,
            "remote": str,
        },
        pk="id",
        not_null=["time", "code", "message"],
        strict=True,
    )
    db["security_events"].create_index(["agent_id", "time"])


def _m002_security_event_repeats(db: sqlite_utils.Database) -> None:
    """Repeats of the same event from the same source fold into one row (bounded growth)."""
    db.execute("ALTER TABLE security_events ADD COLUMN repeats INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE security_events ADD COLUMN last_time TEXT")


def _m003_identification(db: sqlite_utils.Database) -> None:
    """How each person was identified at the desk, and each e-voucher's first use.

    A voucher is single-use across hospitals: its nonce is held here with the hospital that
    used it first; the same nonce from another hospital is refused (``evoucher_replayed``).
    """
    for column in ("mdtrt_cert_type", "mdtrt_cert_no", "card_sn"):
        db.execute(f"ALTER TABLE settlements ADD COLUMN {column} TEXT")
    db.create_table(
        "evoucher_uses",
        {"nonce": str, "fixmedins_code": str, "setl_id": str, "agent_id": str, "seq": int, "used_at": str},
        pk="nonce",
        not_null=["fixmedins_code", "setl_id", "agent_id", "seq", "used_at"],
        strict=True,
    )


def _area_of(hospital: str) -> str | None:
    """``H`` + 4 digits of the city + ``00`` (``H37021100001`` → ``370200``); None if it does not fit."""
    if len(hospital) >= 5 and hospital[0] == "H" and hospital[1:5].isascii() and hospital[1:5].isdigit():
        return hospital[1:5] + "00"
    return None


def _m004_policy(db: sqlite_utils.Database) -> None:
    """Policy bundles (issue 4): the blacklist, the bundle log, the operators' audit log, agent reports.

    - ``settings``: centre-wide values (``default_area``, set by ``init --area``).
    - ``blacklist``: the current entries per pooling area, each with the bundle seq that added it.
    - ``bundles``: every bundle published, per (area, kind, seq); the TUF targets metadata is a
      function of this table (newest full + later deltas per area and kind), so an interrupted
      publish is completed by the next one.
    - ``audit_log``: who did what, when, why, and the bundle it produced.
    - ``agent_reports``: the newest signed policy report of each agent.
    - ``agents.pooling_area`` / ``enrol_tokens.pooling_area``: the area an agent obeys.
    """
    db.create_table("settings", {"key": str, "value": str}, pk="key", not_null=["value"], strict=True)
    db.create_table(
        "blacklist",
        {
            "area": str,
            "list_type": str,
            "id": str,
            "reason": str,
            "source": str,
            "effective_at": str,
            "added_seq": int,
            "added_at": str,
        },
        pk=("area", "list_type", "id"),
        not_null=["reason", "source", "effective_at", "added_seq", "added_at"],
        strict=True,
    )
    db.create_table(
        "bundles",
        {
            "area": str,
            "kind": str,
            "seq": int,
            "base_seq": int,  # NULL: a full bundle
            "target": str,  # TUF target name (protocol.bundles.target_name)
            "path": str,  # file under tuf/targets/ (hash-prefixed, as TUF clients fetch it)
            "length": int,
            "sha256": str,
            "entries": int,  # blacklist: entries (ops) in the file; other kinds: items in the document
            "created": str,
            "operator": str,
        },
        pk=("area", "kind", "seq"),
        not_null=["target", "path", "length", "sha256", "entries", "created", "operator"],
        strict=True,
    )
    db.create_table(
        "audit_log",
        {
            "id": int,
            "at": str,
            "operator": str,
            "action": str,
            "reason": str,
            "detail": str,  # JSON
            "area": str,
            "kind": str,
            "seq": int,
            "target": str,
        },
        pk="id",
        not_null=["at", "operator", "action", "reason", "detail"],
        strict=True,
    )
    db.create_table(
        "agent_reports",
        {"agent_id": str, "reported_at": str, "received_at": str, "versions": str, "problems": str},
        pk="agent_id",
        not_null=["reported_at", "received_at", "versions", "problems"],
        strict=True,
    )
    db.execute("ALTER TABLE agents ADD COLUMN pooling_area TEXT")
    db.execute("ALTER TABLE enrol_tokens ADD COLUMN pooling_area TEXT")
    for agent_id, hospital in db.execute("SELECT agent_id, fixmedins_code FROM agents").fetchall():
        db.execute("UPDATE agents SET pooling_area = ? WHERE agent_id = ?", (_area_of(hospital), agent_id))


#: Migration 5's ``hist_lines`` columns, frozen: later migrations add columns (7: ``fee_date``) which the
#: protocol's row builder then fills; the backfill here inserts only the columns this migration created.
_M005_COLUMNS = (
    "psn_no, fixmedins_code, setl_id, setl_date, begn_date, med_type, dise_codg, dr_codg, dept_codg, "
    "hosp_lv, feedetl_sn, med_list_codg, list_type, cnt, pric_fen, amount_fen, days"
)
_M005_INSERT = f"INSERT INTO hist_lines ({_M005_COLUMNS}) VALUES ({', '.join('?' * 17)})"


def _m005_person_history(db: sqlite_utils.Database) -> None:
    """Cross-hospital history of a person (issue 5), answered to enrolled agents.

    - ``hist_lines``: one row per fee-detail line of a held settlement, the columns of
      ``docs/RULES.md`` ("Tables"; ``central.intake.lines``). A reversal deletes its original's lines
      (same setl_id and hospital), so the table holds unreversed settlements only. Indexes
      (psn_no, setl_date) for the history query and unique (setl_id, feedetl_sn), which serves
      the reversal's delete and makes a second copy of a line impossible.
    - ``settlements``: the fund split's parts (``hifp_pay``, ``hifmi_pay``, ``hifob_pay``) for the
      year-to-date totals; indexes (psn_no, setl_date) and, for reversals only, (orig_setl_id).
    - ``hospitals``: what the centre knows of each hospital (grade ``hosp_lv`` "0"-"3", name,
      admdvs); set by ``yibao-central hospitals set``. Unknown hospitals' lines carry NULL.
    - ``person_access_log``: every answered history lookup (who, for how many days, how many
      lines) with the SHA-256 of the psn_no, never the number itself.

    Backfill: the lines of every settlement held ``ok``, from the raw chain entries, and the
    split parts of its settlements row; then the reversed settlements' lines are deleted.
    """
    for column in ("hifp_pay", "hifmi_pay", "hifob_pay"):
        db.execute(f"ALTER TABLE settlements ADD COLUMN {column} INTEGER")
    db.execute("CREATE INDEX settlements_psn_no_setl_date ON settlements (psn_no, setl_date)")
    db.execute(
        "CREATE INDEX settlements_orig_setl_id ON settlements (orig_setl_id) WHERE orig_setl_id IS NOT NULL"
    )
    db.create_table(
        "hospitals",
        {"fixmedins_code": str, "hosp_lv": str, "name": str, "admdvs": str, "updated_at": str},
        pk="fixmedins_code",
        not_null=["updated_at"],
        strict=True,
    )
    db.execute(
        "CREATE TABLE hist_lines ("
        "psn_no TEXT NOT NULL, fixmedins_code TEXT NOT NULL, setl_id TEXT NOT NULL, setl_date TEXT NOT NULL, "
        "begn_date TEXT, med_type TEXT, dise_codg TEXT, dr_codg TEXT, dept_codg TEXT, hosp_lv TEXT, "
        "feedetl_sn TEXT NOT NULL, med_list_codg TEXT NOT NULL, list_type TEXT NOT NULL, cnt REAL NOT NULL, "
        "pric_fen INTEGER NOT NULL, amount_fen INTEGER NOT NULL, days INTEGER) STRICT"
    )
    db.create_table(
        "person_access_log",
        {
            "id": int,
            "at": str,
            "agent_id": str,
            "fixmedins_code": str,
            "psn_hash": str,  # hex SHA-256 of the psn_no
            "days": int,
            "rows": int,
        },
        pk="id",
        not_null=["at", "agent_id", "fixmedins_code", "psn_hash", "days", "rows"],
        strict=True,
    )
    db.execute("CREATE INDEX person_access_log_psn_hash ON person_access_log (psn_hash, at)")
    db.execute("CREATE INDEX person_access_log_agent_id ON person_access_log (agent_id, at)")

    held = db.execute(
        "SELECT r.agent_id, r.seq, r.raw, s.fixmedins_code, s.setl_date FROM records AS r "
        "JOIN settlements AS s ON s.agent_id = r.agent_id AND s.seq = r.seq "
        "WHERE r.status = 'ok' AND r.kind = 'setl' AND s.kind = 'setl' ORDER BY r.agent_id, r.seq"
    )
    lines: list[tuple] = []
    splits: list[tuple] = []
    skipped = 0
    while chunk := held.fetchmany(1000):
        for agent_id, seq, raw, _hospital, setl_date in chunk:
            try:
                rec = decode_body(decode_entry(raw))
            except ProtocolError:  # stored ok by an older, laxer centre: keep it, but not its lines
                log.warning("migration 5: record %s/%s no longer decodes; its lines are not backfilled",
                            agent_id, seq)  # fmt: skip
                skipped += 1
                continue
            if not isinstance(rec, Settlement):
                continue
            lines.extend(row[:17] for row in history_rows_from_settlement(rec, None, setl_date=setl_date))
            if (rec.hifp_pay, rec.hifmi_pay, rec.hifob_pay) != (None, None, None):
                splits.append((rec.hifp_pay, rec.hifmi_pay, rec.hifob_pay, agent_id, seq))
        if len(lines) >= 10_000:
            db.conn.executemany(_M005_INSERT, lines)
            lines.clear()
    db.conn.executemany(_M005_INSERT, lines)
    db.conn.executemany(
        "UPDATE settlements SET hifp_pay = ?, hifmi_pay = ?, hifob_pay = ? WHERE agent_id = ? AND seq = ?",
        splits,
    )
    db.execute(
        "DELETE FROM hist_lines WHERE EXISTS (SELECT 1 FROM settlements AS r WHERE r.kind = 'revs' "
        "AND r.orig_setl_id = hist_lines.setl_id AND r.fixmedins_code = hist_lines.fixmedins_code)"
    )
    db.execute("CREATE INDEX hist_lines_psn_no_setl_date ON hist_lines (psn_no, setl_date)")
    # The rule library reads a person's history of one item through this (protocol.rules templates).
    db.execute("CREATE INDEX hist_lines_psn_item_date ON hist_lines (psn_no, med_list_codg, setl_date)")
    db.execute("CREATE UNIQUE INDEX hist_lines_setl_id_feedetl_sn ON hist_lines (setl_id, feedetl_sn)")
    if skipped:
        log.warning("migration 5: %d settlement(s) held ok no longer decode; no lines for them", skipped)


def _m006_split_flags(db: sqlite_utils.Database) -> None:
    """Settlements whose benefit split differs from the centre's recomputation
    (``central.monitoring.split_audit``)."""
    db.execute(
        "CREATE TABLE split_flags (setl_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, "
        "fixmedins_code TEXT NOT NULL, checked_at TEXT NOT NULL, differences TEXT NOT NULL) STRICT"
    )


def _m007_screening_data(db: sqlite_utils.Database) -> None:
    """What the screening engine reads beyond ``hist_lines`` (issue 6, ``docs/MONITORING.md``).

    - ``hist_visits``: one row per held, unreversed settlement with the visit and person columns the
      centre templates need, filled at ingest (a reversal deletes its original's row). Backfilled
      here from the raw chain entries.
    - ``hist_lines.fee_date``: the local date of each line's ``fee_ocur_time`` (NULL when not sent).
    - ``deaths``: dates of death imported from the civil registry.
    - ``hospitals``: coordinates, and their local-plane kilometres for distance checks.
    """
    db.execute(
        "CREATE TABLE hist_visits ("
        "setl_id TEXT PRIMARY KEY, psn_no TEXT NOT NULL, fixmedins_code TEXT NOT NULL, area TEXT, "
        "hosp_lv TEXT, setl_time TEXT NOT NULL, setl_date TEXT NOT NULL, begn_date TEXT, end_date TEXT, "
        "med_type TEXT NOT NULL, "
        "dise_codg TEXT, dise_main TEXT, dr_codg TEXT, dept_codg TEXT, ipt_days INTEGER, "
        "medfee_sumamt INTEGER NOT NULL, drug_fen INTEGER NOT NULL, gend TEXT, brdy TEXT, insutype TEXT, "
        "psn_type TEXT) STRICT"
    )
    db.execute("ALTER TABLE hist_lines ADD COLUMN fee_date TEXT")
    db.execute(
        "CREATE TABLE deaths (psn_no TEXT PRIMARY KEY, death_date TEXT NOT NULL, source TEXT NOT NULL, "
        "imported_at TEXT NOT NULL) STRICT"
    )
    for column, kind in (("lat", "REAL"), ("lon", "REAL"), ("x_km", "REAL"), ("y_km", "REAL")):
        db.execute(f"ALTER TABLE hospitals ADD COLUMN {column} {kind}")
    from central.intake.visits import backfill_visits  # the one builder of visit rows, shared with ingest

    backfill_visits(db.conn)
    db.execute("CREATE INDEX hist_visits_psn_no_setl_date ON hist_visits (psn_no, setl_date)")
    db.execute("CREATE INDEX hist_visits_hospital_setl_date ON hist_visits (fixmedins_code, setl_date)")
    db.execute("CREATE INDEX hist_visits_dr_codg_setl_date ON hist_visits (dr_codg, setl_date)")
    db.execute("CREATE INDEX hist_visits_setl_date ON hist_visits (setl_date)")


def _m008_monitoring(db: sqlite_utils.Database) -> None:
    """Suspicions, the review workflow, operators and screening runs (issue 6, ``docs/MONITORING.md``)."""
    for statement in (
        "CREATE TABLE suspicions (id INTEGER PRIMARY KEY, fact_key TEXT NOT NULL UNIQUE, "
        "rule_id TEXT NOT NULL, rule_version INTEGER NOT NULL, template TEXT NOT NULL, "
        "object_type TEXT NOT NULL, object_id TEXT NOT NULL, area TEXT NOT NULL, fixmedins_code TEXT, "
        "psn_no TEXT, setl_ids TEXT NOT NULL, "
        "lines TEXT NOT NULL, evidence TEXT NOT NULL, message TEXT NOT NULL, amount_fen INTEGER NOT NULL, "
        "score INTEGER NOT NULL, severity TEXT NOT NULL, mode TEXT NOT NULL, status TEXT NOT NULL, "
        "case_id INTEGER, first_found TEXT NOT NULL, last_found TEXT NOT NULL, "
        "times_found INTEGER NOT NULL, run_id INTEGER) STRICT",
        "CREATE INDEX suspicions_queue ON suspicions (area, status, score)",
        "CREATE INDEX suspicions_rule ON suspicions (rule_id, status)",
        "CREATE INDEX suspicions_case ON suspicions (case_id) WHERE case_id IS NOT NULL",
        "CREATE TABLE reviews (id INTEGER PRIMARY KEY, suspicion_id INTEGER NOT NULL, at TEXT NOT NULL, "
        "operator TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT NOT NULL) STRICT",
        "CREATE INDEX reviews_suspicion ON reviews (suspicion_id)",
        "CREATE TABLE cases (id INTEGER PRIMARY KEY, area TEXT NOT NULL, title TEXT NOT NULL, "
        "status TEXT NOT NULL, assignee TEXT, created_by TEXT NOT NULL, created_at TEXT NOT NULL, "
        "updated_at TEXT NOT NULL) STRICT",
        "CREATE INDEX cases_area_status ON cases (area, status)",
        "CREATE TABLE case_notes (id INTEGER PRIMARY KEY, case_id INTEGER NOT NULL, at TEXT NOT NULL, "
        "operator TEXT NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL, detail TEXT NOT NULL) STRICT",
        "CREATE INDEX case_notes_case ON case_notes (case_id)",
        "CREATE TABLE decisions (id INTEGER PRIMARY KEY, case_id INTEGER NOT NULL, at TEXT NOT NULL, "
        "operator TEXT NOT NULL, kind TEXT NOT NULL, target_type TEXT NOT NULL, target_id TEXT NOT NULL, "
        "amount_fen INTEGER, until TEXT, reason TEXT NOT NULL, status TEXT NOT NULL, bundle_area TEXT, "
        "bundle_seq INTEGER) STRICT",
        "CREATE INDEX decisions_case ON decisions (case_id)",
        "CREATE INDEX decisions_target ON decisions (target_type, target_id)",
        "CREATE TABLE operators (name TEXT PRIMARY KEY, main_area TEXT NOT NULL, areas TEXT NOT NULL, "
        "role TEXT NOT NULL, token_hash TEXT UNIQUE, created_at TEXT NOT NULL, disabled_at TEXT) STRICT",
        "CREATE TABLE screen_runs (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, started_at TEXT NOT NULL, "
        "finished_at TEXT, date_from TEXT, date_to TEXT, settlements INTEGER NOT NULL DEFAULT 0, "
        "lines INTEGER NOT NULL DEFAULT 0, hits INTEGER NOT NULL DEFAULT 0, "
        "new_suspicions INTEGER NOT NULL DEFAULT 0, detail TEXT NOT NULL DEFAULT '{}') STRICT",
        "CREATE TABLE analysis_results (run_id INTEGER NOT NULL, measure TEXT NOT NULL, by TEXT NOT NULL, "
        "object_id TEXT NOT NULL, area TEXT, visits INTEGER NOT NULL, value REAL, peer_median REAL, "
        "ratio REAL, rank INTEGER NOT NULL) STRICT",
        "CREATE INDEX analysis_results_run ON analysis_results (run_id, rank)",
    ):
        db.execute(statement)


def _m009_peer_index(db: sqlite_utils.Database) -> None:
    """Template 17's peer groups (medical type, hospital level, diagnosis category) over dates, with the cost:
    an incremental screen reads each touched group's last year from this index alone (no table rows).

    Partial (``dise_main IS NOT NULL``, which only that read states): the centre runs no ``ANALYZE``, and
    a plain index led by ``med_type`` would tempt the planner away from the person index in other
    history joins (readmission's ``h.med_type IN (…)`` took 7× longer through it)."""
    db.execute(
        "CREATE INDEX hist_visits_peer ON hist_visits "
        "(med_type, hosp_lv, substr(dise_main, 1, 3), setl_date, medfee_sumamt) WHERE dise_main IS NOT NULL"
    )


def _m010_agent_heartbeats(db: sqlite_utils.Database) -> None:
    """Each agent's newest signed heartbeat: what it had settled (seq, chain head), how old its oldest
    unsent settlement was, by its clock, and when the centre got it. Reconcile reads it to say whether
    the centre is behind the agent; the raw signed body is kept so the claim can be checked again."""
    db.execute(
        "CREATE TABLE agent_heartbeats (agent_id TEXT PRIMARY KEY REFERENCES agents(agent_id), "
        "last_seq INTEGER NOT NULL, head TEXT NOT NULL, acked_seq INTEGER NOT NULL, "
        "oldest_pending_s REAL, agent_at TEXT NOT NULL, received_at TEXT NOT NULL, "
        "body BLOB NOT NULL) STRICT"
    )


def _m011_change_requests(db: sqlite_utils.Database) -> None:
    """Maker-checker (``central.policy.changes``): a blacklist change or a document publish is held here,
    exactly
    as it will be published (the validated document, or every blacklist entry in ``change_entries``, and
    the digest of both), until enough other operators approve it; ``base`` is what it was proposed
    against, checked again at approval. ``change_approvals`` holds one row per checker."""
    for statement in (
        "CREATE TABLE change_requests (id INTEGER PRIMARY KEY, action TEXT NOT NULL, kind TEXT NOT NULL, "
        "area TEXT NOT NULL, digest TEXT NOT NULL, document TEXT, what TEXT NOT NULL, "
        "entries INTEGER NOT NULL, "
        "base TEXT NOT NULL, maker TEXT NOT NULL, reason TEXT NOT NULL, created_at TEXT NOT NULL, "
        "status TEXT NOT NULL, decided_by TEXT, decided_at TEXT, decision_reason TEXT, bundle_seq INTEGER) "
        "STRICT",
        "CREATE INDEX change_requests_status ON change_requests (status, area)",
        "CREATE TABLE change_entries (change_id INTEGER NOT NULL REFERENCES change_requests(id), "
        "line INTEGER NOT NULL, op TEXT NOT NULL, list_type TEXT NOT NULL, id TEXT NOT NULL, reason TEXT, "
        "source TEXT, effective_at TEXT, PRIMARY KEY (change_id, line)) STRICT",
        "CREATE TABLE change_approvals (change_id INTEGER NOT NULL REFERENCES change_requests(id), "
        "operator TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (change_id, operator)) STRICT",
    ):
        db.execute(statement)


def _m012_fact_anchor(db: sqlite_utils.Database) -> None:
    """Suspicions keyed by the settlement judged, not by the evidence (issue 16,
    ``central.monitoring.suspicions``):
    ``anchor`` (the settlement the fact is about; NULL for a fact about an object over a period),
    ``anchor_date`` (its ``setl_date``, or the period's end: a full screen retracts what it judged by
    date), ``period``, ``category`` (the rule's fraud category), ``holds`` (0 once a later screen no
    longer finds the fact) and ``retracted_at``. Existing suspicions get their anchor (the settlement
    their evidence does not name; an impersonation pair both) and the new fact key; two held facts that
    the new key makes one (a readmission found again with more evidence) keep the older, the later
    stops holding (``no_longer_holds`` if unreviewed), nothing is deleted."""
    import hashlib
    import json

    for statement in (
        "ALTER TABLE suspicions ADD COLUMN anchor TEXT",
        "ALTER TABLE suspicions ADD COLUMN anchor_date TEXT",
        "ALTER TABLE suspicions ADD COLUMN period TEXT",
        "ALTER TABLE suspicions ADD COLUMN category TEXT",
        "ALTER TABLE suspicions ADD COLUMN holds INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE suspicions ADD COLUMN retracted_at TEXT",
    ):
        db.execute(statement)
    from protocol.rules import DEFAULT_CATEGORIES

    rows = db.execute(
        "SELECT id, fact_key, rule_id, rule_version, template, object_type, object_id, setl_ids, lines, "
        "evidence, status FROM suspicions ORDER BY id"
    ).fetchall()
    now = datetime.now(UTC).isoformat(timespec="seconds")
    taken = {r[1] for r in rows}
    for sid, key, rule_id, version, template, otype, oid, setl_ids, lines, evidence, _status in rows:
        setl = json.loads(setl_ids)
        ev = json.loads(evidence)
        named = {e.get("setl_id") for e in ev if isinstance(e, dict)}
        category = DEFAULT_CATEGORIES.get(template)
        period = anchor = anchor_date = None
        if template == "peer_outlier":
            period = anchor_date = (ev[0] if ev and isinstance(ev[0], dict) else {}).get("window_to")
        else:
            own = [x for x in setl if x not in named] or setl[:1]
            pair = template == "impersonation_distance" and len(setl) == 2
            anchor = "|".join(sorted(setl[:2])) if pair else (own[0] if own else None)
            first = (anchor or "").split("|")[0]
            got = db.execute("SELECT setl_date FROM hist_visits WHERE setl_id = ?", (first,)).fetchone()
            anchor_date = got[0] if got else None
            if template == "frequent_visits":
                dates = [e["setl_date"] for e in ev if isinstance(e, dict) and e.get("setl_date")]
                dates += [anchor_date] if anchor_date else []
                period = f"run from {min(dates)}" if dates else None
        new_key = key
        if period is None and anchor is not None:
            material = [rule_id, version, otype, oid, {"anchor": anchor}, sorted(set(json.loads(lines)))]
            blob = json.dumps(material, ensure_ascii=False, separators=(",", ":"))
            new_key = hashlib.sha256(blob.encode("utf-8")).hexdigest()
        merged = new_key != key and new_key in taken
        if merged:  # the same fact held twice under the old key: the older one is it
            db.execute(
                "UPDATE suspicions SET anchor = ?, anchor_date = ?, period = ?, category = ?, holds = 0, "
                "retracted_at = ?, status = CASE WHEN status IN ('new', 'shadow') THEN 'no_longer_holds' "
                "ELSE status END WHERE id = ?",
                (anchor, anchor_date, period, category, now, sid),
            )
            continue
        taken.discard(key)
        taken.add(new_key)
        db.execute(
            "UPDATE suspicions SET fact_key = ?, anchor = ?, anchor_date = ?, period = ?, category = ? "
            "WHERE id = ?",
            (new_key, anchor, anchor_date, period, category, sid),
        )
    for statement in (
        "CREATE INDEX suspicions_anchor ON suspicions (anchor) WHERE anchor IS NOT NULL",
        "CREATE INDEX suspicions_judged ON suspicions (rule_id, area, anchor_date)",
        "CREATE INDEX suspicions_object ON suspicions (object_type, object_id)",
    ):
        db.execute(statement)


def _m013_imported_settlements(db: sqlite_utils.Database) -> None:
    """Historical settlements brought by a bulk import (issue 17, ``central.intake.bulk_import``).

    - ``settlements``: ``agent_id`` and ``seq`` may be NULL (an imported settlement is in no agent's
      chain) and ``import_id`` names the import that brought it (NULL: uploaded by an agent). The
      table is rebuilt keeping every rowid, since incremental screening reads it by rowid.
    - ``imports``: one row per imported file (its SHA-256), its checkpoint (``rows_read``) and counts.
    - ``imported``: each imported record's canonical bytes and digest (re-imports compare them).
    - ``import_rejects``: the rows an import refused, with the problem, for the operator to correct.
    """
    conn = db.conn
    conn.execute(
        "CREATE TABLE settlements_m013 (setl_id TEXT PRIMARY KEY NOT NULL, agent_id TEXT, seq INTEGER, "
        "kind TEXT NOT NULL, his_setl_no TEXT, fixmedins_code TEXT NOT NULL, psn_no TEXT, mdtrt_id TEXT, "
        "med_type TEXT, setl_time TEXT NOT NULL, setl_date TEXT NOT NULL, medfee_sumamt INTEGER NOT NULL, "
        "fund_pay_sumamt INTEGER, acct_pay INTEGER, psn_cash_pay INTEGER, orig_setl_id TEXT, "
        "mdtrt_cert_type TEXT, mdtrt_cert_no TEXT, card_sn TEXT, hifp_pay INTEGER, hifmi_pay INTEGER, "
        "hifob_pay INTEGER, import_id INTEGER) STRICT"
    )
    columns = (
        "setl_id, agent_id, seq, kind, his_setl_no, fixmedins_code, psn_no, mdtrt_id, med_type, setl_time, "
        "setl_date, medfee_sumamt, fund_pay_sumamt, acct_pay, psn_cash_pay, orig_setl_id, mdtrt_cert_type, "
        "mdtrt_cert_no, card_sn, hifp_pay, hifmi_pay, hifob_pay"
    )
    conn.execute(f"INSERT INTO settlements_m013 (rowid, {columns}) SELECT rowid, {columns} FROM settlements")
    conn.execute("DROP TABLE settlements")
    conn.execute("ALTER TABLE settlements_m013 RENAME TO settlements")
    for statement in (
        "CREATE INDEX idx_settlements_fixmedins_code_setl_date ON settlements (fixmedins_code, setl_date)",
        "CREATE UNIQUE INDEX idx_settlements_agent_id_seq ON settlements (agent_id, seq)",
        "CREATE INDEX settlements_psn_no_setl_date ON settlements (psn_no, setl_date)",
        "CREATE INDEX settlements_orig_setl_id ON settlements (orig_setl_id) WHERE orig_setl_id IS NOT NULL",
        "CREATE INDEX settlements_import_id ON settlements (import_id) WHERE import_id IS NOT NULL",
        "CREATE TABLE imports (id INTEGER PRIMARY KEY, path TEXT NOT NULL, format TEXT NOT NULL, "
        "money TEXT NOT NULL, digest TEXT NOT NULL, status TEXT NOT NULL, started_at TEXT NOT NULL, "
        "finished_at TEXT, rows_read INTEGER NOT NULL, settlements INTEGER NOT NULL, "
        "reversals INTEGER NOT NULL, already_held INTEGER NOT NULL, held_from_agent INTEGER NOT NULL, "
        "rejected INTEGER NOT NULL, UNIQUE (digest, format, money)) STRICT",
        "CREATE TABLE imported (setl_id TEXT PRIMARY KEY, import_id INTEGER NOT NULL, digest BLOB NOT NULL, "
        "raw BLOB NOT NULL) STRICT",
        "CREATE TABLE import_rejects (import_id INTEGER NOT NULL, row INTEGER NOT NULL, setl_id TEXT, "
        "code TEXT NOT NULL, message TEXT NOT NULL, PRIMARY KEY (import_id, row)) STRICT",
    ):
        conn.execute(statement)


def _m014_declarations(db: sqlite_utils.Database) -> None:
    """Hospitals' monthly declarations checked against the centre (``central.intake.declarations``).

    - ``settlements.insutype``: the insurance type (``psn.insutype``) of each settlement, since a
      declaration is per period and insurance type. Filled at ingest and import; a reversal's is NULL
      and read from its original. Backfilled here from the agents' raw chain entries and the imported
      records.
    - ``declarations``: each declaration as received (the document, its digest), who entered it, and
      its last check (``result`` agrees | differs, ``summary`` the differences as JSON).
    - ``reupload_requests``: settlements declared but not held, asked of the hospital until they arrive.
    """
    import msgspec

    from protocol.chain import decode_entry
    from protocol.errors import ProtocolError

    conn = db.conn
    conn.execute("ALTER TABLE settlements ADD COLUMN insutype TEXT")
    person = msgspec.msgpack.Decoder(type=dict)
    rows = conn.execute(
        "SELECT s.setl_id, r.raw FROM settlements AS s JOIN records AS r ON r.agent_id = s.agent_id "
        "AND r.seq = s.seq WHERE s.kind = 'setl'"
    )
    while chunk := rows.fetchmany(1000):
        update = []
        for setl_id, raw in chunk:
            try:
                body = person.decode(bytes(decode_entry(raw).body))
            except (ProtocolError, msgspec.DecodeError):  # held ok, so it decodes; stay NULL if not
                continue
            update.append(((body.get("psn") or {}).get("insutype"), setl_id))
        conn.executemany("UPDATE settlements SET insutype = ? WHERE setl_id = ?", update)
    imported = conn.execute(
        "SELECT i.setl_id, i.raw FROM imported AS i JOIN settlements AS s USING (setl_id) "
        "WHERE s.kind = 'setl'"
    )
    while chunk := imported.fetchmany(1000):
        update = [((person.decode(raw).get("psn") or {}).get("insutype"), setl_id) for setl_id, raw in chunk]
        conn.executemany("UPDATE settlements SET insutype = ? WHERE setl_id = ?", update)
    conn.execute(
        "CREATE TABLE declarations (id INTEGER PRIMARY KEY, fixmedins_code TEXT NOT NULL, "
        "period TEXT NOT NULL, "
        "declared_at TEXT, received_at TEXT NOT NULL, operator TEXT NOT NULL, digest TEXT NOT NULL, "
        "document TEXT NOT NULL, checked_at TEXT, result TEXT, summary TEXT, "
        "UNIQUE (fixmedins_code, period, digest)) STRICT"
    )
    conn.execute(
        "CREATE TABLE reupload_requests (fixmedins_code TEXT NOT NULL, setl_id TEXT NOT NULL, "
        "declaration_id INTEGER NOT NULL, requested_at TEXT NOT NULL, resolved_at TEXT, "
        "PRIMARY KEY (fixmedins_code, setl_id)) STRICT"
    )
    conn.execute(
        "CREATE INDEX settlements_hospital_insutype ON settlements (fixmedins_code, setl_date, insutype)"
    )


def _m015_console_indexes(db: sqlite_utils.Database) -> None:
    """The console's queue and map over 100,000 suspicions (``benchmarks/console.py``): the queue's order
    (score, then amount) read from an index instead of sorting the area's whole queue for each page, and
    the map's count of open suspicions by hospital and light answered from an index alone."""
    db.execute(
        "CREATE INDEX suspicions_console_queue ON suspicions (area, status, score DESC, amount_fen DESC, id)"
    )
    db.execute(
        "CREATE INDEX suspicions_console_map ON suspicions (area, status, fixmedins_code, severity)"
    )


def _m016_card_logs(db: sqlite_utils.Database) -> None:
    """Card logs the agents chain (``protocol.records.CardLog``, issue 18): card usage, failed
    authentication, lost cards, blacklist bundles applied. Keyed on the chain position (agent, seq), so a
    record is stored once however often it is re-sent; ``change_id`` is the blacklist change request a
    lost-card report became. The replacement gate reads ``blacklist_applied`` rows per agent."""
    db.execute(
        "CREATE TABLE card_logs (agent_id TEXT NOT NULL, seq INTEGER NOT NULL, log_id TEXT NOT NULL, "
        "event TEXT NOT NULL, fixmedins_code TEXT NOT NULL, card_sn TEXT, code TEXT, reason TEXT, area TEXT, "
        "bundle_seq INTEGER, opter TEXT NOT NULL, at TEXT NOT NULL, received_at TEXT NOT NULL, "
        "change_id INTEGER, PRIMARY KEY (agent_id, seq))"
    )
    db.execute("CREATE INDEX card_logs_card ON card_logs (card_sn, at)")
    db.execute("CREATE INDEX card_logs_applied ON card_logs (agent_id, event, bundle_seq)")


def _m017_card_notices(db: sqlite_utils.Database) -> None:
    """The ``cards`` bundle's state per pooling area (``central.policy.card_notices``, issue 18): the card
    office's corrections of a card (replaced by ``new_card_sn``, or ``fields`` outdated, a JSON list),
    keyed by the old card, and its notices (top-up, balance, message; ``amount_fen`` integer fen) keyed by
    id, each with the bundle seq that set it. What agents hold is these rows as of their bundle seq."""
    db.execute(
        "CREATE TABLE card_corrections (area TEXT NOT NULL, card_sn TEXT NOT NULL, "
        "new_card_sn TEXT NOT NULL, "
        "fields TEXT NOT NULL, reason TEXT NOT NULL, added_seq INTEGER NOT NULL, added_at TEXT NOT NULL, "
        "PRIMARY KEY (area, card_sn)) STRICT"
    )
    db.execute("CREATE INDEX card_corrections_new ON card_corrections (new_card_sn)")
    db.execute(
        "CREATE TABLE card_notices (area TEXT NOT NULL, id TEXT NOT NULL, card_sn TEXT NOT NULL, "
        "type TEXT NOT NULL, amount_fen INTEGER, text TEXT NOT NULL, valid_from TEXT NOT NULL, "
        "valid_to TEXT NOT NULL, added_seq INTEGER NOT NULL, added_at TEXT NOT NULL, "
        "PRIMARY KEY (area, id)) STRICT"
    )
    db.execute("CREATE INDEX card_notices_card ON card_notices (card_sn, valid_to)")


def _m018_card_lookups(db: sqlite_utils.Database) -> None:
    """A card's blacklist entries by card (the gate and a card's history asked by number scanned every
    area's entries), and the lost-card reports by card (``cards used-after-loss`` starts from the lost
    cards; without it, from every card read in the province)."""
    db.execute("CREATE INDEX blacklist_type_id ON blacklist (list_type, id)")
    db.execute("CREATE INDEX card_logs_lost ON card_logs (card_sn) WHERE event = 'lost'")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _m001_initial,
    _m002_security_event_repeats,
    _m003_identification,
    _m004_policy,
    _m005_person_history,
    _m006_split_flags,
    _m007_screening_data,
    _m008_monitoring,
    _m009_peer_index,
    _m010_agent_heartbeats,
    _m011_change_requests,
    _m012_fact_anchor,
    _m013_imported_settlements,
    _m014_declarations,
    _m015_console_indexes,
    _m016_card_logs,
    _m017_card_notices,
    _m018_card_lookups,
]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply pending migrations, each in its own transaction; returns the names applied.

    ``conn`` must be in autocommit mode (``isolation_level=None``) so the transactions here
    are the only ones.
    """
    db = sqlite_utils.Database(conn, execute_plugins=False)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at TEXT NOT NULL)"
    )
    current = schema_version(conn)
    if current > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"central.db is at schema version {current} but this yibao-central knows only "
            f"{SCHEMA_VERSION}; upgrade yibao-central instead of opening the database with an older one"
        )
    applied = []
    for version, step in enumerate(MIGRATIONS[current:], start=current + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            step(db)
            conn.execute(
                "INSERT INTO _migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, step.__name__, datetime.now(UTC).isoformat(timespec="seconds")),
            )
            conn.execute(f"PRAGMA user_version = {version:d}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(step.__name__)
    return applied
