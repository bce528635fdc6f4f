"""The one place SQL dialect differences live: SQLite text of the templates → PostgreSQL, Spark SQL, DuckDB.

The templates are written once, in SQLite (the agent and today's centre run them as they are).
``transpile(sql, dialect)`` carries that text to ``postgres``, ``spark`` or ``duckdb`` through SQLGlot, with
``unsupported_level=RAISE``: what SQLGlot cannot carry is an error, never a silently wrong query.

SQLGlot's SQLite reader does not understand SQLite's date idioms: ``date(x, '-30 days')`` and
``julianday(x)`` come out as unknown ("anonymous") functions that it would copy verbatim into the
other dialect, where they do not exist (and ``strftime('%s', x)`` becomes a ``TO_CHAR`` with a
meaningless format). So the templates never write those idioms by hand; they call the helpers
below, which write one fixed SQLite shape each, and ``transpile`` rewrites exactly those shapes into
SQLGlot's typed expressions before generating the other dialect:

=====================================  =========================================================
helper (SQLite text)                   becomes
=====================================  =========================================================
``date_add(d, n)``                     ``date(d, (n) || ' days')`` → date text ``d + n`` days
                                       (``TO_CHAR(CAST(d AS DATE) + n days, 'YYYY-MM-DD')``,
                                       ``DATE_FORMAT(DATE_ADD(TO_DATE(d), n), 'yyyy-MM-dd')``)
``days_between(a, b)``                 ``CAST(julianday(a) - julianday(b) AS INTEGER)`` → whole
                                       days ``a - b`` (``DATEDIFF(a, b)`` in Spark)
``seconds_between(a, b)``              seconds between two ISO-8601 times with offsets, as epoch
                                       seconds of ``TIMESTAMPTZ`` casts
``in_code_list(codes, prefix)``        ``instr(',' || codes, ',' || prefix) > 0``: one of the
                                       comma-joined codes starts with ``prefix`` (SQLGlot carries
                                       ``instr`` itself: ``POSITION``/``LOCATE``)
=====================================  =========================================================

Dates stay ISO text (``YYYY-MM-DD``) in every dialect, as the tables declare them (``TEXT``):
``date_add`` formats its result back to text, so comparisons between dates are the same string
comparisons everywhere. Named parameters ``:name`` are kept as ``:name`` (Spark SQL's
``spark.sql(text, args=…)`` binds them; for PostgreSQL a driver or SQLAlchemy ``text()`` does; the
``psycopg`` target is the PostgreSQL text written ``%(name)s`` for psycopg, which the centre's screen on
PostgreSQL runs), and
written ``$name`` for DuckDB, whose ``execute(text, {name: value})`` binds that form. ``WITH … AS
MATERIALIZED`` (a SQLite and PostgreSQL planner hint) is dropped for Spark, which has no such syntax.
Any other unknown function left after the rewrite is refused (``UnsupportedError``).
"""

from __future__ import annotations

import functools

import sqlglot
from sqlglot import exp
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.dialects.postgres import Postgres
from sqlglot.dialects.spark import Spark
from sqlglot.errors import ErrorLevel, UnsupportedError

__all__ = [
    "DIALECTS",
    "UnsupportedError",
    "date_add",
    "days_between",
    "in_code_list",
    "seconds_between",
    "transpile",
]

#: The dialects ``transpile`` writes (``sqlite`` returns the text unchanged).
DIALECTS = ("sqlite", "postgres", "spark", "duckdb")


# -- helpers the templates write (SQLite text of one fixed shape each) ---------------------------


def date_add(date_sql: str, days_sql: str) -> str:
    """The ISO date text ``days_sql`` days after ``date_sql`` (negative: before); NULL if either is."""
    return f"date({date_sql}, ({days_sql}) || ' days')"


def days_between(later_sql: str, earlier_sql: str) -> str:
    """Whole days from ``earlier_sql`` to ``later_sql`` (ISO dates; negative when ``later`` is earlier)."""
    return f"CAST(julianday({later_sql}) - julianday({earlier_sql}) AS INTEGER)"


def seconds_between(later_sql: str, earlier_sql: str) -> str:
    """Seconds from ``earlier_sql`` to ``later_sql``: ISO-8601 times, each with its own UTC offset."""
    return f"CAST(round((julianday({later_sql}) - julianday({earlier_sql})) * 86400) AS INTEGER)"


def in_code_list(codes_sql: str, prefix_sql: str) -> str:
    """Whether one of the comma-joined codes in ``codes_sql`` starts with ``prefix_sql``."""
    return f"instr(',' || {codes_sql}, ',' || {prefix_sql}) > 0"


# -- the rewrite of those shapes into SQLGlot's typed expressions --------------------------------


def _unparen(node: exp.Expr) -> exp.Expr:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _anonymous(node: exp.Expr | None, name: str, arity: int) -> list[exp.Expr] | None:
    """The arguments of ``name(…)`` with ``arity`` arguments, or None if ``node`` is not that call."""
    if isinstance(node, exp.Anonymous) and str(node.this).upper() == name and len(node.expressions) == arity:
        return list(node.expressions)
    return None


def _julian_difference(node: exp.Expr | None) -> tuple[exp.Expr, exp.Expr] | None:
    """(a, b) of ``julianday(a) - julianday(b)``."""
    node = _unparen(node) if node is not None else None
    if not isinstance(node, exp.Sub):
        return None
    a, b = _anonymous(node.this, "JULIANDAY", 1), _anonymous(node.expression, "JULIANDAY", 1)
    if a is None or b is None:
        return None
    return a[0], b[0]


def _integer_cast(node: exp.Expr) -> exp.Expr | None:
    if isinstance(node, exp.Cast) and node.to.is_type(exp.DataType.Type.INT, exp.DataType.Type.BIGINT):
        return node.this
    return None


def _rewrite_node(node: exp.Expr) -> exp.Expr:
    # date(d, (n) || ' days')
    args = _anonymous(node, "DATE", 2)
    if args is not None:
        modifier = args[1]
        if (
            isinstance(modifier, exp.DPipe)
            and isinstance(modifier.expression, exp.Literal)
            and modifier.expression.is_string
            and modifier.expression.this == " days"
        ):
            days = _unparen(modifier.this).transform(_rewrite_node)
            shifted = exp.DateAdd(
                this=exp.TsOrDsToDate(this=args[0].transform(_rewrite_node)),
                expression=days,
                unit=exp.var("DAY"),
            )
            return exp.TimeToStr(this=shifted, format=exp.Literal.string("%Y-%m-%d"))
        return node
    inner = _integer_cast(node)
    if inner is None:
        return node
    # CAST(julianday(a) - julianday(b) AS INTEGER)
    pair = _julian_difference(inner)
    if pair is not None:
        a, b = (side.transform(_rewrite_node) for side in pair)
        return exp.TsOrDsDiff(this=a, expression=b, unit=exp.var("DAY"))
    # CAST(round((julianday(a) - julianday(b)) * 86400) AS INTEGER)
    if isinstance(inner, exp.Round) and inner.args.get("decimals") is None:
        product = _unparen(inner.this)
        if (
            isinstance(product, exp.Mul)
            and isinstance(product.expression, exp.Literal)
            and product.expression.this == "86400"
        ):
            pair = _julian_difference(product.this)
            if pair is not None:
                a, b = (side.transform(_rewrite_node) for side in pair)
                epoch = lambda side: exp.TimeToUnix(this=exp.cast(side, "TIMESTAMPTZ"))  # noqa: E731
                return exp.Cast(
                    this=exp.Paren(this=exp.Sub(this=epoch(a), expression=epoch(b))),
                    to=exp.DataType.build("BIGINT"),
                )
    return node


def _truth(node: exp.Expr) -> exp.Expr:
    """SQLite's ``0``/``1`` where a condition stands, as ``FALSE``/``TRUE``: the templates write ``0`` for
    "no such filter" (SQLite has no boolean type), which Spark and PostgreSQL refuse as a condition."""
    if isinstance(node, exp.Literal) and not node.is_string and node.this in ("0", "1"):
        return exp.Boolean(this=node.this == "1")
    return node


def _booleans(tree: exp.Expr) -> exp.Expr:
    """Integer literals where a condition stands (AND/OR, NOT, WHERE, HAVING, ON, CASE WHEN) → booleans."""
    conditions = exp.Connector | exp.Not | exp.Where | exp.Having | exp.If
    for node in list(tree.walk()):
        if isinstance(node, exp.And | exp.Or):
            node.set("this", _truth(node.this))
            node.set("expression", _truth(node.expression))
        elif isinstance(node, exp.Not | exp.Where | exp.Having | exp.If) or (
            isinstance(node, exp.Paren) and isinstance(node.parent, conditions)
        ):
            node.set("this", _truth(node.this))
        elif isinstance(node, exp.Join) and node.args.get("on") is not None:
            node.set("on", _truth(node.args["on"]))
    return tree


# -- the target dialects: ``:name`` parameters kept ------------------------------------------


class _PostgresNamed(Postgres):
    class Generator(Postgres.Generator):
        def placeholder_sql(self, expression: exp.Placeholder) -> str:
            return f":{expression.name}" if expression.name else "?"


class _SparkNamed(Spark):
    class Generator(Spark.Generator):
        def placeholder_sql(self, expression: exp.Placeholder) -> str:
            return f":{expression.name}" if expression.name else "?"


class _PostgresPyformat(Postgres):
    """PostgreSQL text as psycopg takes it: ``%(name)s`` parameters, a literal ``%`` doubled."""

    class Generator(Postgres.Generator):
        def placeholder_sql(self, expression: exp.Placeholder) -> str:
            return f"%({expression.name})s" if expression.name else "%s"


def _double_percent(text: str) -> str:
    """``%`` inside the string literals of PostgreSQL ``text`` doubled (psycopg reads a lone one as a
    placeholder). Done on the generated text: SQLGlot writes some literals itself (``TO_CHAR`` formats)."""
    out, at = [], 0
    for token in Postgres().tokenize(text):
        if token.token_type == sqlglot.tokens.TokenType.STRING and "%" in text[token.start : token.end + 1]:
            out.append(text[at : token.start])
            out.append(text[token.start : token.end + 1].replace("%", "%%"))
            at = token.end + 1
    out.append(text[at:])
    return "".join(out)


class _DuckDBNamed(DuckDB):
    class Generator(DuckDB.Generator):
        def placeholder_sql(self, expression: exp.Placeholder) -> str:
            return f"${expression.name}" if expression.name else "?"


_TARGETS: dict[str, type[sqlglot.Dialect]] = {
    "postgres": _PostgresNamed, "spark": _SparkNamed, "duckdb": _DuckDBNamed, "psycopg": _PostgresPyformat,
}  # fmt: skip


@functools.lru_cache(maxsize=1024)
def transpile(sql: str, dialect: str) -> str:
    """``sql`` (SQLite text, one or more statements) in ``dialect`` (``postgres`` | ``spark`` | ``duckdb`` |
    ``sqlite``).

    Raises ``sqlglot.errors.ParseError`` for text SQLGlot cannot read and ``UnsupportedError`` for
    anything it cannot carry to ``dialect`` (an unknown function, a construct the target lacks).
    Statements are joined by ``;`` and a newline.
    """
    if dialect == "sqlite":
        return sql
    target = _TARGETS.get(dialect)
    if target is None:
        raise ValueError(f"dialect {dialect!r} is not one of {', '.join(DIALECTS)}")
    out = []
    for statement in sqlglot.parse(sql, read="sqlite", error_level=ErrorLevel.RAISE):
        if statement is None:
            continue
        if statement.find(exp.TimeToStr) is not None:  # strftime(): its formats are SQLite's own
            raise UnsupportedError(
                f"strftime() is not carried to {dialect}: use a protocol.rules.dialect helper"
            )
        tree = _booleans(statement.transform(_rewrite_node))
        for call in tree.find_all(exp.Anonymous):
            raise UnsupportedError(
                f"{call.name}() is not a function SQLGlot can carry from SQLite to {dialect}: "
                "write it with a protocol.rules.dialect helper"
            )
        if dialect == "spark":
            for cte in tree.find_all(exp.CTE):
                cte.set("materialized", None)
            for shift in tree.find_all(exp.DateAdd):  # Spark's date_add takes an INT, not a BIGINT column
                shift.set("expression", exp.cast(shift.expression, "INT"))
        text = target().generate(tree, unsupported_level=ErrorLevel.RAISE)
        out.append(_double_percent(text) if dialect == "psycopg" else text)
    return ";\n".join(out)
