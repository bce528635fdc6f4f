"""docs/samples: the knowledge base and rule set operators start from load, cover every template, and
fit the simulated HIS traffic of the demo (nothing it bills is refused for price or is missing from
the catalogue)."""

from __future__ import annotations

from protocol.rules import TEMPLATES, Blacklisted, load_knowledge, load_ruleset
from protocol.rules.tables import pric_fen
from simulators import _catalogue as sim

from .rules_kit import (
    AMLODIPINE,
    CELECOXIB,
    CLOPIDOGREL,
    OMEPRAZOLE,
    PROGESTERONE,
    add_history,
    bill,
    check,
    connect,
    days_ago,
    line,
    sample_catalogue,
    sample_rules,
)

#: Templates the sample rules (docs/samples/rules.json) do not show: none, every template has a rule.
NOT_IN_SAMPLES: set[str] = set()


def test_the_samples_load_and_cover_all_eighteen_templates() -> None:
    rules = load_ruleset(sample_rules())
    knowledge = load_knowledge(sample_catalogue())
    assert rules.area == knowledge.area == "370200"
    assert rules.templates() == set(TEMPLATES) - NOT_IN_SAMPLES and len(TEMPLATES) == 20
    assert {r.mode for r in rules.rules} == {"enforce", "shadow", "off"}
    assert {r.action for r in rules.rules} == {"refuse", "self_pay", "prompt"}
    items = knowledge.items.values()
    assert any(i.gender for i in items) and any(i.age_min for i in items) and any(i.age_max for i in items)
    assert (
        any(i.indications for i in items)
        and any(i.frequency for i in items)
        and any(i.max_cnt_per_day for i in items)
    )
    assert knowledge.exclusive_pairs and knowledge.interactions


def test_the_sample_catalogue_holds_everything_the_simulated_his_bills_within_its_ceilings() -> None:
    knowledge = load_knowledge(sample_catalogue())
    for code, item in sim.ALL_ITEMS.items():
        kb = knowledge.items[code]
        assert kb.item_class == item.chrgitm_lv and kb.list_type == item.list_type, code
        for level in ("0", "1", "2", "3"):
            assert pric_fen(item.pric) <= kb.price_ceiling[level], (code, level)


def test_the_only_simulated_prescription_outside_its_indications_is_celecoxib_for_back_pain() -> None:
    knowledge = load_knowledge(sample_catalogue())
    outside = {
        (cond.dise_codg, code)
        for cond in sim.CONDITIONS
        for code in cond.drugs
        if knowledge.items[code].indications
        and not any(cond.dise_codg.startswith(p) for p in knowledge.items[code].indications)
    }
    assert outside == {("M54.500", CELECOXIB)}


def test_the_sample_rules_at_the_three_moments() -> None:
    rules = load_ruleset(sample_rules())
    conn = connect()
    add_history(conn, "S1", "2026-11-10", [(AMLODIPINE, 1, 28), (OMEPRAZOLE, 1, 14)], hosp="H37021100002")
    b = bill(
        line("1", AMLODIPINE, "1", "19.60", days=28),
        line("2", CLOPIDOGREL, "4", "3.87", days=28),
        line("3", PROGESTERONE, "1", "2.15", days=1),
        line("4", CELECOXIB, "1", "13.17", days=6),
    )
    pre = {(h.rule_id, h.lines) for h in check(conn, rules, b, "pre")}
    assert pre == {
        ("dup_med_same_drug", ("1",)),
        ("dup_med_same_class", ("1",)),
        ("gender_restriction", ("3",)),
        ("indication_restriction", ("4",)),
        ("drug_interaction", ("2",)),
    }
    cashier = check(conn, rules, b, "in", blacklist=[Blacklisted("card", "reported lost", 4)])
    assert [(h.rule_id, h.action, h.lines) for h in cashier] == [
        ("blacklist", "refuse", ()),
        ("gender_restriction", "self_pay", ("3",)),
        ("indication_restriction", "self_pay", ("4",)),
    ]
    # the shadow rule is recorded but marked; the off rule never runs
    (shadow,) = [h for h in check(conn, rules, b, "post") if h.rule_id == "dup_med_same_class"]
    assert shadow.shadow
    for day in range(1, 4):
        add_history(conn, f"V{day}", days_ago(day), [("001102000010000", 1, None)])
    assert "outpatient_daily_visits" not in {h.rule_id for h in check(conn, rules, b, "post")}


def test_every_sample_rule_names_its_category() -> None:
    """Findings are reported by the national categories (``risk --categories``): every rule of both
    sample sets says which one it serves, explicitly, not by its template's default."""
    import json
    from pathlib import Path

    from protocol.rules import CATEGORIES

    samples = Path(__file__).parents[2] / "docs" / "samples"
    for name in ("rules.json", "monitoring_rules.json"):
        doc = json.loads((samples / name).read_text())
        assert all(r.get("category") in CATEGORIES for r in doc["rules"]), name
        loaded = load_ruleset(doc)
        assert {r.id: r.category for r in loaded.rules} == {r["id"]: r["category"] for r in doc["rules"]}
    desk = {r["id"]: r["category"] for r in json.loads((samples / "rules.json").read_text())["rules"]}
    assert desk["admission_unreasonable"] == "unreasonable_admission"
    assert desk["treatment_repeated"] == "repeated_treatment"
