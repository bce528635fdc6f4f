"""What the centre knows of each hospital: its grade (``hosp_lv``), name and administrative division.

Rules:

1. ``hosp_lv`` is one of ``central.documents.HOSP_LEVELS`` ("1", "2", "3" grades, "0" ungraded),
   the values the policy and catalogue documents use; a hospital the table does not name has
   NULL in its ``hist_lines`` (the rules then treat its level as unknown).
2. Setting a hospital is an operator action, audited (``hospital.set``) in the same transaction
   as the change; it also gives the hospital's lines and visits already held the new grade, so
   ``hist_lines.hosp_lv`` and ``hist_visits.hosp_lv`` always say what the table says (a scan:
   rare, and not on the ingest path). Ingest reads the grade per batch.
3. ``name``, ``admdvs``, the grade of a hospital already held and its coordinates keep their held
   value when not given; a new hospital needs a grade.
4. Coordinates (``lat``, ``lon`` in degrees, both or neither) also store ``x_km``/``y_km`` on a
   local plane (``x = lon × 111.32 × cos(lat)``, ``y = lat × 110.574``): the impersonation
   template compares squared distances in SQL without trigonometry (a few per cent off within a
   province, docs/MONITORING.md).
"""

from __future__ import annotations

import math
import re
import sqlite3
from typing import Any

from .documents import HOSP_LEVELS
from .enrol import check_hospital_code
from .errors import ConfigInvalid
from .policy import Actor, audit_in
from .store import Store, now_iso

__all__ = ["HOSPITAL_COLUMNS", "list_hospitals", "plane_km", "set_hospital"]

HOSPITAL_COLUMNS = ("fixmedins_code", "hosp_lv", "name", "admdvs", "updated_at", "lat", "lon", "x_km", "y_km")
_ADMDVS = re.compile(r"^[0-9]{6}$")
KM_PER_DEGREE_LON = 111.32  # at the equator; times cos(lat)
KM_PER_DEGREE_LAT = 110.574


def plane_km(lat: float, lon: float) -> tuple[float, float]:
    """(x_km, y_km) of a point on the local plane the distance checks use."""
    return lon * KM_PER_DEGREE_LON * math.cos(math.radians(lat)), lat * KM_PER_DEGREE_LAT


def _check_coordinates(lat: float | None, lon: float | None) -> None:
    if (lat is None) != (lon is None):
        raise ConfigInvalid("give --lat and --lon together (degrees, e.g. --lat 36.07 --lon 120.38)")
    if lat is None or lon is None:
        return
    if not (math.isfinite(lat) and -90 <= lat <= 90):
        raise ConfigInvalid(f"--lat {lat} must be a latitude in degrees, -90 to 90")
    if not (math.isfinite(lon) and -180 <= lon <= 180):
        raise ConfigInvalid(f"--lon {lon} must be a longitude in degrees, -180 to 180")


def set_hospital(
    store: Store,
    actor: Actor,
    hospital: str,
    hosp_lv: str | None,
    *,
    name: str | None = None,
    admdvs: str | None = None,
    lat: float | None = None,
    lon: float | None = None,
) -> dict[str, Any]:
    """Create or update the hospital; returns its row and how many held lines and visits took the new
    grade. ``hosp_lv`` None keeps the held grade (a new hospital needs one)."""
    check_hospital_code(hospital)
    if hosp_lv is not None and hosp_lv not in HOSP_LEVELS:
        raise ConfigInvalid(f"--level must be one of {', '.join(HOSP_LEVELS)} (0: ungraded), not {hosp_lv!r}")
    _check_coordinates(lat, lon)
    x_km, y_km = plane_km(lat, lon) if lat is not None and lon is not None else (None, None)
    if name is not None and not 1 <= len(name.strip()) <= 200:
        raise ConfigInvalid("--name must be 1-200 characters")
    if admdvs is not None and not _ADMDVS.match(admdvs):
        raise ConfigInvalid(f"--admdvs {admdvs!r} must be a 6-digit administrative division like 370211")

    def tx(conn: sqlite3.Connection) -> dict[str, Any]:
        before = conn.execute(
            "SELECT hosp_lv FROM hospitals WHERE fixmedins_code = ?", (hospital,)
        ).fetchone()
        grade = hosp_lv if hosp_lv is not None else (before[0] if before else None)
        if grade is None:
            raise ConfigInvalid(f"hospital {hospital} is not known yet: give its --level (0-3)")
        conn.execute(
            "INSERT INTO hospitals (fixmedins_code, hosp_lv, name, admdvs, updated_at, lat, lon, x_km, y_km) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (fixmedins_code) DO UPDATE SET "
            "hosp_lv = excluded.hosp_lv, name = coalesce(excluded.name, hospitals.name), "
            "admdvs = coalesce(excluded.admdvs, hospitals.admdvs), updated_at = excluded.updated_at, "
            "lat = coalesce(excluded.lat, hospitals.lat), lon = coalesce(excluded.lon, hospitals.lon), "
            "x_km = coalesce(excluded.x_km, hospitals.x_km), y_km = coalesce(excluded.y_km, hospitals.y_km)",
            (hospital, grade, name.strip() if name else None, admdvs, now_iso(), lat, lon, x_km, y_km),
        )
        lines = conn.execute(
            "UPDATE hist_lines SET hosp_lv = ? WHERE fixmedins_code = ? AND hosp_lv IS NOT ?",
            (grade, hospital, grade),
        ).rowcount
        visits = conn.execute(
            "UPDATE hist_visits SET hosp_lv = ? WHERE fixmedins_code = ? AND hosp_lv IS NOT ?",
            (grade, hospital, grade),
        ).rowcount
        row = conn.execute(
            f"SELECT {', '.join(HOSPITAL_COLUMNS)} FROM hospitals WHERE fixmedins_code = ?", (hospital,)
        ).fetchone()
        held = dict(zip(HOSPITAL_COLUMNS, row, strict=True))
        detail = {
            "hospital": hospital, "hosp_lv": grade, "previous_hosp_lv": before[0] if before else None,
            "name": held["name"], "admdvs": held["admdvs"], "lines_updated": lines,
        }  # fmt: skip
        if lat is not None:
            detail |= {"lat": lat, "lon": lon}
        audit_in(conn, actor, "hospital.set", detail)
        return {**held, "lines_updated": lines, "visits_updated": visits}

    return store.write(tx)


def list_hospitals(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(f"SELECT {', '.join(HOSPITAL_COLUMNS)} FROM hospitals ORDER BY fixmedins_code")
    return [dict(zip(HOSPITAL_COLUMNS, row, strict=True)) for row in rows]
