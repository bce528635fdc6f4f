"""A hospital information system (HIS) that sends settlements to an agent's HIS API.

Two halves, usable without the CLI:

- ``generate_settlement`` builds one settlement body exactly as a HIS vendor would post it
  (national field codes, money as decimal text). It is pure: the same ``random.Random``
  state, hospital, serial and time give the same body, so a test or a benchmark can replay
  a day of traffic. Amounts are computed with ``Decimal`` the way the protocol checks them
  (line total = cnt × pric rounded half-up to the fen, total = sum of lines), so every
  refusal an agent returns is the agent's doing, not noise from the generator.
- ``run_his`` paces those bodies evenly at a rate, with bounded concurrency, and retries
  the *same bytes* (same ``his_setl_no``) after a timeout, a dropped connection or a 5xx.
  That is what a careful HIS does, and it is what exercises the agent's idempotency: a
  settlement that was committed but whose answer was lost comes back as ``duplicate``
  and is counted as acknowledged once.

The agent API contract (``POST /v1/settlements``, ``POST /v1/settlements/{setl_id}/reversal``,
errors as ``{"error": {"code", "message"}}``) is described in ``run_his``.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from typing import Any
from urllib.parse import quote

import aiohttp

from . import _catalogue as cat

__all__ = [
    "CST",
    "DEFAULT_HOSPITAL",
    "HisSummary",
    "Insured",
    "Population",
    "default_population",
    "generate_settlement",
    "id_check_digit",
    "make_population",
    "run_his",
]

CST = timezone(timedelta(hours=8))
DEFAULT_HOSPITAL = "H37021100001"
# The day generated traffic falls on when the caller gives no time: fixed, so output is pure.
DEFAULT_DAY = datetime(2026, 11, 23, tzinfo=CST)

_FEN = Decimal("0.01")
_ZERO = Decimal("0.00")

# Share of each medical type in a general hospital's settlements.
MED_TYPE_WEIGHTS = (("11", 70), ("14", 12), ("41", 10), ("21", 8))

REVERSAL_REASONS = (
    "patient asked for a refund",
    "wrong item charged",
    "duplicate charge at the cashier",
    "changed to self-pay",
)


# --- people -----------------------------------------------------------------------------------

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def id_check_digit(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of a citizen number (the social security number).

    Agents may verify it; generating it properly keeps a malformed number a deliberate
    fault, never an accident of the simulator.
    """
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


@dataclass(frozen=True, slots=True)
class Insured:
    """One insured person; ``psn_no`` carries the birth date and sex like a real one."""

    psn_no: str
    card_sn: str
    insutype: str
    insuplc_admdvs: str
    psn_type: str
    gend: str
    brdy: str

    def as_psn(self) -> dict[str, str]:
        return {
            "psn_no": self.psn_no,
            "card_sn": self.card_sn,
            "insutype": self.insutype,
            "insuplc_admdvs": self.insuplc_admdvs,
            "psn_type": self.psn_type,
            "gend": self.gend,
            "brdy": self.brdy,
        }

    def age_on(self, day: date) -> int:
        born = date.fromisoformat(self.brdy)
        return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


@dataclass(frozen=True)
class Population:
    """The people a hospital sees; the older ones are the chronic and inpatient cases."""

    persons: tuple[Insured, ...]
    older: tuple[Insured, ...]

    def pick(self, rng: random.Random, *, older: bool = False) -> Insured:
        pool = self.older if older and self.older else self.persons
        return pool[rng.randrange(len(pool))]


def _make_person(rng: random.Random, home_admdvs: str, on: date) -> Insured:
    roll = rng.random()
    if roll < 0.85:
        admdvs = home_admdvs
    elif roll < 0.96:
        admdvs = rng.choice(cat.PROVINCE_AREAS)
    else:
        admdvs = rng.choice(cat.OFFSITE_AREAS)
    # Ages skew old: that is who uses a hospital.
    age = min(95, int(rng.triangular(0, 95, 62)))
    born = date(on.year - age - 1, 1, 1) + timedelta(days=rng.randrange(365))
    male = rng.random() < 0.48
    serial = rng.randrange(0, 500) * 2 + (1 if male else 0)
    first17 = f"{admdvs}{born:%Y%m%d}{serial:03d}"
    psn_no = first17 + id_check_digit(first17)
    age_now = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    insutype = "390" if age_now < 18 or rng.random() < 0.4 else "310"
    retired = age_now >= (60 if male else 55)
    return Insured(
        psn_no=psn_no,
        card_sn=f"{rng.choice('ABCDE')}{rng.randrange(10**8):08d}",
        insutype=insutype,
        insuplc_admdvs=admdvs,
        psn_type="21" if retired else "11",
        gend="1" if male else "2",
        brdy=born.isoformat(),
    )


def make_population(
    rng: random.Random, size: int, home_admdvs: str = "370211", on: date | None = None
) -> Population:
    """People who come back: the same persons recur, so history and duplicate checks bite."""
    on = on or DEFAULT_DAY.date()
    persons: dict[str, Insured] = {}
    while len(persons) < size:
        person = _make_person(rng, home_admdvs, on)
        persons.setdefault(person.psn_no, person)
    everyone = tuple(persons.values())
    return Population(everyone, tuple(p for p in everyone if p.age_on(on) >= 45))


@lru_cache(maxsize=16)
def default_population(home_admdvs: str = "370211", size: int = 500) -> Population:
    """A fixed population per area, so callers that pass none still get repeat patients."""
    return make_population(random.Random(f"population-{home_admdvs}"), size, home_admdvs)


def _home_admdvs(fixmedins_code: str) -> str:
    digits = fixmedins_code[1:7]
    return digits if len(digits) == 6 and digits.isdigit() else "370211"


# --- detail lines -----------------------------------------------------------------------------


def _qty_text(cnt: Decimal) -> str:
    return format(cnt.normalize(), "f") if cnt != cnt.to_integral_value() else str(int(cnt))


class _Lines:
    """Detail lines of one settlement; each item once, totals computed as the protocol does."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.total = _ZERO
        self._codes: set[str] = set()

    def add(self, item: cat.Item, cnt: Decimal, days: int | None = None) -> None:
        if item.code in self._codes or cnt <= 0:
            return
        self._codes.add(item.code)
        amount = (cnt * Decimal(item.pric)).quantize(_FEN, rounding=ROUND_HALF_UP)
        line: dict[str, Any] = {
            "feedetl_sn": str(len(self.lines) + 1),
            "list_type": item.list_type,
            "med_list_codg": item.code,
            "medins_list_name": item.name,
            "cnt": _qty_text(cnt),
            "pric": item.pric,
            "det_item_fee_sumamt": str(amount),
        }
        if item.list_type in (cat.WESTERN_DRUG, cat.CHINESE_PATENT_DRUG):
            line["days"] = max(1, days or 1)
            line["dosage"] = item.dosage
        line["chrgitm_lv"] = item.chrgitm_lv
        self.lines.append(line)
        self.total += amount

    def add_drug(self, rng: random.Random, code: str, supply_days: int, *, allow_half: bool = False) -> None:
        """Enough packs for ``supply_days``; sometimes half a pack, as split dispensing does."""
        item = cat.DRUGS[code]
        units = supply_days * item.units_per_day
        if allow_half and item.pack_units >= 14 and rng.random() < 0.08:
            cnt = Decimal("0.5")
        else:
            cnt = Decimal(max(1, math.ceil(units / item.pack_units)))
        days = int(cnt * item.pack_units / item.units_per_day)
        if days < 1:
            cnt, days = Decimal(1), max(1, item.pack_units // item.units_per_day)
        self.add(item, cnt, days)


def _some(rng: random.Random, choices: Iterable[str], low: int, high: int) -> list[str]:
    pool = list(choices)
    return rng.sample(pool, k=min(len(pool), rng.randint(low, high)))


def _outpatient(rng: random.Random, lines: _Lines, med_type: str) -> cat.Condition:
    if med_type == "14":
        cond = rng.choice(cat.CHRONIC_CONDITIONS)
    else:
        cond = rng.choice(cat.OUTPATIENT_CONDITIONS)
    if med_type != "41":
        specialist = rng.random() < (0.5 if med_type == "14" else 0.2)
        lines.add(cat.SERVICES["001102000030000" if specialist else "001102000010000"], Decimal(1))
    if med_type == "14":
        supply = rng.choice((28, 28, 30, 56, 84))
    elif cond.chronic:
        supply = rng.choice((14, 28, 30))
    else:
        supply = rng.randint(3, 7)
    for code in _some(rng, cond.drugs, 1, 3):
        item = cat.DRUGS[code]
        if "iv" in item.dosage:  # no infusions at the outpatient desk of this simulator
            continue
        lines.add_drug(rng, code, supply, allow_half=not cond.chronic)
    if med_type != "41" and rng.random() < (0.3 if med_type == "14" else 0.4):
        tests = _some(rng, cond.tests, 1, 2)
        for code in tests:
            lines.add(cat.SERVICES[code], Decimal(1))
        if any(code.startswith("0025") for code in tests):
            lines.add(cat.CONSUMABLES["C1405020100000002104"], Decimal(1))
    if med_type == "11" and cond.dise_codg == "M54.500" and rng.random() < 0.3:
        lines.add(cat.CONSUMABLES["C1602010100000001136"], Decimal(rng.randint(1, 3)))
    if not lines.lines:  # a pharmacy purchase whose only drug was an infusion: sell the first tablet
        oral = next(c for c in cond.drugs if "iv" not in cat.DRUGS[c].dosage)
        lines.add_drug(rng, oral, supply)
    return cond


def _inpatient(rng: random.Random, lines: _Lines, ipt_days: int) -> cat.Condition:
    cond = rng.choice(cat.INPATIENT_CONDITIONS)
    days = Decimal(ipt_days)
    lines.add(cat.SERVICES["001109000010000"], days)  # bed
    lines.add(cat.SERVICES["001201000030000"], days)  # nursing
    lines.add(cat.SERVICES["001103000010000"], days)  # ward round
    if rng.random() < 0.3:
        lines.add(cat.SERVICES["009900000010000"], days)  # class C: self-pay surcharge
    for code in cond.inpatient_extras:
        lines.add(cat.SERVICES[code], Decimal(1) if code != "003110000010000" else days * 2)
    infusion_days = max(1, ipt_days - rng.randint(0, 2))
    oral = [code for code in cond.drugs if "iv" not in cat.DRUGS[code].dosage]
    infused = [code for code in cond.drugs if code not in oral] or ["XB05BBS011B002010100076"]
    for code in infused:
        item = cat.DRUGS[code]
        lines.add(item, Decimal(infusion_days * item.units_per_day), infusion_days)
    for code in _some(rng, oral, 1, len(oral)) if oral else []:
        lines.add_drug(rng, code, ipt_days + 7)  # in hospital and a week to take home
    lines.add(cat.SERVICES["001204000060000"], Decimal(infusion_days))
    lines.add(cat.CONSUMABLES["C1401020100000012210"], Decimal(infusion_days))
    lines.add(cat.CONSUMABLES["C1401010100000004570"], Decimal(infusion_days * rng.randint(1, 3)))
    lines.add(cat.CONSUMABLES["C1402010200000003416"], Decimal(1 + ipt_days // 5))
    blood_draws = 0
    for code in cond.tests:
        times = rng.randint(1, 2) if code.startswith("0025") else 1
        blood_draws += times if code.startswith("0025") else 0
        lines.add(cat.SERVICES[code], Decimal(times))
    if blood_draws:
        lines.add(cat.CONSUMABLES["C1405020100000002104"], Decimal(blood_draws))
    if "003310030010000" in cond.inpatient_extras:
        lines.add(cat.CONSUMABLES["C0207010200000007733"], Decimal(rng.randint(1, 2)))
        lines.add(cat.CONSUMABLES["C1403010100000000982"], Decimal(rng.randint(4, 12)))
    return cond


# --- settlements ------------------------------------------------------------------------------


def generate_settlement(
    rng: random.Random,
    fixmedins_code: str,
    n: int,
    *,
    population: Population | None = None,
    when: datetime | None = None,
    day: date | None = None,
    run_tag: str | None = None,
) -> dict[str, Any]:
    """The JSON body of settlement number ``n``, as ``POST /v1/settlements`` expects it.

    ``when`` is the end of the visit (discharge for inpatients); without it the visit ends
    on ``day`` (default ``DEFAULT_DAY``) at a time of day drawn from ``rng``, which keeps
    the function pure.
    ``run_tag`` goes into ``his_setl_no`` and ``mdtrt_id`` so separate runs do not collide;
    the same tag and serial give the same ``his_setl_no``, which is how a HIS re-sends.
    """
    home = _home_admdvs(fixmedins_code)
    population = population or default_population(home)
    codes, weights = zip(*MED_TYPE_WEIGHTS, strict=True)
    med_type = rng.choices(codes, weights)[0]
    lines = _Lines()
    ipt_days: int | None = None
    if med_type == "21":
        ipt_days = rng.randint(3, 14)
        cond = _inpatient(rng, lines, ipt_days)
    else:
        cond = _outpatient(rng, lines, med_type)
    person = population.pick(rng, older=cond.chronic or med_type == "21")

    if when is None:
        midnight = DEFAULT_DAY if day is None else datetime(day.year, day.month, day.day, tzinfo=CST)
        end = midnight + timedelta(minutes=rng.randint(8 * 60, 17 * 60 + 30))
    else:
        end = when.astimezone(CST).replace(microsecond=0)
    if ipt_days is not None:
        admitted = (end - timedelta(days=ipt_days)).replace(hour=0, minute=0, second=0)
        begin = admitted + timedelta(minutes=rng.randint(7 * 60, 22 * 60))
    else:
        begin = end - timedelta(minutes=rng.randint(3, 45))

    serial = f"{end:%Y%m%d}-{run_tag + '-' if run_tag else ''}{n:06d}"
    dept_index = sum(ord(ch) for ch in cond.dept_codg) % 100
    mdtrt: dict[str, Any] = {
        "mdtrt_id": f"MDT-{serial}",
        "med_type": med_type,
        "begntime": begin.isoformat(),
        "endtime": end.isoformat(),
        "dise_codg": cond.dise_codg,
        "dise_name": cond.dise_name,
        "dept_codg": "A61" if med_type == "41" else cond.dept_codg,  # A61: pharmacy
        "dr_codg": f"D{home}{dept_index:02d}{rng.randint(1, 24):04d}",
    }
    if ipt_days is not None:
        mdtrt["ipt_days"] = ipt_days
    cashier = rng.randint(1, 12)
    return {
        "fixmedins_code": fixmedins_code,
        "his_setl_no": f"HIS-{serial}",
        "psn": person.as_psn(),
        "mdtrt": mdtrt,
        "feedetl": lines.lines,
        "medfee_sumamt": str(lines.total),
        "opter": f"C{cashier:04d}",
        "opter_name": f"cashier {cashier}",
    }


# --- the runner -------------------------------------------------------------------------------


def _percentile(sorted_values: list[float], pct: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class HisSummary:
    """What the HIS sent and what the agent acknowledged, for people and for tests.

    ``acknowledged`` counts settlements, not answers: a settlement whose first answer was
    lost and whose retry came back ``duplicate`` is one acknowledgement (and one of
    ``duplicates``). A replayed run's duplicates count in ``amount_acknowledged`` too, so
    compare ``setl_id``s, not sums, across runs. ``refused`` is keyed by the agent's error
    code; ``errors`` are settlements that got no usable answer after every retry.
    """

    agent_url: str = ""
    fixmedins_code: str = DEFAULT_HOSPITAL
    planned: int | None = None
    sent: int = 0
    attempts: int = 0
    retried: int = 0
    acknowledged: int = 0
    duplicates: int = 0
    reversals_sent: int = 0
    reversals_acknowledged: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    reversals_refused: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    amount_acknowledged: Decimal = _ZERO
    amount_reversed: Decimal = _ZERO
    elapsed_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def rate_achieved(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def amount_net(self) -> Decimal:
        """What the centre should hold for this run once everything is uploaded."""
        return self.amount_acknowledged - self.amount_reversed

    def latency_ms(self, pct: float) -> float | None:
        return _percentile(sorted(self.latencies_ms), pct)

    def to_json(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        p50, p99 = _percentile(lat, 50), _percentile(lat, 99)
        return {
            "agent": self.agent_url,
            "fixmedins_code": self.fixmedins_code,
            "planned": self.planned,
            "sent": self.sent,
            "attempts": self.attempts,
            "retried": self.retried,
            "acknowledged": self.acknowledged,
            "duplicates": self.duplicates,
            "reversals_sent": self.reversals_sent,
            "reversals_acknowledged": self.reversals_acknowledged,
            "refused": dict(sorted(self.refused.items())),
            "reversals_refused": dict(sorted(self.reversals_refused.items())),
            "errors": self.errors,
            "amount_acknowledged": str(self.amount_acknowledged),
            "amount_reversed": str(self.amount_reversed),
            "amount_net": str(self.amount_net),
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_achieved": round(self.rate_achieved, 2),
            "latency_p50_ms": None if p50 is None else round(p50, 2),
            "latency_p99_ms": None if p99 is None else round(p99, 2),
        }

    def format_text(self) -> str:
        j = self.to_json()
        refused = sum(self.refused.values())
        by_code = ", ".join(f"{code} {count}" for code, count in j["refused"].items())
        rev_refused = ", ".join(f"{code} {count}" for code, count in j["reversals_refused"].items())
        planned = "until stopped" if self.planned is None else f"planned {self.planned}"
        p50, p99 = j["latency_p50_ms"], j["latency_p99_ms"]
        latency = "no answers" if p50 is None else f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        rows = [
            f"HIS simulator → {self.agent_url} as {self.fixmedins_code}",
            f"  settlements sent     {self.sent:>8}  ({planned}; {self.attempts} HTTP attempts,"
            f" {self.retried} needed a retry)",
            f"  acknowledged         {self.acknowledged:>8}  ({self.duplicates} answered as duplicate)",
            f"  refused              {refused:>8}" + (f"  ({by_code})" if by_code else ""),
            f"  errors               {self.errors:>8}  (no usable answer after retries)",
            f"  reversals            {self.reversals_sent:>8}  sent,"
            f" {self.reversals_acknowledged} acknowledged"
            + (f" ({rev_refused} refused)" if rev_refused else ""),
            f"  amount acknowledged  {j['amount_acknowledged']:>11} yuan  (reversed {j['amount_reversed']},"
            f" net {j['amount_net']})",
            f"  rate achieved        {self.rate_achieved:>11.1f} /s over {self.elapsed_s:.1f} s",
            f"  latency              {latency}  (first send to acknowledgement)",
        ]
        return "\n".join(rows)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: dict[str, Any] | None

    @property
    def acknowledged(self) -> bool:
        return self.status in (200, 201) and self.body is not None and "setl_id" in self.body

    @property
    def error_code(self) -> str:
        err = (self.body or {}).get("error")
        if isinstance(err, dict) and isinstance(err.get("code"), str):
            return err["code"]
        return f"http_{self.status}"


def _retryable(status: int) -> bool:
    return status >= 500 or status == 429


@dataclass
class _Sender:
    session: aiohttp.ClientSession
    retries: int
    backoff: float

    async def post(self, url: str, payload: bytes) -> tuple[_Answer | None, int]:
        """POST the same bytes until a final answer or out of retries; (answer, attempts)."""
        answer: _Answer | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                async with self.session.post(
                    url, data=payload, headers={"Content-Type": "application/json"}
                ) as resp:
                    text = await resp.text()
                    try:
                        parsed = json.loads(text) if text else None
                    except ValueError:
                        parsed = None
                    answer = _Answer(resp.status, parsed if isinstance(parsed, dict) else None)
            except (aiohttp.ClientError, TimeoutError):
                answer = None
                continue
            if not _retryable(answer.status):
                return answer, attempt + 1
        return answer, self.retries + 1


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


async def run_his(
    agent_url: str,
    token: str,
    rate: float,
    duration: float | None,
    *,
    seed: int | None = None,
    concurrency: int = 8,
    fixmedins_code: str = DEFAULT_HOSPITAL,
    reversal_share: float = 0.02,
    population: Population | None = None,
    timeout: float = 10.0,
    retries: int = 3,
    retry_backoff: float = 0.2,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    stop: asyncio.Event | None = None,
) -> HisSummary:
    """Send ``rate`` settlements per second for ``duration`` seconds and count the answers.

    Requests are spread evenly (settlement *i* is due at ``i / rate`` s), at most
    ``concurrency`` in flight; when the agent is slower than that the schedule slips and
    ``rate_achieved`` shows it. ``duration=None`` runs until ``stop`` is set.

    Without a ``seed`` every run is fresh traffic stamped with the current time. With one,
    the bodies are a pure function of the seed and today's date (visit times drawn within
    today), so a second run on the same day re-sends byte-identical settlements and is
    answered as duplicates: a replay of a HIS that re-sends its whole day.

    Agent contract: ``POST {agent_url}/v1/settlements`` answers 201 ``{"setl_id", "seq",
    "hash", "duplicate": false}``, 200 with ``"duplicate": true`` for a ``his_setl_no``
    already held, 4xx/5xx ``{"error": {"code", "message"}}``. ``POST
    /v1/settlements/{setl_id}/reversal`` with ``{"reason", "opter"}`` answers 201
    ``{"setl_id", "orig_setl_id", "seq", "hash"}``. 5xx, 429, timeouts and connection
    errors are retried with the same body; 4xx are final.

    ``on_record`` receives one dict per acknowledged record (``his_setl_no``, ``setl_id``,
    ``seq``, ``kind`` ``setl``/``revs``, ``medfee_sumamt`` as text, negative for a
    reversal) so a caller can compare them with what the centre holds.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    if duration is None and stop is None:
        raise ValueError("without a duration, pass a stop event to end the run")
    replay = seed is not None
    run_seed = seed if seed is not None else random.SystemRandom().randrange(2**63)
    rng = random.Random(run_seed)  # decides reversals; each body has its own generator
    run_tag = f"{rng.getrandbits(24):06x}"
    population = population or default_population(_home_admdvs(fixmedins_code))
    stop = stop or asyncio.Event()
    base = agent_url.rstrip("/")
    planned = None if duration is None else round(rate * duration)
    summary = HisSummary(agent_url=base, fixmedins_code=fixmedins_code, planned=planned)
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(max(1, concurrency))
    tasks: set[asyncio.Task[None]] = set()

    def record(rec: dict[str, Any]) -> None:
        if on_record is not None:
            on_record(rec)

    async def reverse(sender: _Sender, body: dict[str, Any], setl_id: str, reason: str) -> None:
        summary.reversals_sent += 1
        payload = _encode({"reason": reason, "opter": body["opter"]})
        url = f"{base}/v1/settlements/{quote(setl_id, safe='')}/reversal"
        answer, attempts = await sender.post(url, payload)
        summary.attempts += attempts
        if answer is None:
            summary.errors += 1
        elif answer.acknowledged:
            assert answer.body is not None
            summary.reversals_acknowledged += 1
            amount = Decimal(body["medfee_sumamt"])
            summary.amount_reversed += amount
            record(
                {
                    "his_setl_no": body["his_setl_no"],
                    "setl_id": answer.body["setl_id"],
                    "orig_setl_id": setl_id,
                    "seq": answer.body.get("seq"),
                    "kind": "revs",
                    "medfee_sumamt": str(-amount),
                }
            )
        else:
            code = answer.error_code
            summary.reversals_refused[code] = summary.reversals_refused.get(code, 0) + 1

    async def settle(sender: _Sender, body: dict[str, Any], reason: str | None) -> None:
        try:
            started = loop.time()
            answer, attempts = await sender.post(f"{base}/v1/settlements", _encode(body))
            summary.attempts += attempts
            summary.retried += attempts > 1
            if answer is None:
                summary.errors += 1
                return
            if not answer.acknowledged:
                code = answer.error_code
                summary.refused[code] = summary.refused.get(code, 0) + 1
                return
            assert answer.body is not None
            summary.latencies_ms.append((loop.time() - started) * 1000)
            summary.acknowledged += 1
            summary.duplicates += answer.body.get("duplicate") is True
            summary.amount_acknowledged += Decimal(body["medfee_sumamt"])
            record(
                {
                    "his_setl_no": body["his_setl_no"],
                    "setl_id": answer.body["setl_id"],
                    "seq": answer.body.get("seq"),
                    "kind": "setl",
                    "medfee_sumamt": body["medfee_sumamt"],
                }
            )
            if reason is not None:
                await reverse(sender, body, answer.body["setl_id"], reason)
        finally:
            slots.release()

    headers = {"Authorization": f"Bearer {token}"}
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    connector = aiohttp.TCPConnector(limit=max(1, concurrency))
    async with aiohttp.ClientSession(headers=headers, timeout=client_timeout, connector=connector) as session:
        sender = _Sender(session, retries, retry_backoff)
        start = loop.time()
        i = 0
        while planned is None or i < planned:
            delay = start + i / rate - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
            if stop.is_set():
                break
            await slots.acquire()
            i += 1
            body = generate_settlement(
                random.Random(f"{run_seed}:{i}"),  # body i depends on the seed and i alone
                fixmedins_code,
                i,
                population=population,
                when=None if replay else datetime.now(CST),
                day=datetime.now(CST).date(),
                run_tag=run_tag,
            )
            reason = rng.choice(REVERSAL_REASONS) if rng.random() < reversal_share else None
            summary.sent += 1
            task = asyncio.create_task(settle(sender, body, reason))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        summary.elapsed_s = loop.time() - start
    return summary
