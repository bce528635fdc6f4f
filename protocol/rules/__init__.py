"""One rule library, two places: rule definitions, the knowledge base, and templates compiled to SQL.

The contract is docs/RULES.md. The agent checks one bill (``evaluate``); the centre runs the same
compiled SQL (``compile_rule`` / ``run_rule``) over a batch of many persons' settlements. Pure:
no network or file I/O; functions that touch a database take the caller's ``sqlite3.Connection``.
"""

# registers templates 13-18 with compile_rule / run_rule (after .templates: it extends its table)
from .centre import CENTRE_SQL_TEMPLATES, INPATIENT_MED_TYPES
from .definitions import (
    ACTIONS,
    CENTRE_MEASURES,
    DEFAULT_WEIGHTS,
    FORMAT,
    MODES,
    MOMENTS,
    OBJECTS,
    SEVERITIES,
    TEMPLATES,
    Rule,
    RuleSet,
    Template,
    load_ruleset,
)
from .dialect import DIALECTS, transpile
from .evaluate import Blacklisted, BlacklistMatch, applicable, blacklist_hit, evaluate
from .knowledge import KNOWLEDGE_DDL, Interaction, KbItem, Knowledge, install_knowledge, load_knowledge
from .model import Bill, Hit, Line, bill_from_settlement
from .tables import (
    CURRENT_COLUMNS,
    CURRENT_DDL,
    CURRENT_SETL_ID,
    CURRENT_VISITS_DDL,
    DEATHS_DDL,
    HIST_COLUMNS,
    HISTORY_DDL,
    HISTORY_INSERT,
    HOSPITALS_GEO_DDL,
    PERSON_COLUMNS,
    VISIT_COLUMNS,
    VISITS_DDL,
    create_current,
    create_current_visits,
    date_of,
    ensure_centre_tables,
    ensure_tables,
    history_rows_from_settlement,
    join_diagnoses,
)
from .templates import Compiled, compile_rule, hits_from_rows, run_rule

__all__ = [
    "ACTIONS",
    "CENTRE_MEASURES",
    "CENTRE_SQL_TEMPLATES",
    "CURRENT_COLUMNS",
    "CURRENT_DDL",
    "CURRENT_SETL_ID",
    "CURRENT_VISITS_DDL",
    "DEATHS_DDL",
    "DEFAULT_WEIGHTS",
    "DIALECTS",
    "FORMAT",
    "HISTORY_DDL",
    "HISTORY_INSERT",
    "HIST_COLUMNS",
    "HOSPITALS_GEO_DDL",
    "INPATIENT_MED_TYPES",
    "KNOWLEDGE_DDL",
    "MODES",
    "MOMENTS",
    "OBJECTS",
    "PERSON_COLUMNS",
    "SEVERITIES",
    "TEMPLATES",
    "VISITS_DDL",
    "VISIT_COLUMNS",
    "Bill",
    "BlacklistMatch",
    "Blacklisted",
    "Compiled",
    "Hit",
    "Interaction",
    "KbItem",
    "Knowledge",
    "Line",
    "Rule",
    "RuleSet",
    "Template",
    "applicable",
    "bill_from_settlement",
    "blacklist_hit",
    "compile_rule",
    "create_current",
    "create_current_visits",
    "date_of",
    "ensure_centre_tables",
    "ensure_tables",
    "evaluate",
    "history_rows_from_settlement",
    "hits_from_rows",
    "install_knowledge",
    "join_diagnoses",
    "load_knowledge",
    "load_ruleset",
    "run_rule",
    "transpile",
]
