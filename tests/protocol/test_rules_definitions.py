"""Rule definitions: a rules document is refused with every problem named by its path."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol.errors import ProtocolError, RulesInvalid
from protocol.rules import TEMPLATES, RuleSet, load_ruleset

from .rules_kit import AREA, rule_doc


def _problems(doc: Any) -> list[str]:
    with pytest.raises(RulesInvalid) as err:
        load_ruleset(doc)
    assert err.value.code == "rules_invalid" and isinstance(err.value, ProtocolError)
    return err.value.problems


def _doc(*rules: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"area": AREA, "format": 1, "rules": list(rules), **top}


class _Float:
    """What ``central.policy.documents.load_json_document`` makes of a JSON number with a fraction."""

    def __init__(self, text: str) -> None:
        self.text = text


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ([], "must be an object, found a list"),
        ({"area": AREA, "rules": []}, "format: is required"),
        (_doc(format=2), "format: format 2 is not known to this version (it reads format 1)"),
        (_doc(format="1"), "format: must be the integer 1, found a string"),
        ({"format": 1, "rules": []}, "area: is required"),
        (_doc(area="37020"), "area: '37020' must be a 6-digit pooling area code"),
        (_doc(owner="x"), "owner: is not a known field"),
        (_doc(rule_doc("over_quantity", colour="red")), "rules[0].colour: is not a known field"),
        ({**_doc(), "rules": {}}, "rules: must be a list, found an object"),
        (_doc({"id": "x"}), "rules[0].action: is required"),
        (
            _doc(rule_doc("over_quantity", id="Over Quantity")),
            "rules[0].id: 'Over Quantity' must be 1-64 of a-z",
        ),
        (
            _doc(rule_doc("over_quantity"), rule_doc("over_quantity")),
            "rules[1].id: 'over_quantity' repeats rules[0]",
        ),
        (_doc(rule_doc("over_quantity", version=0)), "rules[0].version: 0 is outside 1-1000000000"),
        (
            _doc({**rule_doc("over_quantity"), "template": "overquantity"}),
            "rules[0].template: 'overquantity' is not one of",
        ),
        (
            _doc(rule_doc("over_quantity", severity="red")),
            "rules[0].severity: 'red' is not one of info, warn, block",
        ),
        (
            _doc(rule_doc("over_quantity", mode="on")),
            "rules[0].mode: 'on' is not one of enforce, shadow, off",
        ),
        (
            _doc(rule_doc("over_quantity", action="deny")),
            "rules[0].action: 'deny' is not one of refuse, self_pay",
        ),
        (
            _doc(rule_doc("over_quantity", moments=[])),
            "rules[0].moments: must name at least one of pre, in, post",
        ),
        (
            _doc(rule_doc("over_quantity", moments=["pre", "pre"])),
            "rules[0].moments[1]: 'pre' is listed twice",
        ),
        (_doc(rule_doc("over_quantity", moments=["before"])), "rules[0].moments[0]: 'before' is not one of"),
        (
            _doc(rule_doc("over_quantity", med_types=["1"])),
            "rules[0].med_types[0]: '1' must be a 2-4 digit med_type",
        ),
        (
            _doc(rule_doc("over_quantity", med_types="11")),
            "rules[0].med_types: must be a list, found a string",
        ),
        (
            _doc(rule_doc("over_quantity", insutypes=[310])),
            "rules[0].insutypes[0]: must be a string, found an integer",
        ),
        (
            _doc(rule_doc("over_quantity", hosp_lvs=["4"])),
            "rules[0].hosp_lvs[0]: '4' is not one of 0, 1, 2, 3",
        ),
        (
            _doc(rule_doc("over_quantity", disease_prefixes=["diabetes"])),
            "rules[0].disease_prefixes[0]: 'diabetes' must be an ICD-10 or ICD-9 code prefix like E11",
        ),
        (_doc(rule_doc("over_quantity", object="ward")), "rules[0].object: 'ward' is not one of"),
        (
            _doc(rule_doc("duplicate_medication", object="doctor", params={"match": "code"})),
            "rules[0].object: template duplicate_medication monitors the person, not the doctor",
        ),
        (_doc(rule_doc("over_quantity", overridable="yes")), "rules[0].overridable: must be true or false"),
        (
            _doc(rule_doc("over_quantity", action="refuse")),
            "rules[0].severity: a rule that refuses the settlement has severity block, not warn",
        ),
        (
            _doc(rule_doc("frequent_visits", action="self_pay", params={"max_visits": 3, "days": 7})),
            "rules[0].action: template frequent_visits finds visits, not lines: use refuse or prompt",
        ),
        # windows
        (
            _doc({**rule_doc("duplicate_medication", params={"match": "code"}), "window_days": 0}),
            "rules[0].window_days: template duplicate_medication reads history: give the window in days",
        ),
        (
            _doc(rule_doc("over_quantity", window_days=30)),
            "rules[0].window_days: template over_quantity does not read a history window; leave "
            "window_days out",
        ),
        (
            _doc(rule_doc("drug_interaction", window_days=4000)),
            "rules[0].window_days: 4000 is outside 0-3660",
        ),
        # parameters
        (
            _doc(rule_doc("duplicate_medication", params={"match": "code", "window_days": 30})),
            "rules[0].params.window_days: is not a parameter of duplicate_medication (its parameters: match, "
            "min_overlap_days)",
        ),
        (
            _doc(rule_doc("duplicate_medication", params={})),
            "rules[0].params.match: is required by duplicate_medication",
        ),
        (
            _doc(rule_doc("duplicate_medication", params={"match": "atc"})),
            "rules[0].params.match: 'atc' is not one of code, class",
        ),
        (
            _doc(rule_doc("duplicate_medication", params={"match": "code", "min_overlap_days": 0})),
            "rules[0].params.min_overlap_days: 0 is outside 1-366",
        ),
        (
            _doc(rule_doc("duplicate_medication", params={"match": "code", "min_overlap_days": 1.5})),
            "rules[0].params.min_overlap_days: 1.5 has a fraction; write an integer",
        ),
        (
            _doc(
                rule_doc("duplicate_medication", params={"match": "code", "min_overlap_days": _Float("2.0")})
            ),
            "rules[0].params.min_overlap_days: 2.0 has a fraction; write an integer",
        ),
        (
            _doc(rule_doc("over_quantity", params={"chronic_med_types": ["14", "x"]})),
            "rules[0].params.chronic_med_types[1]: 'x' must be a 2-4 digit med_type",
        ),
        (_doc(rule_doc("frequency_limit", params={"per": "day"})), "rules[0].params.per: is not a parameter"),
        (
            _doc(rule_doc("price_over_ceiling", params={"tolerance_fen": -1})),
            "rules[0].params.tolerance_fen: -1 is outside 0-1000000000",
        ),
        (
            _doc(rule_doc("not_in_catalogue", params={"class_c": "yes"})),
            "rules[0].params.class_c: must be true or false, found a string",
        ),
        (
            _doc(rule_doc("drug_interaction", params={"min_severity": "severe"})),
            "rules[0].params.min_severity: 'severe' is not one of minor, moderate, major, contraindicated",
        ),
        (
            _doc(rule_doc("frequent_visits", params={"max_visits": 3})),
            "rules[0].params.days: is required by frequent_visits",
        ),
        (
            _doc(rule_doc("blacklisted", params={"list_types": []})),
            "rules[0].params.list_types: must name at least one of card, person, employer",
        ),
        (
            _doc(rule_doc("blacklisted", params={"list_types": ["unit"]})),
            "rules[0].params.list_types[0]: 'unit' is not one of card, person, employer",
        ),
        (_doc(rule_doc("over_quantity", params=[])), "rules[0].params: must be an object, found a list"),
    ],
)
def test_a_bad_definition_is_refused_with_its_path(doc: Any, problem: str) -> None:
    problems = _problems(doc)
    assert any(p.startswith(problem) for p in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    doc = _doc(
        rule_doc("over_quantity", severity="red", mode="on"),
        rule_doc("duplicate_medication", params={"match": "atc", "extra": 1}),
        rule_doc("frequent_visits"),
    )
    with pytest.raises(RulesInvalid) as err:
        load_ruleset(doc)
    assert err.value.problems == [
        "rules[0].severity: 'red' is not one of info, warn, block",
        "rules[0].mode: 'on' is not one of enforce, shadow, off",
        "rules[1].params.extra: is not a parameter of duplicate_medication (its parameters: match, "
        "min_overlap_days)",
        "rules[1].params.match: 'atc' is not one of code, class",
        "rules[2].params.max_visits: is required by frequent_visits",
        "rules[2].params.days: is required by frequent_visits",
    ]
    assert err.value.details[0] == {
        "field": "rules[0].severity",
        "message": "'red' is not one of info, warn, block",
    }
    assert err.value.to_wire()["code"] == "rules_invalid"


def test_a_valid_rule_gets_its_defaults() -> None:
    rules = load_ruleset(_doc(rule_doc("duplicate_medication", params={"match": "class"})))
    assert isinstance(rules, RuleSet) and rules.area == AREA and rules.format == 1
    (rule,) = rules.rules
    assert dict(rule.params) == {"match": "class", "min_overlap_days": 1}
    assert (rule.object, rule.med_types, rule.overridable, rule.window_days) == ("person", (), False, 90)
    minimal = {
        "id": "r",
        "version": 1,
        "template": "over_quantity",
        "severity": "info",
        "mode": "shadow",
        "action": "prompt",
    }
    (rule,) = load_ruleset(_doc(minimal)).rules
    assert rule.moments == ("pre", "in", "post") and dict(rule.params) == {"chronic_med_types": ("14",)}


def test_every_template_has_defaults_or_required_parameters() -> None:
    required = {
        "duplicate_medication": {"match": "code"},
        "frequent_visits": {"max_visits": 2, "days": 7},
        "readmission": {"within_days": 15},
        "impersonation_distance": {"max_minutes": 60, "min_km": 100},
        "bed_hanging": {"min_idle_days": 3, "idle_codes": ["BED001"]},
        "excessive_cost": {"max_fen": 10_000_000},
        "peer_outlier": {"measure": "cost_per_visit", "ratio": "2"},
        "unreasonable_admission": {"outpatient_prefixes": ["J06"]},
        "repeated_treatment": {"days": 30},
    }
    objects = {"peer_outlier": "doctor"}
    docs = [
        rule_doc(name, params=required.get(name, {}), object=objects.get(name, "person"))
        for name in TEMPLATES
    ]
    assert len(load_ruleset(_doc(*docs)).rules) == len(TEMPLATES) == 20


def test_the_contract_example_loads() -> None:
    example = json.loads("""{"area": "370200", "format": 1,
     "rules": [{"id": "dup_med_cross_hosp", "version": 1, "template": "duplicate_medication",
                "name": "duplicate", "object": "person", "med_types": ["11", "14"], "window_days": 30,
                "insutypes": [], "hosp_lvs": [], "disease_prefixes": [],
                "params": {"match": "class", "min_overlap_days": 3},
                "severity": "warn", "mode": "enforce", "moments": ["pre", "in", "post"],
                "action": "prompt", "overridable": true}]}""")
    (rule,) = load_ruleset(example).rules
    assert rule.id == "dup_med_cross_hosp" and rule.med_types == ("11", "14") and rule.overridable


def test_rules_are_hashable_and_comparable() -> None:
    a = load_ruleset(_doc(rule_doc("over_quantity"))).rules[0]
    b = load_ruleset(_doc(rule_doc("over_quantity"))).rules[0]
    assert a == b and hash(a) == hash(b)
