"""Realistic HIS traffic: a population living through a date range, settled at hospitals of three levels.

``simulators.his.generate_settlement`` draws every settlement independently, which is right for load
but wrong for anything that reads history: nobody refills a prescription, nobody is a child in winter,
and a chronic patient's drugs do not run out on time. A reviewer (or the centre's screening) should see
traffic shaped like a city district's. ``generate_realistic`` simulates one, day by day, and is pure and
seeded: the same seed, persons and dates give byte-identical bodies.

- **People** (``Person``): ages from a Chinese-style population pyramid (2020 census shape, five-year
  bands), sex ratio by age, chronic conditions by age band (hypertension, diabetes, hyperlipidaemia,
  coronary heart disease, COPD) each with a regimen of one drug per class (COPD none: the sample
  catalogue has no maintenance inhaler, so COPD shows as more infections and winter exacerbations),
  insurance type (employee ``310`` for most working adults and retired employees, resident ``390``
  for children, students and the rest) and person type as the sample policy knows them (``11``
  employed, ``12`` retired, ``21`` resident). Each lives in a district with a home clinic and hospital.
- **Hospitals** (``HOSPITALS``): a city tertiary hospital (level 3), two county hospitals (level 2),
  four community clinics (level 1), with departments and doctors whose codes are stable. A hospital's
  price for an item is the catalogue's ceiling for its level where the catalogue gives one per level
  (services), else the list price (drugs: at or under every level's ceiling).
- **Time**: respiratory illness peaks in winter (January) and troughs in summer, outpatient visits peak
  on Monday and dip at the weekend and on public holidays (``holiday``: Spring Festival, National Day
  week…), and visits have the day's morning and afternoon clinic peaks.
- **Visits**: chronic refills at the usual hospital and doctor when the earliest drug is about to run
  out (at most ``REFILL_SLACK_DAYS`` early, sometimes late; a drug with more left is not dispensed
  again, so honest refills never overlap a supply by any sample duplicate-medication rule's
  minimum); registered chronic-disease patients (门慢, ``14``) get up to twelve weeks, others (``11``
  or pharmacy ``41``) a month. Acute visits by age and season (children's formulations for children), a
  follow-up for some, pharmacy purchases. Inpatient stays (``21``) with daily bed, nursing, ward round
  and treatment lines carrying ``fee_ocur_time``, tests on the first day, surgery where the condition
  needs it, take-home drugs at discharge; lengths of stay by condition.
- **Honest bills**: a careful prescriber's. Beyond ``simulators.fraud._comply`` (restrictions, days of
  supply, interacting pairs and included items within the bill) the prescriber knows the person's
  history: no drug of a class still in supply, none interacting with a drug dispensed in the last
  ``INTERACTION_DAYS``, a period-limited test (CT a week, HbA1c a quarter) not repeated early, at most
  one visit a day (so never two hospitals far apart within minutes), no readmission within
  ``READMIT_GAP_DAYS``, no more than three general visits a week, an outpatient bill under the
  excessive-cost cap.

**Drivers.** ``RealisticTraffic.write`` (``settlements.jsonl``, ``hospitals.json``, ``summary.json``);
``write_drop_folder`` (one hospital's bodies as JSON files into a drop folder's ``inbox/``: each
written as ``inbox/.<name>.tmp`` and renamed to ``<name>``, the write-then-rename the drop folder's
contract asks for (``agent.dropfolder`` never takes dot-files or ``.tmp``); names and write times
follow the order the visits happened, which is the order the agent takes them; JSON bodies or the
CSV layout 1 of docs/DROPFOLDER.md, ``body_to_csv``); ``post_realistic``
(``POST /v1/settlements`` per hospital's agent with ``simulators.his``'s sender: the same bytes
re-sent after a timeout or a 5xx); ``post_national`` (the national envelope on the agent's
``/fsi/api/rsfComIfsService/callService``: 9001 sign-in, then 2201 / 2203 / 2204 / 2207 per visit
and 2401 / 2301 per day / 2402 / 2304 per inpatient stay, ``national_visit``). CLI: ``yibao-sim
realistic --from 2026-11-01 --to 2026-11-30 [--persons N] [--seed S] [--out DIR] [--drop-folder DIR
--hospital CODE [--csv]] [--agent CODE=URL=TOKENFILE … [--national]]``. Through the envelope, 2207
and 2304 must answer the split, so the visits the sample policy
has no benefits for (``14``, ``41``, retired employees' outpatient visits) are refused there.

**Time at the agent.** The agent stamps ``setl_time`` when the HIS posts, so a month posted in a
minute is settled "today" whatever the visits' times say; the history-based rules then see every
refill on one day. The visit times (``begntime``/``endtime``/``fee_ocur_time``) carry the simulated
dates; the screening test stamps each settlement at its visit's end, as an agent settling as visits
close would. Drive a live agent with a range that has passed (the CLI warns otherwise): a stay
discharged after the agent's today, settled today, has more bed days than days since admission,
which the frequency rule rightly prompts about.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import os
import random
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from itertools import accumulate
from pathlib import Path
from typing import Any

from protocol.rules import Knowledge

from . import _catalogue as cat
from .fraud import RULE_PARAMS, _comply, _day_limit, _interacts, default_knowledge
from .his import CST, Insured, id_check_digit

__all__ = [
    "CHRONIC",
    "HOSPITALS",
    "Department",
    "Hospital",
    "Person",
    "RealisticTraffic",
    "Visit",
    "body_to_csv",
    "generate_realistic",
    "holiday",
    "national_visit",
    "post_national",
    "post_realistic",
    "write_drop_folder",
]

_FEN = Decimal("0.01")
_ZERO = Decimal("0.00")

#: A drug is dispensed again only when at most this many days of it are left: the overlap the
#: duplicate-medication rules measure is then at most this, under the strictest sample minimum (the
#: desk's same-drug prompt, 3 days; the centre's class rule needs 7).
REFILL_SLACK_DAYS = 2
#: Days before an acute drug that a careful prescriber checks for interactions (the rule's window + 1).
INTERACTION_DAYS = RULE_PARAMS["drug_interaction"]["window_days"] + 1
#: No admission this soon after a discharge (the readmission rule looks 15 days back).
READMIT_GAP_DAYS = 30
#: An outpatient general visit stays under this (yuan): the excessive-cost rule's cap is 500.
OUTPATIENT_CAP = Decimal(RULE_PARAMS["excessive_cost"]["max_fen"]) / 100 - Decimal(50)


# --- hospitals --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Department:
    """A department: national-style code, outpatient doctors and (where there are beds) ward doctors."""

    code: str
    name: str
    doctors: tuple[str, ...]
    ward_doctors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hospital:
    """A designated medical institution: level (1 community, 2 county, 3 city tertiary), place, depts."""

    code: str
    name: str
    hosp_lv: str
    lat: float
    lon: float
    departments: tuple[Department, ...]

    @property
    def admdvs(self) -> str:
        return self.code[1:7]

    @property
    def beds(self) -> bool:
        return any(d.ward_doctors for d in self.departments)

    def dept(self, code: str) -> Department:
        for d in self.departments:
            if d.code == code:
                return d
        return self.departments[0]

    def plane(self) -> tuple[float, float]:
        """The centre's local plane (docs/MONITORING.md), for the impersonation template's hospitals table."""
        return self.lon * 111.32 * math.cos(math.radians(self.lat)), self.lat * 110.574


#: (code, name) of the departments; level 1 clinics have general practice and a pharmacy only.
_DEPTS = {
    "A02": "general practice",
    "A03.01": "respiratory medicine",
    "A03.03": "gastroenterology",
    "A03.04": "cardiology",
    "A03.05": "neurology",
    "A03.07": "endocrinology",
    "A04.01": "general surgery",
    "A04.06": "orthopaedics",
    "A07": "paediatrics",
    "A61": "pharmacy",
}
_WARDS = ("A03.01", "A03.04", "A03.05", "A03.07", "A04.01", "A07")


def _hospital(code: str, name: str, lv: str, lat: float, lon: float) -> Hospital:
    serial = code[-2:]
    if lv == "1":
        names, doctors, ward = ("A02", "A61"), 4, 0
    else:
        names, doctors, ward = tuple(_DEPTS), (4 if lv == "2" else 7), (3 if lv == "2" else 5)
    depts = []
    for i, d in enumerate(names):
        n = 2 if d == "A61" else doctors
        outp = tuple(f"D{code[1:7]}{serial}{i:02d}{k:03d}" for k in range(1, n + 1))
        wards = (
            tuple(f"D{code[1:7]}{serial}{i:02d}{k:03d}" for k in range(101, 101 + ward))
            if d in _WARDS
            else ()
        )
        depts.append(Department(d, _DEPTS[d], outp, wards))
    return Hospital(code, name, lv, lat, lon, tuple(depts))


#: Qingdao-like geography: the city hospital and two clinics downtown, a county hospital and a clinic in
#: Jiaozhou (~35 km) and in Pingdu (~85 km).
HOSPITALS: tuple[Hospital, ...] = (
    _hospital("H37020200001", "Qingdao Municipal Hospital", "3", 36.0671, 120.3826),
    _hospital("H37028100002", "Jiaozhou People's Hospital", "2", 36.2644, 120.0335),
    _hospital("H37028300003", "Pingdu People's Hospital", "2", 36.7845, 119.9885),
    _hospital("H37020200011", "Badaxia Community Health Centre", "1", 36.0601, 120.3115),
    _hospital("H37020300012", "Taidong Community Health Centre", "1", 36.0905, 120.3660),
    _hospital("H37028100013", "Sanlihe Community Health Centre", "1", 36.2810, 120.0150),
    _hospital("H37028300014", "Tongji Community Health Centre", "1", 36.7700, 119.9700),
)
#: district → (its clinics, its county-or-city hospital); a person's home hospitals.
_HOME = {
    "370202": (("H37020200011",), "H37020200001"),
    "370203": (("H37020300012",), "H37020200001"),
    "370281": (("H37028100013",), "H37028100002"),
    "370283": (("H37028300014",), "H37028300003"),
}
_DISTRICT_WEIGHTS = (("370202", 30), ("370203", 25), ("370281", 25), ("370283", 20))
_CITY = "H37020200001"


# --- conditions -------------------------------------------------------------------------------

_C = {c.dise_codg: c for c in cat.CONDITIONS}
COPD = cat.Condition(
    "J44.900",
    "chronic obstructive pulmonary disease",
    "A03.01",
    ("XR05CBA149A001010102390", "ZA06AAS0224010101120"),
    ("002501010150000", "002102000010000"),
    chronic=True,
)
COPD_EXACERBATION = cat.Condition(
    "J44.100",
    "COPD with acute exacerbation",
    "A03.01",
    ("XR05CBA149B002010102391", "XB05BBS011B002010100076", "XR05CBA149A001010102390"),
    ("002501010150000", "002504030020000", "002102000010000"),
    inpatient_extras=("003110000010000",),
)


@dataclass(frozen=True, slots=True)
class Chronic:
    """A chronic condition: prevalence by age band, drug classes (one drug per class), follow-up tests."""

    condition: cat.Condition
    prevalence: tuple[tuple[int, float], ...]  # (minimum age, share) ascending
    classes: tuple[tuple[float, tuple[str, ...]], ...]  # (probability, drug codes one of which is taken)
    tests: tuple[tuple[float, str], ...]  # (probability at a refill visit, service code)

    def share(self, age: int) -> float:
        out = 0.0
        for low, p in self.prevalence:
            if age >= low:
                out = p
        return out


_AMLODIPINE, _NIFEDIPINE = "XC08CAA077A001010100001", "XC08CAN062A012010100455"
_ATORVASTATIN, _ROSUVASTATIN = "XC10AAA089A001010102178", "XC10AAR124A001010100786"
CHRONIC: tuple[Chronic, ...] = (
    Chronic(
        _C["I10.x00"],
        ((18, 0.04), (35, 0.12), (45, 0.24), (55, 0.38), (65, 0.50), (75, 0.56)),
        (
            (1.0, (_AMLODIPINE, _AMLODIPINE, _NIFEDIPINE)),
            (0.45, ("XC09CAV012A001010102315",)),
            (0.25, ("XC07ABM086A012010104470",)),
        ),
        ((0.08, "003107010010000"), (0.08, "002503050010000")),
    ),
    Chronic(
        _C["E11.900"],
        ((18, 0.015), (35, 0.05), (45, 0.09), (55, 0.15), (65, 0.19)),
        (
            (0.92, ("XA10BAE056A001010101953",)),
            (0.40, ("XA10BBG033A012010100987",)),
            (0.20, ("XA10BFA022A001010102861",)),
            (0.15, ("XA10AEG067B002010183412",)),
        ),
        ((0.5, "002503010010000"), (1.0, "002503030030000"), (0.1, "002501020350000")),
    ),
    Chronic(
        _C["E78.500"],
        ((35, 0.03), (45, 0.07), (55, 0.10), (65, 0.12)),
        ((1.0, (_ATORVASTATIN, _ATORVASTATIN, _ROSUVASTATIN)),),
        ((0.15, "002503020010000"), (0.15, "002503020030000"), (0.08, "002503010150000")),
    ),
    Chronic(
        _C["I25.103"],
        ((45, 0.015), (55, 0.04), (65, 0.08), (75, 0.12)),
        (
            (0.85, ("XB01ACA056A012010102653",)),
            (0.70, (_ATORVASTATIN,)),
            (0.20, ("XB01ACL057A001010101245",)),
            (0.30, ("XC01DAS019A012010102011",)),
            (0.20, ("ZA12GAD0402010101553",)),
        ),
        ((0.1, "003107010010000"),),
    ),
    Chronic(
        COPD,
        ((40, 0.02), (55, 0.06), (65, 0.10), (75, 0.13)),
        (),  # no maintenance inhaler in the sample catalogue: seen for exacerbations and infections
        (),
    ),
)
_CHRONIC_BY_CODE = {c.condition.dise_codg: c for c in CHRONIC}

# Children's formulations (in the sample catalogue, not in the HIS catalogue): per bottle / box.
_PARACETAMOL_DROPS = cat.Item(
    "XN02BEA004L001010101902",
    "paracetamol oral drops 15ml:1.5g (paediatric)",
    "101",
    "11.80",
    "A",
    7,
    1,
    "0.6ml tid prn",
)
_AMOXICILLIN_GRANULES = cat.Item(
    "XJ01CAA040X001010100563",
    "amoxicillin granules 0.125g x 12 (paediatric)",
    "101",
    "6.20",
    "A",
    12,
    3,
    "0.125g tid",
)
_DRUGS: dict[str, cat.Item] = {
    **cat.DRUGS,
    _PARACETAMOL_DROPS.code: _PARACETAMOL_DROPS,
    _AMOXICILLIN_GRANULES.code: _AMOXICILLIN_GRANULES,
}
_NURSING_I = cat.Item("001201000020000", "level I nursing (per day)", cat.SERVICE_ITEM, "28.00")
_ITEMS: dict[str, cat.Item] = {**cat.ALL_ITEMS, **_DRUGS, _NURSING_I.code: _NURSING_I}
_CHILD_SWAP = {
    "XN02BEA004A001010101478": _PARACETAMOL_DROPS.code,
    "XJ01CAA040E001010101689": _AMOXICILLIN_GRANULES.code,
}

_RESPIRATORY = ("J",)
#: Acute conditions: (condition, minimum age, maximum age, weight). Respiratory weights follow the season.
_ACUTE: tuple[tuple[cat.Condition, int, int, float], ...] = (
    (_C["J06.900"], 0, 120, 40),
    (_C["J20.900"], 0, 120, 14),
    (_C["K29.700"], 15, 120, 22),
    (_C["M54.500"], 20, 120, 20),
)

#: Inpatient conditions: (condition, min age, weight, (low, mode, high) length of stay, who qualifies).
_STAYS: tuple[tuple[cat.Condition, int, float, tuple[int, int, int], str | None], ...] = (
    (_C["J18.900"], 0, 20, (5, 8, 13), None),
    (_C["I63.900"], 45, 16, (9, 12, 18), None),
    (_C["K35.800"], 8, 8, (4, 5, 8), None),
    (_C["E11.900"], 30, 30, (7, 9, 13), "E11.900"),  # weights of the last three: for those who have it
    (_C["I25.103"], 45, 35, (6, 8, 11), "I25.103"),
    (COPD_EXACERBATION, 40, 70, (7, 10, 15), "J44.900"),
)

# Items of a stay.
BED, ROUND, AC_SURCHARGE = "001109000010000", "001103000010000", "009900000010000"
NURSING_I, NURSING_II = "001201000020000", "001201000030000"
INFUSION, INFUSION_SET, SYRINGE, CANNULA, TUBE = (
    "001204000060000",
    "C1401020100000012210",
    "C1401010100000004570",
    "C1402010200000003416",
    "C1405020100000002104",
)
NEBULISER, SALINE = "003110000010000", "XB05BBS011B002010100076"
GENERAL_CONSULT, SPECIALIST_CONSULT = "001102000010000", "001102000030000"


# --- people -----------------------------------------------------------------------------------

#: Population pyramid, five-year bands from 0 (share in per mille; China 2020 census shape).
_PYRAMID = (54, 63, 60, 52, 54, 66, 88, 70, 66, 81, 85, 71, 51, 52, 36, 23, 15, 8, 3)


@dataclass
class Person:
    """One insured person and what the simulation remembers about them (supplies, tests, visits)."""

    insured: Insured
    age: int
    district: str
    clinic: str
    hospital: str
    conditions: list[str]
    regimen: list[str]
    med_type: str  # how their chronic drugs are settled: 14 registered, 11 at a clinic, 41 at a pharmacy
    supply_target: int
    usual: str  # hospital code for refills
    usual_dept: str
    usual_doctor: str
    acute_rate: float  # acute episodes a year
    admit_rate: float  # admissions a year
    supply: dict[str, date] = field(default_factory=dict)  # drug class (or code) → supply lasts until
    dispensed: list[tuple[date, str]] = field(default_factory=list)
    last_test: dict[str, date] = field(default_factory=dict)
    visit_days: list[date] = field(default_factory=list)
    busy_until: date = date.min  # in hospital up to (and including) this day
    last_discharge: date = date.min
    next_refill: date | None = None

    @property
    def psn(self) -> dict[str, str]:
        return self.insured.as_psn()


def _age_on(brdy: str, day: date) -> int:
    born = date.fromisoformat(brdy)
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def _insurance(rng: random.Random, age: int, male: bool) -> tuple[str, str]:
    """(insutype, psn_type) as the sample policy has them: 310/11 employed, 310/12 retired, 390/21 other."""
    retired = age >= (60 if male else 55)
    if age < 18 or (age < 23 and rng.random() < 0.8):
        return "390", "21"
    if not retired:
        return ("310", "11") if rng.random() < 0.48 else ("390", "21")
    return ("310", "12") if rng.random() < 0.38 else ("390", "21")


def _make_people(rng: random.Random, size: int, on: date, kb: Knowledge) -> list[Person]:
    bands = list(accumulate(_PYRAMID))
    districts, dweights = zip(*_DISTRICT_WEIGHTS, strict=True)
    by_code = {h.code: h for h in HOSPITALS}
    used: set[str] = set()
    people: list[Person] = []
    while len(people) < size:
        band = bisect_left(bands, rng.random() * bands[-1] + 1e-9)
        age = min(99, band * 5 + rng.randrange(5))
        male = rng.random() < (0.515 if age < 60 else 0.48 if age < 80 else 0.40)
        district = rng.choices(districts, dweights)[0]
        born = on - timedelta(days=age * 365 + rng.randrange(1, 364) + age // 4)
        serial = rng.randrange(0, 500) * 2 + (1 if male else 0)
        first17 = f"{district}{born:%Y%m%d}{serial:03d}"
        psn_no = first17 + id_check_digit(first17)
        if psn_no in used:
            continue
        used.add(psn_no)
        age = _age_on(born.isoformat(), on)
        insutype, psn_type = _insurance(rng, age, male)
        insured = Insured(
            psn_no=psn_no,
            card_sn=f"{rng.choice('ABCDE')}{rng.randrange(10**8):08d}",
            insutype=insutype,
            insuplc_admdvs=district,
            psn_type=psn_type,
            gend="1" if male else "2",
            brdy=born.isoformat(),
        )
        conditions = [c.condition.dise_codg for c in CHRONIC if rng.random() < c.share(age)]
        regimen: list[str] = []
        classes: list[str] = []
        for code in conditions:
            for p, choices in _CHRONIC_BY_CODE[code].classes:
                drug = rng.choice(choices)
                dclass = kb.items[drug].drug_class or drug
                if rng.random() >= p or dclass in classes:
                    continue
                if any(_interacts(kb, drug, other) for other in regimen):
                    continue
                regimen.append(drug)
                classes.append(dclass)
        clinics, home_hospital = _HOME[district]
        clinic = clinics[0]
        registered = bool(regimen) and (len(conditions) >= 2 or age >= 65) and rng.random() < 0.55
        med_type = "14" if registered else rng.choices(("11", "41"), (80, 20))[0]
        roll = rng.random()
        usual = clinic if roll < 0.5 else home_hospital if roll < 0.85 else _CITY
        if med_type == "41":
            usual = clinic if roll < 0.6 else home_hospital
        hosp = by_code[usual]
        main = conditions[0] if conditions else "I10.x00"
        dept = "A61" if med_type == "41" else "A02" if hosp.hosp_lv == "1" else _C.get(main, COPD).dept_codg
        target = rng.choice((28, 56, 56, 84)) if registered else 30
        acute = 6.0 if age < 5 else 3.0 if age < 15 else 1.6 if age < 45 else 2.0 if age < 65 else 2.8
        admit = 0.08 if age < 15 else 0.07 if age < 45 else 0.15 if age < 65 else 0.30 if age < 75 else 0.45
        people.append(
            Person(
                insured=insured,
                age=age,
                district=district,
                clinic=clinic,
                hospital=home_hospital,
                conditions=conditions,
                regimen=regimen,
                med_type=med_type,
                supply_target=target,
                usual=usual,
                usual_dept=dept,
                usual_doctor=rng.choice(hosp.dept(dept).doctors),
                acute_rate=acute * (1.5 if "J44.900" in conditions else 1.0),
                admit_rate=admit * (1.6 if conditions else 1.0),
            )
        )
    return people


# --- time shapes ------------------------------------------------------------------------------

#: Outpatient visits by weekday (Monday first), relative to the week's mean.
WEEKDAY = (1.30, 1.10, 1.05, 1.00, 1.00, 0.60, 0.45)
_WEEKDAY_MEAN = sum(WEEKDAY) / 7
_ADMIT_WEEKDAY = (1.15, 1.1, 1.05, 1.0, 1.0, 0.9, 0.8)
#: Clinic hours: weight of each hour from 7 to 20.
_HOURS = (0.2, 1.0, 1.3, 1.1, 0.7, 0.2, 0.4, 0.9, 0.9, 0.7, 0.3, 0.1, 0.1, 0.05)
_PHARMACY_HOURS = (0.2, 0.7, 1.0, 1.0, 0.9, 0.7, 0.7, 0.8, 0.9, 0.9, 0.9, 0.8, 0.6, 0.3)


#: Spring Festival (Lunar New Year's Day) by year: the week's holiday starts the day before.
_SPRING_FESTIVAL = {
    2024: date(2024, 2, 10),
    2025: date(2025, 1, 29),
    2026: date(2026, 2, 17),
    2027: date(2027, 2, 6),
    2028: date(2028, 1, 26),
}


def holiday(day: date) -> bool:
    """A public holiday: New Year's Day, Spring Festival week, Labour Day (1-5 May), National Day week
    (1-7 October). Outpatient clinics see Sunday traffic then (Qingming, Dragon Boat and Mid-Autumn,
    a day or three on the lunar calendar, are left out)."""
    if (
        (day.month, day.day) == (1, 1)
        or (day.month == 5 and day.day <= 5)
        or (day.month == 10 and day.day <= 7)
    ):
        return True
    festival = _SPRING_FESTIVAL.get(day.year)
    return festival is not None and -1 <= (day - festival).days <= 6


def season(day: date, respiratory: bool) -> float:
    """Relative incidence on ``day``: respiratory illness ×1.7 in mid-January, ×0.3 in mid-July."""
    phase = math.cos(2 * math.pi * (day.timetuple().tm_yday - 15) / 365.25)
    return 1 + (0.7 if respiratory else 0.08) * phase


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 40:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _clock(rng: random.Random, day: date, hours: Sequence[float] = _HOURS) -> datetime:
    hour = 7 + rng.choices(range(len(hours)), hours)[0]
    return datetime.combine(day, time(hour, rng.randrange(60), rng.randrange(60)), tzinfo=CST)


# --- bills ------------------------------------------------------------------------------------


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _qty(cnt: Decimal) -> str:
    return format(cnt.normalize(), "f") if cnt != cnt.to_integral_value() else str(int(cnt))


def price_for(kb: Knowledge, code: str, hosp_lv: str) -> str:
    """The hospital's unit price: the level's ceiling where levels differ, else the list price (≤ ceiling)."""
    item, ceilings = _ITEMS[code], kb.items[code].price_ceiling
    ceiling = ceilings.get(hosp_lv)
    if ceiling is None:
        return item.pric
    listed = int((Decimal(item.pric) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    if len(set(ceilings.values())) == 1 and listed <= ceiling:
        return item.pric
    return _yuan(ceiling)


class _Bill:
    """Lines of one settlement at one hospital; a code may repeat (one line per day of a stay)."""

    def __init__(self, kb: Knowledge, hospital: Hospital) -> None:
        self.kb, self.hospital = kb, hospital
        self.lines: list[dict[str, Any]] = []

    def add(self, code: str, cnt: Decimal | int, *, when: datetime, days: int | None = None) -> None:
        cnt = Decimal(cnt)
        if cnt <= 0:
            return
        item = _ITEMS[code]
        pric = price_for(self.kb, code, self.hospital.hosp_lv)
        line: dict[str, Any] = {
            "feedetl_sn": "",
            "list_type": item.list_type,
            "med_list_codg": code,
            "medins_list_name": item.name,
            "cnt": _qty(cnt),
            "pric": pric,
            "det_item_fee_sumamt": str((cnt * Decimal(pric)).quantize(_FEN, rounding=ROUND_HALF_UP)),
        }
        if item.list_type in (cat.WESTERN_DRUG, cat.CHINESE_PATENT_DRUG):
            line["days"] = max(1, days or 1)
            if item.dosage:
                line["dosage"] = item.dosage
        line["chrgitm_lv"] = item.chrgitm_lv
        line["fee_ocur_time"] = when.isoformat()
        self.lines.append(line)

    def supply(
        self, code: str, target_days: int, limit: int | None, *, when: datetime, split: bool = False
    ) -> None:
        """Whole packs lasting about ``target_days``, never longer than ``limit`` (per-unit drugs: exact).

        ``split``: when whole packs fall well short of the allowed days (metformin's 16-day box under a
        30-day limit), the pharmacy splits a box (拆零) and dispenses the exact tablets, as long as the
        fraction of a box is exact in four decimals; a chronic patient then comes monthly, not fortnightly.
        """
        item = _DRUGS[code]
        cap = min(target_days, limit) if limit else target_days
        if item.pack_units == 1:
            self.add(code, cap * item.units_per_day, when=when, days=cap)
            return
        per_pack = item.pack_units / item.units_per_day
        packs = max(1, round(target_days / per_pack))
        while packs > 1 and int(packs * per_pack) > cap:
            packs -= 1
        days = max(1, int(packs * per_pack))
        if days > cap:  # one pack lasts longer than allowed: dispensed for the allowed days
            days = cap
        elif split and days < cap * 0.8:
            cnt = Decimal(cap * item.units_per_day) / Decimal(item.pack_units)
            if cnt == cnt.quantize(Decimal("0.0001")):
                self.add(code, cnt, when=when, days=cap)
                return
        self.add(code, packs, when=when, days=days)

    def total(self) -> Decimal:
        return sum((Decimal(ln["det_item_fee_sumamt"]) for ln in self.lines), _ZERO)


# --- visits -----------------------------------------------------------------------------------


@dataclass
class Visit:
    """One settlement before it becomes a body: who, where, what kind, when, and the bill."""

    kind: str  # refill | acute | followup | pharmacy | inpatient
    hospital: Hospital
    person: Person
    med_type: str
    dises: list[str]
    dise_name: str
    dept: str
    dr: str
    begin: datetime
    end: datetime
    lines: list[dict[str, Any]]
    ipt_days: int | None = None

    def body(self, serial: str) -> dict[str, Any]:
        for i, line in enumerate(self.lines, start=1):
            line["feedetl_sn"] = str(i)
        total = sum((Decimal(ln["det_item_fee_sumamt"]) for ln in self.lines), _ZERO)
        mdtrt: dict[str, Any] = {
            "mdtrt_id": f"MDT-{serial}",
            "med_type": self.med_type,
            "begntime": self.begin.isoformat(),
            "endtime": self.end.isoformat(),
            "dise_codg": ",".join(self.dises),
            "dise_name": self.dise_name,
            "dept_codg": self.dept,
            "dr_codg": self.dr,
        }
        if self.ipt_days is not None:
            mdtrt["ipt_days"] = self.ipt_days
        cashier = int(serial[-2:]) % 12 + 1
        return {
            "fixmedins_code": self.hospital.code,
            "his_setl_no": f"HIS-{serial}",
            "psn": self.person.psn,
            "mdtrt": mdtrt,
            "feedetl": self.lines,
            "medfee_sumamt": str(total),
            "opter": f"C{cashier:04d}",
            "opter_name": f"cashier {cashier}",
        }


@dataclass(frozen=True, slots=True)
class Planned:
    """One body for the agent of ``hospital``; ``kind`` says which part of life it came from."""

    hospital: str
    kind: str
    body: dict[str, Any]


@dataclass
class RealisticTraffic:
    """Settlements in the order they happened (visit end), the hospitals and the people behind them."""

    seed: int
    start: date
    end: date
    hospitals: tuple[Hospital, ...]
    people: list[Person]
    planned: list[Planned]

    def for_hospital(self, code: str) -> list[Planned]:
        return [p for p in self.planned if p.hospital == code]

    def hospitals_json(self) -> list[dict[str, Any]]:
        return [
            {
                "fixmedins_code": h.code,
                "name": h.name,
                "hosp_lv": h.hosp_lv,
                "lat": h.lat,
                "lon": h.lon,
                "departments": [
                    {
                        "dept_codg": d.code,
                        "name": d.name,
                        "doctors": list(d.doctors),
                        "ward": list(d.ward_doctors),
                    }
                    for d in h.departments
                ],
            }
            for h in self.hospitals
        ]

    def summary(self) -> dict[str, Any]:
        """Measured shape of the traffic: what a reviewer checks first."""
        kinds = Counter(p.kind for p in self.planned)
        med = Counter(p.body["mdtrt"]["med_type"] for p in self.planned)
        levels = {h.code: h.hosp_lv for h in self.hospitals}
        lv = Counter(levels[p.hospital] for p in self.planned)
        weekday = Counter(
            datetime.fromisoformat(p.body["mdtrt"]["endtime"]).weekday()
            for p in self.planned
            if p.body["mdtrt"]["med_type"] != "21"
        )
        stays = [p.body["mdtrt"]["ipt_days"] for p in self.planned if p.body["mdtrt"]["med_type"] == "21"]
        ages = [p.age for p in self.people]
        n = len(self.planned) or 1
        return {
            "settlements": len(self.planned),
            "persons": len(self.people),
            "kinds": dict(sorted(kinds.items())),
            "med_types": dict(sorted(med.items())),
            "hosp_lv": dict(sorted(lv.items())),
            "inpatient_share": round(med["21"] / n, 4),
            "refill_share": round(kinds["refill"] / n, 4),
            "mean_los": round(sum(stays) / len(stays), 2) if stays else None,
            "outpatient_by_weekday": [weekday[i] for i in range(7)],
            "population": {
                "male_share": round(sum(p.insured.gend == "1" for p in self.people) / max(1, len(ages)), 4),
                "under_15": round(sum(a < 15 for a in ages) / max(1, len(ages)), 4),
                "over_65": round(sum(a >= 65 for a in ages) / max(1, len(ages)), 4),
                "chronic": round(sum(bool(p.conditions) for p in self.people) / max(1, len(ages)), 4),
                "employee_310": round(
                    sum(p.insured.insutype == "310" for p in self.people) / max(1, len(ages)), 4
                ),
            },
            "amount": str(sum((Decimal(p.body["medfee_sumamt"]) for p in self.planned), _ZERO)),
        }

    def write(self, directory: Path) -> dict[str, Path]:
        """``settlements.jsonl`` (hospital, kind, body per line), ``hospitals.json``, ``summary.json``."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = {
            "settlements": directory / "settlements.jsonl",
            "hospitals": directory / "hospitals.json",
            "summary": directory / "summary.json",
        }
        with paths["settlements"].open("w", encoding="utf-8") as out:
            for p in self.planned:
                row = {"hospital": p.hospital, "kind": p.kind, "body": p.body}
                out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
        paths["hospitals"].write_text(json.dumps(self.hospitals_json(), indent=2) + "\n", encoding="utf-8")
        paths["summary"].write_text(json.dumps(self.summary(), indent=2) + "\n", encoding="utf-8")
        return paths


class _Sim:
    """One run: the generator, the knowledge, people, and the visits made so far."""

    def __init__(self, seed: int, start: date, end: date, persons: int, kb: Knowledge) -> None:
        self.rng = random.Random(f"yibao-realistic-{seed}")
        self.seed, self.start, self.end, self.kb = seed, start, end, kb
        self.by_code = {h.code: h for h in HOSPITALS}
        self.people = _make_people(random.Random(f"yibao-realistic-people-{seed}"), persons, start, kb)
        self.visits: list[Visit] = []
        self.acute_cw = list(accumulate(p.acute_rate for p in self.people))
        self.admit_cw = list(accumulate(p.admit_rate for p in self.people))
        self.followups: dict[date, list[tuple[Person, cat.Condition]]] = {}

    # -- the careful prescriber --

    def dclass(self, code: str) -> str:
        return self.kb.items[code].drug_class or code

    def in_supply(self, person: Person, code: str, day: date) -> int:
        until = person.supply.get(self.dclass(code))
        return (until - day).days if until else 0

    def recent_conflict(self, person: Person, code: str, day: date) -> bool:
        since = day - timedelta(days=INTERACTION_DAYS)
        others = [c for d, c in person.dispensed if d >= since] + person.regimen
        return any(_interacts(self.kb, code, other) for other in others)

    def honest(
        self,
        person: Person,
        lines: list[dict[str, Any]],
        med_type: str,
        dises: list[str],
        day: date,
        *,
        refill: bool = False,
    ) -> list[dict[str, Any]]:
        """The history checks, then ``fraud._comply``'s bill checks; remembers what was dispensed, tested."""
        kept = []
        regimen = [self.dclass(c) for c in person.regimen]
        for line in lines:
            code = line["med_list_codg"]
            if "days" in line:
                left = self.in_supply(person, code, day)
                if refill and left > REFILL_SLACK_DAYS:
                    continue
                if not refill and line["days"] > 1 and (left > 0 or self.dclass(code) in regimen):
                    continue
                if not refill and code not in person.regimen and self.recent_conflict(person, code, day):
                    continue
            freq = self.kb.items[code].frequency
            if freq is not None and freq[0].startswith("period_days:"):
                period = int(freq[0].split(":")[1])
                last = person.last_test.get(code)
                if last is not None and (day - last).days < period + 1:
                    continue
            kept.append(line)
        kept = _comply(self.kb, kept, med_type, person.psn, dises, day)
        for line in kept:
            code = line["med_list_codg"]
            if "days" in line:
                person.dispensed.append((day, code))
                until = day + timedelta(days=line["days"])
                key = self.dclass(code)
                person.supply[key] = max(person.supply.get(key, date.min), until)
            freq = self.kb.items[code].frequency
            if freq is not None and freq[0].startswith("period_days:"):
                person.last_test[code] = day
        return kept

    def free(self, person: Person, day: date, *, general: bool = True) -> bool:
        """Not in hospital, not seen today, and (for a general visit) under three visits this week."""
        if person.busy_until >= day or (person.visit_days and person.visit_days[-1] == day):
            return False
        week = day - timedelta(days=6)
        return not general or sum(d >= week for d in person.visit_days[-5:]) < 3

    # -- visits --

    def refill(self, person: Person, day: date) -> None:
        med_type = person.med_type
        hospital = self.by_code[person.usual]
        bill = _Bill(self.kb, hospital)
        when = _clock(self.rng, day, _PHARMACY_HOURS if med_type == "41" else _HOURS)
        begin = when
        if med_type != "41":
            consult = SPECIALIST_CONSULT if med_type == "14" and hospital.hosp_lv == "3" else GENERAL_CONSULT
            bill.add(consult, 1, when=when)
            for code in person.conditions:
                for p, test in _CHRONIC_BY_CODE[code].tests:
                    if self.rng.random() < p:
                        bill.add(test, 1, when=when)
            if any(ln["med_list_codg"].startswith("0025") for ln in bill.lines):
                draws = sum(ln["med_list_codg"].startswith("0025") for ln in bill.lines)
                bill.add(TUBE, draws, when=when)
        for code in person.regimen:
            limit = _day_limit(self.kb, code, med_type)
            bill.supply(code, person.supply_target, limit, when=when, split=True)
        lines = self.honest(person, bill.lines, med_type, person.conditions, day, refill=True)
        if any("days" in ln for ln in lines):  # nothing due: the patient still has enough at home
            lines = [ln for ln in lines if ln["med_list_codg"] != TUBE or _draws(lines)]
            end = begin + timedelta(
                minutes=self.rng.randint(2, 8) if med_type == "41" else self.rng.randint(5, 25)
            )
            self.add(
                "refill",
                hospital,
                person,
                med_type,
                person.conditions,
                "",
                person.usual_dept,
                person.usual_doctor,
                begin,
                end,
                lines,
            )
        person.next_refill = self.due(person)

    def due(self, person: Person) -> date | None:
        """When the earliest regimen drug runs out, less the days this patient comes early (or late)."""
        ends = [person.supply[self.dclass(c)] for c in person.regimen if self.dclass(c) in person.supply]
        if not ends:
            return None
        shift = self.rng.choices((0, 1, 2, -1, -2, -4), (45, 25, 12, 8, 6, 4))[0]
        return self.clinic_day(min(ends) - timedelta(days=shift), early=max(0, shift))

    def clinic_day(self, day: date, early: int = 0) -> date:
        """The day a patient due on ``day`` comes: weekends and holidays move many to a working day.

        ``early``: days before the supply ends ``day`` already is; a move earlier keeps the total
        within ``REFILL_SLACK_DAYS`` (otherwise the patient waits for Monday)."""
        sooner = early < REFILL_SLACK_DAYS
        if day.weekday() == 5:  # Saturday: often Friday or Monday instead
            day += timedelta(days=self.rng.choice((0, 0, -1 if sooner else 2, 2)))
        elif day.weekday() == 6:  # Sunday: mostly Monday
            day += timedelta(days=self.rng.choice((0, -1 if sooner else 1, 1, 1, 1, 1)))
        while holiday(day) and self.rng.random() < 0.6:  # most wait for the holiday to end
            day += timedelta(days=1)
        return day

    def acute(
        self, person: Person, day: date, cond: cat.Condition | None = None, *, follow: bool = False
    ) -> None:
        rng = self.rng
        age = _age_on(person.insured.brdy, day)
        if cond is None:
            options = [
                (c, w * season(day, c.dise_codg.startswith(_RESPIRATORY)))
                for c, lo, hi, w in _ACUTE
                if lo <= age <= hi
            ]
            cond = rng.choices([c for c, _ in options], [w for _, w in options])[0]
        roll = rng.random()
        hospital = self.by_code[person.clinic if roll < 0.55 else person.hospital if roll < 0.88 else _CITY]
        if age < 14 and hospital.hosp_lv != "1":
            dept = "A07"
        else:
            dept = "A02" if hospital.hosp_lv == "1" else cond.dept_codg
        begin = _clock(rng, day)
        bill = _Bill(self.kb, hospital)
        specialist = hospital.hosp_lv == "3" and rng.random() < 0.5
        bill.add(SPECIALIST_CONSULT if specialist else GENERAL_CONSULT, 1, when=begin)
        if not follow:
            drugs = rng.sample(cond.drugs, k=min(len(cond.drugs), rng.randint(1, 3)))
            for code in drugs:
                if "iv" in _DRUGS[code].dosage:
                    continue
                code = _CHILD_SWAP.get(code, code) if age < 12 else code
                limit = _day_limit(self.kb, code, "11")
                bill.supply(code, rng.randint(3, 7), limit, when=begin)
        if rng.random() < (0.45 if not follow else 0.25):
            tests = rng.sample(cond.tests, k=min(len(cond.tests), rng.randint(1, 2)))
            for code in tests:
                bill.add(code, 1, when=begin)
            if _draws(bill.lines):
                bill.add(TUBE, _draws(bill.lines), when=begin)
        if cond.dise_codg == "M54.500" and rng.random() < 0.25:
            bill.add("C1602010100000001136", rng.randint(1, 2), when=begin)  # class C, self-paid
        lines = self.honest(person, bill.lines, "11", [cond.dise_codg], day)
        while sum((Decimal(ln["det_item_fee_sumamt"]) for ln in lines), _ZERO) > OUTPATIENT_CAP:
            lines = lines[:-1]
        dr = rng.choice(hospital.dept(dept).doctors)
        end = begin + timedelta(minutes=rng.randint(5, 60))
        self.add(
            "followup" if follow else "acute",
            hospital,
            person,
            "11",
            [cond.dise_codg],
            cond.dise_name,
            dept,
            dr,
            begin,
            end,
            lines,
        )
        if not follow and rng.random() < 0.15:
            self.followups.setdefault(day + timedelta(days=rng.randint(3, 7)), []).append((person, cond))

    def pharmacy(self, person: Person, day: date) -> None:
        rng = self.rng
        hospital = self.by_code[person.clinic if rng.random() < 0.6 else person.hospital]
        age = _age_on(person.insured.brdy, day)
        cond = rng.choice([c for c, lo, hi, _w in _ACUTE if lo <= age <= hi])
        when = _clock(rng, day, _PHARMACY_HOURS)
        bill = _Bill(self.kb, hospital)
        oral = [c for c in cond.drugs if "iv" not in _DRUGS[c].dosage]
        code = rng.choice(oral)
        code = _CHILD_SWAP.get(code, code) if age < 12 else code
        bill.supply(code, rng.randint(3, 7), _day_limit(self.kb, code, "41"), when=when)
        lines = self.honest(person, bill.lines, "41", [cond.dise_codg], day)
        if lines:
            dr = rng.choice(hospital.dept("A61").doctors)
            self.add(
                "pharmacy",
                hospital,
                person,
                "41",
                [cond.dise_codg],
                cond.dise_name,
                "A61",
                dr,
                when,
                when + timedelta(minutes=rng.randint(2, 8)),
                lines,
            )

    def admit(self, person: Person, day: date) -> None:
        rng = self.rng
        age = _age_on(person.insured.brdy, day)
        options = [
            (s, w * season(day, s[0].dise_codg.startswith(_RESPIRATORY)))
            for s in _STAYS
            for _c, lo, w, _l, need in [s]
            if age >= lo and (need is None or need in person.conditions)
        ]
        (cond, _lo, _w, (low, mode, high), _need) = rng.choices(
            [s for s, _ in options], [w for _, w in options]
        )[0]
        if age < 14:
            low, mode, high = 4, 6, 9
        ipt = max(1, round(rng.triangular(low, high, mode)))
        severe = cond.dise_codg in ("I63.900", "K35.800")
        hospital = self.by_code[_CITY if rng.random() < (0.6 if severe else 0.35) else person.hospital]
        if not hospital.beds:
            hospital = self.by_code[_CITY]
        dept = "A07" if age < 14 else cond.dept_codg
        dr = rng.choice(hospital.dept(dept).ward_doctors or hospital.dept(dept).doctors)
        admitted = datetime.combine(day, time(0), tzinfo=CST) + timedelta(
            minutes=rng.randint(7 * 60, 22 * 60)
        )
        discharge = day + timedelta(days=ipt)
        out = datetime.combine(discharge, time(9), tzinfo=CST) + timedelta(minutes=rng.randint(0, 180))
        lines = self.stay(person, hospital, cond, admitted, ipt, age)
        person.busy_until = discharge
        person.last_discharge = discharge
        if person.next_refill is not None and person.next_refill <= discharge:
            person.next_refill = discharge + timedelta(days=rng.randint(1, 3))
        self.add(
            "inpatient",
            hospital,
            person,
            "21",
            [cond.dise_codg, *[c for c in person.conditions if c != cond.dise_codg][:2]],
            cond.dise_name,
            dept,
            dr,
            admitted,
            out,
            lines,
            ipt,
        )

    def stay(
        self, person: Person, hospital: Hospital, cond: cat.Condition, admitted: datetime, ipt: int, age: int
    ) -> list[dict[str, Any]]:
        """Daily lines: bed, nursing, round (every day), treatment (every day but perhaps the last), tests,
        surgery, take-home drugs at discharge."""
        rng, bill = self.rng, _Bill(self.kb, hospital)
        first = admitted.date()
        nursing = NURSING_I if cond.dise_codg in ("I63.900",) else NURSING_II
        surcharge = rng.random() < 0.3

        def at(d: date, h: int, m: int = 0) -> datetime:
            t = datetime.combine(d, time(h, m), tzinfo=CST)
            return max(t, admitted)

        treat_days = ipt - rng.choice((0, 0, 1))
        infused = [c for c in cond.drugs if "iv" in _DRUGS[c].dosage] or [SALINE]
        oral = [c for c in cond.drugs if c not in infused]
        for i in range(ipt):
            d = first + timedelta(days=i)
            bill.add(BED, 1, when=at(d, 7, 30))
            bill.add(nursing, 1, when=at(d, 8))
            bill.add(ROUND, 1, when=at(d, 9))
            if surcharge:
                bill.add(AC_SURCHARGE, 1, when=at(d, 7, 30))
            if i >= treat_days:
                continue
            for code in infused:
                bill.add(code, _DRUGS[code].units_per_day, when=at(d, 10), days=1)
            bill.add(INFUSION, 1, when=at(d, 10))
            bill.add(INFUSION_SET, 1, when=at(d, 10))
            bill.add(SYRINGE, rng.randint(1, 3), when=at(d, 10))
            for code in oral:  # per-tablet drugs are given on the ward day by day
                if _DRUGS[code].pack_units == 1:
                    bill.add(code, _DRUGS[code].units_per_day, when=at(d, 8), days=1)
            if NEBULISER in cond.inpatient_extras:
                bill.add(NEBULISER, rng.randint(1, 2), when=at(d, 15))
        bill.add(CANNULA, 1 + ipt // 5, when=at(first, 10))
        for code in cond.tests:
            bill.add(code, 1, when=at(first, 8, 30))
        if ipt >= 6 and "002501010150000" in cond.tests:
            bill.add("002501010150000", 1, when=at(first + timedelta(days=ipt // 2), 8, 30))
        if _draws(bill.lines):
            bill.add(TUBE, _draws(bill.lines), when=at(first, 8, 30))
        if "003310030010000" in cond.inpatient_extras:
            bill.add("003301000030000", 1, when=at(first, 14))
            bill.add("003310030010000", 1, when=at(first, 14))
            bill.add("C0207010200000007733", rng.randint(1, 2), when=at(first, 14))
            bill.add("C1403010100000000982", rng.randint(4, 12), when=at(first, 14))
        discharge = first + timedelta(days=ipt)
        for code in oral:
            if _DRUGS[code].pack_units > 1 and rng.random() < 0.7:
                bill.supply(code, rng.choice((7, 14)), _day_limit(self.kb, code, "21"), when=at(discharge, 9))
        return self.honest(person, bill.lines, "21", [cond.dise_codg, *person.conditions], discharge)

    def add(
        self,
        kind: str,
        hospital: Hospital,
        person: Person,
        med_type: str,
        dises: list[str],
        dise_name: str,
        dept: str,
        dr: str,
        begin: datetime,
        end: datetime,
        lines: list[dict[str, Any]],
        ipt_days: int | None = None,
    ) -> None:
        if not lines:
            return
        person.visit_days.append(end.date() if ipt_days is None else begin.date())
        if not dise_name:
            dise_name = "; ".join(_name(d) for d in dises)
        self.visits.append(
            Visit(kind, hospital, person, med_type, dises, dise_name, dept, dr, begin, end, lines, ipt_days)
        )

    # -- the days --

    def run(self) -> None:
        rng = self.rng
        warmup = self.start - timedelta(days=21)  # stays in progress on the first day
        for person in self.people:  # steady state: supplies end anywhere in the next supply period
            if person.regimen:
                due = self.start + timedelta(days=rng.randrange(person.supply_target))
                person.next_refill = self.clinic_day(due, early=REFILL_SLACK_DAYS)
        day = warmup
        while day <= self.end:
            wd = day.weekday()
            if day >= self.start:
                for person in self.people:
                    if person.next_refill is not None and person.next_refill <= day:
                        if self.free(person, day, general=False):
                            self.refill(person, day)
                        else:  # seen today already, or in hospital: once free
                            person.next_refill = max(day, person.busy_until) + timedelta(days=1)
                for person, cond in self.followups.pop(day, []):
                    if self.free(person, day):
                        self.acute(person, day, cond, follow=True)
                # acute visits: persons per year × rate, by weekday and season
                shape = WEEKDAY[6] if holiday(day) else WEEKDAY[wd]
                lam = self.acute_cw[-1] / 365 * shape / _WEEKDAY_MEAN * season(day, True) ** 0.55
                for _ in range(_poisson(rng, lam)):
                    person = self.people[bisect_left(self.acute_cw, rng.random() * self.acute_cw[-1])]
                    if self.free(person, day):
                        self.acute(person, day)
                lam = len(self.people) * 0.8 / 365 * (0.9 if wd < 5 else 1.2)
                for _ in range(_poisson(rng, lam)):
                    person = self.people[rng.randrange(len(self.people))]
                    if person.age >= 2 and self.free(person, day, general=False):
                        self.pharmacy(person, day)
            lam = self.admit_cw[-1] / 365 * _ADMIT_WEEKDAY[wd] * season(day, True) ** 0.3
            for _ in range(_poisson(rng, lam)):
                person = self.people[bisect_left(self.admit_cw, rng.random() * self.admit_cw[-1])]
                if (
                    self.free(person, day, general=False)
                    and person.last_discharge + timedelta(days=READMIT_GAP_DAYS) <= day
                ):
                    self.admit(person, day)
            day += timedelta(days=1)


def _draws(lines: list[dict[str, Any]]) -> int:
    return sum(ln["med_list_codg"].startswith("0025") for ln in lines)


def _name(dise: str) -> str:
    cond = _C.get(dise) or (COPD if dise == COPD.dise_codg else COPD_EXACERBATION)
    return cond.dise_name


def generate_realistic(
    seed: int,
    start: date,
    end: date,
    *,
    persons: int = 5000,
    knowledge: Knowledge | None = None,
    fee_times: bool = True,
) -> RealisticTraffic:
    """The settlements of ``persons`` people between ``start`` and ``end`` (visit end dates, inclusive).

    Pure: the same arguments give the same bodies. Roughly 2.5 settlements a person a month (about
    a third chronic refills, 2-4 % inpatient stays). ``fee_times=False`` drops ``fee_ocur_time``.
    """
    if end < start:
        raise ValueError("end is before start")
    sim = _Sim(seed, start, end, persons, knowledge or default_knowledge())
    sim.run()
    visits = [v for v in sim.visits if start <= v.end.date() <= end]
    visits.sort(key=lambda v: (v.end, v.hospital.code, v.person.insured.psn_no))
    counters: Counter[str] = Counter()
    planned = []
    for v in visits:
        counters[v.hospital.code] += 1
        serial = f"{v.hospital.code[-5:]}-{v.end:%Y%m%d}-s{seed}-{counters[v.hospital.code]:06d}"
        body = v.body(serial)
        if not fee_times:
            for line in body["feedetl"]:
                line.pop("fee_ocur_time", None)
        planned.append(Planned(v.hospital.code, v.kind, body))
    return RealisticTraffic(seed, start, end, HOSPITALS, sim.people, planned)


# --- drivers ----------------------------------------------------------------------------------


#: Fee-line columns of the drop folder's CSV layout 1 (docs/DROPFOLDER.md), in the order written.
CSV_LINE_COLUMNS = (
    "feedetl_sn",
    "list_type",
    "med_list_codg",
    "medins_list_name",
    "cnt",
    "pric",
    "det_item_fee_sumamt",
    "days",
    "dosage",
    "chrgitm_lv",
    "fee_ocur_time",
)


def body_to_csv(body: dict[str, Any]) -> bytes:
    """The settlement in the drop folder's CSV layout 1: ``field,value`` rows (dotted paths), then the
    fee-line table. For HIS products that export spreadsheets; the agent makes the same body of it."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["# Yibao Edge settlement file, layout 1 (simulators.realistic)"])
    writer.writerow(["field", "value"])

    def header(prefix: str, node: dict[str, Any]) -> None:
        for key, value in node.items():
            if key == "feedetl":
                continue
            if isinstance(value, dict):
                header(f"{prefix}{key}.", value)
            else:
                writer.writerow([f"{prefix}{key}", value])

    header("", body)
    writer.writerow([])
    columns = [c for c in CSV_LINE_COLUMNS if any(c in ln for ln in body["feedetl"])]
    writer.writerow(columns)
    for line in body["feedetl"]:
        writer.writerow(["" if line.get(c) is None else line[c] for c in columns])
    return out.getvalue().encode("utf-8")


def write_drop_folder(
    traffic: RealisticTraffic, root: Path, hospital: str, *, layout: str = "json"
) -> list[Path]:
    """``hospital``'s bodies as ``root/inbox/<order>-<his_setl_no>.json`` (or ``.csv``), in visit order.

    Each is written whole to ``inbox/.<name>.tmp`` (a dot-file ending ``.tmp``: never taken by the
    agent), flushed and fsynced, then renamed to ``inbox/<name>``: the rename is atomic, so the
    watcher never sees a half-written settlement. The agent takes files in order of modification
    time, then name; both follow the order the visits happened. ``layout``: ``json`` (the API body)
    or ``csv`` (docs/DROPFOLDER.md layout 1).
    """
    if layout not in ("json", "csv"):
        raise ValueError("layout is json or csv")
    inbox = root / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    written = []
    for i, p in enumerate(traffic.for_hospital(hospital), start=1):
        name = f"{i:08d}-{p.body['his_setl_no']}.{layout}"
        tmp = inbox / f".{name}.tmp"
        if layout == "csv":
            data = body_to_csv(p.body)
        else:
            data = json.dumps(p.body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        with tmp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, inbox / name)
        written.append(inbox / name)
    return written


async def post_realistic(
    traffic: RealisticTraffic,
    agents: dict[str, tuple[str, str]],
    *,
    concurrency: int = 4,
    timeout: float = 30.0,
    on_answer: Callable[[Planned, int, dict[str, Any] | None], None] | None = None,
) -> dict[str, str]:
    """POST each hospital's bodies to its agent (``agents``: code → (url, HIS token)), in visit order.

    Uses ``simulators.his``'s sender: the same bytes re-sent after a dropped connection, a timeout or a
    5xx, so a settlement committed whose answer was lost comes back as a duplicate. Returns
    ``his_setl_no → setl_id`` of the acknowledged ones; hospitals without an agent are skipped.
    """
    import aiohttp

    from .his import _encode, _Sender

    ids: dict[str, str] = {}

    async def run(code: str) -> None:
        url, token = agents[code]
        queue = iter(traffic.for_hospital(code))
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            sender = _Sender(s, retries=5, backoff=0.2)

            async def worker() -> None:
                for p in queue:
                    answer, _ = await sender.post(f"{url.rstrip('/')}/v1/settlements", _encode(p.body))
                    body = answer.body if answer is not None else None
                    if answer is not None and answer.acknowledged and body is not None:
                        ids[p.body["his_setl_no"]] = body["setl_id"]
                    if on_answer is not None:
                        on_answer(p, answer.status if answer is not None else 0, body)

            await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))

    await asyncio.gather(*(run(code) for code in agents))
    return ids


# --- the national envelope --------------------------------------------------------------------

#: The national platform's one endpoint, served by the agent too (docs/NATIONAL.md).
NATIONAL_PATH = "/fsi/api/rsfComIfsService/callService"


def _platform_time(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")


def national_visit(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """One settlement body as the national transactions a HIS sends for it, in order. An outpatient
    visit: 2201 registration, 2203 diagnoses (when there are several: 2201 carries only the main one),
    2204 fee lines, 2207 settlement. An inpatient stay (``med_type`` 21): 2401 admission with its
    diagnoses, 2301 the fee details of each day of the stay as the ward sends them, 2402 discharge,
    2304 settlement. ``${mdtrt_id}`` stands for the visit number the 2201 or 2401 answer gives. The
    person is identified by social-security card (``mdtrt_cert_type`` 03, the card number), read by
    the HIS."""
    if body["mdtrt"]["med_type"] == "21":
        return _national_stay(body)
    psn, md = body["psn"], body["mdtrt"]
    dises = md["dise_codg"].split(",")
    names = md["dise_name"].split("; ")
    cert = {"mdtrt_cert_type": "03", "mdtrt_cert_no": psn["card_sn"]}
    calls: list[tuple[str, dict[str, Any]]] = [
        (
            "2201",
            {
                "mdtrtinfo": {
                    "psn_no": psn["psn_no"],
                    "insutype": psn["insutype"],
                    "begntime": _platform_time(md["begntime"]),
                    **cert,
                    "med_type": md["med_type"],
                    "ipt_otp_no": md["mdtrt_id"],
                    "atddr_no": md["dr_codg"],
                    "dept_code": md["dept_codg"],
                    "dise_codg": dises[0],
                    "dise_name": names[0] if len(names) == len(dises) else md["dise_name"],
                    "insuplc_admdvs": psn["insuplc_admdvs"],
                    "gend": psn["gend"],
                    "brdy": psn["brdy"],
                    "psn_type": psn["psn_type"],
                }
            },
        )
    ]
    if len(dises) > 1:
        calls.append(
            (
                "2203",
                {
                    "mdtrtinfo": {
                        "mdtrt_id": "${mdtrt_id}",
                        "psn_no": psn["psn_no"],
                        "med_type": md["med_type"],
                        "begntime": _platform_time(md["begntime"]),
                    },
                    "diseinfo": [
                        {
                            "diag_type": "1",
                            "diag_srt_no": i,
                            "diag_code": code,
                            "diag_name": names[i - 1] if len(names) == len(dises) else code,
                            "diag_dept": md["dept_codg"],
                            "dise_dor_no": md["dr_codg"],
                            "diag_time": _platform_time(md["begntime"]),
                            "vali_flag": "1",
                        }
                        for i, code in enumerate(dises, start=1)
                    ],
                },
            )
        )
    batch = f"B{md['mdtrt_id'][-12:]}"
    lines = []
    for ln in body["feedetl"]:
        line = {
            "feedetl_sn": ln["feedetl_sn"],
            "mdtrt_id": "${mdtrt_id}",
            "psn_no": psn["psn_no"],
            "chrg_bchno": batch,
            "fee_ocur_time": _platform_time(ln.get("fee_ocur_time") or md["endtime"]),
            "med_list_codg": ln["med_list_codg"],
            "medins_list_codg": f"H-{ln['med_list_codg']}",
            "medins_list_name": ln["medins_list_name"],
            "det_item_fee_sumamt": ln["det_item_fee_sumamt"],
            "cnt": ln["cnt"],
            "pric": ln["pric"],
            "list_type": ln["list_type"],
            "bilg_dept_codg": md["dept_codg"],
            "bilg_dr_codg": md["dr_codg"],
        }
        if "days" in ln:
            line["prd_days"] = ln["days"]
        lines.append(line)
    calls.append(("2204", {"feedetail": lines}))
    calls.append(
        (
            "2207",
            {
                "data": {
                    "psn_no": psn["psn_no"],
                    **cert,
                    "med_type": md["med_type"],
                    "medfee_sumamt": body["medfee_sumamt"],
                    "psn_setlway": "01",
                    "mdtrt_id": "${mdtrt_id}",
                    "chrg_bchno": batch,
                    "insutype": psn["insutype"],
                    "acct_used_flag": "0",
                }
            },
        )
    )
    return calls


def _diseinfo(md: dict[str, Any], when: str) -> list[dict[str, Any]]:
    dises = md["dise_codg"].split(",")
    names = md["dise_name"].split("; ")
    return [
        {
            "mdtrt_id": "${mdtrt_id}",
            "diag_type": "1",
            "maindiag_flag": "1" if i == 1 else "0",
            "diag_srt_no": str(i),
            "diag_code": code,
            "diag_name": names[i - 1] if len(names) == len(dises) else code,
            "diag_dept": md["dept_codg"],
            "dise_dor_no": md["dr_codg"],
            "diag_time": when,
        }
        for i, code in enumerate(dises, start=1)
    ]


def _national_stay(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """2401, one 2301 per day of fee details, 2402, 2304 (``national_visit``)."""
    psn, md = body["psn"], body["mdtrt"]
    cert = {"mdtrt_cert_type": "03", "mdtrt_cert_no": psn["card_sn"]}
    begin, end = _platform_time(md["begntime"]), _platform_time(md["endtime"])
    main = md["dise_codg"].split(",")[0]
    names = md["dise_name"].split("; ")
    diseinfo = _diseinfo(md, begin)
    calls: list[tuple[str, dict[str, Any]]] = [
        (
            "2401",
            {
                "mdtrtinfo": {
                    "psn_no": psn["psn_no"],
                    "insutype": psn["insutype"],
                    "begntime": begin,
                    **cert,
                    "med_type": md["med_type"],
                    "ipt_no": md["mdtrt_id"],
                    "atddr_no": md["dr_codg"],
                    "adm_dept_codg": md["dept_codg"],
                    "adm_bed": "",
                    "dise_codg": main,
                    "dise_name": names[0],
                    "insuplc_admdvs": psn["insuplc_admdvs"],
                    "gend": psn["gend"],
                    "brdy": psn["brdy"],
                    "psn_type": psn["psn_type"],
                },
                "diseinfo": [{k: v for k, v in d.items() if k != "mdtrt_id"} for d in diseinfo],
            },
        )
    ]
    by_day: dict[str, list[dict[str, Any]]] = {}
    for ln in body["feedetl"]:
        at = _platform_time(ln.get("fee_ocur_time") or md["endtime"])
        line = {
            "feedetl_sn": ln["feedetl_sn"],
            "init_feedetl_sn": "",
            "mdtrt_id": "${mdtrt_id}",
            "drord_no": f"YZ{ln['feedetl_sn']}",
            "psn_no": psn["psn_no"],
            "med_type": md["med_type"],
            "fee_ocur_time": at,
            "med_list_codg": ln["med_list_codg"],
            "medins_list_codg": f"H-{ln['med_list_codg']}",
            "det_item_fee_sumamt": ln["det_item_fee_sumamt"],
            "cnt": ln["cnt"],
            "pric": ln["pric"],
            "bilg_dept_codg": md["dept_codg"],
            "bilg_dr_codg": md["dr_codg"],
            "prd_days": ln.get("days", ""),
        }
        by_day.setdefault(at[:10], []).append(line)
    calls.extend(("2301", {"feedetail": lines}) for _day, lines in sorted(by_day.items()))
    calls.append(
        (
            "2402",
            {
                "dscginfo": {
                    "mdtrt_id": "${mdtrt_id}",
                    "psn_no": psn["psn_no"],
                    "insutype": psn["insutype"],
                    "endtime": end,
                    "dise_codg": main,
                    "dise_name": names[0],
                    "dscg_dept_codg": md["dept_codg"],
                    "dscg_way": "1",
                },
                "diseinfo": _diseinfo(md, end),
            },
        )
    )
    calls.append(
        (
            "2304",
            {
                "data": {
                    "psn_no": psn["psn_no"],
                    **cert,
                    "medfee_sumamt": body["medfee_sumamt"],
                    "psn_setlway": "01",
                    "mdtrt_id": "${mdtrt_id}",
                    "insutype": psn["insutype"],
                    "acct_used_flag": "0",
                    "mid_setl_flag": "0",
                }
            },
        )
    )
    return calls


def _fill(value: Any, mdtrt_id: str) -> Any:
    if value == "${mdtrt_id}":
        return mdtrt_id
    if isinstance(value, list):
        return [_fill(v, mdtrt_id) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, mdtrt_id) for k, v in value.items()}
    return value


async def post_national(
    traffic: RealisticTraffic,
    agents: dict[str, tuple[str, str]],
    *,
    timeout: float = 30.0,
    on_error: Callable[[Planned, str, str], None] | None = None,
) -> dict[str, str]:
    """Drive each hospital's agent through the national envelope, as a HIS built for the platform does:
    9001 sign-in, then per visit 2201 / (2203) / 2204 / 2207, per inpatient stay 2401 / 2301 per day /
    2402 / 2304 (``national_visit``), one visit after another in visit order.

    Each envelope has its own ``msgid`` (institution code + time + 4-digit sequence) and is re-sent as
    the same bytes after a dropped connection or a 5xx (the agent answers a repeated ``msgid`` with its
    first answer). A transaction answered ``infcode`` -1 ends that visit (``on_error(planned, infno,
    err_msg)``). Returns ``his_setl_no → setl_id`` of the visits settled (2207 or 2304
    ``setlinfo.setl_id``).
    """
    import aiohttp

    from .his import _encode, _Sender

    by_code = {h.code: h for h in traffic.hospitals}
    ids: dict[str, str] = {}

    async def run(code: str) -> None:
        url, token = agents[code]
        hospital = by_code[code]
        seq = 0
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            sender = _Sender(s, retries=5, backoff=0.2)
            sign_no = ""

            async def call(infno: str, input_: dict[str, Any], opter: str) -> dict[str, Any]:
                nonlocal seq
                seq = seq % 9999 + 1
                now = datetime.now(CST)
                envelope = {
                    "infno": infno,
                    "msgid": f"{code}{now:%Y%m%d%H%M%S}{seq:04d}",
                    "mdtrtarea_admvs": hospital.admdvs,
                    "insuplc_admdvs": hospital.admdvs,
                    "recer_sys_code": "FSI_LOCAL",
                    "dev_no": "",
                    "dev_safe_info": "",
                    "cainfo": "",
                    "signtype": "",
                    "infver": "V1.0",
                    "opter_type": "1",
                    "opter": opter,
                    "opter_name": f"cashier {opter}",
                    "inf_time": f"{now:%Y-%m-%d %H:%M:%S}",
                    "fixmedins_code": code,
                    "fixmedins_name": hospital.name,
                    "sign_no": sign_no,
                    "input": input_,
                }
                answer, _ = await sender.post(f"{url.rstrip('/')}{NATIONAL_PATH}", _encode(envelope))
                if answer is None or answer.body is None:
                    return {"infcode": -1, "err_msg": "no answer", "output": None}
                return answer.body

            signed = await call("9001", {"signIn": {"opter_no": "C0001", "mac": "", "ip": ""}}, "C0001")
            if signed.get("infcode") != 0:
                raise RuntimeError(f"{code}: 9001 sign-in refused: {signed.get('err_msg')}")
            sign_no = signed["output"]["signinoutb"]["sign_no"]
            for p in traffic.for_hospital(code):
                mdtrt_id = ""
                for infno, input_ in national_visit(p.body):
                    answer = await call(infno, _fill(input_, mdtrt_id), p.body["opter"])
                    if answer.get("infcode") != 0:
                        if on_error is not None:
                            on_error(p, infno, str(answer.get("err_msg")))
                        break
                    out = answer.get("output") or {}
                    if infno == "2201":
                        mdtrt_id = out["data"]["mdtrt_id"]
                    elif infno == "2401":
                        mdtrt_id = out["result"]["mdtrt_id"]
                    elif infno in ("2207", "2304"):
                        ids[p.body["his_setl_no"]] = out["setlinfo"]["setl_id"]

    await asyncio.gather(*(run(code) for code in agents))
    return ids
