"""A hospital's monthly declaration checked against what the centre holds (``docs/DECLARATIONS.md``).

Each month a hospital declares what it settled: the 费用申报结算汇总报表 (per insurance type: how many
settlements and reversals, and the medical fee, fund, account and cash totals) and the 数据传输批次报表
(per transmission batch: how many records and their fee total), optionally with the list of
settlements itself. The bureau pays on the declaration, so a declaration the centre's data does not
bear out must be found before payment, with the settlements that differ named — a total alone says
that something is wrong, not what.

Rules:

1. A declaration is one JSON document (``Declaration``) per hospital and period (``YYYY-MM``); money
   is decimal yuan text with at most two places (as the national reports write it), held as fen. A
   document that does not validate is refused whole, with the field named, and nothing is stored.
2. What the centre holds for the period: the hospital's settlements and reversals (uploaded by its
   agents or brought by a bulk import) whose ``setl_date`` is in the month; net amounts (reversals are
   negative); a reversal counts under its original's insurance type.
3. The check compares, per insurance type, the counts and the four net totals; per batch (when the
   details name ``batch_no``) the record count and fee total of the batch's settlements held; and per
   settlement (when details are given): ``missing_at_centre`` (declared, not held), ``not_declared``
   (held, not in the details), ``amounts_differ`` (the fields named).
4. Every settlement declared but not held becomes a re-upload request (``reupload_requests``) for the
   hospital: the centre asks for it, and the request closes by itself once the settlement arrives
   (``check`` again, or any listing). Re-declaring the same period (a corrected declaration) keeps the
   earlier one for audit; the newest is the one in force.
5. Storing a declaration, its check result and its requests is one transaction, audited.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

from central.errors import DeclarationInvalid, NotFound
from central.policy.bundles import Actor, audit_in
from central.storage.store import Store, now_iso
from protocol.records import fen_to_text, to_fen

from .enrol import check_hospital_code

__all__ = [
    "Declaration",
    "check_declaration",
    "list_declarations",
    "open_reupload_requests",
    "parse_declaration",
    "store_declaration",
]

_SUMS = ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay")
_MAX_DETAILS = 2_000_000


class Totals(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    insutype: str
    settlements: int
    reversals: int = 0
    medfee_sumamt: str
    fund_pay_sumamt: str = "0"
    acct_pay: str = "0"
    psn_cash_pay: str = "0"


class Batch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    batch_no: str
    records: int
    medfee_sumamt: str


class Detail(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    setl_id: str
    kind: str = "setl"  # setl | revs
    insutype: str | None = None
    batch_no: str | None = None
    medfee_sumamt: str
    fund_pay_sumamt: str | None = None
    acct_pay: str | None = None
    psn_cash_pay: str | None = None


class Declaration(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    fixmedins_code: str
    period: str  # YYYY-MM
    declared_at: str | None = None
    totals: list[Totals]
    batches: list[Batch] = []
    details: list[Detail] = []


def _fen(text: str, where: str) -> int:
    try:
        return to_fen(Decimal(text))
    except (InvalidOperation, ValueError) as exc:
        raise DeclarationInvalid(
            f"{where}: {text!r} is not an amount in yuan with at most 2 decimals ({exc})"
        ) from None


def _period_days(period: str) -> tuple[date, date]:
    try:
        first = date.fromisoformat(f"{period}-01")
    except ValueError:
        raise DeclarationInvalid(f"period {period!r} must be a month like 2026-11") from None
    if len(period) != 7:
        raise DeclarationInvalid(f"period {period!r} must be a month like 2026-11")
    nxt = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    return first, nxt - timedelta(days=1)


def parse_declaration(data: bytes) -> Declaration:
    """The validated document, or ``DeclarationInvalid`` naming what to correct."""
    try:
        doc = msgspec.json.decode(data, type=Declaration)
    except msgspec.ValidationError as exc:
        raise DeclarationInvalid(f"the declaration does not validate: {exc}") from None
    except msgspec.DecodeError as exc:
        raise DeclarationInvalid(f"the declaration is not JSON: {exc}") from None
    try:
        check_hospital_code(doc.fixmedins_code)
    except Exception as exc:  # ConfigInvalid: the same words, as a declaration problem
        raise DeclarationInvalid(f"fixmedins_code: {getattr(exc, 'message', exc)}") from None
    _period_days(doc.period)
    if not doc.totals:
        raise DeclarationInvalid("totals: at least one insurance type's totals are required")
    if len({t.insutype for t in doc.totals}) != len(doc.totals):
        raise DeclarationInvalid("totals: an insurance type is listed twice")
    for i, t in enumerate(doc.totals):
        if t.settlements < 0 or t.reversals < 0:
            raise DeclarationInvalid(f"totals[{i}]: counts cannot be negative")
        for name in _SUMS:
            _fen(getattr(t, name), f"totals[{i}].{name}")
    if len({b.batch_no for b in doc.batches}) != len(doc.batches):
        raise DeclarationInvalid("batches: a batch_no is listed twice")
    for i, b in enumerate(doc.batches):
        _fen(b.medfee_sumamt, f"batches[{i}].medfee_sumamt")
    if len(doc.details) > _MAX_DETAILS:
        raise DeclarationInvalid(f"details: at most {_MAX_DETAILS} settlements in one declaration")
    seen: set[str] = set()
    for i, d in enumerate(doc.details):
        if d.kind not in ("setl", "revs"):
            raise DeclarationInvalid(f"details[{i}].kind must be setl or revs, not {d.kind!r}")
        if d.setl_id in seen:
            raise DeclarationInvalid(f"details[{i}]: setl_id {d.setl_id} is listed twice")
        seen.add(d.setl_id)
        for name in _SUMS:
            value = getattr(d, name)
            if value is not None:
                _fen(value, f"details[{i}].{name}")
    return doc


@dataclass
class CheckResult:
    """What differs between a declaration and the centre's holdings (empty lists: it agrees)."""

    declaration_id: int
    hospital: str
    period: str
    totals: list[dict[str, Any]] = field(default_factory=list)  # per insutype, only those that differ
    batches: list[dict[str, Any]] = field(default_factory=list)
    missing_at_centre: list[str] = field(default_factory=list)
    not_declared: list[str] = field(default_factory=list)
    amounts_differ: list[dict[str, Any]] = field(default_factory=list)
    reupload_open: int = 0

    @property
    def agrees(self) -> bool:
        return not (self.totals or self.batches or self.missing_at_centre or self.not_declared
                    or self.amounts_differ)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "declaration_id": self.declaration_id, "hospital": self.hospital, "period": self.period,
            "agrees": self.agrees, "totals": self.totals, "batches": self.batches,
            "missing_at_centre": self.missing_at_centre, "not_declared": self.not_declared,
            "amounts_differ": self.amounts_differ, "reupload_open": self.reupload_open,
        }  # fmt: skip


_HELD = (
    "SELECT s.setl_id, s.kind, coalesce(s.insutype, o.insutype), s.medfee_sumamt, s.fund_pay_sumamt, "
    "s.acct_pay, s.psn_cash_pay FROM settlements AS s "
    "LEFT JOIN settlements AS o ON o.setl_id = s.orig_setl_id "
    "WHERE s.fixmedins_code = ? AND s.setl_date BETWEEN ? AND ?"
)


def _compare(conn: sqlite3.Connection, declaration_id: int, doc: Declaration) -> CheckResult:
    first, last = _period_days(doc.period)
    result = CheckResult(declaration_id, doc.fixmedins_code, doc.period)
    held: dict[str, tuple] = {}
    per_type: dict[str, dict[str, int]] = defaultdict(
        lambda: dict.fromkeys(("settlements", "reversals", *_SUMS), 0)
    )
    for setl_id, kind, insutype, *money in conn.execute(
        _HELD, (doc.fixmedins_code, first.isoformat(), last.isoformat())
    ):
        held[setl_id] = (kind, insutype, *money)
        t = per_type[insutype or "?"]
        t["settlements" if kind == "setl" else "reversals"] += 1
        for name, value in zip(_SUMS, money, strict=True):
            t[name] += value or 0
    for decl in doc.totals:
        mine = per_type.get(decl.insutype, dict.fromkeys(("settlements", "reversals", *_SUMS), 0))
        declared = {"settlements": decl.settlements, "reversals": decl.reversals}
        declared |= {name: _fen(getattr(decl, name), name) for name in _SUMS}
        differs = [k for k in declared if declared[k] != mine[k]]
        if differs:
            result.totals.append({
                "insutype": decl.insutype, "differs_in": differs,
                "declared": _money_view(declared), "held": _money_view(mine),
            })  # fmt: skip
    for insutype, mine in sorted(per_type.items()):
        if insutype not in {d.insutype for d in doc.totals}:
            result.totals.append({"insutype": insutype, "differs_in": ["not declared"], "declared": None,
                                  "held": _money_view(mine)})  # fmt: skip
    if doc.details:
        declared_ids = {d.setl_id for d in doc.details}
        for d in doc.details:
            h = held.get(d.setl_id)
            if h is None:
                result.missing_at_centre.append(d.setl_id)
                continue
            fields = [
                name
                for name, value in zip(_SUMS, h[2:], strict=True)
                if getattr(d, name) is not None and _fen(getattr(d, name), name) != (value or 0)
            ]
            if d.kind != h[0]:
                fields.insert(0, "kind")
            if d.insutype is not None and d.insutype != h[1]:
                fields.append("insutype")
            if fields:
                result.amounts_differ.append({"setl_id": d.setl_id, "fields": fields})
        result.not_declared = sorted(set(held) - declared_ids)
        by_batch: dict[str, list[Detail]] = defaultdict(list)
        for d in doc.details:
            if d.batch_no is not None:
                by_batch[d.batch_no].append(d)
        for b in doc.batches:
            members = by_batch.get(b.batch_no, [])
            present = [held[d.setl_id] for d in members if d.setl_id in held]
            fee = sum(h[2] or 0 for h in present)
            if (len(present), fee) != (b.records, _fen(b.medfee_sumamt, "medfee_sumamt")):
                result.batches.append({
                    "batch_no": b.batch_no, "declared_records": b.records, "held_records": len(present),
                    "declared_medfee_sumamt": b.medfee_sumamt, "held_medfee_sumamt": fen_to_text(fee),
                    "missing_at_centre": [d.setl_id for d in members if d.setl_id not in held],
                })  # fmt: skip
    return result


def _money_view(t: dict[str, int]) -> dict[str, Any]:
    return {k: (fen_to_text(v) if k in _SUMS else v) for k, v in t.items()}


def _record_result(conn: sqlite3.Connection, result: CheckResult, at: str) -> None:
    """The check's outcome on the declaration, its re-upload requests, and closing those now held."""
    conn.execute(
        "UPDATE declarations SET checked_at = ?, result = ?, summary = ? WHERE id = ?",
        (at, "agrees" if result.agrees else "differs", json.dumps(result.to_json(), ensure_ascii=False),
         result.declaration_id),
    )  # fmt: skip
    conn.executemany(
        "INSERT INTO reupload_requests (fixmedins_code, setl_id, declaration_id, requested_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (fixmedins_code, setl_id) DO UPDATE SET "
        "declaration_id = excluded.declaration_id, resolved_at = NULL "
        "WHERE reupload_requests.resolved_at IS NOT NULL",  # qualified: PostgreSQL's excluded has one too
        [(result.hospital, s, result.declaration_id, at) for s in result.missing_at_centre],
    )
    _resolve_arrived(conn, result.hospital, at)
    result.reupload_open = conn.execute(
        "SELECT count(*) FROM reupload_requests WHERE fixmedins_code = ? AND resolved_at IS NULL",
        (result.hospital,),
    ).fetchone()[0]


def _resolve_arrived(conn: sqlite3.Connection, hospital: str | None, at: str) -> None:
    where = "AND r.fixmedins_code = ?" if hospital else ""
    conn.execute(
        "UPDATE reupload_requests AS r SET resolved_at = ? WHERE r.resolved_at IS NULL "
        f"{where} AND EXISTS (SELECT 1 FROM settlements AS s WHERE s.setl_id = r.setl_id "
        "AND s.fixmedins_code = r.fixmedins_code)",
        (at, hospital) if hospital else (at,),
    )


def _check_in(
    conn: sqlite3.Connection, actor: Actor, declaration_id: int, doc: Declaration, at: str
) -> CheckResult:
    """Compare, record the outcome and its requests, and audit: the one check, in the caller's transaction."""
    result = _compare(conn, declaration_id, doc)
    _record_result(conn, result, at)
    audit_in(conn, actor, "declaration.check", {
        "declaration_id": declaration_id, "hospital": doc.fixmedins_code, "period": doc.period,
        "agrees": result.agrees, "missing_at_centre": len(result.missing_at_centre),
    })  # fmt: skip
    return result


def store_declaration(store: Store, actor: Actor, data: bytes) -> CheckResult:
    """Validate, store, check and audit a declaration in one transaction (rules 1-5)."""
    doc = parse_declaration(data)
    digest = hashlib.sha256(data).hexdigest()

    def tx(conn: sqlite3.Connection) -> CheckResult:
        if (
            conn.execute("SELECT 1 FROM hospitals WHERE fixmedins_code = ?", (doc.fixmedins_code,)).fetchone()
            is None
        ):
            raise DeclarationInvalid(
                f"hospital {doc.fixmedins_code} is not registered: register it first "
                "(`yibao-central hospitals set` or `hospitals import`)"
            )
        at = now_iso()
        held = conn.execute(
            "SELECT id FROM declarations WHERE fixmedins_code = ? AND period = ? AND digest = ?",
            (doc.fixmedins_code, doc.period, digest),
        ).fetchone()
        if held is not None:
            declaration_id = held[0]
        else:
            declaration_id = conn.execute(
                "INSERT INTO declarations (fixmedins_code, period, declared_at, received_at, operator, "
                "digest, document) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    doc.fixmedins_code,
                    doc.period,
                    doc.declared_at,
                    at,
                    actor.operator,
                    digest,
                    data.decode("utf-8"),
                ),
            ).lastrowid
        return _check_in(conn, actor, int(declaration_id or 0), doc, at)

    return store.write(tx)


def check_declaration(store: Store, actor: Actor, declaration_id: int) -> CheckResult:
    """Check a held declaration again (after re-uploads arrived); audited like the first check."""

    def tx(conn: sqlite3.Connection) -> CheckResult:
        row = conn.execute("SELECT document FROM declarations WHERE id = ?", (declaration_id,)).fetchone()
        if row is None:
            raise NotFound(f"no declaration {declaration_id}; `yibao-central declarations list` lists them")
        return _check_in(conn, actor, declaration_id, parse_declaration(row[0].encode("utf-8")), now_iso())

    return store.write(tx)


def list_declarations(conn: sqlite3.Connection, hospital: str | None = None) -> list[dict[str, Any]]:
    cols = (
        "id",
        "fixmedins_code",
        "period",
        "declared_at",
        "received_at",
        "operator",
        "checked_at",
        "result",
    )
    newest = (
        "(SELECT max(id) FROM declarations AS n WHERE n.fixmedins_code = d.fixmedins_code "
        "AND n.period = d.period)"
    )
    sql = f"SELECT {', '.join(cols)}, {newest} FROM declarations AS d"
    params: tuple = ()
    if hospital:
        sql += " WHERE fixmedins_code = ?"
        params = (hospital,)
    out = []
    for row in conn.execute(sql + " ORDER BY period DESC, fixmedins_code, id DESC", params):
        item = dict(zip(cols, row[:-1], strict=True))
        item["in_force"] = row[-1] == row[0]
        out.append(item)
    return out


def open_reupload_requests(store: Store, hospital: str | None = None) -> list[dict[str, Any]]:
    """The settlements the centre still asks hospitals for (closing first those that arrived)."""

    def tx(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        _resolve_arrived(conn, hospital, now_iso())
        sql = ("SELECT fixmedins_code, setl_id, declaration_id, requested_at FROM reupload_requests "
               "WHERE resolved_at IS NULL")  # fmt: skip
        params: tuple = ()
        if hospital:
            sql += " AND fixmedins_code = ?"
            params = (hospital,)
        cols = ("fixmedins_code", "setl_id", "declaration_id", "requested_at")
        return [
            dict(zip(cols, r, strict=True))
            for r in conn.execute(sql + " ORDER BY requested_at, setl_id", params)
        ]

    return store.write(tx)
