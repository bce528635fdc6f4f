"""Rule definitions: the ``rules`` bundle document, format 1 (docs/RULES.md).

A rule is a template plus parameters. ``load_ruleset`` validates a whole document, reports every
problem with its path (``rules[3].params.window_days: …``) and returns an immutable ``RuleSet``
whose rules each know which bills they apply to (filters, moments, mode).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from ..document import (
    AREA,
    HOSP_LEVELS,
    INSUTYPE,
    MED_TYPE,
    Checker,
    fraction,
    join,
    kind,
    summary,
)
from ..errors import RulesInvalid

__all__ = [
    "ACTIONS",
    "CATEGORIES",
    "CENTRE_MEASURES",
    "DEFAULT_CATEGORIES",
    "DEFAULT_WEIGHTS",
    "DISE_PREFIX_ANY",
    "FORMAT",
    "INTERACTION_SEVERITIES",
    "MODES",
    "MOMENTS",
    "OBJECTS",
    "SEVERITIES",
    "TEMPLATES",
    "Rule",
    "RuleSet",
    "Template",
    "load_ruleset",
]

FORMAT = 1
SEVERITIES = ("info", "warn", "block")
MODES = ("enforce", "shadow", "off")
MOMENTS = ("pre", "in", "post")
ACTIONS = ("refuse", "self_pay", "prompt")
OBJECTS = ("person", "doctor", "department", "hospital")
INTERACTION_SEVERITIES = ("minor", "moderate", "major", "contraindicated")
BLACKLIST_TYPES = ("card", "person", "employer")
MAX_RULES = 1000
MAX_WINDOW_DAYS = 3660
#: Measures of template 18 (``peer_outlier``); ``admission_rate`` = inpatient visits (``21``) ÷ visits.
CENTRE_MEASURES = ("cost_per_visit", "drug_share", "visits_per_patient", "admission_rate")
#: The national library's fraud categories (docs/RULES.md, "Categories"): every rule has one, so
#: findings and risk can be reported by category and a combination of categories on one object seen.
CATEGORIES = (
    "frequent_visits", "excessive_cost", "excessive_medication", "excessive_treatment",
    "repeated_treatment", "irrational_drug_use", "unreasonable_admission", "impersonation",
    "fake_treatment", "split_hospitalisation", "bed_hanging", "restricted_gender_age",
    "price_over_ceiling", "not_in_catalogue",
)  # fmt: skip
#: A rule's category when its definition names none: the category its template most often serves.
DEFAULT_CATEGORIES: Mapping[str, str] = MappingProxyType({
    "duplicate_medication": "excessive_medication", "over_quantity": "excessive_medication",
    "frequency_limit": "excessive_treatment", "repeated_charge": "excessive_treatment",
    "gender_restricted": "restricted_gender_age", "age_restricted": "restricted_gender_age",
    "restricted_indication": "irrational_drug_use", "price_over_ceiling": "price_over_ceiling",
    "not_in_catalogue": "not_in_catalogue", "drug_interaction": "irrational_drug_use",
    "frequent_visits": "frequent_visits", "blacklisted": "impersonation",
    "readmission": "split_hospitalisation", "impersonation_distance": "impersonation",
    "care_after_death": "fake_treatment", "bed_hanging": "bed_hanging", "excessive_cost": "excessive_cost",
    "peer_outlier": "excessive_treatment", "unreasonable_admission": "unreasonable_admission",
    "repeated_treatment": "repeated_treatment",
})  # fmt: skip
#: A diagnosis prefix in ICD-10 (``E11``, ``I63.9``) or ICD-9-CM (``250``, ``401.9``, ``V22``, ``E849``):
#: claims data from older systems and other countries carries ICD-9, and a prefix is matched as text.
DISE_PREFIX_ANY = re.compile(
    r"^(?:[A-Z](?:[0-9]{1,2}(?:\.[0-9A-Za-z]{0,10})?)?|[0-9]{1,3}(?:\.[0-9]{0,2})?|E[0-9]{3}(?:\.[0-9]?)?)$"
)
#: A rule's ``weight`` (the base of a suspicion's score at the centre) when the rule gives none.
DEFAULT_WEIGHTS: Mapping[str, int] = MappingProxyType({"block": 90, "warn": 60, "info": 30})
_ITEM_CODE = re.compile(r"^[0-9A-Za-z]{1,50}$")

_RULE_ID = re.compile(r"^[a-z0-9_.-]{1,64}$")

ParamCheck = Callable[[Checker, Any, str], Any]


def _match(c: Checker, value: Any, path: str) -> Any:
    return c.text(value, path, choices=("code", "class"))


def _days(c: Checker, value: Any, path: str) -> Any:
    return c.integer(value, path, 1, 366)


def _visits(c: Checker, value: Any, path: str) -> Any:
    return c.integer(value, path, 1, 1000)


def _fen(c: Checker, value: Any, path: str) -> Any:
    return c.integer(value, path, 0, 10**9, " of fen")


def _flag(c: Checker, value: Any, path: str) -> Any:
    return c.boolean(value, path)


def _med_types(c: Checker, value: Any, path: str) -> Any:
    return c.codes(value, path, pattern=MED_TYPE, hint="must be a 2-4 digit med_type")


def _interaction_severity(c: Checker, value: Any, path: str) -> Any:
    return c.text(value, path, choices=INTERACTION_SEVERITIES)


def _ratio(c: Checker, value: Any, path: str) -> Any:
    """A ratio as decimal text ("1.5"), 1-1000 with at most 4 decimals; kept as the text given."""
    if not isinstance(value, str):
        number = fraction(value) or (
            str(value) if isinstance(value, int) and not isinstance(value, bool) else None
        )
        if number is not None:
            c.add(path, f'ratios are decimal strings: write "{number}"')
        else:
            c.add(path, f'must be a decimal string such as "1.5", found {kind(value)}')
        return None
    number = c.quantity(value, path)
    if number is None:
        return None
    if not Decimal(1) <= number <= Decimal(1000):
        c.add(path, f"{value} is outside 1-1000")
        return None
    return value


def _within_days(c: Checker, value: Any, path: str) -> Any:
    return c.integer(value, path, 0, 366)


def _km(c: Checker, value: Any, path: str) -> Any:
    return c.integer(value, path, 1, 10_000, " of km")


def _minutes(c: Checker, value: Any, path: str) -> Any:
    return c.integer(value, path, 1, 10_080, " of minutes")


def _long_days(c: Checker, value: Any, path: str) -> Any:
    return c.integer(value, path, 1, MAX_WINDOW_DAYS)


def _count(c: Checker, value: Any, path: str) -> Any:
    return c.integer(value, path, 1, 1_000_000)


def _amount(c: Checker, value: Any, path: str) -> Any:
    return c.integer(value, path, 1, 10**12, " of fen")


def _related(c: Checker, value: Any, path: str) -> Any:
    return c.text(value, path, choices=("category", "any"))


def _measure(c: Checker, value: Any, path: str) -> Any:
    return c.text(value, path, choices=CENTRE_MEASURES)


def _item_codes(c: Checker, value: Any, path: str) -> Any:
    found = c.codes(value, path, pattern=_ITEM_CODE, hint="must be an item code (1-50 letters and digits)",
                    max_len=1000)  # fmt: skip
    if isinstance(value, list) and not value:
        c.add(path, "must name at least one item code (bed, nursing grade, meals…)")
    return found


def _prefixes(c: Checker, value: Any, path: str) -> Any:
    return c.codes(value, path, pattern=DISE_PREFIX_ANY, hint="must be an ICD-10 or ICD-9 code prefix like "
                   "J06, E11.9 or 250", max_len=500)  # fmt: skip


def _stay_days(c: Checker, value: Any, path: str) -> Any:
    return c.integer(value, path, 0, 366)


def _list_type_codes(c: Checker, value: Any, path: str) -> Any:
    return c.choices(value, path, ("101", "102", "103", "104", "201", "301"))


def _admission_checks(c: Checker, params: dict[str, Any], path: str) -> None:
    if not params.get("outpatient_prefixes") and params.get("max_stay_days") is None:
        c.add(path, "unreasonable_admission needs outpatient_prefixes, max_stay_days or both")


def _item_codes_or_none(c: Checker, value: Any, path: str) -> Any:
    return c.codes(value, path, pattern=_ITEM_CODE, hint="must be an item code (1-50 letters and digits)",
                   max_len=1000)  # fmt: skip


def _one_of_cost_limits(c: Checker, params: dict[str, Any], path: str) -> None:
    if params.get("max_fen") is None and params.get("peer_ratio") is None:
        c.add(path, "excessive_cost needs max_fen, peer_ratio or both")


def _list_types(c: Checker, value: Any, path: str) -> Any:
    found = c.choices(value, path, BLACKLIST_TYPES)
    if isinstance(value, list) and not value:
        c.add(path, "must name at least one of card, person, employer")
    return found


@dataclass(frozen=True, slots=True)
class Template:
    """What a template needs: its parameters (check, default; ``...`` = required) and its inputs."""

    name: str
    number: int
    params: Mapping[str, tuple[ParamCheck, Any]]
    #: reads ``hist_lines`` over the rule's ``window_days`` (required, at least 1)
    window: bool = False
    #: reads ``kb_*`` (skipped when the knowledge base is not ready)
    knowledge: bool = True
    #: finds lines (``self_pay`` possible) rather than visits or persons
    lines: bool = True
    #: monitored objects the template can be attributed to
    objects: tuple[str, ...] = OBJECTS
    #: evaluated in SQL by this package (12 is evaluated by the caller's blacklist)
    sql: bool = True
    #: runs only at the centre over the whole population (13-18; ``moments`` must be ``["post"]``;
    #: ``evaluate`` at the agent never runs it)
    centre: bool = False
    #: a check across the parameters once each is valid (``checks(c, params, path)``)
    checks: Callable[[Checker, dict[str, Any], str], None] | None = None


_PERSON = ("person",)
_GROUPS = ("doctor", "department", "hospital")
TEMPLATES: Mapping[str, Template] = MappingProxyType(
    {
        t.name: t
        for t in (
            Template(
                "duplicate_medication", 1, {"match": (_match, ...), "min_overlap_days": (_days, 1)},
                window=True, knowledge=False, objects=_PERSON,
            ),
            Template("over_quantity", 2, {"chronic_med_types": (_med_types, ("14",))}),
            Template("frequency_limit", 3, {}, objects=_PERSON),
            Template("repeated_charge", 4, {}),
            Template("gender_restricted", 5, {}),
            Template("age_restricted", 6, {}),
            Template("restricted_indication", 7, {}),
            Template("price_over_ceiling", 8, {"tolerance_fen": (_fen, 0)}),
            Template("not_in_catalogue", 9, {"class_c": (_flag, False)}),
            Template(
                "drug_interaction", 10, {"min_severity": (_interaction_severity, "minor")},
                window=True, objects=_PERSON,
            ),
            Template(
                "frequent_visits", 11, {"max_visits": (_visits, ...), "days": (_days, ...)},
                knowledge=False, lines=False, objects=_PERSON,
            ),
            Template(
                "blacklisted", 12, {"list_types": (_list_types, BLACKLIST_TYPES)},
                knowledge=False, lines=False, objects=_PERSON, sql=False,
            ),
            # centre templates (docs/MONITORING.md): visits, not lines; never at the edge
            Template(
                "readmission", 13,
                {"within_days": (_within_days, ...), "same_hospital": (_flag, False),
                 "related": (_related, "category")},
                knowledge=False, lines=False, centre=True,
            ),
            Template(
                "impersonation_distance", 14, {"max_minutes": (_minutes, ...), "min_km": (_km, ...)},
                knowledge=False, lines=False, centre=True,
            ),
            Template(
                "care_after_death", 15, {"grace_days": (_within_days, 0)},
                knowledge=False, lines=False, centre=True,
            ),
            Template(
                "bed_hanging", 16, {"min_idle_days": (_days, ...), "idle_codes": (_item_codes, ...)},
                knowledge=False, lines=False, centre=True,
            ),
            Template(
                "excessive_cost", 17,
                {"max_fen": (_amount, None), "peer_ratio": (_ratio, None), "peer_days": (_long_days, 365),
                 "min_peers": (_count, 20)},
                knowledge=False, lines=False, centre=True, checks=_one_of_cost_limits,
            ),
            Template(
                "unreasonable_admission", 19,
                {"outpatient_prefixes": (_prefixes, ()), "max_stay_days": (_stay_days, None),
                 "max_cost_fen": (_amount, None)},
                knowledge=False, lines=False, centre=True, checks=_admission_checks,
            ),
            Template(
                "repeated_treatment", 20,
                {"days": (_days, ...), "min_visits": (_visits, 2), "list_types": (_list_type_codes, ("201",)),
                 "exclude_codes": (_item_codes_or_none, ())},
                knowledge=False, lines=True, centre=True,
            ),
            Template(
                "peer_outlier", 18,
                {"measure": (_measure, ...), "ratio": (_ratio, ...), "days": (_days, 90),
                 "min_visits": (_count, 30)},
                knowledge=False, lines=False, objects=_GROUPS, centre=True,
            ),
        )
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated rule definition. Empty filter tuples mean "all"."""

    id: str
    version: int
    template: str
    severity: str
    mode: str
    action: str
    name: str = ""
    description: str = ""
    object: str = "person"
    med_types: tuple[str, ...] = ()
    insutypes: tuple[str, ...] = ()
    hosp_lvs: tuple[str, ...] = ()
    disease_prefixes: tuple[str, ...] = ()
    window_days: int = 0
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    moments: tuple[str, ...] = MOMENTS
    overridable: bool = False
    #: 1-100, the base of a suspicion's score at the centre; 0 = by severity (``DEFAULT_WEIGHTS``)
    weight: int = 0
    #: one of ``CATEGORIES``; "" = the template's (``DEFAULT_CATEGORIES``)
    category: str = ""

    def __post_init__(self) -> None:
        if not self.weight:
            object.__setattr__(self, "weight", DEFAULT_WEIGHTS.get(self.severity, 30))
        if not self.category:
            object.__setattr__(self, "category", DEFAULT_CATEGORIES.get(self.template, "excessive_treatment"))

    @property
    def spec(self) -> Template:
        return TEMPLATES[self.template]

    @property
    def centre(self) -> bool:
        """Whether only the centre runs this rule (templates 13-18)."""
        return TEMPLATES[self.template].centre

    def applies(
        self,
        *,
        moment: str,
        med_type: str,
        insutype: str,
        hosp_lv: str,
        dise_codg: tuple[str, ...] | list[str],
    ) -> bool:
        """Whether this rule runs for a bill with these attributes at this moment (``off`` never runs)."""
        if self.mode == "off" or moment not in self.moments:
            return False
        if self.med_types and med_type not in self.med_types:
            return False
        if self.insutypes and insutype not in self.insutypes:
            return False
        if self.hosp_lvs and hosp_lv not in self.hosp_lvs:
            return False
        if self.disease_prefixes and not any(
            code.startswith(p) for code in dise_codg for p in self.disease_prefixes
        ):
            return False
        return True


@dataclass(frozen=True, slots=True)
class RuleSet:
    area: str
    rules: tuple[Rule, ...]
    format: int = FORMAT

    def __post_init__(self) -> None:
        ids = [r.id for r in self.rules]
        if len(set(ids)) != len(ids):
            raise RulesInvalid("a rule set holds each rule id once", ["rules: a rule id repeats"])

    def get(self, rule_id: str) -> Rule | None:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        return None

    def templates(self) -> set[str]:
        return {r.template for r in self.rules}


_RULE_REQUIRED = {"id", "version", "template", "severity", "mode", "action"}
_RULE_OPTIONAL = {
    "name", "description", "object", "med_types", "insutypes", "hosp_lvs", "disease_prefixes",
    "window_days", "params", "moments", "overridable", "weight", "category",
}  # fmt: skip


def load_ruleset(doc: Any) -> RuleSet:
    """Validate a ``rules`` document (format 1) and return its ``RuleSet``.

    ``RulesInvalid`` lists every problem with its path.
    """
    c = Checker()
    if c.obj(doc, "", {"area", "format", "rules"}, set()) is None:
        raise RulesInvalid("the rules document must be a JSON object", c.problems)
    area = (
        c.text(doc["area"], "area", pattern=AREA, hint="must be a 6-digit pooling area code like 370200")
        if ("area" in doc)
        else None
    )
    if "format" in doc:
        fmt = doc["format"]
        if fraction(fmt) is not None or not isinstance(fmt, int) or isinstance(fmt, bool):
            c.add("format", f"must be the integer {FORMAT}, found {kind(fmt)}")
        elif fmt != FORMAT:
            c.add("format", f"format {fmt} is not known to this version (it reads format {FORMAT})")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    if "rules" in doc:
        for i, raw in enumerate(c.listing(doc["rules"], "rules", MAX_RULES)):
            rule = _check_rule(c, raw, f"rules[{i}]")
            if rule is None:
                continue
            if rule.id in seen:
                c.add(f"rules[{i}].id", f"{rule.id!r} repeats rules[{seen[rule.id]}]")
            else:
                seen[rule.id] = i
                rules.append(rule)
    if c.problems:
        raise RulesInvalid(summary("the rules document", c.problems), c.problems)
    assert area is not None
    return RuleSet(area=area, rules=tuple(rules))


def _check_rule(c: Checker, raw: Any, path: str) -> Rule | None:
    before = len(c.problems)
    r = c.obj(raw, path, _RULE_REQUIRED, _RULE_OPTIONAL)
    if r is None:
        return None
    at = lambda name: join(path, name)  # noqa: E731
    rid = (
        c.text(r["id"], at("id"), pattern=_RULE_ID, hint="must be 1-64 of a-z, 0-9, '_', '.', '-'")
        if ("id" in r)
        else None
    )
    version = c.integer(r["version"], at("version"), 1, 10**9) if "version" in r else None
    template = c.text(r["template"], at("template"), choices=tuple(TEMPLATES)) if "template" in r else None
    severity = c.text(r["severity"], at("severity"), choices=SEVERITIES) if "severity" in r else None
    mode = c.text(r["mode"], at("mode"), choices=MODES) if "mode" in r else None
    action = c.text(r["action"], at("action"), choices=ACTIONS) if "action" in r else None
    name = c.text(r["name"], at("name")) if "name" in r else ""
    description = c.text(r["description"], at("description"), max_len=2000) if "description" in r else ""
    obj = c.text(r["object"], at("object"), choices=OBJECTS) if "object" in r else "person"
    med_types = _codes(c, r, "med_types", path, MED_TYPE, "must be a 2-4 digit med_type")
    insutypes = _codes(c, r, "insutypes", path, INSUTYPE, "must be a 3-digit insutype")
    hosp_lvs = c.choices(r["hosp_lvs"], at("hosp_lvs"), HOSP_LEVELS) if "hosp_lvs" in r else ()
    prefixes = _codes(
        c,
        r,
        "disease_prefixes",
        path,
        DISE_PREFIX_ANY,
        "must be an ICD-10 or ICD-9 code prefix like E11, I63.9 or 250",
    )
    window = c.integer(r["window_days"], at("window_days"), 0, MAX_WINDOW_DAYS) if "window_days" in r else 0
    spec = TEMPLATES.get(template) if template else None
    # a centre template runs after settlement only; left out, its moments are ("post",)
    default_moments = ("post",) if spec is not None and spec.centre else MOMENTS
    moments = c.choices(r["moments"], at("moments"), MOMENTS) if "moments" in r else default_moments
    weight = c.integer(r["weight"], at("weight"), 1, 100) if "weight" in r else 0
    category = c.text(r["category"], at("category"), choices=CATEGORIES) if "category" in r else ""
    if "moments" in r and isinstance(r["moments"], list) and not r["moments"]:
        c.add(at("moments"), "must name at least one of pre, in, post (use mode off to switch a rule off)")
    overridable = c.boolean(r["overridable"], at("overridable")) if "overridable" in r else False

    params: dict[str, Any] = {}
    if spec is not None:
        params = _check_params(c, r.get("params", {}), at("params"), spec)
        if spec.centre and "moments" in r and isinstance(r["moments"], list) and r["moments"] != ["post"]:
            c.add(
                at("moments"),
                f'template {spec.name} runs only at the centre over settled visits: moments must be ["post"]',
            )
        if spec.window and window is not None and window < 1:
            c.add(
                at("window_days"),
                f"template {spec.name} reads history: give the window in days (1-{MAX_WINDOW_DAYS})",
            )
        if not spec.window and isinstance(window, int) and window:
            c.add(
                at("window_days"),
                f"template {spec.name} does not read a history window; leave window_days out",
            )
        if isinstance(obj, str) and obj not in spec.objects:
            c.add(
                at("object"), f"template {spec.name} monitors the {' or '.join(spec.objects)}, not the {obj}"
            )
        if action == "self_pay" and not spec.lines:
            c.add(at("action"), f"template {spec.name} finds visits, not lines: use refuse or prompt")
    elif "params" in r and not isinstance(r["params"], dict):
        c.add(at("params"), f"must be an object, found {kind(r['params'])}")
    if action == "refuse" and severity is not None and severity != "block":
        c.add(at("severity"), f"a rule that refuses the settlement has severity block, not {severity}")
    if len(c.problems) != before:
        return None
    assert rid and version and template and severity and mode and action and obj is not None
    return Rule(
        id=rid, version=version, template=template, severity=severity, mode=mode, action=action,
        name=name or "", description=description or "", object=obj, med_types=med_types, insutypes=insutypes,
        hosp_lvs=hosp_lvs, disease_prefixes=prefixes, window_days=window or 0,
        params=MappingProxyType(params), moments=moments, overridable=bool(overridable), weight=weight or 0,
        category=category or "",
    )  # fmt: skip


def _codes(c: Checker, r: dict[str, Any], name: str, path: str, pattern: re.Pattern[str], hint: str) -> tuple:
    if name not in r:
        return ()
    return c.codes(r[name], join(path, name), pattern=pattern, hint=hint)


def _check_params(c: Checker, raw: Any, path: str, spec: Template) -> dict[str, Any]:
    if not isinstance(raw, dict):
        c.add(path, f"must be an object, found {kind(raw)}")
        return {}
    params: dict[str, Any] = {}
    before = len(c.problems)
    for name in sorted(raw.keys() - spec.params.keys(), key=str):
        known = ", ".join(spec.params) or "none"
        c.add(join(path, str(name)), f"is not a parameter of {spec.name} (its parameters: {known})")
    for name, (check, default) in spec.params.items():
        if name in raw:
            params[name] = check(c, raw[name], join(path, name))
        elif default is ...:
            c.add(join(path, name), f"is required by {spec.name}")
        else:
            params[name] = default
    if spec.checks is not None and len(c.problems) == before:
        spec.checks(c, params, path)
    return params
