"""``hist_visits`` at the centre: one row per held, unreversed settlement (``docs/MONITORING.md``).

The centre templates (readmission, impersonation, care after death, bed-hanging, excessive cost,
peer outliers) reason about visits, not lines, and need the person's and the visit's attributes
beside each other; building the row once at ingest (same transaction as the settlement) keeps the
screening queries to index seeks. Ingest calls ``visit_row`` in its read-only prepare phase;
migration 7 calls ``backfill_visits``.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime

from protocol.chain import decode_body, decode_entry
from protocol.errors import ProtocolError
from protocol.records import Settlement
from protocol.rules import join_diagnoses
from protocol.rules.knowledge import DRUG_LIST_TYPES

__all__ = ["INSERT_VISIT", "VISIT_COLUMNS", "backfill_visits", "visit_row"]

log = logging.getLogger(__name__)

VISIT_COLUMNS = (
    "setl_id", "psn_no", "fixmedins_code", "area", "hosp_lv", "setl_time", "setl_date", "begn_date",
    "end_date", "med_type", "dise_codg", "dise_main", "dr_codg", "dept_codg", "ipt_days", "medfee_sumamt",
    "drug_fen", "gend", "brdy", "insutype", "psn_type",
)  # fmt: skip
INSERT_VISIT = (
    f"INSERT OR IGNORE INTO hist_visits ({', '.join(VISIT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(VISIT_COLUMNS))})"
)
#: Index of ``hosp_lv`` in a row (ingest patches it when an operator changed the grade meanwhile).
VISIT_HOSP_LV_INDEX = VISIT_COLUMNS.index("hosp_lv")
_DRUGS = frozenset(DRUG_LIST_TYPES)
_fromisoformat = datetime.fromisoformat


def _date_of(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return _fromisoformat(text).date().isoformat()
    except ValueError:
        return None


def visit_row(rec: Settlement, *, area: str | None, hosp_lv: str | None, setl_date: str) -> tuple:
    """The ``hist_visits`` row of a valid settlement (``VISIT_COLUMNS`` order).

    Diagnoses are joined as ``hist_lines.dise_codg`` joins them (``protocol.rules.join_diagnoses``),
    so a template reading either table sees the same codes; ``dise_main`` is the first (primary) one.
    """
    md, psn = rec.mdtrt, rec.psn
    codes = join_diagnoses(md.dise_codg)
    drug_fen = sum(line.det_item_fee_sumamt for line in rec.feedetl if line.list_type in _DRUGS)
    return (
        rec.setl_id, psn.psn_no, rec.fixmedins_code, area, hosp_lv, rec.setl_time, setl_date,
        _date_of(md.begntime), _date_of(md.endtime), md.med_type, codes or None,
        codes.split(",", 1)[0] if codes else None, md.dr_codg, md.dept_codg, md.ipt_days, rec.medfee_sumamt,
        drug_fen, psn.gend, psn.brdy, psn.insutype, psn.psn_type,
    )  # fmt: skip


def backfill_visits(conn: sqlite3.Connection) -> int:
    """Build ``hist_visits`` from the raw chain entries of every settlement held ``ok`` and not reversed."""
    held = conn.execute(
        "SELECT r.raw, s.setl_date, a.pooling_area, h.hosp_lv FROM records AS r "
        "JOIN settlements AS s ON s.agent_id = r.agent_id AND s.seq = r.seq "
        "JOIN agents AS a ON a.agent_id = r.agent_id "
        "LEFT JOIN hospitals AS h ON h.fixmedins_code = s.fixmedins_code "
        "WHERE r.status = 'ok' AND r.kind = 'setl' AND s.kind = 'setl' "
        "AND NOT EXISTS (SELECT 1 FROM settlements AS v WHERE v.kind = 'revs' AND v.orig_setl_id = s.setl_id "
        "AND v.fixmedins_code = s.fixmedins_code)"
    )
    count = 0
    while chunk := held.fetchmany(1000):
        rows = []
        for raw, setl_date, area, hosp_lv in chunk:
            try:
                rec = decode_body(decode_entry(raw))
            except ProtocolError:
                log.warning("a settlement held ok no longer decodes; it has no hist_visits row")
                continue
            if isinstance(rec, Settlement):
                rows.append(visit_row(rec, area=area, hosp_lv=hosp_lv, setl_date=setl_date))
        conn.executemany(INSERT_VISIT, rows)
        count += len(rows)
    return count
