"""The centre's SQL, written once in SQLite's dialect, run on PostgreSQL too.

Every query in ``central`` is SQLite text with ``?`` parameters; on PostgreSQL the store's connection
hands each statement to ``translate`` (SQLGlot, cached per text: a statement is parsed once per
process) and runs what comes back. Besides SQLGlot's own dialect mapping, the rewrites here carry the
places where the two engines *mean* different things, so a query keeps its SQLite result:

- ``INSERT OR IGNORE`` → ``ON CONFLICT DO NOTHING``; ``INSERT OR REPLACE`` → ``ON CONFLICT (the
  table's primary key) DO UPDATE SET`` every inserted column (``Tables`` knows the keys).
- an ``INSERT`` into a table with an ``INTEGER PRIMARY KEY`` gets ``RETURNING`` that key, so the
  cursor's ``lastrowid`` means what it means on SQLite.
- ``CROSS JOIN … ON`` (SQLite's join-order hint) → ``JOIN … ON``.
- ``WHERE 1`` → ``WHERE TRUE``; ``sum(<comparison>)`` → ``sum(CASE WHEN … THEN 1 ELSE 0 END)``
  (SQLite's truth values are integers).
- ``LIKE`` → ``ILIKE`` (SQLite's LIKE ignores ASCII case); ``INT`` → ``BIGINT`` (SQLite integers are
  64-bit); ``json_each(x)`` → ``json_array_elements_text(x::json)``; ``json_group_array`` →
  ``json_agg`` (``[]`` for no rows, as SQLite's); JSON paths read text as ``json``; a subquery in
  ``FROM`` gets the alias PostgreSQL requires.
- ``rowid``: every PostgreSQL table without an integer key has a ``rowid`` identity column
  (``central.storage.pg_schema``), so ``ORDER BY rowid`` keeps insertion order on both.

What cannot be carried (a construct with no PostgreSQL meaning) raises ``NotTranslatable`` naming the
statement, at the first run, in tests on a real server (``tests/pg``), never silently.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp

from central.errors import CentralError

__all__ = ["NotTranslatable", "Tables", "Translated", "translate"]


class NotTranslatable(CentralError):
    code = "SQL_NOT_TRANSLATABLE"


@dataclass(frozen=True)
class Tables:
    """What the rewrites need of the schema: each table's primary key, and which have an integer one."""

    primary_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    integer_keys: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Translated:
    sql: str
    #: The statement ends in ``RETURNING <integer key>``: its first row is the new row's id.
    returns_id: bool = False


_CACHE: dict[tuple[int, str], Translated] = {}
_LOCK = threading.Lock()


def translate(sql: str, tables: Tables) -> Translated:
    """The PostgreSQL text of one SQLite statement (``?`` → ``%s``)."""
    key = (id(tables), sql)
    found = _CACHE.get(key)
    if found is not None:
        return found
    result = _translate(sql, tables)
    with _LOCK:
        _CACHE[key] = result
    return result


def _translate(sql: str, tables: Tables) -> Translated:
    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
    except sqlglot.errors.ParseError as exc:
        raise NotTranslatable(f"cannot parse for PostgreSQL: {sql!r}: {exc}") from None
    returns_id = False
    aliases = iter(range(1, 1_000_000))

    def leaves(node: exp.Expression) -> exp.Expression:
        # A first pass of its own: ``transform`` does not descend into a node it has just replaced, so
        # a literal under a rewritten LIKE or function would be missed by the second.
        if isinstance(node, exp.Literal) and node.is_string and "%" in node.this:
            # psycopg reads ``%`` as the start of a placeholder; a literal percent sign is ``%%``.
            return exp.Literal.string(node.this.replace("%", "%%"))
        if isinstance(node, exp.DataType) and node.this in (
            exp.DataType.Type.INT,
            exp.DataType.Type.SMALLINT,
        ):
            return exp.DataType.build("BIGINT")
        return node

    def rewrite(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Where) and isinstance(node.this, exp.Literal) and not node.this.is_string:
            # ``WHERE 1`` (a query built with no filter) is an integer condition PostgreSQL refuses.
            node.set("this", exp.true() if float(node.this.this) else exp.false())
            return node
        if isinstance(node, exp.Sum | exp.Avg) and isinstance(
            node.this, exp.Predicate | exp.Connector | exp.Not
        ):
            # SQLite's comparisons are 0/1 integers, so ``sum(kind = 'setl')`` counts; PostgreSQL's are
            # booleans, which sum() does not take.
            node.set(
                "this",
                exp.Case(
                    ifs=[exp.If(this=node.this, true=exp.Literal.number(1))], default=exp.Literal.number(0)
                ),
            )
            return node
        cross = isinstance(node, exp.Join) and (node.args.get("kind") or "").upper() == "CROSS"
        if cross and node.args.get("on"):
            # SQLite's ``CROSS JOIN … ON`` is an inner join whose order the planner keeps; PostgreSQL
            # has no CROSS JOIN with a condition.
            node.set("kind", None)
            return node
        if isinstance(node, exp.Like):
            return exp.ILike(this=node.this, expression=node.expression)
        if isinstance(node, exp.Subquery) and not node.alias and isinstance(node.parent, exp.From | exp.Join):
            node.set("alias", exp.TableAlias(this=exp.to_identifier(f"_sub{next(aliases)}")))
            return node
        if isinstance(node, exp.JSONArrayAgg) or (
            isinstance(node, exp.Anonymous) and node.name.lower() == "json_group_array"
        ):
            # SQLite's json_group_array of no rows is ``[]``; json_agg's is NULL.
            args = [node.this] if isinstance(node, exp.JSONArrayAgg) else node.expressions
            return exp.Coalesce(
                this=exp.Anonymous(this="json_agg", expressions=args),
                expressions=[exp.cast(exp.Literal.string("[]"), "JSON")],
            )
        if isinstance(node, exp.JSONExtract | exp.JSONExtractScalar):
            node.set("this", exp.cast(node.this, "JSON"))
            return node
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Anonymous | exp.Func):
            fn = node.this
            name = fn.name.lower() if isinstance(fn, exp.Anonymous) else fn.sql_name().lower()
            if name == "json_each":
                arg = fn.expressions[0] if isinstance(fn, exp.Anonymous) else fn.this
                alias = node.alias or "json_each"
                return exp.Table(
                    this=exp.Anonymous(this="json_array_elements_text", expressions=[exp.cast(arg, "JSON")]),
                    alias=exp.TableAlias(this=exp.to_identifier(alias), columns=[exp.to_identifier("value")]),
                )
        return node

    tree = tree.transform(leaves).transform(rewrite)
    if isinstance(tree, exp.Insert):
        table = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
        name = table.name if isinstance(table, exp.Table) else ""
        alternative = (tree.args.get("alternative") or "").upper()
        if alternative == "IGNORE":
            tree.set("alternative", None)
            tree.set("conflict", exp.OnConflict(action=exp.var("DO NOTHING")))
        elif alternative == "REPLACE":
            keys = tables.primary_keys.get(name)
            columns = [c.name for c in tree.this.expressions] if isinstance(tree.this, exp.Schema) else []
            if not keys or not columns:
                raise NotTranslatable(
                    f"INSERT OR REPLACE needs a table with a primary key and a column list: {sql!r}"
                )
            tree.set("alternative", None)
            updates = [
                exp.EQ(this=exp.column(c), expression=exp.column(c, table="excluded"))
                for c in columns
                if c not in keys
            ]
            tree.set(
                "conflict",
                exp.OnConflict(
                    conflict_keys=[exp.to_identifier(k) for k in keys],
                    action=exp.var("DO UPDATE" if updates else "DO NOTHING"),
                    expressions=updates or None,
                ),
            )
        conflict = tree.args.get("conflict")
        if conflict is not None and conflict.args.get("conflict_keys"):
            # SQLite's parser reads the target as ordered terms; PostgreSQL wants bare column names.
            conflict.set(
                "conflict_keys",
                [k.this if isinstance(k, exp.Ordered) else k for k in conflict.args["conflict_keys"]],
            )
        id_column = tables.integer_keys.get(name)
        columns = [c.name for c in tree.this.expressions] if isinstance(tree.this, exp.Schema) else []
        values = tree.args.get("expression")
        if id_column in columns and isinstance(values, exp.Values):
            # SQLite numbers a row given a NULL integer key; an identity column wants DEFAULT for that.
            at = columns.index(id_column)
            for row in values.expressions:
                if isinstance(row.expressions[at], exp.Null):
                    row.expressions[at].replace(exp.var("DEFAULT"))
        if id_column and not tree.args.get("returning"):
            tree.set("returning", exp.Returning(expressions=[exp.column(id_column)]))
            returns_id = True
    try:
        text = tree.sql(dialect="postgres")
    except sqlglot.errors.UnsupportedError as exc:  # pragma: no cover - sqlglot warns by default
        raise NotTranslatable(f"no PostgreSQL form for {sql!r}: {exc}") from None
    return Translated(text, returns_id)
