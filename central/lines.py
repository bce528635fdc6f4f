"""``hist_lines`` rows: one per fee-detail line of a held settlement (``docs/RULES.md``, "Tables").

The same columns as the agent's history table, so one rule library runs over both. Built from a
settlement that already passed ``protocol.records.check_settlement`` (canonical decimal text,
non-negative prices), so nothing here validates again: ingest builds these rows on its hot path.

- ``setl_date`` / ``begn_date``: the local date written in ``setl_time`` / ``begntime``
  (``begn_date`` is NULL when ``begntime`` is not an ISO-8601 time; the centre never refused
  such a record, so it must not start now).
- ``cnt``: REAL; ``pric_fen``: the unit price in fen rounded half-up (the price itself has up to
  6 decimals of yuan); ``amount_fen``: the line total as billed; ``days``: days of supply or NULL.
- ``hosp_lv``: the hospital's grade from the ``hospitals`` table (``yibao-central hospitals set``),
  NULL while the centre does not know it.

This module imports nothing from ``central`` (migration 5 backfills with it). If the row shape
ever changes, a new migration changes the table, and migration 5 keeps a copy of this version.
"""

from __future__ import annotations

from datetime import datetime

from protocol.records import Settlement

__all__ = ["HIST_COLUMNS", "HOSP_LV_INDEX", "INSERT_HIST_LINE", "begn_date", "line_rows", "pric_fen"]

HIST_COLUMNS = (
    "psn_no",
    "fixmedins_code",
    "setl_id",
    "setl_date",
    "begn_date",
    "med_type",
    "dise_codg",
    "dr_codg",
    "dept_codg",
    "hosp_lv",
    "feedetl_sn",
    "med_list_codg",
    "list_type",
    "cnt",
    "pric_fen",
    "amount_fen",
    "days",
)
#: Index of ``hosp_lv`` in a row (ingest patches it when an operator changed the grade meanwhile).
HOSP_LV_INDEX = HIST_COLUMNS.index("hosp_lv")
INSERT_HIST_LINE = (
    f"INSERT INTO hist_lines ({', '.join(HIST_COLUMNS)}) VALUES ({', '.join('?' * len(HIST_COLUMNS))})"
)

_fromisoformat = datetime.fromisoformat


def begn_date(begntime: str) -> str | None:
    try:
        return _fromisoformat(begntime).date().isoformat()
    except ValueError:
        return None


def pric_fen(pric: str) -> int:
    """Canonical, non-negative decimal yuan text (≤ 6 decimals) → fen, rounded half-up."""
    whole, _, frac = pric.partition(".")
    micro = int(whole) * 1_000_000
    if frac:
        micro += int(frac) * 10 ** (6 - len(frac))
    return (micro + 5_000) // 10_000


def line_rows(rec: Settlement, hospital: str, setl_date: str, hosp_lv: str | None) -> list[tuple]:
    """The ``hist_lines`` rows of one valid settlement, in its lines' order."""
    m = rec.mdtrt
    head = (
        rec.psn.psn_no, hospital, rec.setl_id, setl_date, begn_date(m.begntime), m.med_type, m.dise_codg,
        m.dr_codg, m.dept_codg, hosp_lv,
    )  # fmt: skip
    return [
        (*head, d.feedetl_sn, d.med_list_codg, d.list_type, float(d.cnt), pric_fen(d.pric),
         d.det_item_fee_sumamt, d.days)
        for d in rec.feedetl
    ]  # fmt: skip
