"""The knowledge base: the ``catalogue`` bundle document and the ``kb_*`` tables the rules read.

``load_knowledge`` validates a catalogue document (the centre's format, extended compatibly: see
docs/RULES.md, "Knowledge base import format"; the national code lists it may carry are checked by
``protocol.catalogue_lists``) and returns an immutable ``Knowledge``;
``install_knowledge`` creates or replaces the ``kb_*`` tables from it in one transaction.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from ..catalogue_lists import LISTS, check_lists
from ..document import AREA, HOSP_LEVELS, Checker, fraction, join, kind, summary
from ..errors import KnowledgeInvalid
from .definitions import DISE_PREFIX_ANY, INTERACTION_SEVERITIES

__all__ = [
    "DRUG_LIST_TYPES",
    "KNOWLEDGE_DDL",
    "LIST_TYPES",
    "Interaction",
    "KbItem",
    "Knowledge",
    "install_knowledge",
    "load_knowledge",
]

LIST_TYPES = ("101", "102", "103", "104", "201", "301")
DRUG_LIST_TYPES = ("101", "102", "103", "104")
MAX_ITEMS = 500_000
MAX_PAIRS = 100_000

_CODE = re.compile(r"^[A-Za-z0-9]{6,50}$")
_CLASS = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
_RATIO = re.compile(r"^(0(\.[0-9]{1,4})?|1(\.0{1,4})?)$")
_PERIOD = re.compile(r"^period_days:([1-9][0-9]{0,3})$")

KNOWLEDGE_DDL = """
CREATE TABLE IF NOT EXISTS kb_items (
    code TEXT PRIMARY KEY, name TEXT NOT NULL, list_type TEXT NOT NULL, class TEXT NOT NULL,
    drug_class TEXT, gender TEXT, age_min INTEGER, age_max INTEGER,
    max_days_acute INTEGER, max_days_chronic INTEGER, max_cnt_per_day REAL
);
CREATE INDEX IF NOT EXISTS kb_items_drug_class ON kb_items (drug_class);
CREATE TABLE IF NOT EXISTS kb_price (
    code TEXT NOT NULL, hosp_lv TEXT NOT NULL, ceiling_fen INTEGER NOT NULL, PRIMARY KEY (code, hosp_lv)
);
CREATE TABLE IF NOT EXISTS kb_indications (
    code TEXT NOT NULL, dise_prefix TEXT NOT NULL, PRIMARY KEY (code, dise_prefix)
);
CREATE TABLE IF NOT EXISTS kb_frequency (
    code TEXT PRIMARY KEY, per TEXT NOT NULL, max_count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS kb_exclusive (
    main_code TEXT NOT NULL, included_code TEXT NOT NULL, PRIMARY KEY (main_code, included_code)
);
CREATE TABLE IF NOT EXISTS kb_interactions (
    a TEXT NOT NULL, b TEXT NOT NULL, severity TEXT NOT NULL, message TEXT NOT NULL, PRIMARY KEY (a, b)
);
CREATE INDEX IF NOT EXISTS kb_interactions_b ON kb_interactions (b);
"""

_KB_TABLES = ("kb_items", "kb_price", "kb_indications", "kb_frequency", "kb_exclusive", "kb_interactions")


@dataclass(frozen=True, slots=True)
class KbItem:
    code: str
    name: str
    list_type: str
    item_class: str  # "class" in the document: A, B or C
    price_ceiling: Mapping[str, int]  # hosp_lv → fen
    self_pay_ratio: Decimal | None = None
    gender: str | None = None
    age_min: int | None = None
    age_max: int | None = None
    indications: tuple[str, ...] = ()  # ICD-10 prefixes
    drug_class: str | None = None
    max_days_acute: int | None = None
    max_days_chronic: int | None = None
    max_cnt_per_day: Decimal | None = None
    frequency: tuple[str, int] | None = None  # (per, max)


@dataclass(frozen=True, slots=True)
class Interaction:
    a: str
    b: str
    severity: str
    message: str


@dataclass(frozen=True, slots=True)
class Knowledge:
    area: str
    items: Mapping[str, KbItem]
    exclusive_pairs: tuple[tuple[str, str], ...] = ()
    interactions: tuple[Interaction, ...] = ()
    #: The national code lists the document carries (``protocol.catalogue_lists``): section → rows.
    lists: Mapping[str, tuple[Mapping[str, str], ...]] = field(default_factory=dict)

    @property
    def drug_classes(self) -> frozenset[str]:
        return frozenset(i.drug_class for i in self.items.values() if i.drug_class)


_ITEM_REQUIRED = {"code", "name", "list_type", "class"}
_ITEM_OPTIONAL = {
    "price_ceiling", "self_pay_ratio", "restrictions", "drug_class", "max_days_acute", "max_days_chronic",
    "max_cnt_per_day", "frequency",
}  # fmt: skip


def load_knowledge(catalogue_doc: Any) -> Knowledge:
    """Validate a ``catalogue`` document and return its ``Knowledge``.

    ``KnowledgeInvalid`` lists every problem with its path.
    """
    c = Checker()
    doc = c.obj(catalogue_doc, "", {"area", "items"}, {"format", "exclusive_pairs", "interactions", *LISTS})
    if doc is None:
        raise KnowledgeInvalid("the catalogue document must be a JSON object", c.problems)
    area = (
        c.text(doc["area"], "area", pattern=AREA, hint="must be a 6-digit pooling area code like 370200")
        if ("area" in doc)
        else None
    )
    if "format" in doc:
        fmt = doc["format"]
        if fraction(fmt) is not None or type(fmt) is not int or fmt != 1:
            c.add("format", f"must be 1 (or left out), found {fmt if type(fmt) is int else kind(fmt)}")
    items: dict[str, KbItem] = {}
    seen: dict[str, int] = {}
    raw_items = c.listing(doc["items"], "items", MAX_ITEMS) if "items" in doc else []
    if "items" in doc and isinstance(doc["items"], list) and not doc["items"]:
        c.add("items", "must hold at least one item")
    for i, raw in enumerate(raw_items):
        item = _check_item(c, raw, f"items[{i}]")
        code = raw.get("code") if isinstance(raw, dict) else None
        if isinstance(code, str) and code in seen:
            c.add(f"items[{i}].code", f"{code!r} repeats items[{seen[code]}]")
            continue
        if isinstance(code, str):
            seen[code] = i
        if item is not None:
            items[item.code] = item
    classes = {i.drug_class for i in items.values() if i.drug_class}
    pairs = _check_pairs(c, doc, seen)
    interactions = _check_interactions(c, doc, seen, classes)
    lists = check_lists(c, doc)
    if c.problems:
        raise KnowledgeInvalid(summary("the catalogue document", c.problems), c.problems)
    assert area is not None
    return Knowledge(
        area=area,
        items=MappingProxyType(items),
        exclusive_pairs=tuple(pairs),
        interactions=tuple(interactions),
        lists=MappingProxyType(lists),
    )


def _check_item(c: Checker, raw: Any, path: str) -> KbItem | None:
    before = len(c.problems)
    it = c.obj(raw, path, _ITEM_REQUIRED, _ITEM_OPTIONAL)
    if it is None:
        return None
    at = lambda name: join(path, name)  # noqa: E731
    code = (
        c.text(it["code"], at("code"), pattern=_CODE, hint="must be 6-50 letters and digits")
        if ("code" in it)
        else None
    )
    name = c.text(it["name"], at("name")) if "name" in it else None
    list_type = c.text(it["list_type"], at("list_type"), choices=LIST_TYPES) if "list_type" in it else None
    item_class = c.text(it["class"], at("class"), choices=("A", "B", "C")) if "class" in it else None
    ceilings: dict[str, int] = {}
    if "price_ceiling" in it:
        raw_ceil, where = it["price_ceiling"], at("price_ceiling")
        if not isinstance(raw_ceil, dict):
            c.add(where, f"must be an object of hosp_lv → fen, found {kind(raw_ceil)}")
        else:
            for lv, fen in raw_ceil.items():
                if lv not in HOSP_LEVELS:
                    c.add(join(where, str(lv)), f"hospital level must be one of {', '.join(HOSP_LEVELS)}")
                elif (value := c.integer(fen, join(where, lv), 0, 10**12, " of fen")) is not None:
                    ceilings[lv] = value
    ratio = None
    if "self_pay_ratio" in it:
        value, where = it["self_pay_ratio"], at("self_pay_ratio")
        if fraction(value) is not None or (isinstance(value, int) and not isinstance(value, bool)):
            c.add(where, f'ratios are decimal strings: write "{fraction(value) or value}"')
        elif not isinstance(value, str) or not _RATIO.match(value):
            c.add(where, 'must be a decimal string from "0" to "1" with at most 4 decimals, e.g. "0.10"')
        else:
            ratio = Decimal(value)
    gender = age_min = age_max = None
    indications: tuple[str, ...] = ()
    if "restrictions" in it:
        where = at("restrictions")
        r = c.obj(it["restrictions"], where, set(), {"gender", "age_min", "age_max", "indications"})
        if r is not None:
            if "gender" in r:
                gender = c.text(r["gender"], join(where, "gender"), choices=("1", "2"))
            if "age_min" in r:
                age_min = c.integer(r["age_min"], join(where, "age_min"), 0, 150)
            if "age_max" in r:
                age_max = c.integer(r["age_max"], join(where, "age_max"), 0, 150)
            if age_min is not None and age_max is not None and age_min > age_max:
                c.add(join(where, "age_max"), f"{age_max} is below age_min {age_min}")
            if "indications" in r:
                indications = c.codes(
                    r["indications"], join(where, "indications"), pattern=DISE_PREFIX_ANY, max_len=50,
                    hint="is not an ICD-10 diagnosis code prefix like E11 or I63.9 (indications are codes)",
                )  # fmt: skip
    drug_class = None
    if "drug_class" in it:
        hint = "must be 1-32 of A-Z, a-z, 0-9, '.', '_', '-' (an ATC code like C08CA)"
        drug_class = c.text(it["drug_class"], at("drug_class"), pattern=_CLASS, hint=hint)
    is_drug = list_type in DRUG_LIST_TYPES
    for name_ in ("drug_class", "max_days_acute", "max_days_chronic", "max_cnt_per_day"):
        if name_ in it and list_type is not None and not is_drug:
            c.add(
                at(name_), f"is for drugs (list_type {', '.join(DRUG_LIST_TYPES)}), not list_type {list_type}"
            )
    max_acute = (
        c.integer(it["max_days_acute"], at("max_days_acute"), 1, 366) if "max_days_acute" in it else None
    )
    max_chronic = (
        c.integer(it["max_days_chronic"], at("max_days_chronic"), 1, 366)
        if ("max_days_chronic" in it)
        else None
    )
    per_day = c.quantity(it["max_cnt_per_day"], at("max_cnt_per_day")) if "max_cnt_per_day" in it else None
    frequency = None
    if "frequency" in it:
        where = at("frequency")
        f = c.obj(it["frequency"], where, {"per", "max"}, set())
        if f is not None:
            per = f.get("per")
            if "per" in f and (
                not isinstance(per, str) or (per not in ("day", "visit") and not _PERIOD.match(per))
            ):
                c.add(join(where, "per"), "must be day, visit or period_days:N (N 1-9999 days)")
                per = None
            most = c.integer(f["max"], join(where, "max"), 1, 10_000) if "max" in f else None
            if isinstance(per, str) and most is not None:
                frequency = (per, most)
    if len(c.problems) != before:
        return None
    assert code and name and list_type and item_class
    return KbItem(
        code=code, name=name, list_type=list_type, item_class=item_class,
        price_ceiling=MappingProxyType(ceilings), self_pay_ratio=ratio, gender=gender, age_min=age_min,
        age_max=age_max, indications=indications, drug_class=drug_class, max_days_acute=max_acute,
        max_days_chronic=max_chronic, max_cnt_per_day=per_day, frequency=frequency,
    )  # fmt: skip


def _check_pairs(c: Checker, doc: dict[str, Any], codes: Mapping[str, int]) -> list[tuple[str, str]]:
    if "exclusive_pairs" not in doc:
        return []
    pairs: list[tuple[str, str]] = []
    seen: dict[tuple[str, str], int] = {}
    for i, raw in enumerate(c.listing(doc["exclusive_pairs"], "exclusive_pairs", MAX_PAIRS)):
        path = f"exclusive_pairs[{i}]"
        if not isinstance(raw, list) or len(raw) != 2:
            c.add(path, f"must be a pair [main item code, included item code], found {kind(raw)}")
            continue
        ok = True
        for j, code in enumerate(raw):
            if not isinstance(code, str) or code not in codes:
                shown = repr(code) if isinstance(code, str) else kind(code)
                c.add(f"{path}[{j}]", f"{shown} is not an item code of this catalogue")
                ok = False
        if not ok:
            continue
        main, included = raw
        if main == included:
            c.add(path, "an item cannot include itself")
        elif (main, included) in seen:
            c.add(path, f"repeats exclusive_pairs[{seen[(main, included)]}]")
        elif (included, main) in seen:
            c.add(path, f"contradicts exclusive_pairs[{seen[(included, main)]}] (each includes the other)")
        else:
            seen[(main, included)] = i
            pairs.append((main, included))
    return pairs


def _check_interactions(
    c: Checker, doc: dict[str, Any], codes: Mapping[str, int], classes: set[str]
) -> list[Interaction]:
    if "interactions" not in doc:
        return []
    found: list[Interaction] = []
    seen: dict[frozenset[str], int] = {}
    for i, raw in enumerate(c.listing(doc["interactions"], "interactions", MAX_PAIRS)):
        path = f"interactions[{i}]"
        before = len(c.problems)
        x = c.obj(raw, path, {"a", "b", "severity", "message"}, set())
        if x is None:
            continue
        for side in ("a", "b"):
            if side in x:
                value = x[side]
                if not isinstance(value, str) or (value not in codes and value not in classes):
                    shown = repr(value) if isinstance(value, str) else kind(value)
                    c.add(
                        join(path, side),
                        f"{shown} is neither an item code nor a drug_class of this catalogue",
                    )
        if "severity" in x:
            c.text(x["severity"], join(path, "severity"), choices=INTERACTION_SEVERITIES)
        if "message" in x:
            c.text(x["message"], join(path, "message"), max_len=500)
        if len(c.problems) != before:
            continue
        a, b = x["a"], x["b"]
        key = frozenset((a, b))
        if a == b and a in codes and a not in classes:
            c.add(
                path, "an item cannot interact with itself (a class with itself is allowed: two drugs of it)"
            )
        elif key in seen:
            c.add(path, f"repeats interactions[{seen[key]}] (the pair, in either order)")
        else:
            seen[key] = i
            found.append(Interaction(a, b, x["severity"], x["message"]))
    return found


def install_knowledge(conn: sqlite3.Connection, knowledge: Knowledge) -> None:
    """Create or replace the ``kb_*`` tables from ``knowledge`` in one transaction (a savepoint).

    Inside the caller's open transaction the savepoint nests and the caller's commit decides.
    """
    conn.execute("SAVEPOINT install_knowledge")
    try:
        for table in _KB_TABLES:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in KNOWLEDGE_DDL.split(";"):
            if statement.strip():
                conn.execute(statement)
        items = knowledge.items.values()
        conn.executemany(
            "INSERT INTO kb_items VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    i.code, i.name, i.list_type, i.item_class, i.drug_class, i.gender, i.age_min, i.age_max,
                    i.max_days_acute, i.max_days_chronic,
                    float(i.max_cnt_per_day) if i.max_cnt_per_day is not None else None,
                )
                for i in items
            ],
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO kb_price VALUES (?,?,?)",
            [(i.code, lv, fen) for i in items for lv, fen in i.price_ceiling.items()],
        )
        conn.executemany(
            "INSERT INTO kb_indications VALUES (?,?)", [(i.code, p) for i in items for p in i.indications]
        )
        conn.executemany(
            "INSERT INTO kb_frequency VALUES (?,?,?)",
            [(i.code, i.frequency[0], i.frequency[1]) for i in items if i.frequency],
        )
        conn.executemany("INSERT INTO kb_exclusive VALUES (?,?)", knowledge.exclusive_pairs)
        conn.executemany(
            "INSERT INTO kb_interactions VALUES (?,?,?,?)",
            [(x.a, x.b, x.severity, x.message) for x in knowledge.interactions],
        )
    except BaseException:
        conn.execute("ROLLBACK TO install_knowledge")
        conn.execute("RELEASE install_knowledge")
        raise
    conn.execute("RELEASE install_knowledge")
