"""Dates of death from the civil registry: what the ``care_after_death`` template reads (``deaths``).

Rules:

1. An operator imports a CSV file ``psn_no,death_date[,source]`` (a header row with those names is
   allowed; UTF-8). Every row is validated first and every problem is reported with its line number;
   if any row is bad nothing is imported.
2. A person already held takes the file's date and source (the registry corrects itself).
3. The import is one transaction with its audit row (``deaths.import``: file name and counts, never
   a person number). Nothing here logs a ``psn_no``.
"""

from __future__ import annotations

import csv
import re
import sqlite3
from datetime import date
from pathlib import Path
from typing import Any

from central.errors import DocumentInvalid
from central.policy.bundles import Actor, audit_in
from central.storage.store import Store, now_iso

__all__ = ["DeathsInvalid", "count_deaths", "import_deaths", "list_deaths"]

_PSN_NO = re.compile(r"^[A-Za-z0-9]{1,64}$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
MAX_SOURCE = 200
MAX_PROBLEMS = 1000
EARLIEST = date(1900, 1, 1)
_COLUMNS = ("psn_no", "death_date", "source")


class DeathsInvalid(DocumentInvalid):
    """A deaths CSV with problems; nothing was imported."""

    def __init__(self, what: str, problems: list[str]) -> None:
        super().__init__(what, problems)
        self.message = self.message.replace("nothing was published", "nothing was imported")
        self.args = (self.message,)


def _check_row(row: list[str], line: int, today: date, default_source: str) -> tuple[tuple | None, list[str]]:
    problems = []
    if not 2 <= len(row) <= 3:
        return None, [f"line {line}: expected psn_no,death_date[,source], found {len(row)} column(s)"]
    psn_no, when = row[0].strip(), row[1].strip()
    source = row[2].strip() if len(row) == 3 and row[2].strip() else default_source
    if not _PSN_NO.match(psn_no):
        problems.append(f"line {line}, column psn_no: must be 1-64 letters and digits")
    day = None
    if not _DATE.match(when):
        problems.append(f"line {line}, column death_date: {when!r} is not a date like 2025-03-14")
    else:
        try:
            day = date.fromisoformat(when)
        except ValueError:
            problems.append(f"line {line}, column death_date: {when!r} is not a calendar date")
    if day is not None and not EARLIEST <= day <= today:
        problems.append(
            f"line {line}, column death_date: {when} is not between {EARLIEST} and today ({today})"
        )
    if len(source) > MAX_SOURCE:
        problems.append(f"line {line}, column source: longer than {MAX_SOURCE} characters")
    return (None if problems else (psn_no, when, source)), problems


def read_deaths_csv(path: Path | str, *, today: date | None = None) -> list[tuple[str, str, str]]:
    """Every row of the file, validated; ``DeathsInvalid`` naming every problem (line and column)."""
    path = Path(path)
    today = today or date.today()
    rows: list[tuple[str, str, str]] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            for line, raw in enumerate(csv.reader(f), start=1):
                if not raw or all(not cell.strip() for cell in raw):
                    continue
                if line == 1 and [c.strip().lower() for c in raw] == list(_COLUMNS[: len(raw)]):
                    continue  # the header
                row, found = _check_row(raw, line, today, f"file {path.name}")
                problems += found
                if row is not None:
                    if row[0] in first_line:  # no person number in the message: the line says which
                        problems.append(
                            f"line {line}, column psn_no: repeats the person of line {first_line[row[0]]}"
                        )
                    else:
                        first_line[row[0]] = line
                        rows.append(row)
                if len(problems) >= MAX_PROBLEMS:
                    problems.append("… stopped reading after 1000 problems")
                    break
    except UnicodeDecodeError as exc:
        problems.append(f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})")
    except csv.Error as exc:
        problems.append(f"the file is not CSV: {exc}")
    if not problems and not rows:
        problems.append("the file holds no rows")
    if problems:
        raise DeathsInvalid(path.name, problems)
    return rows


def import_deaths(
    store: Store, actor: Actor, path: Path | str, *, today: date | None = None
) -> dict[str, Any]:
    """Validate the whole file, then import it in one audited transaction; returns the counts."""
    path = Path(path)
    rows = read_deaths_csv(path, today=today)
    stamp = now_iso()

    def tx(conn: sqlite3.Connection) -> dict[str, Any]:
        before = conn.execute("SELECT count(*) FROM deaths").fetchone()[0]
        conn.executemany(
            "INSERT INTO deaths (psn_no, death_date, source, imported_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (psn_no) DO UPDATE SET death_date = excluded.death_date, source = excluded.source, "
            "imported_at = excluded.imported_at",
            [(*row, stamp) for row in rows],
        )
        after = conn.execute("SELECT count(*) FROM deaths").fetchone()[0]
        new = after - before
        counts = {"file": path.name, "rows": len(rows), "new": new, "updated": len(rows) - new, "held": after}
        audit_in(conn, actor, "deaths.import", counts)
        return counts

    return store.write(tx)


def count_deaths(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM deaths").fetchone()[0])


def list_deaths(conn: sqlite3.Connection, *, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    """Held dates of death, newest import first (an operator's screen; never logged)."""
    rows = conn.execute(
        "SELECT psn_no, death_date, source, imported_at FROM deaths ORDER BY imported_at DESC, psn_no "
        "LIMIT ? OFFSET ?",
        (max(0, limit), max(0, offset)),
    )
    return [dict(zip(("psn_no", "death_date", "source", "imported_at"), r, strict=True)) for r in rows]
