"""What the centre knows of each hospital: its grade (``hosp_lv``), name and administrative division.

Rules:

1. ``hosp_lv`` is one of ``central.policy.documents.HOSP_LEVELS`` ("1", "2", "3" grades, "0" ungraded),
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

import csv
import math
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from central.errors import ConfigInvalid
from central.policy.bundles import Actor, audit_in
from central.policy.documents import HOSP_LEVELS
from central.storage.store import Store, now_iso

from .enrol import check_hospital_code

__all__ = [
    "HOSPITAL_COLUMNS",
    "HospitalSpec",
    "list_hospitals",
    "plane_km",
    "read_hospitals_csv",
    "set_hospital",
    "set_hospitals",
]

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
    spec = HospitalSpec(hospital, hosp_lv, name, admdvs, lat, lon)
    spec.check()
    return store.write(lambda conn: spec.apply(conn, actor))


@dataclass(frozen=True, slots=True)
class HospitalSpec:
    """One hospital as an operator gives it (``hospitals set`` or a row of ``hospitals import``)."""

    hospital: str
    hosp_lv: str | None
    name: str | None = None
    admdvs: str | None = None
    lat: float | None = None
    lon: float | None = None

    def check(self) -> None:
        """Every check that needs no database, so a file of them is refused before anything is written."""
        check_hospital_code(self.hospital)
        if self.hosp_lv is not None and self.hosp_lv not in HOSP_LEVELS:
            raise ConfigInvalid(
                f"--level must be one of {', '.join(HOSP_LEVELS)} (0: ungraded), not {self.hosp_lv!r}"
            )
        _check_coordinates(self.lat, self.lon)
        if self.name is not None and not 1 <= len(self.name.strip()) <= 200:
            raise ConfigInvalid("--name must be 1-200 characters")
        if self.admdvs is not None and not _ADMDVS.match(self.admdvs):
            raise ConfigInvalid(
                f"--admdvs {self.admdvs!r} must be a 6-digit administrative division like 370211"
            )

    def apply(self, conn: sqlite3.Connection, actor: Actor) -> dict[str, Any]:
        """The change and its audit entry, in the caller's transaction."""
        hospital, lat, lon, name = self.hospital, self.lat, self.lon, self.name
        x_km, y_km = plane_km(lat, lon) if lat is not None and lon is not None else (None, None)
        before = conn.execute(
            "SELECT hosp_lv FROM hospitals WHERE fixmedins_code = ?", (hospital,)
        ).fetchone()
        grade = self.hosp_lv if self.hosp_lv is not None else (before[0] if before else None)
        if grade is None:
            raise ConfigInvalid(f"hospital {hospital} is not known yet: give its --level (0-3)")
        conn.execute(
            "INSERT INTO hospitals (fixmedins_code, hosp_lv, name, admdvs, updated_at, lat, lon, x_km, y_km) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (fixmedins_code) DO UPDATE SET "
            "hosp_lv = excluded.hosp_lv, name = coalesce(excluded.name, hospitals.name), "
            "admdvs = coalesce(excluded.admdvs, hospitals.admdvs), updated_at = excluded.updated_at, "
            "lat = coalesce(excluded.lat, hospitals.lat), lon = coalesce(excluded.lon, hospitals.lon), "
            "x_km = coalesce(excluded.x_km, hospitals.x_km), y_km = coalesce(excluded.y_km, hospitals.y_km)",
            (hospital, grade, name.strip() if name else None, self.admdvs, now_iso(), lat, lon, x_km, y_km),
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


_FILE_COLUMNS = ("fixmedins_code", "hosp_lv", "name", "admdvs", "lat", "lon")


def read_hospitals_csv(path: Path) -> list[HospitalSpec]:
    """A registration file (header ``fixmedins_code,hosp_lv,name,admdvs,lat,lon``; empty = keep), every row
    checked; the first bad row is refused with its number, so nothing of a bad file is applied."""
    with path.open("r", encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        unknown = [h for h in header if h not in _FILE_COLUMNS]
        if "fixmedins_code" not in header or unknown:
            raise ConfigInvalid(
                f"{path.name}: the header must name fixmedins_code and only {', '.join(_FILE_COLUMNS)}"
                + (f" (unknown: {', '.join(unknown)})" if unknown else "")
            )
        specs: list[HospitalSpec] = []
        seen: set[str] = set()
        for number, row in enumerate(reader, start=2):
            cells = {k.strip(): (v or "").strip() or None for k, v in row.items() if k is not None}
            try:
                lat, lon = (float(cells[k]) if cells.get(k) else None for k in ("lat", "lon"))
                spec = HospitalSpec(
                    cells["fixmedins_code"] or "", cells.get("hosp_lv"), cells.get("name"),
                    cells.get("admdvs"), lat, lon,
                )  # fmt: skip
                spec.check()
            except (ConfigInvalid, ValueError) as exc:
                message = exc.message if isinstance(exc, ConfigInvalid) else f"lat/lon: {exc}"
                raise ConfigInvalid(f"{path.name} line {number}: {message}; nothing was registered") from None
            if spec.hospital in seen:
                raise ConfigInvalid(f"{path.name} line {number}: {spec.hospital} is listed twice")
            seen.add(spec.hospital)
            specs.append(spec)
    return specs


def set_hospitals(store: Store, actor: Actor, specs: list[HospitalSpec]) -> list[dict[str, Any]]:
    """Register many hospitals in one transaction: all of them, or (any refused) none."""

    def tx(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        out = []
        for spec in specs:
            try:
                out.append(spec.apply(conn, actor))
            except ConfigInvalid as exc:
                raise ConfigInvalid(f"{exc.message}; nothing was registered") from None
        return out

    return store.write(tx)


def list_hospitals(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(f"SELECT {', '.join(HOSPITAL_COLUMNS)} FROM hospitals ORDER BY fixmedins_code")
    return [dict(zip(HOSPITAL_COLUMNS, row, strict=True)) for row in rows]
