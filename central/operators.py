"""Monitoring operators: who reviews, their pooling areas, their API tokens (``docs/MONITORING.md``).

An operator has a **main** pooling area and may **manage** others; their *scope* is the union.
Every monitoring action takes an ``Operator`` and is narrowed to that scope:

- a suspicion, case or decision id outside the scope is answered as ``NotFound``, the same
  answer as an id that does not exist, so nobody learns what another area holds;
- an area named explicitly (a listing filter, an assignee who does not manage the case's area,
  a hospital of another area as a decision's target) is refused with ``AreaForbidden`` (403).

Roles: ``reviewer`` (initial review, cases, notes, assignment) and ``supervisor`` (also
decisions, publishing pending ones and closing cases).

Managing operators is an administrator's act on the centre's home (CLI ``operators``), audited
under ``--operator`` (default ``$USER``) like the other administrative verbs: the first operator
has to come from somewhere. The API token is printed once; only its SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner

from .config import CentralConfig
from .documents import check_area
from .errors import (
    AreaForbidden,
    DocumentInvalid,
    MonitorInputInvalid,
    OperatorDisabled,
    OperatorExists,
    OperatorTokenInvalid,
    OperatorUnknown,
    RoleForbidden,
)
from .policy import Actor, audit_in
from .store import Store, now_iso
from .tuf_repo import load_signer

__all__ = [
    "ROLES",
    "Operator",
    "add_operator",
    "disable_operator",
    "get_operator",
    "home_signers",
    "issue_token",
    "list_operators",
    "may_see",
    "operator_by_token",
    "require_area",
    "require_supervisor",
    "set_areas",
    "token_hash",
]

ROLES = ("reviewer", "supervisor")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
#: Operator tokens carry a prefix so a leaked one is recognisable in a secret scanner.
TOKEN_PREFIX = "yop_"


@dataclass(frozen=True, slots=True)
class Operator:
    """A registered monitoring operator (``operators`` table)."""

    name: str
    main_area: str
    areas: tuple[str, ...]  # managed areas besides the main one, sorted
    role: str
    created_at: str
    disabled_at: str | None = None

    @property
    def scope(self) -> frozenset[str]:
        """Every pooling area this operator sees and acts on."""
        return frozenset((self.main_area, *self.areas))

    @property
    def supervisor(self) -> bool:
        return self.role == "supervisor"

    def actor(self, reason: str = "") -> Actor:
        """The audit log's ``who`` for this operator's action."""
        return Actor(self.name, (reason or "").strip()[:500])

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "main_area": self.main_area,
            "areas": list(self.areas),
            "scope": sorted(self.scope),
            "role": self.role,
            "created_at": self.created_at,
            "disabled_at": self.disabled_at,
        }


def may_see(operator: Operator, area: str | None) -> bool:
    """Whether ``operator`` may see and act on objects of pooling area ``area``."""
    return area is not None and area in operator.scope


def require_area(operator: Operator, area: str) -> None:
    """Refuse an explicitly named area outside the operator's scope (``AreaForbidden``)."""
    if not may_see(operator, area):
        raise AreaForbidden(
            f"operator {operator.name} does not manage pooling area {area} (areas: "
            f"{', '.join(sorted(operator.scope))}); ask an administrator: `yibao-central operators areas`"
        )


def require_supervisor(operator: Operator, what: str) -> None:
    if not operator.supervisor:
        raise RoleForbidden(f"only a supervisor may {what}; {operator.name} is a {operator.role}")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise MonitorInputInvalid(
            f"operator name {name!r} must be 1-64 letters, digits, '.', '_', '@' or '-', starting with a "
            "letter or digit"
        )
    return name


def _check_areas(main: str, manage: Iterable[str]) -> tuple[str, tuple[str, ...]]:
    try:
        check_area(main)
        managed = tuple(sorted({check_area(a) for a in manage} - {main}))
    except DocumentInvalid as exc:
        raise MonitorInputInvalid(exc.problems[0]) from None
    return main, managed


def _row(row: Sequence[Any]) -> Operator:
    name, main, areas, role, created_at, disabled_at = row
    return Operator(name, main, tuple(json.loads(areas)), role, created_at, disabled_at)


_COLUMNS = "name, main_area, areas, role, created_at, disabled_at"


def get_operator(conn: sqlite3.Connection, name: str, *, enabled: bool = True) -> Operator:
    """The registered operator ``name``; refused when unknown, or disabled unless ``enabled=False``."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM operators WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise OperatorUnknown(
            f"{name!r} is not a registered operator; an administrator adds one with "
            "`yibao-central operators add NAME --area AREA`"
        )
    op = _row(row)
    if enabled and op.disabled_at is not None:
        raise OperatorDisabled(f"operator {name} was disabled at {op.disabled_at}")
    return op


def operator_by_token(conn: sqlite3.Connection, token: str | None) -> Operator:
    """The enabled operator holding ``token``; one answer for missing, unknown and disabled tokens."""
    if token:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM operators WHERE token_hash = ?", (token_hash(token),)
        ).fetchone()
        if row is not None and row[5] is None:
            return _row(row)
    raise OperatorTokenInvalid(
        "send `Authorization: Bearer <token>` with a valid operator token (`yibao-central operators add` "
        "or `operators token` prints one)"
    )


def list_operators(conn: sqlite3.Connection) -> list[Operator]:
    return [_row(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM operators ORDER BY name")]


def _new_token() -> tuple[str, str]:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, token_hash(token)


def add_operator(
    store: Store,
    actor: Actor,
    name: str,
    *,
    area: str,
    manage: Iterable[str] = (),
    role: str = "reviewer",
) -> tuple[Operator, str]:
    """Register an operator; returns it and its API token (shown once, only its hash is kept)."""
    _check_name(name)
    main, managed = _check_areas(area, manage)
    if role not in ROLES:
        raise MonitorInputInvalid(f"role {role!r} is not one of {', '.join(ROLES)}")
    token, digest = _new_token()
    now = now_iso()

    def tx(conn: sqlite3.Connection) -> Operator:
        if conn.execute("SELECT 1 FROM operators WHERE name = ?", (name,)).fetchone():
            raise OperatorExists(f"operator {name} already exists; `operators areas` changes their areas")
        conn.execute(
            "INSERT INTO operators (name, main_area, areas, role, token_hash, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (name, main, json.dumps(list(managed)), role, digest, now),
        )
        audit_in(conn, actor, "operator.add", {"name": name, "area": main, "manage": list(managed),
                                               "role": role})  # fmt: skip
        return Operator(name, main, managed, role, now)

    return store.write(tx), token


def set_areas(
    store: Store,
    actor: Actor,
    name: str,
    *,
    manage: Iterable[str],
    main: str | None = None,
    role: str | None = None,
) -> Operator:
    """Replace an operator's managed areas (and main area or role, when given)."""
    if role is not None and role not in ROLES:
        raise MonitorInputInvalid(f"role {role!r} is not one of {', '.join(ROLES)}")
    manage = list(manage)

    def tx(conn: sqlite3.Connection) -> Operator:
        op = get_operator(conn, name, enabled=False)
        new_main, managed = _check_areas(main or op.main_area, manage)
        new_role = role or op.role
        conn.execute(
            "UPDATE operators SET main_area = ?, areas = ?, role = ? WHERE name = ?",
            (new_main, json.dumps(list(managed)), new_role, name),
        )
        audit_in(conn, actor, "operator.areas", {"name": name, "area": new_main, "manage": list(managed),
                                                 "role": new_role, "was": op.to_json()})  # fmt: skip
        return Operator(name, new_main, managed, new_role, op.created_at, op.disabled_at)

    return store.write(tx)


def disable_operator(store: Store, actor: Actor, name: str) -> Operator:
    """Disable an operator: the token stops working, ``--operator NAME`` is refused; the row stays (audit)."""

    def tx(conn: sqlite3.Connection) -> Operator:
        op = get_operator(conn, name, enabled=False)
        if op.disabled_at is not None:
            return op
        now = now_iso()
        conn.execute("UPDATE operators SET disabled_at = ?, token_hash = NULL WHERE name = ?", (now, name))
        audit_in(conn, actor, "operator.disable", {"name": name, "area": op.main_area})
        return Operator(op.name, op.main_area, op.areas, op.role, op.created_at, now)

    return store.write(tx)


def issue_token(store: Store, actor: Actor, name: str) -> str:
    """A new API token for an enabled operator; the previous one stops working."""
    token, digest = _new_token()

    def tx(conn: sqlite3.Connection) -> None:
        op = get_operator(conn, name)
        conn.execute("UPDATE operators SET token_hash = ? WHERE name = ?", (digest, name))
        audit_in(conn, actor, "operator.token", {"name": name, "area": op.main_area})

    store.write(tx)
    return token


def home_signers(config: CentralConfig, key_files: Sequence[str | Path] | None = None) -> list[CryptoSigner]:
    """``key_files``, or every ``*.pem`` in ``HOME/operators/``; empty when none is there.

    The same choice as ``central.cli.operator_signers`` without its refusal: the monitoring API
    and CLI fall back to recording a blacklist decision as ``pending_publish`` when no keys are
    at hand. Kept here so ``central.monitor_api`` does not import the CLI (which imports the API).
    """
    if key_files:
        return [load_signer(Path(k)) for k in key_files]
    found = sorted(config.operators_dir.glob("*.pem")) if config.operators_dir.is_dir() else []
    return [load_signer(p) for p in found]
