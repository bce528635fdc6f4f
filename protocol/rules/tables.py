"""The line tables the rules run over: ``hist_lines`` (past settlements) and ``cur_lines`` (being checked).

The same at the agent and at the centre, so one SQL text serves one person's bill at the edge and
a whole batch of settlements at the centre. ``hist_lines`` has exactly the contract's columns;
``cur_lines`` has them too, then ``gend, brdy, insutype, psn_type`` (the person's attributes at
the checked settlement: the gender and age templates and the insurance-type filter need them when
many persons are checked at once). The rules read the person's attributes from ``cur_lines``
only, never from ``hist_lines``.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ..records import Settlement
from .knowledge import KNOWLEDGE_DDL

__all__ = [
    "CURRENT_COLUMNS",
    "CURRENT_DDL",
    "CURRENT_SETL_ID",
    "CURRENT_VISITS_DDL",
    "DEATHS_DDL",
    "HISTORY_DDL",
    "HISTORY_INSERT",
    "HIST_COLUMNS",
    "HOSPITALS_GEO_DDL",
    "PERSON_COLUMNS",
    "VISITS_DDL",
    "VISIT_COLUMNS",
    "create_current",
    "create_current_visits",
    "date_of",
    "ensure_centre_tables",
    "ensure_tables",
    "history_rows_from_settlement",
    "join_diagnoses",
    "pric_fen",
]

#: Columns of ``hist_lines``: exactly the contract's (docs/RULES.md, "Tables"), as at the centre.
HIST_COLUMNS = (
    "psn_no", "fixmedins_code", "setl_id", "setl_date", "begn_date", "med_type", "dise_codg",
    "dr_codg", "dept_codg", "hosp_lv", "feedetl_sn", "med_list_codg", "list_type", "cnt", "pric_fen",
    "amount_fen", "days", "fee_date",
)  # fmt: skip
#: The person's attributes at the checked settlement, which ``cur_lines`` carries after the
#: history columns (gender and age templates; the insurance-type filter over a batch).
PERSON_COLUMNS = ("gend", "brdy", "insutype", "psn_type")
#: Columns of ``cur_lines`` (and of ``Bill.rows``).
CURRENT_COLUMNS = HIST_COLUMNS + PERSON_COLUMNS

CURRENT_SETL_ID = "CURRENT"

_HIST_SQL = """
    psn_no TEXT NOT NULL, fixmedins_code TEXT NOT NULL, setl_id TEXT NOT NULL, setl_date TEXT NOT NULL,
    begn_date TEXT, med_type TEXT, dise_codg TEXT, dr_codg TEXT, dept_codg TEXT, hosp_lv TEXT,
    feedetl_sn TEXT NOT NULL, med_list_codg TEXT NOT NULL, list_type TEXT NOT NULL, cnt REAL NOT NULL,
    pric_fen INTEGER NOT NULL, amount_fen INTEGER NOT NULL, days INTEGER, fee_date TEXT"""

#: ``hist_lines`` with its indexes: by person and date (every history read), by person and item
#: (duplicate medication, frequency), and one row per (settlement, line) so that a settlement stored
#: twice is ignored and a reversal deletes by ``setl_id``.
HISTORY_DDL = f"""
CREATE TABLE IF NOT EXISTS hist_lines ({_HIST_SQL}
);
CREATE INDEX IF NOT EXISTS hist_lines_psn_date ON hist_lines (psn_no, setl_date);
CREATE INDEX IF NOT EXISTS hist_lines_psn_code ON hist_lines (psn_no, med_list_codg, setl_date);
CREATE UNIQUE INDEX IF NOT EXISTS hist_lines_line ON hist_lines (setl_id, feedetl_sn);
"""

#: The agent's ``cur_lines``: a TEMP table (per connection), filled by ``evaluate``. Its index
#: serves the joins within a bill (repeated charges, interactions); the centre's ``cur_lines``
#: (a batch of many settlements) wants the same index.
CURRENT_DDL = f"""
CREATE TEMP TABLE IF NOT EXISTS cur_lines ({_HIST_SQL},
    gend TEXT, brdy TEXT, insutype TEXT, psn_type TEXT
);
CREATE INDEX IF NOT EXISTS temp.cur_lines_setl ON cur_lines (psn_no, setl_id, med_list_codg);
"""

#: Columns of ``hist_visits`` (and ``cur_visits``): one row per held, unreversed settlement
#: (docs/MONITORING.md, "Tables"). The same order as ``central.intake.visits.VISIT_COLUMNS``, which builds
#: the rows (a test holds them together; protocol does not import central).
VISIT_COLUMNS = (
    "setl_id", "psn_no", "fixmedins_code", "area", "hosp_lv", "setl_time", "setl_date", "begn_date",
    "end_date", "med_type", "dise_codg", "dise_main", "dr_codg", "dept_codg", "ipt_days", "medfee_sumamt",
    "drug_fen", "gend", "brdy", "insutype", "psn_type",
)  # fmt: skip

_VISIT_SQL = """
    setl_id TEXT PRIMARY KEY, psn_no TEXT NOT NULL, fixmedins_code TEXT NOT NULL, area TEXT,
    hosp_lv TEXT, setl_time TEXT NOT NULL, setl_date TEXT NOT NULL, begn_date TEXT, end_date TEXT,
    med_type TEXT NOT NULL, dise_codg TEXT, dise_main TEXT, dr_codg TEXT, dept_codg TEXT, ipt_days INTEGER,
    medfee_sumamt INTEGER NOT NULL, drug_fen INTEGER NOT NULL, gend TEXT, brdy TEXT, insutype TEXT,
    psn_type TEXT"""

#: ``hist_visits`` as the centre's migration 7 creates it (columns, types, index names), for tests and
#: for a screening database built elsewhere: by person, hospital and doctor over dates, and by date.
VISITS_DDL = f"""
CREATE TABLE IF NOT EXISTS hist_visits ({_VISIT_SQL}
) STRICT;
CREATE INDEX IF NOT EXISTS hist_visits_psn_no_setl_date ON hist_visits (psn_no, setl_date);
CREATE INDEX IF NOT EXISTS hist_visits_hospital_setl_date ON hist_visits (fixmedins_code, setl_date);
CREATE INDEX IF NOT EXISTS hist_visits_dr_codg_setl_date ON hist_visits (dr_codg, setl_date);
CREATE INDEX IF NOT EXISTS hist_visits_setl_date ON hist_visits (setl_date);
"""

#: ``cur_visits``: the visits being screened, a TEMP table with ``hist_visits``' columns (the centre
#: fills it with ``cur_lines``; every centre template starts from it).
CURRENT_VISITS_DDL = f"""
CREATE TEMP TABLE IF NOT EXISTS cur_visits ({_VISIT_SQL}
);
CREATE INDEX IF NOT EXISTS temp.cur_visits_psn_date ON cur_visits (psn_no, setl_date);
"""

#: ``deaths``: dates of death an operator imports from the civil registry (centre migration 7).
DEATHS_DDL = """
CREATE TABLE IF NOT EXISTS deaths (psn_no TEXT PRIMARY KEY, death_date TEXT NOT NULL, source TEXT NOT NULL,
    imported_at TEXT NOT NULL) STRICT;
"""

#: ``hospitals`` with what the centre templates read (grade, local-plane kilometres: ``x = lon ×
#: 111.32 × cos(lat)``, ``y = lat × 110.574``), as the centre's migrations 5 and 7 leave it. At the
#: centre the table exists already and this is a no-op.
HOSPITALS_GEO_DDL = """
CREATE TABLE IF NOT EXISTS hospitals (fixmedins_code TEXT PRIMARY KEY, hosp_lv TEXT, name TEXT, admdvs TEXT,
    updated_at TEXT, lat REAL, lon REAL, x_km REAL, y_km REAL);
"""

_fromisoformat = datetime.fromisoformat
_SEPARATORS = re.compile(r"[,;|\s]+")


def join_diagnoses(codes: Any) -> str:
    """Diagnosis codes (a list, or one text with ``,`` ``;`` ``|`` or spaces between) → ``"E11.900,I10.x00"``.

    ``dise_codg`` in the line tables holds every diagnosis of the visit, primary first, joined by
    ``,``; a rule's prefix matches when any of them starts with it.
    """
    parts = _SEPARATORS.split(codes) if isinstance(codes, str) else [str(c).strip() for c in codes]
    seen: list[str] = []
    for code in parts:
        if code and code not in seen:
            seen.append(code)
    return ",".join(seen)


def pric_fen(pric: str | Decimal) -> int:
    """Unit price (yuan, up to 6 decimals, text or ``Decimal``) → fen, rounded half-up.

    Integer arithmetic on canonical text (the records carry it): this runs once per line at the
    centre's ingest and at each settlement at the agent.
    """
    if isinstance(pric, str):
        whole, _, frac = pric.partition(".")
        if whole.isdigit() and (not frac or (frac.isdigit() and len(frac) <= 6)):
            micro = int(whole) * 1_000_000 + (int(frac) * 10 ** (6 - len(frac)) if frac else 0)
            return (micro + 5_000) // 10_000
    return int((Decimal(pric) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def date_of(text: str | None) -> str | None:
    """The local date of an ISO-8601 time (the date as written, whatever its offset); None if not one."""
    if not text:
        return None
    try:
        return _fromisoformat(text).date().isoformat()
    except ValueError:
        return None


def history_rows_from_settlement(
    record: Settlement, hosp_lv: str | None, *, setl_date: str | None = None
) -> list[tuple]:
    """Rows for ``hist_lines`` (``HIST_COLUMNS`` order) from a settlement record — the one builder the
    agent (its local history) and the centre (ingest and migration 5) both use.

    ``hosp_lv`` is the grade of the hospital that settled it (the record does not carry it; None when
    unknown). ``setl_date``: the local date of ``setl_time`` when the caller has it already.
    ``begn_date`` is None when ``begntime`` is not an ISO-8601 time. Money and unit price in fen,
    ``cnt`` a float for arithmetic, the diagnoses joined (``join_diagnoses``), ``fee_date`` the local
    date of the line's ``fee_ocur_time`` (None when absent or not a time). The caller inserts
    them and deletes a settlement's rows by ``setl_id`` when it is reversed.
    """
    md, psn = record.mdtrt, record.psn
    if setl_date is None:
        setl_date = date_of(record.setl_time) or record.setl_time[:10]
    head = (
        psn.psn_no, record.fixmedins_code, record.setl_id, setl_date, date_of(md.begntime), md.med_type,
        join_diagnoses(md.dise_codg), md.dr_codg, md.dept_codg, hosp_lv,
    )  # fmt: skip
    return [
        (*head, line.feedetl_sn, line.med_list_codg, line.list_type, float(line.cnt), pric_fen(line.pric),
         line.det_item_fee_sumamt, line.days, date_of(line.fee_ocur_time))
        for line in record.feedetl
    ]  # fmt: skip


#: The insert of a ``history_rows_from_settlement`` row.
HISTORY_INSERT = (
    f"INSERT INTO hist_lines ({', '.join(HIST_COLUMNS)}) VALUES ({', '.join('?' * len(HIST_COLUMNS))})"
)


def ensure_tables(conn: sqlite3.Connection) -> None:
    """Create ``hist_lines`` and empty ``kb_*`` tables where missing (nothing is replaced)."""
    _run(conn, HISTORY_DDL + KNOWLEDGE_DDL)


def create_current(conn: sqlite3.Connection) -> None:
    """Create the connection's TEMP ``cur_lines`` (and its index) where missing."""
    _run(conn, CURRENT_DDL)


def ensure_centre_tables(conn: sqlite3.Connection) -> None:
    """Create what the centre templates read where missing: ``hist_lines``, ``hist_visits``, ``deaths``,
    ``hospitals`` (the centre has them from its migrations; tests and other databases do not)."""
    _run(conn, HISTORY_DDL + VISITS_DDL + DEATHS_DDL + HOSPITALS_GEO_DDL)


def create_current_visits(conn: sqlite3.Connection) -> None:
    """Create the connection's TEMP ``cur_lines`` and ``cur_visits`` (and their indexes) where missing."""
    _run(conn, CURRENT_DDL + CURRENT_VISITS_DDL)


def _run(conn: sqlite3.Connection, script: str) -> None:
    """Each statement of ``script`` on its own (``executescript`` would commit the caller's transaction)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)
