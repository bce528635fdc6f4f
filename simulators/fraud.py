"""Labelled fraud in realistic HIS traffic: one pattern per monitoring template, and its honest twin.

The centre's screening (``docs/MONITORING.md``) is only as good as its measured recall and
precision, and those need traffic whose truth is known. ``generate_traffic`` builds a few days of
settlements for three simulated hospitals: honest background, fraud cases (one pattern per
template 1-11 and 13-18, plus mixtures: one settlement with two patterns) and **honest
look-alikes** that sit just on the safe side of each threshold (a readmission two days after the
window, two hospitals close together, a cost at 0.8 × the peer ratio, an overlap one day short…).
Every case is written to the ground truth with its label, so a look-alike the rules flag counts
against precision exactly as a background false positive does.

Pure and seeded like ``simulators.his.generate_settlement``: the same seed, size, rate and
``today`` give byte-identical bodies, truth and deaths file. The catalogue knowledge (limits,
restrictions, interactions) comes from the catalogue document the centre publishes
(``docs/samples/catalogue.json`` by default); the thresholds come from ``docs/samples/
monitoring_rules.json`` (``RULE_PARAMS`` below is that file's parameters, and a test holds them
together).

**Time.** The agent stamps ``setl_time`` itself when the HIS posts (``agent.intake``), so every
settlement of a run carries the run's date as ``setl_date``, whatever the visit's times say. The
simulated days therefore live in the HIS times (``begntime``/``endtime``/``fee_ocur_time``): the
cases' outpatient visits happen on ``today``, the background clinics over the week before, stays
were admitted days or weeks earlier, a readmission follows a discharge by so many days, a death
precedes the card's next use. Every pattern holds both ways a centre may see it: all settled the
run's day (the benchmark's agents) or each settled at its visit's end (an agent that settles as
the visit closes; ``tests/simulators/test_fraud.py`` screens both). That shapes a few of them: a
multi-hospital case happens the same day (doctor shopping does), an impersonation pair is minutes
apart, the excessive-cost rule has an absolute cap beside its peer ratio (its peers are the days
*before* the visit's settlement, which a one-day run does not have), and a case's visits are
posted in the order they happened (``Planned.wave``).

**Honest background** must not trip the rules, or it would be noise in the precision figure:
each background person is seen once (repeat patients are what the fraud cases and look-alikes
are about), and each background bill is made to comply with the catalogue the way a careful
prescriber's would (``_comply``: days of supply within the limit, restricted items only where
allowed, no interacting pair, no item billed with the item that includes it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from protocol.rules import Knowledge, load_knowledge

from . import _catalogue as cat
from .his import CST, Insured, _Lines, _outpatient, id_check_digit

__all__ = [
    "HOSPITALS",
    "IDLE_CODES",
    "PATTERNS",
    "RULE_PARAMS",
    "Case",
    "Planned",
    "SimHospital",
    "Traffic",
    "default_knowledge",
    "generate_traffic",
    "km_between",
    "post_traffic",
    "score_detection",
]

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "docs" / "samples"
_FEN = Decimal("0.01")


# --- hospitals -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimHospital:
    """A simulated hospital with its grade and where it is (so impersonation can be judged)."""

    code: str
    name: str
    hosp_lv: str
    lat: float
    lon: float

    @property
    def admdvs(self) -> str:
        return self.code[1:7]

    def plane(self) -> tuple[float, float]:
        """The centre's local plane (docs/MONITORING.md): ``x = lon·111.32·cos(lat)``, ``y = lat·110.574``."""
        return self.lon * 111.32 * math.cos(math.radians(self.lat)), self.lat * 110.574


def km_between(a: SimHospital, b: SimHospital) -> float:
    """Distance on the centre's plane, as the impersonation template computes it."""
    (ax, ay), (bx, by) = a.plane(), b.plane()
    return math.hypot(ax - bx, ay - by)


#: H1 and H2 are in the same district (~2.5 km apart), H3 is in Pingdu (~90 km away). Multi-hospital
#: patterns use H1 and H2, so only impersonation (and its mixtures) puts one person at H3 the same day.
HOSPITALS: tuple[SimHospital, ...] = (
    SimHospital("H37021100001", "West Coast People's Hospital", "3", 35.9606, 120.1980),
    SimHospital("H37021100002", "Huangdao District Hospital", "2", 35.9640, 120.2255),
    SimHospital("H37028300003", "Pingdu People's Hospital", "3", 36.7845, 119.9885),
)


# --- thresholds (docs/samples/monitoring_rules.json) -----------------------------------------

#: Bed, nursing grades, the ward round and the class C air-conditioning surcharge: billed every day
#: of a stay whether or not the patient is treated. Bed-hanging counts days without anything else.
IDLE_CODES: tuple[str, ...] = (
    "001109000010000",
    "001201000010000",
    "001201000020000",
    "001201000030000",
    "001103000010000",
    "009900000010000",
)

#: The parameters of the monitoring rules the patterns are built against (template → params, plus
#: ``window_days`` for the two windowed templates). ``tests/simulators/test_fraud.py`` checks that
#: ``docs/samples/monitoring_rules.json`` says the same.
RULE_PARAMS: dict[str, dict[str, Any]] = {
    "duplicate_medication": {"match": "class", "min_overlap_days": 7, "window_days": 90},
    "over_quantity": {"chronic_med_types": ["14"]},
    "frequency_limit": {},
    "repeated_charge": {},
    "gender_restricted": {},
    "age_restricted": {},
    "restricted_indication": {},
    "price_over_ceiling": {"tolerance_fen": 0},
    "not_in_catalogue": {"class_c": False},
    "drug_interaction": {"min_severity": "major", "window_days": 30},
    "frequent_visits": {"max_visits": 4, "days": 7, "med_types": ["11"]},
    "readmission": {"within_days": 15, "same_hospital": False, "related": "category"},
    "impersonation_distance": {"max_minutes": 30, "min_km": 50},
    "care_after_death": {"grace_days": 0},
    "bed_hanging": {"min_idle_days": 3, "idle_codes": list(IDLE_CODES)},
    "excessive_cost": {
        "max_fen": 50000,
        "peer_ratio": "8",
        "peer_days": 365,
        "min_peers": 20,
        "med_types": ["11"],
    },
    "peer_outlier": {"measure": "visits_per_patient", "ratio": "2", "days": 90, "min_visits": 20},
}

#: Template name → number, in the order the benchmark reports them.
PATTERNS: dict[str, int] = {
    "duplicate_medication": 1,
    "over_quantity": 2,
    "frequency_limit": 3,
    "repeated_charge": 4,
    "gender_restricted": 5,
    "age_restricted": 6,
    "restricted_indication": 7,
    "price_over_ceiling": 8,
    "not_in_catalogue": 9,
    "drug_interaction": 10,
    "frequent_visits": 11,
    "readmission": 13,
    "impersonation_distance": 14,
    "care_after_death": 15,
    "bed_hanging": 16,
    "excessive_cost": 17,
    "peer_outlier": 18,
}

_SEVERITY_RANK = {"minor": 0, "moderate": 1, "major": 2, "contraindicated": 3}


@lru_cache(maxsize=4)
def default_knowledge(path: str = str(SAMPLES / "catalogue.json")) -> Knowledge:
    """The catalogue the centre publishes for the monitoring benchmark, as the rules read it."""
    return load_knowledge(json.loads(Path(path).read_text(encoding="utf-8")))


# --- items -----------------------------------------------------------------------------------

# Codes the patterns use beyond the HIS simulator's own catalogue (all in docs/samples/catalogue.json).
TCT = "002705010010000"  # cervical cytology, women only
PSA = "002503080020000"  # prostate-specific antigen, men only
PROGESTERONE = "XG03DAP078B002010100156"  # women only
PARACETAMOL_DROPS = "XN02BEA004L001010101902"  # children up to 12
AMOXICILLIN_GRANULES = "XJ01CAA040X001010100563"  # children up to 14
ALT = "002503010020000"  # included in the liver function panel
LIVER_PANEL = "002503010150000"
GENERAL_CONSULT = "001102000010000"
SPECIALIST_CONSULT = "001102000030000"
CBC = "002501010150000"
CT_CHEST = "002103000010000"
NEBULISER = "003110000010000"
BED = "001109000010000"
NURSING = "001201000030000"
ROUND = "001103000010000"
INFUSION = "001204000060000"
INFUSION_SET = "C1401020100000012210"
SYRINGE = "C1401010100000004570"
CANNULA = "C1402010200000003416"
TUBE = "C1405020100000002104"
COLD_COMPRESS = "C1602010100000001136"  # class C
AC_SURCHARGE = "009900000010000"  # class C
OMEPRAZOLE = "XA02BCA211A010010102134"
CLOPIDOGREL = "XB01ACL057A001010101245"
DOMPERIDONE = "XA03FAD076A001010101132"
METOPROLOL = "XC07ABM086A012010104470"
INSULIN = "XA10AEG067B002010183412"
ACARBOSE = "XA10BFA022A001010102861"
AMLODIPINE = "XC08CAA077A001010100001"
NIFEDIPINE = "XC08CAN062A012010100455"
ROSUVASTATIN = "XC10AAR124A001010100786"
DANSHEN = "ZA12GAD0402010101553"
CEFUROXIME = "XJ01DCF064A001010100553"
#: Items that are not in the catalogue: what a hospital bills when it claims something the fund
#: does not list (an imported dressing, a self-priced therapy, an unlisted supplement). Cheap
#: enough that the visit is not also an excessive cost.
NOT_LISTED: tuple[tuple[str, str, str, str], ...] = (
    ("C9999010100000009901", "silver ion antibacterial dressing 10cm x 10cm", "301", "86.00"),
    ("009999000090000", "acupoint application therapy (self-priced)", "201", "38.00"),
    ("XA11DBV999A001010109999", "compound vitamin B1 tablets x 100 (imported)", "101", "28.50"),
)
#: Tests an over-examining doctor adds, dearest first (each at most once a visit; none restricted).
WORKUP = (
    CT_CHEST,
    "002102000010000",
    "002203010010000",
    LIVER_PANEL,
    "002503030030000",
    "002503050010000",
    "002504030020000",
    "003107010010000",
    CBC,
    "002501020350000",
    "002503010010000",
    "002503020010000",
    "002503020030000",
    "002103000020000",
)

_CONDITIONS = {c.dise_codg: c for c in cat.CONDITIONS}
_EXTRA_NAMES = {code: (name, lt, pric) for code, name, lt, pric in NOT_LISTED}


def _price_of(code: str, kb: Knowledge, hosp_lv: str = "1") -> str:
    if code in cat.ALL_ITEMS:
        return cat.ALL_ITEMS[code].pric
    if code in _EXTRA_NAMES:
        return _EXTRA_NAMES[code][2]
    fen = kb.items[code].price_ceiling.get(hosp_lv) or kb.items[code].price_ceiling.get("1", 100)
    return f"{fen // 100}.{fen % 100:02d}"


def _qty_text(cnt: Decimal) -> str:
    return format(cnt.normalize(), "f") if cnt != cnt.to_integral_value() else str(int(cnt))


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


class _Bill:
    """Detail lines of one settlement; a code may repeat (per-day lines), totals exact as the protocol's."""

    def __init__(self, kb: Knowledge) -> None:
        self.kb = kb
        self.lines: list[dict[str, Any]] = []

    def add(
        self,
        code: str,
        cnt: Decimal | int | str,
        *,
        days: int | None = None,
        when: datetime | None = None,
        pric: str | None = None,
        hosp_lv: str = "1",
    ) -> dict[str, Any]:
        cnt = Decimal(cnt)
        item = cat.ALL_ITEMS.get(code)
        kb_item = self.kb.items.get(code)
        if item is not None:
            name, list_type, lv = item.name, item.list_type, item.chrgitm_lv
        elif kb_item is not None:
            name, list_type, lv = kb_item.name, kb_item.list_type, kb_item.item_class
        else:
            name, list_type, _p = _EXTRA_NAMES[code]
            lv = "C"
        price = pric or _price_of(code, self.kb, hosp_lv)
        amount = (cnt * Decimal(price)).quantize(_FEN, rounding=ROUND_HALF_UP)
        line: dict[str, Any] = {
            "feedetl_sn": "",
            "list_type": list_type,
            "med_list_codg": code,
            "medins_list_name": name,
            "cnt": _qty_text(cnt),
            "pric": price,
            "det_item_fee_sumamt": str(amount),
        }
        if list_type in ("101", "102", "103"):
            line["days"] = max(1, days or 1)
            if item is not None and item.dosage:
                line["dosage"] = item.dosage
        line["chrgitm_lv"] = lv
        if when is not None:
            line["fee_ocur_time"] = when.isoformat()
        self.lines.append(line)
        return line

    def add_drug(self, code: str, supply_days: int, *, when: datetime | None = None) -> dict[str, Any]:
        """Whole packs for ``supply_days`` (the days the packs last, as the HIS computes them)."""
        item = cat.DRUGS[code]
        packs = max(1, math.ceil(supply_days * item.units_per_day / item.pack_units))
        days = max(1, packs * item.pack_units // item.units_per_day)
        return self.add(code, packs, days=days, when=when)

    def total(self) -> Decimal:
        return sum((Decimal(ln["det_item_fee_sumamt"]) for ln in self.lines), Decimal("0.00"))


def _renumber(lines: list[dict[str, Any]]) -> None:
    for i, line in enumerate(lines, start=1):
        line["feedetl_sn"] = str(i)


# --- honest bills: what a careful prescriber sends --------------------------------------------


def _age_on(brdy: str, day: date) -> int:
    born = date.fromisoformat(brdy)
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def _allowed(kb: Knowledge, code: str, psn: dict[str, str], dises: Sequence[str], day: date) -> bool:
    item = kb.items.get(code)
    if item is None:
        return False
    if item.gender and psn["gend"] in ("1", "2") and psn["gend"] != item.gender:
        return False
    age = _age_on(psn["brdy"], day)
    if (item.age_min is not None and age < item.age_min) or (item.age_max is not None and age > item.age_max):
        return False
    return not item.indications or any(d.startswith(p) for d in dises for p in item.indications)


def _interacts(kb: Knowledge, a: str, b: str, min_rank: int = 0) -> bool:
    ia, ib = kb.items.get(a), kb.items.get(b)
    if ia is None or ib is None:
        return False
    sides_a = {a, ia.drug_class} - {None}
    sides_b = {b, ib.drug_class} - {None}
    for x in kb.interactions:
        if _SEVERITY_RANK[x.severity] < min_rank:
            continue
        if (x.a in sides_a and x.b in sides_b) or (x.b in sides_a and x.a in sides_b):
            return True
    return False


def _day_limit(kb: Knowledge, code: str, med_type: str) -> int | None:
    item = kb.items.get(code)
    if item is None:
        return None
    chronic = med_type in RULE_PARAMS["over_quantity"]["chronic_med_types"]
    return item.max_days_chronic if chronic else item.max_days_acute


def _comply(
    kb: Knowledge,
    lines: list[dict[str, Any]],
    med_type: str,
    psn: dict[str, str],
    dises: Sequence[str],
    day: date,
) -> list[dict[str, Any]]:
    """The bill a careful prescriber sends: only what the catalogue allows this person and visit.

    Drops restricted items the person or diagnosis does not qualify for, the second drug of an
    interacting pair and an item billed with the item that includes it; cuts a drug's packs to
    the days of supply allowed (one pack that lasts longer is dispensed for the allowed days).
    """
    kept: list[dict[str, Any]] = []
    for line in lines:
        code = line["med_list_codg"]
        if not _allowed(kb, code, psn, dises, day):
            continue
        if any(_interacts(kb, code, k["med_list_codg"]) for k in kept):
            continue
        codes = {k["med_list_codg"] for k in kept}
        if any((m in codes and i == code) or (i in codes and m == code) for m, i in kb.exclusive_pairs):
            continue
        limit = _day_limit(kb, code, med_type)
        if "days" in line and limit is not None and line["days"] > limit and code in cat.DRUGS:
            item = cat.DRUGS[code]
            packs = limit * item.units_per_day // item.pack_units
            if packs >= 1:
                cnt, days = Decimal(packs), packs * item.pack_units // item.units_per_day
            else:
                cnt, days = Decimal(1), limit
            amount = (cnt * Decimal(line["pric"])).quantize(_FEN, rounding=ROUND_HALF_UP)
            line = {**line, "cnt": _qty_text(cnt), "days": days, "det_item_fee_sumamt": str(amount)}
        item = kb.items[code]
        if "days" in line and item.max_cnt_per_day is not None:
            if Decimal(line["cnt"]) > item.max_cnt_per_day * line["days"]:
                continue
        kept.append(line)
    return kept


# --- people ----------------------------------------------------------------------------------


class _People:
    """Fresh, unique insured persons: each background visit and each case gets its own."""

    def __init__(self, rng: random.Random, today: date) -> None:
        self.rng, self.today = rng, today
        self.used: set[str] = set()

    def make(
        self,
        admdvs: str,
        *,
        age: int | None = None,
        born: date | None = None,
        male: bool | None = None,
        older: bool = False,
    ) -> dict[str, str]:
        rng = self.rng
        while True:
            if born is None:
                years = age if age is not None else (rng.randint(45, 90) if older else rng.randint(18, 90))
                birth = date(self.today.year - years - 1, 1, 1) + timedelta(days=rng.randrange(365))
                if age is not None:  # make sure of the age on ``today``
                    birth = _birthday(self.today, years) - timedelta(days=rng.randint(1, 300))
            else:
                birth = born
            is_male = rng.random() < 0.48 if male is None else male
            serial = rng.randrange(0, 500) * 2 + (1 if is_male else 0)
            first17 = f"{admdvs}{birth:%Y%m%d}{serial:03d}"
            psn_no = first17 + id_check_digit(first17)
            if psn_no not in self.used:
                self.used.add(psn_no)
                break
        years_now = _age_on(birth.isoformat(), self.today)
        retired = years_now >= (60 if is_male else 55)
        return Insured(
            psn_no=psn_no,
            card_sn=f"{rng.choice('ABCDE')}{rng.randrange(10**8):08d}",
            insutype="390" if years_now < 18 or rng.random() < 0.4 else "310",
            insuplc_admdvs=admdvs,
            psn_type="21" if retired else "11",
            gend="1" if is_male else "2",
            brdy=birth.isoformat(),
        ).as_psn()


def _birthday(day: date, years: int) -> date:
    """The date ``years`` before ``day`` (28 February for 29 February in a common year)."""
    try:
        return day.replace(year=day.year - years)
    except ValueError:
        return day.replace(year=day.year - years, day=28)


# --- the plan --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Planned:
    """One body to post to the agent of ``hospital``; ``case`` names the case it belongs to, if any.

    ``wave``: a case's visits in the order they happened (0 the first); ``post_traffic`` posts wave
    by wave, so an earlier stay is settled (and stamped by its agent) before the later one.
    """

    hospital: str
    body: dict[str, Any]
    case: str | None = None
    wave: int = 0


@dataclass
class Case:
    """One injected case: what it is, who it concerns, which settlements, and its label."""

    case_id: str
    pattern: str  # a template name, or "mixture"
    templates: tuple[str, ...]
    label: str  # fraud | honest_lookalike
    object_type: str
    object_id: str
    his_setl_nos: list[str]
    hospitals: list[str]
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case_id,
            "pattern": self.pattern,
            "templates": list(self.templates),
            "template_numbers": [PATTERNS[t] for t in self.templates],
            "label": self.label,
            "object_type": self.object_type,
            "object_id": self.object_id,
            "his_setl_nos": self.his_setl_nos,
            "hospitals": self.hospitals,
            "detail": self.detail,
        }


@dataclass
class Traffic:
    """A run's settlements in posting order, its ground truth, deaths and hospitals."""

    seed: int
    today: date
    hospitals: tuple[SimHospital, ...]
    planned: list[Planned]
    cases: list[Case]
    deaths: list[tuple[str, str, str]]  # psn_no, death_date, source

    def truth_lines(self) -> list[str]:
        return [json.dumps(c.to_json(), ensure_ascii=False, sort_keys=True) for c in self.cases]

    def deaths_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["psn_no", "death_date", "source"])
        writer.writerows(self.deaths)
        return out.getvalue()

    def hospitals_json(self) -> list[dict[str, Any]]:
        return [
            {"fixmedins_code": h.code, "name": h.name, "hosp_lv": h.hosp_lv, "lat": h.lat, "lon": h.lon}
            for h in self.hospitals
        ]

    def write(self, directory: Path) -> dict[str, Path]:
        """``settlements.jsonl`` (hospital + body), ``truth.jsonl``, ``deaths.csv``, ``hospitals.json``."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = {
            "settlements": directory / "settlements.jsonl",
            "truth": directory / "truth.jsonl",
            "deaths": directory / "deaths.csv",
            "hospitals": directory / "hospitals.json",
        }
        with paths["settlements"].open("w", encoding="utf-8") as out:
            for p in self.planned:
                row = {"hospital": p.hospital, "case": p.case, "wave": p.wave, "body": p.body}
                out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
        paths["truth"].write_text("".join(line + "\n" for line in self.truth_lines()), encoding="utf-8")
        paths["deaths"].write_text(self.deaths_csv(), encoding="utf-8")
        paths["hospitals"].write_text(json.dumps(self.hospitals_json(), indent=2) + "\n", encoding="utf-8")
        return paths


# --- the generator ---------------------------------------------------------------------------


def _at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=CST)


def _dept_index(dept: str) -> int:
    return sum(ord(ch) for ch in dept) % 100


class _Gen:
    """State of one generation: the generator, people, serials, and what has been planned."""

    #: Outpatient doctors per department and hospital (so the background doctors see enough
    #: patients to be judged by the peer-outlier rule); inpatients are seen by ward doctors 8-9.
    CLINIC_DOCTORS = 3

    def __init__(self, seed: int, today: date, kb: Knowledge, hospitals: tuple[SimHospital, ...]) -> None:
        self.rng = random.Random(f"yibao-fraud-{seed}")
        self.seed, self.today, self.kb = seed, today, kb
        self.hospitals = hospitals
        self.by_code = {h.code: h for h in hospitals}
        self.h1, self.h2, self.h3 = hospitals[0], hospitals[1], hospitals[2]
        self.people = _People(random.Random(f"yibao-fraud-people-{seed}"), today)
        self.serial = 0
        self.planned: list[Planned] = []
        self.cases: list[Case] = []
        self.deaths: list[tuple[str, str, str]] = []
        self.counts: Counter[str] = Counter()

    # -- bodies --

    def doctor(self, hospital: SimHospital, dept: str, k: int | None = None) -> str:
        k = k if k is not None else self.rng.randint(1, self.CLINIC_DOCTORS)
        return f"D{hospital.admdvs}{_dept_index(dept):02d}{k:04d}"

    def body(
        self,
        hospital: SimHospital,
        psn: dict[str, str],
        lines: list[dict[str, Any]],
        *,
        med_type: str,
        dise: str,
        dise_name: str,
        dept: str,
        begin: datetime,
        end: datetime,
        dr: str | None = None,
        ipt_days: int | None = None,
    ) -> dict[str, Any]:
        self.serial += 1
        serial = f"{end:%Y%m%d}-s{self.seed}-{self.serial:06d}"
        _renumber(lines)
        total = sum((Decimal(ln["det_item_fee_sumamt"]) for ln in lines), Decimal("0.00"))
        mdtrt: dict[str, Any] = {
            "mdtrt_id": f"MDT-{serial}",
            "med_type": med_type,
            "begntime": begin.isoformat(),
            "endtime": end.isoformat(),
            "dise_codg": dise,
            "dise_name": dise_name,
            "dept_codg": dept,
            "dr_codg": dr or self.doctor(hospital, dept),
        }
        if ipt_days is not None:
            mdtrt["ipt_days"] = ipt_days
        cashier = self.rng.randint(1, 12)
        return {
            "fixmedins_code": hospital.code,
            "his_setl_no": f"HIS-{serial}",
            "psn": psn,
            "mdtrt": mdtrt,
            "feedetl": lines,
            "medfee_sumamt": str(total),
            "opter": f"C{cashier:04d}",
            "opter_name": f"cashier {cashier}",
        }

    def plan(
        self, hospital: SimHospital, body: dict[str, Any], case: str | None = None, wave: int = 0
    ) -> str:
        self.planned.append(Planned(hospital.code, body, case, wave))
        return body["his_setl_no"]

    def clinic_time(self, day: date | None = None) -> tuple[datetime, datetime]:
        end = _at(day or self.today, 8) + timedelta(minutes=self.rng.randint(0, 9 * 60 + 30))
        return end - timedelta(minutes=self.rng.randint(3, 45)), end

    # -- honest visits --

    def honest_outpatient(
        self,
        hospital: SimHospital,
        *,
        med_type: str | None = None,
        psn: dict[str, str] | None = None,
        day: date | None = None,
        cond: cat.Condition | None = None,
        dr: str | None = None,
    ) -> dict[str, Any]:
        rng = self.rng
        med_type = med_type or rng.choices(("11", "14", "41"), (70, 12, 10))[0]
        his_lines = _Lines()
        while True:
            his_lines = _Lines()
            got = _outpatient(rng, his_lines, med_type)
            if cond is None or got.dise_codg == cond.dise_codg:
                cond = got
                break
        day = day or self.today
        if psn is None:
            psn = self.people.make(hospital.admdvs, older=cond.chronic)
        lines = _comply(self.kb, [dict(ln) for ln in his_lines.lines], med_type, psn, [cond.dise_codg], day)
        if not lines:  # a pharmacy purchase of nothing the person may have: the pharmacist's advice
            lines = [_Bill(self.kb).add(GENERAL_CONSULT, 1)]
        dept = "A61" if med_type == "41" else cond.dept_codg
        begin, end = self.clinic_time(day)
        return self.body(
            hospital,
            psn,
            lines,
            med_type=med_type,
            dise=cond.dise_codg,
            dise_name=cond.dise_name,
            dept=dept,
            begin=begin,
            end=end,
            dr=dr,
        )

    def stay_lines(
        self,
        cond: cat.Condition,
        admitted: datetime,
        ipt_days: int,
        psn: dict[str, str],
        *,
        treat_days: Iterable[int] | None = None,
        take_home: bool = True,
        nebulise_per_day: int = 2,
        imaging: bool = True,
    ) -> list[dict[str, Any]]:
        """Per-day lines of an inpatient stay, each with ``fee_ocur_time``.

        ``imaging=False`` leaves out the tests limited to one per period (a CT a week, an HbA1c a
        quarter): a readmission does not repeat the scan of the stay before.

        Bed, nursing and the ward round every day (the idle codes); infusions, injections and
        nebulisation on the treatment days; tests on the first treatment day; surgery on the
        day of admission; drugs to take home on the day of discharge.
        """
        rng, bill = self.rng, _Bill(self.kb)
        first = admitted.date()
        days = [first + timedelta(days=i) for i in range(ipt_days)]
        if treat_days is None:
            treat_days = range(max(1, ipt_days - rng.randint(0, 2)))
        treat = sorted(set(treat_days))
        surcharge = rng.random() < 0.3
        for day in days:
            bill.add(BED, 1, when=_at(day, 7, 30))
            bill.add(NURSING, 1, when=_at(day, 8))
            bill.add(ROUND, 1, when=_at(day, 9))
            if surcharge:
                bill.add(AC_SURCHARGE, 1, when=_at(day, 7, 30))
        infused = [c for c in cond.drugs if "iv" in cat.DRUGS[c].dosage] or ["XB05BBS011B002010100076"]
        oral = [c for c in cond.drugs if c not in infused]
        for i in treat:
            day = first + timedelta(days=i)
            for code in infused:
                item = cat.DRUGS[code]
                if _allowed(self.kb, code, psn, [cond.dise_codg], day):
                    bill.add(code, item.units_per_day, days=1, when=_at(day, 10))
            bill.add(INFUSION, 1, when=_at(day, 10))
            bill.add(INFUSION_SET, 1, when=_at(day, 10))
            bill.add(SYRINGE, rng.randint(1, 3), when=_at(day, 10))
            if NEBULISER in cond.inpatient_extras:
                bill.add(NEBULISER, nebulise_per_day, when=_at(day, 15))
        t0 = first + timedelta(days=treat[0] if treat else 0)
        bill.add(CANNULA, 1 + ipt_days // 5, when=_at(t0, 10))
        draws = 0
        for code in cond.tests:
            per = self.kb.items[code].frequency
            if not imaging and per is not None and per[0].startswith("period_days:"):
                continue
            bill.add(code, 1, when=_at(t0, 8, 30))
            draws += code.startswith("0025")
        if draws:
            bill.add(TUBE, draws, when=_at(t0, 8, 30))
        if "003310030010000" in cond.inpatient_extras:
            bill.add("003301000030000", 1, when=_at(first, 14))
            bill.add("003310030010000", 1, when=_at(first, 14))
            bill.add("C0207010200000007733", rng.randint(1, 2), when=_at(first, 14))
            bill.add("C1403010100000000982", rng.randint(4, 12), when=_at(first, 14))
        discharge = first + timedelta(days=ipt_days)
        if take_home:
            for code in oral[: rng.randint(1, len(oral))] if oral else []:
                bill.add_drug(code, 7, when=_at(discharge, 10))
        return _comply(self.kb, bill.lines, "21", psn, [cond.dise_codg], discharge)

    def honest_inpatient(
        self,
        hospital: SimHospital,
        *,
        psn: dict[str, str] | None = None,
        cond: cat.Condition | None = None,
        discharge: date | None = None,
        ipt_days: int | None = None,
        take_home: bool = True,
        treat_days: Iterable[int] | None = None,
        nebulise_per_day: int = 2,
        imaging: bool = True,
    ) -> dict[str, Any]:
        rng = self.rng
        cond = cond or rng.choice(cat.INPATIENT_CONDITIONS)
        ipt_days = ipt_days or rng.randint(3, 14)
        discharge = discharge or self.today - timedelta(days=rng.randint(0, 6))
        psn = psn or self.people.make(hospital.admdvs, older=True)
        admitted = _at(discharge - timedelta(days=ipt_days), 7) + timedelta(minutes=rng.randint(0, 15 * 60))
        end = _at(discharge, 9) + timedelta(minutes=rng.randint(0, 6 * 60))
        lines = self.stay_lines(
            cond,
            admitted,
            ipt_days,
            psn,
            treat_days=treat_days,
            take_home=take_home,
            nebulise_per_day=nebulise_per_day,
            imaging=imaging,
        )
        return self.body(
            hospital,
            psn,
            lines,
            med_type="21",
            dise=cond.dise_codg,
            dise_name=cond.dise_name,
            dept=cond.dept_codg,
            begin=admitted,
            end=end,
            ipt_days=ipt_days,
            dr=self.doctor(hospital, cond.dept_codg, rng.randint(8, 9)),
        )

    def background(self, n: int) -> None:
        weights = (45, 45, 10) if len(self.hospitals) >= 3 else (50, 50)
        for _ in range(n):
            hospital = self.rng.choices(self.hospitals, weights[: len(self.hospitals)])[0]
            if self.rng.random() < 0.08:
                body = self.honest_inpatient(hospital)
            else:  # the week's clinics (the cases happen today: their peers came before)
                body = self.honest_outpatient(
                    hospital, day=self.today - timedelta(days=self.rng.randint(0, 6))
                )
            self.plan(hospital, body)

    # -- cases --

    def case(
        self,
        pattern: str,
        templates: Sequence[str],
        label: str,
        object_id: str,
        bodies: Sequence[tuple[SimHospital, dict[str, Any]]],
        *,
        object_type: str = "person",
        **detail: Any,
    ) -> Case:
        self.counts[pattern + label] += 1
        case_id = f"{'F' if label == 'fraud' else 'L'}-{pattern}-{self.counts[pattern + label]:02d}"
        order = sorted(range(len(bodies)), key=lambda i: (bodies[i][1]["mdtrt"]["endtime"], i))
        wave = {i: n for n, i in enumerate(order)}
        nos = [self.plan(h, b, case_id, wave[i]) for i, (h, b) in enumerate(bodies)]
        c = Case(
            case_id,
            pattern,
            tuple(templates),
            label,
            object_type,
            object_id,
            nos,
            sorted({h.code for h, _ in bodies}),
            detail,
        )
        self.cases.append(c)
        return c


def _outpatient_body(
    g: _Gen,
    hospital: SimHospital,
    psn: dict[str, str],
    lines: list[dict[str, Any]],
    cond: cat.Condition,
    *,
    med_type: str = "11",
    dise: str | None = None,
    day: date | None = None,
    dr: str | None = None,
    dept: str | None = None,
    end: datetime | None = None,
) -> dict[str, Any]:
    if end is None:
        begin, end = g.clinic_time(day)
    else:
        begin = end - timedelta(minutes=g.rng.randint(3, 30))
    return g.body(
        hospital,
        psn,
        lines,
        med_type=med_type,
        dise=dise or cond.dise_codg,
        dise_name=cond.dise_name,
        dept=dept or cond.dept_codg,
        begin=begin,
        end=end,
        dr=dr,
    )


def _consult(g: _Gen, *extra: tuple[str, Any], hosp_lv: str = "1") -> list[dict[str, Any]]:
    bill = _Bill(g.kb)
    bill.add(GENERAL_CONSULT, 1)
    for code, cnt in extra:
        bill.add(code, cnt, hosp_lv=hosp_lv)
    return bill.lines


def _drug_line(g: _Gen, code: str, supply_days: int) -> dict[str, Any]:
    return _Bill(g.kb).add_drug(code, supply_days)


def _per_tablet(g: _Gen, code: str, days: int) -> dict[str, Any]:
    """A drug priced per tablet for exactly ``days`` (split dispensing makes any supply possible)."""
    item = cat.DRUGS[code]
    return _Bill(g.kb).add(code, days * item.units_per_day, days=days)


# Each builder makes one case (fraud or look-alike) and returns it. ``k`` varies the variant.

HYPERTENSION, DIABETES, LIPIDS, CHD, URTI, BRONCHITIS, GASTRITIS, BACK = (
    _CONDITIONS[c]
    for c in ("I10.x00", "E11.900", "E78.500", "I25.103", "J06.900", "J20.900", "K29.700", "M54.500")
)
PNEUMONIA, STROKE, APPENDICITIS = (_CONDITIONS[c] for c in ("J18.900", "I63.900", "K35.800"))
#: The peer-outlier departments' diagnosis: a category of its own, so their many short visits do not
#: move the cost medians the excessive-cost template compares other visits with.
FEVER = cat.Condition("R50.900", "fever, unspecified", "A03.02", ("XN02BEA004A001010101478",), (CBC,))


def _dup_med(g: _Gen, k: int, fraud: bool) -> Case:
    p = RULE_PARAMS["duplicate_medication"]
    psn = g.people.make(g.h1.admdvs, older=True)
    if k % 2 == 0:  # the same class: amlodipine at H1, nifedipine at H2, both for a month
        first = _drug_line(g, AMLODIPINE, 28)
        second = _drug_line(g, NIFEDIPINE, 28) if fraud else _per_tablet(g, ACARBOSE, 1)
        cond1, cond2 = HYPERTENSION, HYPERTENSION if fraud else DIABETES
        if not fraud:  # the honest twin: amlodipine 28 days, then 6 days of the same class
            second = _Bill(g.kb).add(NIFEDIPINE, 1, days=p["min_overlap_days"] - 1)
            cond2 = HYPERTENSION
    else:  # the same drug: acarbose 30 days at H1 and again at H2
        first = _per_tablet(g, ACARBOSE, 30)
        second = _per_tablet(g, ACARBOSE, 30 if fraud else p["min_overlap_days"] - 1)
        cond1 = cond2 = DIABETES
    overlap = min(first["days"], second["days"])
    b1 = _outpatient_body(g, g.h1, psn, [*_consult(g), first], cond1, med_type="14")
    b2 = _outpatient_body(g, g.h2, psn, [*_consult(g), second], cond2, med_type="14")
    return g.case(
        "duplicate_medication",
        ["duplicate_medication"],
        "fraud" if fraud else "honest_lookalike",
        psn["psn_no"],
        [(g.h1, b1), (g.h2, b2)],
        overlap_days=overlap,
        min_overlap_days=p["min_overlap_days"],
    )


def _over_quantity(g: _Gen, k: int, fraud: bool) -> Case:
    hospital = (g.h1, g.h2)[k % 2]
    psn = g.people.make(hospital.admdvs, older=True)
    if k % 2 == 0:  # omeprazole for an acute visit: limit 14 days
        limit = g.kb.items[OMEPRAZOLE].max_days_acute
        line = _drug_line(g, OMEPRAZOLE, limit * 4 if fraud else limit)
        cond, med_type = GASTRITIS, "11"
    else:  # amlodipine for a chronic-disease visit: limit 84 days
        limit = g.kb.items[AMLODIPINE].max_days_chronic
        line = _drug_line(g, AMLODIPINE, limit + 28 if fraud else limit)
        cond, med_type = HYPERTENSION, "14"
    body = _outpatient_body(g, hospital, psn, [*_consult(g), line], cond, med_type=med_type)
    return g.case(
        "over_quantity",
        ["over_quantity"],
        "fraud" if fraud else "honest_lookalike",
        psn["psn_no"],
        [(hospital, body)],
        days=line["days"],
        max_days=limit,
    )


def _frequency(g: _Gen, k: int, fraud: bool) -> Case:
    if k % 2 == 0:  # consultation billed twice in one visit (limit 1 a visit) / once
        hospital = (g.h1, g.h2)[k % 4 // 2]
        psn = g.people.make(hospital.admdvs)
        bill = _Bill(g.kb)
        bill.add(GENERAL_CONSULT, 2 if fraud else 1)
        bill.add(CBC, 1)
        body = _outpatient_body(g, hospital, psn, bill.lines, URTI)
        return g.case(
            "frequency_limit",
            ["frequency_limit"],
            "fraud" if fraud else "honest_lookalike",
            psn["psn_no"],
            [(hospital, body)],
            count=2 if fraud else 1,
            limit=1,
            per="visit",
        )
    # nebulisation 3 a day on every day of a pneumonia stay discharged today (limit 2 a day) / exactly 2
    hospital = g.h1
    psn = g.people.make(hospital.admdvs, older=True)
    ipt = g.rng.randint(4, 9)
    per_day = 3 if fraud else 2
    body = g.honest_inpatient(
        hospital,
        psn=psn,
        cond=PNEUMONIA,
        discharge=g.today,
        ipt_days=ipt,
        treat_days=range(ipt),
        nebulise_per_day=per_day,
    )
    return g.case(
        "frequency_limit",
        ["frequency_limit"],
        "fraud" if fraud else "honest_lookalike",
        psn["psn_no"],
        [(hospital, body)],
        count=per_day * ipt,
        limit=2 * ipt,
        per="day",
    )


def _repeated(g: _Gen, k: int, fraud: bool) -> Case:
    psn = g.people.make(g.h1.admdvs, older=True)
    if fraud:  # the liver panel and the ALT it includes, in one bill; or both consultations
        bill = _Bill(g.kb)
        if k % 2 == 0:
            bill.add(SPECIALIST_CONSULT, 1)
            bill.add(LIVER_PANEL, 1)
            bill.add(ALT, 1)
        else:
            bill.add(SPECIALIST_CONSULT, 1)
            bill.add(GENERAL_CONSULT, 1)
        body = _outpatient_body(g, g.h1, psn, bill.lines, GASTRITIS)
        return g.case("repeated_charge", ["repeated_charge"], "fraud", psn["psn_no"], [(g.h1, body)])
    # the honest twin: the liver panel at H1 and ALT at H2 on the same day, separate bills
    b1 = _outpatient_body(g, g.h1, psn, _consult(g, (LIVER_PANEL, 1)), GASTRITIS)
    b2 = _outpatient_body(g, g.h2, psn, _consult(g, (ALT, 1)), GASTRITIS)
    return g.case(
        "repeated_charge",
        ["repeated_charge"],
        "honest_lookalike",
        psn["psn_no"],
        [(g.h1, b1), (g.h2, b2)],
        same_settlement=False,
    )


def _gender(g: _Gen, k: int, fraud: bool) -> Case:
    hospital = (g.h1, g.h2)[k % 2]
    male = k % 2 == 0
    code = (TCT if male else PSA) if fraud else (PSA if male else TCT)
    psn = g.people.make(hospital.admdvs, male=male)
    body = _outpatient_body(g, hospital, psn, _consult(g, (code, 1)), GASTRITIS if male else BACK)
    return g.case(
        "gender_restricted",
        ["gender_restricted"],
        "fraud" if fraud else "honest_lookalike",
        psn["psn_no"],
        [(hospital, body)],
        gend=psn["gend"],
        item=code,
        item_gender=g.kb.items[code].gender,
    )


def _age(g: _Gen, k: int, fraud: bool) -> Case:
    hospital = (g.h1, g.h2)[k % 2]
    code = PARACETAMOL_DROPS if k % 2 == 0 else AMOXICILLIN_GRANULES
    bound = g.kb.items[code].age_max
    assert bound is not None
    if fraud:  # an adult's visit billed with a children's formulation
        psn = g.people.make(hospital.admdvs, age=g.rng.randint(30, 70))
    else:  # a child whose birthday (the bound) is today: still allowed
        psn = g.people.make(hospital.admdvs, born=_birthday(g.today, bound))
    bill = _Bill(g.kb)
    bill.add(GENERAL_CONSULT, 1)
    bill.add(code, 1, days=4)
    body = _outpatient_body(g, hospital, psn, bill.lines, URTI)
    return g.case(
        "age_restricted",
        ["age_restricted"],
        "fraud" if fraud else "honest_lookalike",
        psn["psn_no"],
        [(hospital, body)],
        age=_age_on(psn["brdy"], g.today),
        age_max=bound,
    )


def _indication(g: _Gen, k: int, fraud: bool) -> Case:
    hospital = (g.h1, g.h2)[k % 2]
    psn = g.people.make(hospital.admdvs, older=True)
    code = DANSHEN if k % 2 == 0 else ROSUVASTATIN
    # fraud: a hypertension visit only; honest twin: hypertension first, the indication second
    secondary = "I25.103" if code == DANSHEN else "E78.500"
    dise = "I10.x00" if fraud else f"I10.x00,{secondary}"
    body = _outpatient_body(
        g, hospital, psn, [*_consult(g), _drug_line(g, code, 28)], HYPERTENSION, med_type="14", dise=dise
    )
    return g.case(
        "restricted_indication",
        ["restricted_indication"],
        "fraud" if fraud else "honest_lookalike",
        psn["psn_no"],
        [(hospital, body)],
        dise_codg=dise,
        item=code,
        indications=list(g.kb.items[code].indications),
    )


def _price(g: _Gen, k: int, fraud: bool) -> Case:
    if k % 2 == 0:  # a chest CT at the grade-3 price: over the ceiling at H2 (grade 2), equal at H1
        hospital = g.h2 if fraud else g.h1
        ceiling = g.kb.items[CT_CHEST].price_ceiling["3"]
        code, price = CT_CHEST, _yuan(ceiling)
    else:  # amlodipine two yuan over its ceiling / at it
        hospital = (g.h1, g.h2)[k % 4 // 2]
        ceiling = g.kb.items[AMLODIPINE].price_ceiling[hospital.hosp_lv]
        code, price = AMLODIPINE, _yuan(ceiling + (200 if fraud else 0))
    psn = g.people.make(hospital.admdvs, older=True)
    bill = _Bill(g.kb)
    bill.add(GENERAL_CONSULT, 1)
    bill.add(code, 1, pric=price, days=28)
    body = _outpatient_body(g, hospital, psn, bill.lines, HYPERTENSION if code == AMLODIPINE else BRONCHITIS)
    return g.case(
        "price_over_ceiling",
        ["price_over_ceiling"],
        "fraud" if fraud else "honest_lookalike",
        psn["psn_no"],
        [(hospital, body)],
        price_fen=int(Decimal(price) * 100),
        ceiling_fen=g.kb.items[code].price_ceiling[hospital.hosp_lv],
    )


def _catalogue(g: _Gen, k: int, fraud: bool) -> Case:
    hospital = (g.h1, g.h2)[k % 2]
    psn = g.people.make(hospital.admdvs, older=True)
    if fraud:
        code = NOT_LISTED[k % len(NOT_LISTED)][0]
        body = _outpatient_body(g, hospital, psn, _consult(g, (code, 1)), BACK)
    else:  # a class C item, in the catalogue, wholly self-paid: not a claim on the fund
        code = COLD_COMPRESS
        body = _outpatient_body(g, hospital, psn, _consult(g, (code, 2)), BACK)
    return g.case(
        "not_in_catalogue",
        ["not_in_catalogue"],
        "fraud" if fraud else "honest_lookalike",
        psn["psn_no"],
        [(hospital, body)],
        item=code,
        in_catalogue=code in g.kb.items,
    )


def _interaction(g: _Gen, k: int, fraud: bool) -> Case:
    psn = g.people.make(g.h1.admdvs, older=True)
    if fraud and k % 2 == 0:  # clopidogrel and omeprazole in one bill (major)
        lines = [*_consult(g), _drug_line(g, CLOPIDOGREL, 7), _drug_line(g, OMEPRAZOLE, 7)]
        body = _outpatient_body(g, g.h1, psn, lines, CHD, dise="I25.103,K29.700")
        return g.case(
            "drug_interaction",
            ["drug_interaction"],
            "fraud",
            psn["psn_no"],
            [(g.h1, body)],
            severity="major",
            pair=[CLOPIDOGREL, OMEPRAZOLE],
            where="one settlement",
        )
    if fraud:  # clopidogrel at H1, omeprazole at H2 the same day (major, across hospitals)
        b1 = _outpatient_body(g, g.h1, psn, [*_consult(g), _drug_line(g, CLOPIDOGREL, 7)], CHD)
        b2 = _outpatient_body(g, g.h2, psn, [*_consult(g), _drug_line(g, OMEPRAZOLE, 7)], GASTRITIS)
        return g.case(
            "drug_interaction",
            ["drug_interaction"],
            "fraud",
            psn["psn_no"],
            [(g.h1, b1), (g.h2, b2)],
            severity="major",
            pair=[CLOPIDOGREL, OMEPRAZOLE],
            where="two hospitals",
        )
    # the honest twin: a moderate pair (beta-blocker with insulin), below the rule's minimum severity
    lines = [*_consult(g), _drug_line(g, METOPROLOL, 28), _drug_line(g, INSULIN, 30)]
    body = _outpatient_body(g, g.h1, psn, lines, HYPERTENSION, med_type="14", dise="I10.x00,E11.900")
    return g.case(
        "drug_interaction",
        ["drug_interaction"],
        "honest_lookalike",
        psn["psn_no"],
        [(g.h1, body)],
        severity="moderate",
        min_severity=RULE_PARAMS["drug_interaction"]["min_severity"],
    )


def _frequent(g: _Gen, k: int, fraud: bool) -> Case:
    p = RULE_PARAMS["frequent_visits"]
    visits = p["max_visits"] + (1 + k % 2 if fraud else 0)
    psn = g.people.make(g.h1.admdvs)
    bodies = []
    for i in range(visits):
        hospital = (g.h1, g.h2)[i % 2]
        bodies.append((hospital, _outpatient_body(g, hospital, psn, _consult(g, (CBC, 1)), URTI)))
    return g.case(
        "frequent_visits",
        ["frequent_visits"],
        "fraud" if fraud else "honest_lookalike",
        psn["psn_no"],
        bodies,
        visits=visits,
        max_visits=p["max_visits"],
        days=p["days"],
    )


def _readmission(g: _Gen, k: int, fraud: bool) -> Case:
    d = RULE_PARAMS["readmission"]["within_days"]
    psn = g.people.make(g.h1.admdvs, older=True)
    cond1 = STROKE if k % 2 == 0 else PNEUMONIA
    unrelated = not fraud and k % 2 == 1
    if fraud:  # (not the same day: the daily limits would count the first stay's bed days too)
        gap = g.rng.randint(1, d)
    else:
        gap = 5 if unrelated else d + 2  # a related stay two days after the window, or an unrelated one
    cond2 = APPENDICITIS if unrelated else cond1
    ipt1, ipt2 = g.rng.randint(5, 10), g.rng.randint(3, 8)
    # Both stays are settled on the run's day (the agent stamps setl_time), so the daily limits
    # of the second stay count the first stay's bed days too: the second discharge is at least
    # ``ipt1`` days back, which keeps them within the limit as a settlement at discharge would be.
    discharge2 = g.today - timedelta(days=g.rng.randint(ipt1, ipt1 + 3))
    discharge1 = discharge2 - timedelta(days=ipt2 + gap)
    # no take-home drugs (the first stay's would be a duplicate medication of the second's), no
    # second scan within the week
    b1 = g.honest_inpatient(g.h1, psn=psn, cond=cond1, discharge=discharge1, ipt_days=ipt1, take_home=False)
    b2 = g.honest_inpatient(
        g.h2, psn=psn, cond=cond2, discharge=discharge2, ipt_days=ipt2, take_home=False, imaging=False
    )
    return g.case(
        "readmission",
        ["readmission"],
        "fraud" if fraud else "honest_lookalike",
        psn["psn_no"],
        [(g.h1, b1), (g.h2, b2)],
        gap_days=gap,
        within_days=d,
        related=not unrelated,
        categories=[cond1.dise_codg[:3], cond2.dise_codg[:3]],
    )


def _impersonation(g: _Gen, k: int, fraud: bool) -> Case:
    p = RULE_PARAMS["impersonation_distance"]
    psn = g.people.make(g.h1.admdvs)
    other = g.h3 if fraud else g.h2
    b1 = _outpatient_body(g, g.h1, psn, _consult(g, (CBC, 1)), URTI)
    # the second visit ends minutes after the first (an agent settling at the visit's end stamps that)
    then = datetime.fromisoformat(b1["mdtrt"]["endtime"]) + timedelta(
        minutes=g.rng.randint(5, p["max_minutes"] // 2)
    )
    b2 = _outpatient_body(g, other, psn, _consult(g, ("002503010010000", 1)), GASTRITIS, end=then)
    return g.case(
        "impersonation_distance",
        ["impersonation_distance"],
        "fraud" if fraud else "honest_lookalike",
        psn["psn_no"],
        [(g.h1, b1), (other, b2)],
        km=round(km_between(g.h1, other), 1),
        min_km=p["min_km"],
        max_minutes=p["max_minutes"],
    )


def _death(g: _Gen, k: int, fraud: bool) -> Case:
    hospital = (g.h1, g.h2)[k % 2]
    psn = g.people.make(hospital.admdvs, older=True)
    died = g.today - timedelta(days=g.rng.randint(10, 40))
    g.deaths.append((psn["psn_no"], died.isoformat(), "civil-registry"))
    if fraud:  # a dead person's card used for a month's refill
        body = _outpatient_body(
            g, hospital, psn, [*_consult(g), _drug_line(g, AMLODIPINE, 28)], HYPERTENSION, med_type="14"
        )
        began = g.today
    else:  # an emergency visit on the day of death, settled afterwards
        began = died
        body = _outpatient_body(
            g, hospital, psn, _consult(g, (CBC, 1), ("003107010010000", 1)), CHD, day=died
        )
    return g.case(
        "care_after_death",
        ["care_after_death"],
        "fraud" if fraud else "honest_lookalike",
        psn["psn_no"],
        [(hospital, body)],
        death_date=died.isoformat(),
        visit_began=began.isoformat(),
        days_after=(began - died).days,
        grace_days=RULE_PARAMS["care_after_death"]["grace_days"],
    )


def _bed_hanging(g: _Gen, k: int, fraud: bool) -> Case:
    m = RULE_PARAMS["bed_hanging"]["min_idle_days"]
    hospital = (g.h1, g.h2)[k % 2]
    psn = g.people.make(hospital.admdvs, older=True)
    cond = (STROKE, CHD, DIABETES)[k % 3]
    if fraud:  # treated for two or three days, then billed bed and nursing for a week or more
        ipt = g.rng.randint(9, 14)
        treat = range(g.rng.randint(2, 3))
    else:  # treated every day but the last m-1: just under the minimum
        ipt = g.rng.randint(6, 12)
        treat = range(ipt - (m - 1))
    body = g.honest_inpatient(hospital, psn=psn, cond=cond, ipt_days=ipt, treat_days=treat, take_home=False)
    idle = ipt - len(treat)
    return g.case(
        "bed_hanging",
        ["bed_hanging"],
        "fraud" if fraud else "honest_lookalike",
        psn["psn_no"],
        [(hospital, body)],
        ipt_days=ipt,
        treatment_days=len(treat),
        idle_days=idle,
        min_idle_days=m,
    )


def _peer_median(g: _Gen, hospital: SimHospital, category: str, med_type: str) -> tuple[Decimal, int]:
    lvs = {h.code for h in g.hospitals if h.hosp_lv == hospital.hosp_lv}
    costs = [
        Decimal(p.body["medfee_sumamt"])
        for p in g.planned
        if p.hospital in lvs
        and p.body["mdtrt"]["med_type"] == med_type
        and p.body["mdtrt"]["dise_codg"][:3] == category
    ]
    return (statistics.median(costs) if costs else Decimal(0)), len(costs)


def _workup(g: _Gen, low: Decimal, high: Decimal, hosp_lv: str) -> list[dict[str, Any]]:
    """A consultation plus tests until the bill is between ``low`` and ``high`` (yuan)."""
    bill = _Bill(g.kb)
    bill.add(GENERAL_CONSULT, 1)
    for code in WORKUP:
        price = Decimal(_price_of(code, g.kb))
        if bill.total() + price <= high:
            bill.add(code, 1)
        if bill.total() >= low:
            break
    return bill.lines


def _excessive(g: _Gen, k: int, fraud: bool) -> Case:
    """A general outpatient visit over both limits of the rule (the cap and the peer ratio), or under both.

    Two limits because the peers are visits settled on earlier days: when every settlement of a
    run is stamped the same day (the benchmark's agents), only the cap can judge; when they are
    stamped at the visit's end, both do.
    """
    p = RULE_PARAMS["excessive_cost"]
    ratio, cap = Decimal(p["peer_ratio"]), Decimal(p["max_fen"]) / 100
    hospital = (g.h1, g.h2)[k % 2]
    cond = (URTI, GASTRITIS)[k // 2 % 2]
    median, peers = _peer_median(g, hospital, cond.dise_codg[:3], "11")
    if fraud:  # over-examination: a work-up at ≥ 1.2 × the higher limit
        lines = _workup(g, max(ratio * median, cap) * Decimal("1.2"), Decimal(10**6), hospital.hosp_lv)
    else:  # a thorough but honest work-up at about 0.8 × the lower limit
        low = min(ratio * median, cap)
        lines = _workup(g, low * Decimal("0.75"), low * Decimal("0.85"), hospital.hosp_lv)
    psn = g.people.make(hospital.admdvs)
    body = _outpatient_body(g, hospital, psn, lines, cond)
    cost = Decimal(body["medfee_sumamt"])
    return g.case(
        "excessive_cost",
        ["excessive_cost"],
        "fraud" if fraud else "honest_lookalike",
        psn["psn_no"],
        [(hospital, body)],
        cost=str(cost),
        peer_median=str(median),
        peers=peers,
        ratio=str((cost / median).quantize(Decimal("0.01"))) if median else None,
        peer_ratio=str(ratio),
        max_fen=p["max_fen"],
    )


def _peer_group(g: _Gen, hospital: SimHospital, dept: str, fraud: int, lookalike: int) -> None:
    """One department of doctors: honest peers, ``fraud`` outliers and ``lookalike`` near-outliers.

    Measure ``visits_per_patient``: honest doctors see each patient once; an outlier brings each
    patient back for 3 visits (split visits, each a consultation); a look-alike sits at 0.8 × the
    ratio. Every doctor has at least ``min_visits`` visits, so every one is judged.
    """
    p = RULE_PARAMS["peer_outlier"]
    ratio, min_visits = Decimal(p["ratio"]), p["min_visits"]
    honest = 2 * (fraud + lookalike) + 2
    k = 10

    def visits(dr: str, patients: int, per_patient: list[int]) -> list[tuple[SimHospital, dict[str, Any]]]:
        out = []
        for i in range(patients):
            psn = g.people.make(hospital.admdvs)
            cond = FEVER
            for v in range(per_patient[i]):
                extra = [(CBC, 1)] if v == 0 else []
                out.append(
                    (
                        hospital,
                        _outpatient_body(g, hospital, psn, _consult(g, *extra), cond, dr=dr, dept=dept),
                    )
                )
        return out

    for _ in range(honest):
        k += 1
        for h, b in visits(g.doctor(hospital, dept, k), min_visits + g.rng.randint(0, 5), [1] * 40):
            g.plan(h, b)
    for _ in range(fraud):
        k += 1
        dr = g.doctor(hospital, dept, k)
        patients = math.ceil(min_visits / 3) + g.rng.randint(0, 2)
        bodies = visits(dr, patients, [3] * patients)
        g.case(
            "peer_outlier",
            ["peer_outlier"],
            "fraud",
            dr,
            bodies,
            object_type="doctor",
            dept=dept,
            visits=len(bodies),
            patients=patients,
            value=str(Decimal(len(bodies)) / patients),
            ratio=str(ratio),
            peer_median="1",
        )
    for _ in range(lookalike):
        k += 1
        dr = g.doctor(hospital, dept, k)
        # 0.8 × ratio visits per patient: of 5n patients, 3n come back once (8n visits / 5n patients = 1.6)
        n = math.ceil(min_visits / 8)
        per = [2] * (3 * n) + [1] * (2 * n)
        target = ratio * Decimal("0.8")
        bodies = visits(dr, len(per), per)
        value = Decimal(len(bodies)) / len(per)
        g.case(
            "peer_outlier",
            ["peer_outlier"],
            "honest_lookalike",
            dr,
            bodies,
            object_type="doctor",
            dept=dept,
            visits=len(bodies),
            patients=len(per),
            value=str(value),
            target=str(target),
            ratio=str(ratio),
            peer_median="1",
        )


def _mixture(g: _Gen, k: int) -> Case:
    """One settlement with two patterns."""
    kind = k % 4
    if kind == 0:  # a man billed cervical cytology, at a price over the grade-2 ceiling
        psn = g.people.make(g.h2.admdvs, male=True)
        bill = _Bill(g.kb)
        bill.add(GENERAL_CONSULT, 1)
        bill.add(TCT, 1, pric=_yuan(g.kb.items[TCT].price_ceiling["2"] + 1000))
        body = _outpatient_body(g, g.h2, psn, bill.lines, GASTRITIS)
        return g.case(
            "mixture", ["gender_restricted", "price_over_ceiling"], "fraud", psn["psn_no"], [(g.h2, body)]
        )
    if kind == 1:  # an adult billed children's amoxicillin, and both consultations
        psn = g.people.make(g.h1.admdvs, age=g.rng.randint(30, 60))
        bill = _Bill(g.kb)
        bill.add(SPECIALIST_CONSULT, 1)
        bill.add(GENERAL_CONSULT, 1)
        bill.add(AMOXICILLIN_GRANULES, 1, days=4)
        body = _outpatient_body(g, g.h1, psn, bill.lines, URTI)
        return g.case(
            "mixture", ["age_restricted", "repeated_charge"], "fraud", psn["psn_no"], [(g.h1, body)]
        )
    if kind == 2:  # two months of omeprazole for an acute visit, with an unlisted item
        psn = g.people.make(g.h1.admdvs, older=True)
        lines = [*_consult(g, (NOT_LISTED[0][0], 1)), _drug_line(g, OMEPRAZOLE, 56)]
        body = _outpatient_body(g, g.h1, psn, lines, GASTRITIS)
        return g.case(
            "mixture", ["over_quantity", "not_in_catalogue"], "fraud", psn["psn_no"], [(g.h1, body)]
        )
    # a hypertension visit with Danshen (no indication) beside clopidogrel and omeprazole
    psn = g.people.make(g.h2.admdvs, older=True)
    lines = [
        *_consult(g),
        _drug_line(g, DANSHEN, 28),
        _drug_line(g, CLOPIDOGREL, 7),
        _drug_line(g, OMEPRAZOLE, 7),
    ]
    body = _outpatient_body(g, g.h2, psn, lines, HYPERTENSION, med_type="14")
    return g.case(
        "mixture", ["restricted_indication", "drug_interaction"], "fraud", psn["psn_no"], [(g.h2, body)]
    )


_BUILDERS: dict[str, Callable[[_Gen, int, bool], Case]] = {
    "duplicate_medication": _dup_med,
    "over_quantity": _over_quantity,
    "frequency_limit": _frequency,
    "repeated_charge": _repeated,
    "gender_restricted": _gender,
    "age_restricted": _age,
    "restricted_indication": _indication,
    "price_over_ceiling": _price,
    "not_in_catalogue": _catalogue,
    "drug_interaction": _interaction,
    "frequent_visits": _frequent,
    "readmission": _readmission,
    "impersonation_distance": _impersonation,
    "care_after_death": _death,
    "bed_hanging": _bed_hanging,
    "excessive_cost": _excessive,
}


def generate_traffic(
    seed: int,
    *,
    size: int = 3000,
    fraud_rate: float = 0.05,
    today: date | None = None,
    knowledge: Knowledge | None = None,
    hospitals: tuple[SimHospital, ...] = HOSPITALS,
    fee_times: bool = True,
) -> Traffic:
    """About ``size`` settlements over ``hospitals``, of which about ``fraud_rate`` belong to fraud cases.

    Each template gets the same number of fraud cases (at least 2) and as many honest look-alikes;
    the peer-outlier template gets whole departments of doctors (fewer cases, many visits each).
    ``today`` is the day the agents will stamp (the run's local date); stays and deaths fall in
    the weeks before it. ``fee_times=False`` drops ``fee_ocur_time`` from every line (for a HIS
    that does not send it; the bed-hanging rule then judges nothing).
    """
    if len(hospitals) < 3:
        raise ValueError("the patterns need three hospitals: two close together and one far away")
    today = today or datetime.now().astimezone().date()
    g = _Gen(seed, today, knowledge or default_knowledge(), hospitals)
    templates = len(PATTERNS)
    per = max(2, round(size * fraud_rate / templates / 1.6))  # a case is ~1.6 settlements on average
    doctors = max(1, min(2, per // 3))
    # the peer groups first (their size is fixed), then background up to ``size``
    for i, dept in enumerate(("A03.02", "A03.06")[:doctors]):
        _peer_group(g, (g.h1, g.h2)[i % 2], dept, fraud=1, lookalike=1)
    fixed = len(g.planned)
    g.background(max(200, size - fixed - per * 2 * 24))
    for name, build in _BUILDERS.items():
        if name == "excessive_cost":
            continue
        for k in range(per):
            build(g, k, True)
            build(g, k, False)
    for k in range(max(1, per // 2)):
        _mixture(g, k)
    for k in range(per):  # last: the peers' median is of the traffic as built
        _excessive(g, k, True)
        _excessive(g, k, False)
    planned = g.planned
    g.rng.shuffle(planned)
    if not fee_times:
        for p in planned:
            for line in p.body["feedetl"]:
                line.pop("fee_ocur_time", None)
    return Traffic(seed, today, hospitals, planned, g.cases, g.deaths)


# --- posting ---------------------------------------------------------------------------------


async def post_traffic(
    traffic: Traffic,
    agents: dict[str, tuple[str, str]],
    *,
    concurrency: int = 4,
    timeout: float = 30.0,
    on_answer: Callable[[Planned, int, dict[str, Any] | None], None] | None = None,
) -> dict[str, str]:
    """POST every planned body to its hospital's agent (``agents``: code → (url, HIS token)).

    ``concurrency`` requests in flight per agent, in plan order, wave after wave (a case's later
    visits only once every agent has answered its earlier ones). Returns ``his_setl_no → setl_id``
    of the acknowledged ones; ``on_answer`` sees every answer (status, body) so a caller can count
    refusals. The same bytes are re-sent after a dropped connection or a 5xx, as
    ``simulators.his.run_his`` does.
    """
    import asyncio

    import aiohttp

    from .his import _encode, _Sender

    ids: dict[str, str] = {}

    async def agent_run(code: str, queue: list[Planned]) -> None:
        url, token = agents[code]
        items = iter(queue)
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            sender = _Sender(s, retries=5, backoff=0.2)

            async def worker() -> None:
                for p in items:
                    answer, _attempts = await sender.post(
                        f"{url.rstrip('/')}/v1/settlements", _encode(p.body)
                    )
                    status = answer.status if answer is not None else 0
                    body = answer.body if answer is not None else None
                    if answer is not None and answer.acknowledged and body is not None:
                        ids[p.body["his_setl_no"]] = body["setl_id"]
                    if on_answer is not None:
                        on_answer(p, status, body)

            await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))

    for wave in sorted({p.wave for p in traffic.planned}):
        queues: dict[str, list[Planned]] = {code: [] for code in agents}
        for p in traffic.planned:
            if p.wave == wave:
                queues[p.hospital].append(p)
        await asyncio.gather(*(agent_run(code, queue) for code, queue in queues.items() if queue))
    return ids


# --- scoring ---------------------------------------------------------------------------------


def score_detection(
    cases: Sequence[Case], setl_ids: dict[str, str], suspicions: Iterable[dict[str, Any]]
) -> dict[str, Any]:
    """Match the centre's suspicions to the ground truth; recall and precision per template.

    ``setl_ids``: ``his_setl_no → setl_id`` (the agents' answers). ``suspicions``: dicts with
    ``template``, ``object_type``, ``object_id``, ``setl_ids`` (the centre's ``suspicions`` rows).
    A suspicion is a true positive when its template is one of a fraud case's templates and it
    names one of the case's settlements (or, for a doctor, department or hospital case, its
    object); a fraud case is found when at least one suspicion matches it. Every other suspicion
    is a false positive, attributed to a look-alike, to another case's settlement, or to the
    background. Precision is None for a template with no suspicion at all.
    """
    by_setl: dict[str, list[Case]] = {}
    for c in cases:
        for no in c.his_setl_nos:
            if no in setl_ids:
                by_setl.setdefault(setl_ids[no], []).append(c)
    by_object = {(c.object_type, c.object_id): c for c in cases if c.object_type != "person"}
    stats = {
        t: {"cases": 0, "found": 0, "missed": [], "suspicions": 0, "true_positives": 0, "false_positives": 0,
            "fp_lookalike": 0, "fp_other_case": 0, "fp_background": 0, "recall": None, "precision": None}
        for t in PATTERNS
    }  # fmt: skip
    found: set[tuple[str, str]] = set()
    for s in suspicions:
        t = s["template"]
        if t not in stats:
            continue
        st = stats[t]
        st["suspicions"] += 1
        related = [c for sid in s.get("setl_ids") or () for c in by_setl.get(sid, ())]
        obj = by_object.get((s.get("object_type"), s.get("object_id")))
        if obj is not None:
            related.append(obj)
        hits = [c for c in related if c.label == "fraud" and t in c.templates]
        if hits:
            st["true_positives"] += 1
            found.update((t, c.case_id) for c in hits)
            continue
        st["false_positives"] += 1
        if any(c.label != "fraud" and t in c.templates for c in related):
            st["fp_lookalike"] += 1
        elif related:
            st["fp_other_case"] += 1
        else:
            st["fp_background"] += 1
    for c in cases:
        if c.label != "fraud":
            continue
        for t in c.templates:
            stats[t]["cases"] += 1
            if (t, c.case_id) in found:
                stats[t]["found"] += 1
            else:
                stats[t]["missed"].append(c.case_id)
    for st in stats.values():
        st["recall"] = st["found"] / st["cases"] if st["cases"] else None
        tp_fp = st["true_positives"] + st["false_positives"]
        st["precision"] = st["true_positives"] / tp_fp if tp_fp else None
    return {"templates": stats}
