"""What the centre knows of each hospital: its grade (``hosp_lv``), name and administrative division.

Rules:

1. ``hosp_lv`` is one of ``central.documents.HOSP_LEVELS`` ("1", "2", "3" grades, "0" ungraded),
   the values the policy and catalogue documents use; a hospital the table does not name has
   NULL in its ``hist_lines`` (the rules then treat its level as unknown).
2. Setting a hospital is an operator action, audited (``hospital.set``) in the same transaction
   as the change; it also gives the hospital's lines already held the new grade, so
   ``hist_lines.hosp_lv`` always says what the table says (a scan of ``hist_lines``: rare, and
   not on the ingest path). Ingest reads the grade per batch.
3. ``name`` and ``admdvs`` keep their held value when not given.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from .documents import HOSP_LEVELS
from .enrol import check_hospital_code
from .errors import ConfigInvalid
from .policy import Actor, audit_in
from .store import Store, now_iso

__all__ = ["HOSPITAL_COLUMNS", "list_hospitals", "set_hospital"]

HOSPITAL_COLUMNS = ("fixmedins_code", "hosp_lv", "name", "admdvs", "updated_at")
_ADMDVS = re.compile(r"^[0-9]{6}$")


def set_hospital(
    store: Store,
    actor: Actor,
    hospital: str,
    hosp_lv: str,
    *,
    name: str | None = None,
    admdvs: str | None = None,
) -> dict[str, Any]:
    """Create or update the hospital; returns its row and how many held lines took the new grade."""
    check_hospital_code(hospital)
    if hosp_lv not in HOSP_LEVELS:
        raise ConfigInvalid(f"--level must be one of {', '.join(HOSP_LEVELS)} (0: ungraded), not {hosp_lv!r}")
    if name is not None and not 1 <= len(name.strip()) <= 200:
        raise ConfigInvalid("--name must be 1-200 characters")
    if admdvs is not None and not _ADMDVS.match(admdvs):
        raise ConfigInvalid(f"--admdvs {admdvs!r} must be a 6-digit administrative division like 370211")

    def tx(conn: sqlite3.Connection) -> dict[str, Any]:
        before = conn.execute(
            "SELECT hosp_lv FROM hospitals WHERE fixmedins_code = ?", (hospital,)
        ).fetchone()
        conn.execute(
            "INSERT INTO hospitals (fixmedins_code, hosp_lv, name, admdvs, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (fixmedins_code) DO UPDATE SET hosp_lv = excluded.hosp_lv, "
            "name = coalesce(excluded.name, hospitals.name), "
            "admdvs = coalesce(excluded.admdvs, hospitals.admdvs), updated_at = excluded.updated_at",
            (hospital, hosp_lv, name.strip() if name else None, admdvs, now_iso()),
        )
        lines = conn.execute(
            "UPDATE hist_lines SET hosp_lv = ? WHERE fixmedins_code = ? AND hosp_lv IS NOT ?",
            (hosp_lv, hospital, hosp_lv),
        ).rowcount
        row = conn.execute(
            f"SELECT {', '.join(HOSPITAL_COLUMNS)} FROM hospitals WHERE fixmedins_code = ?", (hospital,)
        ).fetchone()
        held = dict(zip(HOSPITAL_COLUMNS, row, strict=True))
        detail = {
            "hospital": hospital, "hosp_lv": hosp_lv, "previous_hosp_lv": before[0] if before else None,
            "name": held["name"], "admdvs": held["admdvs"], "lines_updated": lines,
        }  # fmt: skip
        audit_in(conn, actor, "hospital.set", detail)
        return {**held, "lines_updated": lines}

    return store.write(tx)


def list_hospitals(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(f"SELECT {', '.join(HOSPITAL_COLUMNS)} FROM hospitals ORDER BY fixmedins_code")
    return [dict(zip(HOSPITAL_COLUMNS, row, strict=True)) for row in rows]
