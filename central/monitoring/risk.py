"""Risk per object: every rule's findings, money at stake, volume and peer indicators in one explained score.

Why: a reviewer's queue of single suspicions ranks facts, not who to audit. Tried on claims data it
was not tuned to, ranking providers by their suspicions was worse than ranking them by plain total
amount: the signal came almost wholly from one rule, and a big hospital has more of every fact. So
the score of an object (person, doctor, department, hospital) over a date range is built from
evidence that is **surprising for an object of its kind and volume**, and every part is shown:

- **rules** (weight 0.45): per rule, the object's held suspicions (a person-level fact counts for the
  doctor, department and hospital of its anchor visit) against how many its volume would have at the
  rule's rate among its peers (same department and grade; the object itself left out, pulled toward
  the rule's rate everywhere by ``PEER_PRIOR`` visits). The surprise is ``-log10`` of the tail
  ``P(X >= k)``: a rule that fires on every tenth visit everywhere says little; forty findings where
  twenty were expected, or one finding of a rule that fires once in a thousand visits, says a lot. X is
  negative binomial with the rule's own **overdispersion** (estimated over the other objects of the
  kind, Poisson when counts vary no more than chance): a rule that fires more at some honest objects
  than at others anyway (practice style, patient mix) says less for the same excess. The
  part ramps from ``RULE_S0`` to ``RULE_S0 + RULE_S1`` up to ``RULE_CAP`` (times 0.5-1 by the findings'
  mean score). **No rule may carry the score**: parts are capped and combine as independent evidence
  (``1 - Π(1 - part)``), and **rules that find the same settlements are one piece of evidence**: taken
  strongest first, each rule counts only for the share of its settlements no stronger rule found.
- **combination bonus**: ``COMBO_STEP`` per category beyond the first whose rule part is at least
  ``COMBO_MIN_PART`` (up to ``COMBO_MAX``): several kinds of irregularity on one object.
- **money** (0.20): the money of the settlements behind the rules that stand out, as a share of the
  object's total (one settlement's money counts once), each settlement's money weighed by how far its
  strongest rule stands out (in full from a part of ``MONEY_FULL_PART``): money behind a rule that barely
  stands out is barely at stake.
- **indicators** (0.70; doctors, departments, hospitals): with no threshold, each object against the
  others of its kind: **case-mix cost** (the mean log ratio of each visit's cost to the median of
  visits of the same type, hospital grade and diagnosis category), **visits per patient** and
  **admission rate** against the peers' median. Each is shrunk toward the peers by ``SHRINK_VISITS``
  visits, then read as a robust z (median and 1.4826 × MAD over the objects with enough visits); the
  part ramps from z = ``IND_Z0`` over ``IND_Z1`` up to ``INDICATOR_CAP``. This is what finds volume
  fraud, upcoding and unnecessary admissions that sit under every rule's threshold.
- **providers** (0.9): a hospital's or department's worst doctor's score; a person's doctors' scores
  weighted by the share of the person's visits with each (a phantom patient is all visits with one
  suspect doctor). The score takes the larger of the object's own evidence and 0.9 × this (0.5 × for
  a person: most patients of a suspect doctor are genuine, and a person's own fact must outrank
  merely having seen that doctor), not both: a doctor's findings are the hospital's findings too, and
  counting them twice would let one rule carry a hospital.
- **volume** shrinks what little data shows: the score is multiplied by ``n / (n + min_visits)``
  (``MIN_VISITS``; none for persons, whose single fact can be certain).

The weights and thresholds were chosen on the tuning seeds of ``benchmarks/detection.py``'s second
scenario and are reported there on held-out seeds too (docs/MONITORING.md, "Risk per object").
Cost: one pass over the range's visits in Python (about a second a million visits) plus the
doctors' scores once more for hospitals, departments and persons.

Money is integer fen throughout; the score and its parts are floats (a ranking, not an amount).
Suspicions counted: ``holds = 1`` and status not ``dismissed``, ``no_longer_holds`` or ``shadow``
(a shadow rule costs nobody anything); their anchor settled in the range.
"""

from __future__ import annotations

import math
import sqlite3
import statistics
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from central.errors import MonitorInputInvalid

__all__ = [
    "BY",
    "COMBO_MAX",
    "COMBO_STEP",
    "MIN_VISITS",
    "RULE_CAP",
    "WEIGHTS",
    "ObjectRisk",
    "by_category",
    "object_risk",
]

BY = ("person", "doctor", "department", "hospital")
RULE_CAP = 0.5
COMBO_STEP = 0.08
COMBO_MAX = 0.24
#: A rule's part from which its category counts for the combination bonus.
COMBO_MIN_PART = 0.1
#: A rule's part from which the money of its settlements counts in full (below: in proportion).
MONEY_FULL_PART = 0.25
INDICATOR_CAP = 0.5
WEIGHTS = {"rules": 0.45, "money": 0.20, "indicators": 0.7, "providers": 0.9, "exposure": 0.5}
#: Default volume (visits in the range) at which the volume shrink halves a score, per object type.
MIN_VISITS = {"person": 0, "doctor": 10, "department": 10, "hospital": 20}
#: Surprise (-log10 of the Poisson tail) at which a rule starts to count, and how much more to its cap.
RULE_S0, RULE_S1 = 1.0, 3.0
#: Robust z of an indicator at which it starts to count, and how much more to its cap.
IND_Z0, IND_Z1 = 2.0, 4.0
#: Visits an indicator is shrunk by toward its peers (a doctor with 5 visits is mostly the median).
SHRINK_VISITS = 10
#: Visits a (type, grade, diagnosis) group needs for its own median cost; fewer: (type, grade)'s.
MIN_CASE_MIX = 5
#: Visits of prior at the rule's rate everywhere when reading its rate among an object's peers.
PEER_PRIOR = 200
#: The least spread an indicator's z divides by (all peers alike must not make a tiny gap a huge z).
MIN_SPREAD = 0.02
#: The most overdispersion (α of the negative binomial) a rule's counts are read with.
MAX_DISPERSION = 2.0
#: Objects of the kind (besides the one judged) a rule's overdispersion is estimated from; fewer: Poisson.
MIN_DISPERSION_OBJECTS = 10
_COUNTED = "s.holds = 1 AND s.status NOT IN ('dismissed', 'no_longer_holds', 'shadow')"

@dataclass(slots=True)
class ObjectRisk:
    """One object's score and what it is made of (``to_json`` for lists and the API)."""

    object_type: str
    object_id: str
    visits: int = 0
    patients: int = 0
    total_fen: int = 0
    at_stake_fen: int = 0
    score: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)
    rules: list[dict[str, Any]] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    indicators: dict[str, dict[str, Any]] = field(default_factory=dict)
    rank: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "object_type": self.object_type, "object_id": self.object_id, "rank": self.rank,
            "score": round(self.score, 2), "visits": self.visits, "patients": self.patients,
            "total_fen": self.total_fen, "at_stake_fen": self.at_stake_fen,
            "parts": {k: round(v, 4) for k, v in self.parts.items()}, "rules": self.rules,
            "categories": self.categories, "indicators": self.indicators,
        }  # fmt: skip


def _in(column: str, values: Collection[str] | None, params: list[Any]) -> str:
    if values is None:
        return "1 = 1"
    params.extend(sorted(values))
    return f"{column} IN ({','.join('?' * len(values))})" if values else "1 = 0"


_VISIT_COLUMNS = (
    "v.setl_id, v.psn_no, v.dr_codg, v.fixmedins_code, coalesce(v.dept_codg, '?'), coalesce(v.hosp_lv, '?'), "
    "v.med_type, coalesce(substr(v.dise_main, 1, 3), '?'), v.medfee_sumamt"
)


def _visits(
    conn: sqlite3.Connection, lo: str, hi: str, areas: Collection[str] | None
) -> list[tuple[str, str, str | None, str, str, str, str, str, int]]:
    """(setl_id, psn_no, dr_codg, hospital, dept, hosp_lv, med_type, dise3, fen) of the range's visits."""
    params: list[Any] = [lo, hi]
    area = _in("v.area", areas, params)
    return conn.execute(
        f"SELECT {_VISIT_COLUMNS} FROM hist_visits AS v WHERE v.setl_date BETWEEN ? AND ? AND {area}", params
    ).fetchall()


def _key(by: str, v: tuple) -> str | None:
    if by == "person":
        return v[1]
    if by == "doctor":
        return v[2]
    if by == "department":
        return f"{v[3]}/{v[4]}"
    return v[3]


def _peer(by: str, v: tuple) -> str:
    if by in ("doctor", "department"):
        return f"{v[4]}|{v[5]}"
    return v[5] if by == "hospital" else ""


def _case_mix(visits: list[tuple]) -> dict[tuple[str, str, str], float]:
    """Median cost of a visit per (visit type, hospital grade, diagnosis category), the yardstick a
    visit's cost is read against: a cardiology ward is not dear because heart patients are. Groups with
    fewer than ``MIN_CASE_MIX`` visits fall back to (visit type, grade)."""
    fine: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    coarse: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for v in visits:
        fine[(v[6], v[5], v[7])].append(v[8])
        coarse[(v[6], v[5], "*")].append(v[8])
    out = {k: float(statistics.median(x)) for k, x in coarse.items()}
    out.update({k: float(statistics.median(x)) for k, x in fine.items() if len(x) >= MIN_CASE_MIX})
    return out


def _findings(
    conn: sqlite3.Connection, by: str, lo: str, hi: str, areas: Collection[str] | None
) -> dict[str, list[tuple]]:
    """Per object: (rule_id, category, score, amount_fen, anchor) of each counted suspicion about it."""
    params: list[Any] = [lo, hi]
    area = _in("s.area", areas, params)
    rows = conn.execute(
        "SELECT s.rule_id, coalesce(s.category, s.template), s.object_type, s.object_id, s.score, "
        "s.amount_fen, coalesce(s.anchor, s.period, ''), v.psn_no, v.dr_codg, v.dept_codg, "
        "coalesce(v.fixmedins_code, s.fixmedins_code) FROM suspicions AS s "
        "LEFT JOIN hist_visits AS v ON v.setl_id = substr(s.anchor, 1, instr(s.anchor || '|', '|') - 1) "
        f"WHERE {_COUNTED} AND s.anchor_date BETWEEN ? AND ? AND {area}",
        params,
    )
    out: dict[str, list[tuple]] = defaultdict(list)
    for rule_id, category, otype, oid, score, amount, anchor, psn, dr, dept, hosp in rows:
        if otype == by:
            obj = oid
        elif by == "person":
            obj = psn
        elif by == "doctor":
            obj = dr
        elif by == "department":
            obj = f"{hosp}/{dept or '?'}" if hosp else None
        else:
            obj = hosp
        if obj:
            out[obj].append((rule_id, category, score, amount, anchor))
    return out


def _noisy_or(parts: list[float]) -> float:
    rest = 1.0
    for p in parts:
        rest *= 1.0 - p
    return 1.0 - rest


def _surprise(k: int, expected: float, dispersion: float = 0.0) -> float:
    """``-log10 P(X >= k)`` for X with mean ``expected``: how unlikely this many findings are for an object
    of this volume, had it the rule's rate among its peers. A rule that fires on every tenth visit
    everywhere says little about anyone; one finding of a rule that fires once in a thousand visits, or
    forty where twenty were expected, says a lot. X is Poisson, or with ``dispersion`` α > 0 negative
    binomial (variance ``μ + α μ²``): a rule whose rate differs between honest objects anyway (practice
    style, patient mix) says less for the same excess (``_dispersion``)."""
    if k <= 0 or expected <= 0 or k <= expected:
        return 0.0
    if dispersion > 1e-9:
        r = 1.0 / dispersion
        log_q = math.log(expected / (r + expected))  # log(1 - p)
        first = (math.lgamma(k + r) - math.lgamma(r) - math.lgamma(k + 1)
                 + r * math.log(r / (r + expected)) + k * log_q)  # fmt: skip

        def step(i: int) -> float:
            return math.log((i - 1 + r) / i) + log_q
    else:
        log_e = math.log(expected)
        first = -expected + k * log_e - math.lgamma(k + 1)

        def step(i: int) -> float:
            return log_e - math.log(i)
    total, i, term = 0.0, k, first
    while True:
        total += math.exp(term - first)
        i += 1
        term += step(i)
        if term - first < -30 or i > k + 100_000:
            break
    return max(0.0, -(first + math.log(total)) / math.log(10))


def _dispersion(k: int, mu: float, moments: tuple[float, float, int]) -> float:
    """A rule's overdispersion α for one object: the method of moments ``Σ((k - μ)² - k) / Σ μ²`` over the
    **other** objects of its kind (one object's own excess must not explain itself away), at least 0
    (Poisson) and at most ``MAX_DISPERSION``; Poisson with fewer than ``MIN_DISPERSION_OBJECTS`` others.
    Counts vary more between objects than chance alone when honest objects differ in how often the rule
    fires."""
    num, den, n = moments
    num, den = num - ((k - mu) ** 2 - k), den - mu * mu
    if n - 1 < MIN_DISPERSION_OBJECTS or den <= 1e-12:
        return 0.0
    return min(MAX_DISPERSION, max(0.0, num / den))


def _ramp(x: float, start: float, span: float, cap: float) -> float:
    return cap * min(1.0, max(0.0, (x - start) / span))


def _robust_z(values: dict[str, float], enough: set[str]) -> dict[str, float]:
    """Each value's distance from the median in robust standard deviations (1.4826 × MAD), the median
    and spread taken over the objects with enough visits to have a measure at all."""
    pool = [values[o] for o in values if o in enough] or list(values.values())
    if not pool:
        return {}
    mid = statistics.median(pool)
    spread = max(MIN_SPREAD, 1.4826 * statistics.median(abs(x - mid) for x in pool))
    return {o: (x - mid) / spread for o, x in values.items()}


@dataclass(slots=True)
class _Acc:
    n: int = 0
    total: int = 0
    admitted: int = 0
    cost_index: float = 0.0
    patients: set[str] = field(default_factory=set)
    peers: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    doctors: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _main(counts: dict[str, int]) -> str:
    """The key most of an object's visits fall in (a doctor moving departments: their main peers)."""
    return max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]


def _accumulate(by: str, visits: list[tuple]) -> dict[str, _Acc]:
    mix = _case_mix(visits)
    out: dict[str, _Acc] = defaultdict(_Acc)
    for v in visits:
        obj = _key(by, v)
        if obj is None:
            continue
        a = out[obj]
        a.n += 1
        a.total += int(v[8])
        a.admitted += v[6] == "21"
        yardstick = mix.get((v[6], v[5], v[7])) or mix.get((v[6], v[5], "*")) or 0.0
        if yardstick > 0 and v[8] > 0:
            a.cost_index += math.log(v[8] / yardstick)
        a.patients.add(v[1])
        a.peers[_peer(by, v)] += 1
        if v[2] is not None and by != "doctor":
            a.doctors[v[2]] += 1
    return out


def _indicators(by: str, acc: dict[str, _Acc], k0: int) -> dict[str, dict[str, dict[str, float]]]:
    """Per object, per indicator: value, peer median, ratio, robust z and part (see the module docstring)."""
    if by == "person":
        return {}
    peer = {o: _main(a.peers) for o, a in acc.items()}
    enough = {o for o, a in acc.items() if a.n >= max(1, k0)}
    raw: dict[str, dict[str, float]] = {o: {} for o in acc}
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for o, a in acc.items():
        vpp = a.n / max(1, len(a.patients))
        raw[o]["visits_per_patient"] = vpp
        raw[o]["admission_rate"] = a.admitted / a.n
        if o in enough:
            for name in ("visits_per_patient", "admission_rate"):
                groups[(peer[o], name)].append(raw[o][name])
    medians = {k: statistics.median(v) for k, v in groups.items()}
    pooled_adm = sum(a.admitted for a in acc.values()) / max(1, sum(a.n for a in acc.values()))
    logs: dict[str, dict[str, float]] = {"cost_index": {}, "visits_per_patient": {}, "admission_rate": {}}
    shown: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    for o, a in acc.items():
        # case-mix cost: the mean log ratio of each visit to its group's median, shrunk toward 0
        ci = a.cost_index / (a.n + SHRINK_VISITS)
        logs["cost_index"][o] = ci
        shown[o]["cost_index"] = (math.exp(a.cost_index / a.n), 1.0)
        m = medians.get((peer[o], "visits_per_patient")) or 1.0
        shrink = a.n / (a.n + SHRINK_VISITS)
        logs["visits_per_patient"][o] = math.log(raw[o]["visits_per_patient"] / m) * shrink
        shown[o]["visits_per_patient"] = (raw[o]["visits_per_patient"], m)
        p = medians.get((peer[o], "admission_rate")) or pooled_adm
        p = max(p, 0.5 / (a.n + SHRINK_VISITS), 1e-3)
        rate = (a.admitted + SHRINK_VISITS * p) / (a.n + SHRINK_VISITS)  # shrunk toward the peers' rate
        logs["admission_rate"][o] = math.log(rate / p)
        shown[o]["admission_rate"] = (raw[o]["admission_rate"], p)
    out: dict[str, dict[str, dict[str, float]]] = {o: {} for o in acc}
    for name, values in logs.items():
        for o, z in _robust_z(values, enough).items():
            value, median = shown[o][name]
            out[o][name] = {"value": round(value, 4), "peer_median": round(median, 4),
                            "ratio": round(value / median, 4) if median else 0.0, "z": round(z, 2),
                            "part": round(_ramp(z, IND_Z0, IND_Z1, INDICATOR_CAP), 4)}  # fmt: skip
    return out


def object_risk(
    conn: sqlite3.Connection,
    *,
    by: str,
    date_from: date | str,
    date_to: date | str,
    areas: Collection[str] | None = None,
    min_visits: int | None = None,
    limit: int | None = None,
) -> list[ObjectRisk]:
    """Every object of ``by`` with visits in the range, highest risk first (``limit``: the first so many).

    ``areas``: the pooling areas to read (an operator's scope; None: every area). ``min_visits``: the
    volume at which the shrink halves the score (``MIN_VISITS`` by default).
    """
    if by not in BY:
        raise MonitorInputInvalid(f"by must be one of {', '.join(BY)}, not {by!r}")
    lo, hi = str(date_from), str(date_to)
    k0 = MIN_VISITS[by] if min_visits is None else max(0, int(min_visits))
    visits = _visits(conn, lo, hi, areas)
    return _score(conn, by, visits, lo, hi, areas, k0, limit)


def _score(
    conn: sqlite3.Connection, by: str, visits: list[tuple], lo: str, hi: str,
    areas: Collection[str] | None, k0: int, limit: int | None,
) -> list[ObjectRisk]:  # fmt: skip
    acc = _accumulate(by, visits)
    found = _findings(conn, by, lo, hi, areas)
    n_all = max(1, sum(a.n for a in acc.values()))
    peer = {o: _main(a.peers) for o, a in acc.items()}
    peer_n: dict[str, int] = defaultdict(int)
    for o, a in acc.items():
        peer_n[peer[o]] += a.n
    per_rule_total: dict[str, int] = defaultdict(int)
    per_rule_peer: dict[tuple[str, str], int] = defaultdict(int)
    for obj, fs in found.items():
        if obj in acc:
            for f in fs:
                per_rule_total[f[0]] += 1
                per_rule_peer[(f[0], peer[obj])] += 1
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for obj, fs in found.items():
        for f in fs:
            counts[obj][f[0]] += 1

    def expect(rule_id: str, obj: str, k: int) -> float:
        """The rule's count for the object's volume at its rate among the object's peers (itself left
        out), pulled toward its rate everywhere."""
        a = acc[obj]
        others_k = per_rule_peer[(rule_id, peer[obj])] - k
        others_n = peer_n[peer[obj]] - a.n
        rate_all = per_rule_total[rule_id] / n_all
        return a.n * (others_k + PEER_PRIOR * rate_all) / (others_n + PEER_PRIOR)

    moments: dict[str, tuple[float, float, int]] = {}
    for rule in per_rule_total:
        pairs = [(counts[o].get(rule, 0), expect(rule, o, counts[o].get(rule, 0))) for o in acc]
        excess = sum((k - mu) ** 2 - k for k, mu in pairs)
        moments[rule] = (excess, sum(mu * mu for _, mu in pairs), len(pairs))
    indicators = _indicators(by, acc, MIN_VISITS[by] if k0 == 0 else k0)
    # providers: a hospital's or department's worst doctor, a person's doctors (scored first)
    doctor_scores: dict[str, float] = {}
    if by != "doctor":
        doctors = _score(conn, "doctor", visits, lo, hi, areas, MIN_VISITS["doctor"], None)
        doctor_scores = {r.object_id: r.score / 100 for r in doctors}
    out = []
    for obj, a in acc.items():
        r = ObjectRisk(by, obj, visits=a.n, patients=len(a.patients), total_fen=a.total)
        per_rule: dict[str, list[tuple]] = defaultdict(list)
        for f in found.get(obj, ()):
            per_rule[f[0]].append(f)
        judged = []
        for rule_id, fs in per_rule.items():
            k = len(fs)
            mean = sum(f[2] for f in fs) / k / 100
            mu = expect(rule_id, obj, k)
            alpha = _dispersion(k, mu, moments[rule_id])
            surprise = _surprise(k, mu, alpha)
            part = _ramp(surprise, RULE_S0, RULE_S1, RULE_CAP) * (0.5 + 0.5 * min(1.0, mean))
            judged.append((part, rule_id, fs, mu, surprise, mean, alpha))
        rule_parts = []
        anchors_money: dict[str, int] = {}
        standing_money: dict[str, float] = {}
        standing_categories = set()
        covered: set[str] = set()
        for part, rule_id, fs, expected, surprise, mean, alpha in sorted(judged, key=lambda j: (-j[0], j[1])):
            # rules that find the same settlements are one piece of evidence, not several: a rule counts
            # for the share of its settlements no stronger rule has found already
            anchors = {f[4] for f in fs}
            new = len(anchors - covered) / len(anchors)
            covered |= anchors
            part *= new
            rule_parts.append(part)
            for f in fs:  # the money of one settlement counts once, whatever rules found it
                anchors_money[f[4]] = max(anchors_money.get(f[4], 0), int(f[3]))
                if part > 0:  # money at stake counts as much as the rule behind it stands out
                    weighed = int(f[3]) * min(1.0, part / MONEY_FULL_PART)
                    standing_money[f[4]] = max(standing_money.get(f[4], 0.0), weighed)
            if part >= COMBO_MIN_PART:
                standing_categories.add(fs[0][1])
            r.rules.append({"rule_id": rule_id, "category": fs[0][1], "suspicions": len(fs),
                            "expected": round(expected, 2), "dispersion": round(alpha, 3),
                            "surprise": round(surprise, 2),
                            "new_share": round(new, 3), "mean_score": round(mean * 100, 1),
                            "part": round(part, 4), "amount_fen": sum(int(f[3]) for f in fs)})  # fmt: skip
        r.categories = sorted({f[1] for fs in per_rule.values() for f in fs})
        r.at_stake_fen = sum(anchors_money.values())
        rules_part = _noisy_or(rule_parts)
        combo = min(COMBO_MAX, COMBO_STEP * max(0, len(standing_categories) - 1))
        money = min(1.0, sum(standing_money.values()) / a.total) if a.total > 0 else 0.0
        r.indicators = indicators.get(obj, {})
        ind = _noisy_or([x["part"] for x in r.indicators.values()])
        providers = 0.0
        if by in ("hospital", "department") and a.doctors:
            worst = max(a.doctors, key=lambda d: (doctor_scores.get(d, 0.0), d))
            providers = doctor_scores.get(worst, 0.0)
            r.indicators["worst_doctor"] = {"doctor": worst, "score": round(100 * providers, 2),
                                            "part": round(providers, 4)}  # fmt: skip
        elif by == "person" and a.doctors:
            providers = sum(doctor_scores.get(d, 0.0) * m for d, m in a.doctors.items()) / a.n
            r.indicators["exposure"] = {"doctors": len(a.doctors), "part": round(providers, 4)}
        shrink = a.n / (a.n + k0) if k0 else 1.0
        raw = WEIGHTS["rules"] * rules_part + WEIGHTS["money"] * money + WEIGHTS["indicators"] * ind + combo
        weight = WEIGHTS["exposure" if by == "person" else "providers"]
        raw = max(min(1.0, raw), weight * providers)  # the same findings, not more of them
        r.score = 100 * shrink * min(1.0, raw)
        top = max(rule_parts, default=0.0)
        r.parts = {
            "rules": rules_part, "combination_bonus": combo, "money": money, "indicators": ind,
            "providers": providers, "volume_shrink": shrink,
            "top_rule_share": (WEIGHTS["rules"] * top / raw) if raw > 0 else 0.0,
        }  # fmt: skip
        out.append(r)
    out.sort(key=lambda x: (-x.score, -x.total_fen, x.object_id))
    for i, r in enumerate(out, start=1):
        r.rank = i
    return out[:limit] if limit is not None else out


def by_category(
    conn: sqlite3.Connection,
    *,
    date_from: date | str,
    date_to: date | str,
    areas: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Suspicions per rule category over the range: held, retracted, shadow, reviewed and confirmed
    counts and the money at stake, so a bureau reports by the national categories, not rule ids."""
    params: list[Any] = [str(date_from), str(date_to)]
    area = _in("area", areas, params)
    rows = conn.execute(
        "SELECT coalesce(category, template), count(*), "
        "sum(CASE WHEN holds = 1 AND status NOT IN ('no_longer_holds', 'shadow') THEN 1 ELSE 0 END), "
        "sum(CASE WHEN status = 'no_longer_holds' OR holds = 0 THEN 1 ELSE 0 END), "
        "sum(CASE WHEN status = 'shadow' THEN 1 ELSE 0 END), "
        "sum(CASE WHEN status IN ('confirmed', 'in_case', 'decided') THEN 1 ELSE 0 END), "
        "sum(CASE WHEN status = 'dismissed' THEN 1 ELSE 0 END), "
        "sum(CASE WHEN holds = 1 AND status NOT IN ('no_longer_holds', 'shadow', 'dismissed') "
        "THEN amount_fen ELSE 0 END), count(DISTINCT object_type || ':' || object_id) "
        f"FROM suspicions WHERE anchor_date BETWEEN ? AND ? AND {area} GROUP BY 1 ORDER BY 8 DESC, 1",
        params,
    )
    out = []
    for cat, n, holding, gone, shadow, confirmed, dismissed, fen, objects in rows:
        reviewed = confirmed + dismissed
        out.append({
            "category": cat, "suspicions": n, "holding": holding, "no_longer_holds": gone, "shadow": shadow,
            "confirmed": confirmed, "dismissed": dismissed,
            "precision": round(confirmed / reviewed, 4) if reviewed else None,
            "at_stake_fen": int(fen or 0), "objects": objects,
        })  # fmt: skip
    return out
