"""``hist_lines`` at the centre: the rows come from ``protocol.rules.history_rows_from_settlement``,
the same builder the agent uses for its local history, so the rule library sees identical columns
on both sides (``docs/RULES.md``, "Tables").

- ``hosp_lv``: the hospital's grade from the ``hospitals`` table (``yibao-central hospitals set``),
  NULL while the centre does not know it; ingest patches it in rows built before an operator set it.
- If the row shape ever changes, a new migration changes the table.
"""

from __future__ import annotations

from protocol.rules import HIST_COLUMNS, HISTORY_INSERT

__all__ = ["HOSP_LV_INDEX", "INSERT_HIST_LINE"]

INSERT_HIST_LINE = HISTORY_INSERT
#: Index of ``hosp_lv`` in a row (ingest patches it when an operator changed the grade meanwhile).
HOSP_LV_INDEX = HIST_COLUMNS.index("hosp_lv")
