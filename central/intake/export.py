"""Settlement export as JSON lines, for the monitoring side and for people's spreadsheets.

No personal data leaves through here: no ``psn_no``, no visit ids. Money is decimal yuan
text ("51.20") so no consumer can turn it into a float by accident.
"""

from __future__ import annotations

import json
import sqlite3
from typing import TextIO

from central.storage.store import Store, iter_settlements
from protocol.records import fen_to_text

__all__ = ["MONEY_COLUMNS", "export_settlements"]

MONEY_COLUMNS = ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay")


def export_settlements(store: Store, out: TextIO, hospital: str | None = None) -> int:
    """Write one JSON object per settlement to ``out``; returns how many were written."""

    def run(conn: sqlite3.Connection) -> int:
        count = 0
        for row in iter_settlements(conn, hospital):
            for name in MONEY_COLUMNS:
                if row[name] is not None:
                    row[name] = fen_to_text(row[name])
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
        return count

    return store.read(run)
