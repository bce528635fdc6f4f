"""A second, independent labelled scenario: provider fraud that is not placed at any rule's threshold.

``simulators.fraud`` builds one case per template just over (and its twin just under) each threshold
of ``docs/samples/monitoring_rules.json``: it measures whether the rules fire, and a score tuned on it
learns those thresholds. Real fraud is not so obliging. ``generate_providers`` simulates a district of
many hospitals of three levels and very different sizes over some weeks, where a share of hospitals
(and within them one or two doctors) commit one or two of:

- **volume**: extra thin visits for the doctor's real patients, Poisson with an intensity drawn
  from 0.3-1.2 × their real visits, spread over the weeks (mostly under any frequent-visit limit);
- **upcoding**: 1-3 extra tests or services and 1.2-1.8 × the quantities on the doctor's bills;
- **phantom patients**: people who are seen nowhere else, 5-25 % of the hospital's patient count, with
  1-4 thin visits each; a quarter of them carry the identity of someone already dead;
- **unnecessary admission**: 5-20 % of the doctor's acute outpatient visits billed as 1-3 day stays.

The intensities are drawn from ranges, never set from a rule's parameters. Honest doctors differ too
(a practice style factor on tests and quantities), hospitals differ in size (lognormal), so plain
total amount is a baseline a score has to beat, not a given. Pure and seeded: the same arguments give
the same records. Labels: per hospital, doctor and person (phantoms and people billed for visits or
admissions that did not happen); upcoded patients are not labelled (they were treated).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from protocol.records import FeeDetail, Person, Settlement, Visit

from . import _catalogue as cat
from .fraud import _price_of, default_knowledge
from .his import CST

__all__ = ["SCHEMES", "ProviderScenario", "generate_providers"]

SCHEMES = ("volume", "upcoding", "phantom", "admission")
CONSULT = "001102000010000"
BED = "001109000010000"
NURSING = "001201000030000"
_DEPTS = ("A03.01", "A03.03", "A03.04", "A03.05", "A03.07", "A04.01", "A04.06")


@dataclass(frozen=True, slots=True)
class SimProvider:
    code: str
    hosp_lv: str
    size: float
    doctors: tuple[tuple[str, str], ...]  # (dr_codg, dept_codg)


@dataclass
class ProviderScenario:
    """Records in settlement-time order (hospital, settlement), labels per object type, deaths."""

    start: date
    end: date
    area: str
    hospitals: tuple[SimProvider, ...]
    records: list[tuple[str, Settlement]]
    labels: dict[str, dict[str, bool]]
    schemes: dict[str, list[str]]
    deaths: list[tuple[str, str]] = field(default_factory=list)


def _yuan(fen: int) -> str:
    return format(Decimal(fen).scaleb(-2).normalize(), "f")


def _fen(pric_text: str) -> int:
    return int(Decimal(pric_text) * 100)


class _Gen:
    def __init__(self, seed: int, start: date, days: int, area: str) -> None:
        self.rng = random.Random(seed)
        self.start, self.days, self.area = start, days, area
        self.kb = default_knowledge()
        self.records: list[tuple[datetime, str, Settlement]] = []
        self.n = 0

    def when(self) -> datetime:
        day = self.start + timedelta(days=self.rng.randrange(self.days))
        return datetime.combine(day, time(self.rng.randint(8, 16), self.rng.randrange(60)), tzinfo=CST)

    def line(self, sn: int, code: str, cnt: int, lv: str, days: int | None = None) -> FeeDetail:
        item = cat.ALL_ITEMS.get(code)
        fen = _fen(_price_of(code, self.kb, lv))
        return FeeDetail(
            cnt=str(cnt), pric=_yuan(fen), det_item_fee_sumamt=cnt * fen, feedetl_sn=str(sn),
            list_type=item.list_type if item else "201", med_list_codg=code,
            medins_list_name=item.name if item else code, days=days,
        )  # fmt: skip

    def visit(
        self, h: SimProvider, doctor: tuple[str, str], person: Person, when: datetime, cond: cat.Condition, *,
        tests: int, scale: float, thin: bool = False, stay: int = 0,
    ) -> Settlement:  # fmt: skip
        rng = self.rng
        lines = [self.line(1, CONSULT, 1, h.hosp_lv)]
        drugs = cond.drugs[: 1 if thin else rng.randint(1, min(2, len(cond.drugs)))]
        for code in drugs:
            cnt = max(1, round(rng.randint(1, 2) * scale))
            lines.append(self.line(len(lines) + 1, code, cnt, h.hosp_lv, days=7 * cnt))
        pool = cond.tests + tuple(cat.SERVICES)[:6]
        for code in rng.sample(pool, min(len(pool), 0 if thin else tests)):
            if code != CONSULT:
                lines.append(self.line(len(lines) + 1, code, 1, h.hosp_lv))
        begin, end = when, when + timedelta(minutes=20)
        if stay:
            begin = when - timedelta(days=stay)
            for code in (BED, NURSING):
                lines.append(self.line(len(lines) + 1, code, stay, h.hosp_lv))
        self.n += 1
        sid = f"{h.code}-{self.n:07d}"
        s = Settlement(
            feedetl=lines, fixmedins_code=h.code, his_setl_no=f"HIS-{sid}",
            mdtrt=Visit(begntime=begin.isoformat(), endtime=end.isoformat(), dise_codg=cond.dise_codg,
                        mdtrt_id=f"M-{sid}", med_type="21" if stay else "11", dr_codg=doctor[0],
                        dept_codg=doctor[1]),
            medfee_sumamt=sum(x.det_item_fee_sumamt for x in lines), opter="sim", psn=person, setl_id=sid,
            setl_time=end.isoformat(),
        )  # fmt: skip
        self.records.append((end, h.code, s))
        return s


def generate_providers(
    seed: int,
    *,
    hospitals: int = 40,
    persons: int = 3000,
    days: int = 90,
    start: date = date(2026, 7, 1),
    fraud_share: float = 0.15,
    area: str = "370200",
) -> ProviderScenario:
    """The scenario (see the module docstring); ``fraud_share`` of the hospitals commit fraud."""
    g = _Gen(seed, start, days, area)
    rng = g.rng
    provs = []
    for i in range(hospitals):
        lv = rng.choices(("1", "2", "3"), (0.5, 0.35, 0.15))[0]
        size = rng.lognormvariate(0, 0.8) * {"1": 1, "2": 2.5, "3": 5}[lv]
        n_dr = max(2, min(8, round(size * 1.5)))
        doctors = tuple((f"D{i:03d}{k:02d}", _DEPTS[(i + k) % len(_DEPTS)]) for k in range(n_dr))
        provs.append(SimProvider(f"H{area[:4]}{i:07d}", lv, size, doctors))
    n_fraud = max(2, round(hospitals * fraud_share))
    fraud_h = rng.sample(range(hospitals), n_fraud)
    schemes: dict[str, list[str]] = {}
    bad_doctors: dict[str, set[str]] = {}
    labels: dict[str, dict[str, bool]] = {"hospital": {}, "doctor": {}, "person": {}}
    for i in fraud_h:
        h = provs[i]
        schemes[h.code] = rng.sample(SCHEMES, rng.choice((1, 1, 2)))
        bad_doctors[h.code] = {d[0] for d in rng.sample(h.doctors, min(len(h.doctors), rng.choice((1, 2))))}
    styles = {d[0]: rng.lognormvariate(0, 0.15) for h in provs for d in h.doctors}
    weights = [h.size for h in provs]
    people: list[Person] = []
    for p in range(persons):
        age = rng.randint(1, 90)
        brdy = f"{2026 - age}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"
        people.append(Person(brdy=brdy, gend=rng.choice("12"), insuplc_admdvs=area, insutype="310",
                             psn_no=f"P{area}{p:08d}", psn_type="11"))  # fmt: skip
    per_doctor_patients: dict[str, list[Person]] = {}
    for person in people:
        chronic = rng.random() < 0.3
        home = rng.choices(provs, weights)[0]
        n_visits = (3 if chronic else 0) + _poisson(rng, 1.5)
        for _ in range(n_visits):
            h = home if rng.random() < 0.8 else rng.choices(provs, weights)[0]
            cond = rng.choice(cat.CHRONIC_CONDITIONS if chronic else cat.OUTPATIENT_CONDITIONS)
            doctor = rng.choice([d for d in h.doctors if d[1] == cond.dept_codg] or list(h.doctors))
            bad = doctor[0] in bad_doctors.get(h.code, ())
            scheme = schemes.get(h.code, []) if bad else []
            style = styles[doctor[0]]
            tests = int(rng.random() < 0.4 * style) + int(rng.random() < 0.1 * style)
            scale = style
            if "upcoding" in scheme:
                tests += rng.randint(1, 3)
                scale *= rng.uniform(1.2, 1.8)
            when = g.when()
            if rng.random() < 0.04:  # an honest admission
                inc = rng.choice(cat.INPATIENT_CONDITIONS)
                g.visit(h, doctor, person, when, inc, tests=2 + tests, scale=scale, stay=rng.randint(3, 9))
                continue
            if "admission" in scheme and not cond.chronic and rng.random() < rng.uniform(0.05, 0.2) * 3:
                g.visit(h, doctor, person, when, cond, tests=tests, scale=scale, stay=rng.randint(1, 3))
                labels["person"][person.psn_no] = True
                continue
            g.visit(h, doctor, person, when, cond, tests=tests, scale=scale)
            per_doctor_patients.setdefault(doctor[0], []).append(person)
    # volume: extra thin visits for the bad doctors' real patients
    deaths: list[tuple[str, str]] = []
    for code, sch in schemes.items():
        h = next(x for x in provs if x.code == code)
        bad = [d for d in h.doctors if d[0] in bad_doctors[code]]
        if "volume" in sch:
            intensity = rng.uniform(0.3, 1.2)
            for d in bad:
                for person in per_doctor_patients.get(d[0], []):
                    for _ in range(_poisson(rng, intensity)):
                        cond = rng.choice(cat.OUTPATIENT_CONDITIONS)
                        g.visit(h, d, person, g.when(), cond, tests=0, scale=1.0, thin=True)
                        labels["person"][person.psn_no] = True
        if "phantom" in sch:
            real = {p.psn_no for d in bad for p in per_doctor_patients.get(d[0], [])}
            n = max(3, round(rng.uniform(0.05, 0.25) * max(10, len(real))))
            for k in range(n):
                psn = Person(brdy=f"{rng.randint(1940, 2000)}-05-05", gend=rng.choice("12"),
                             insuplc_admdvs=area, insutype="310", psn_no=f"Q{code[-4:]}{k:06d}",
                             psn_type="11")  # fmt: skip
                labels["person"][psn.psn_no] = True
                dead = rng.random() < 0.25
                if dead:
                    deaths.append((psn.psn_no, (start - timedelta(days=rng.randint(30, 400))).isoformat()))
                for _ in range(rng.randint(1, 4)):
                    cond = rng.choice(cat.OUTPATIENT_CONDITIONS)
                    g.visit(h, rng.choice(bad), psn, g.when(), cond, tests=0, scale=1.0, thin=True)
    for h in provs:
        labels["hospital"][h.code] = h.code in schemes
        for d in h.doctors:
            labels["doctor"][d[0]] = d[0] in bad_doctors.get(h.code, ())
    for s in (r[2] for r in g.records):
        labels["person"].setdefault(s.psn.psn_no, False)
    g.records.sort(key=lambda r: (r[0], r[2].setl_id))
    return ProviderScenario(
        start, start + timedelta(days=days - 1), area, tuple(provs), [(h, s) for _, h, s in g.records],
        labels, schemes, deaths,
    )  # fmt: skip


def _poisson(rng: random.Random, lam: float) -> int:
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
