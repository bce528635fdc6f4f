"""Operators: who acts at the centre, their roles, pooling areas and tokens (``docs/MONITORING.md``).

An operator has a **main** pooling area and may **manage** others; their *scope* is the union.
Every action takes an ``Operator`` and is narrowed to that scope:

- a suspicion, case or decision id outside the scope is answered as ``NotFound``, the same
  answer as an id that does not exist, so nobody learns what another area holds;
- an area named explicitly (a listing filter, an assignee who does not manage the case's area,
  a hospital of another area as a decision's target) is refused with ``AreaForbidden`` (403).

Roles (an operator holds one or several, stored as ``role`` text joined by commas):

- ``reviewer``: initial review, cases, notes, assignment;
- ``supervisor``: also decisions, publishing pending ones and closing cases;
- ``policy``: proposes, approves and rejects blacklist changes and policy, rules, catalogue and keys
  documents (``central.policy.changes``: another ``policy`` operator must approve what one proposed), exports
  and re-syncs bundles;
- ``admin``: the installation's administrator: operators, enrolment tokens, agents' revocation,
  hospitals, dates of death, the TUF root and the TLS certificates. These acts concern the whole
  centre, not one area's policy, so an admin's areas do not narrow them.

A reviewer or supervisor needs a main area and acts within their scope. ``policy`` and ``admin``
acts are centre-wide (a change request names its area, but a policy operator's areas do not narrow
which areas they may propose or approve for: one policy team per centre), so those roles alone need
no area.

Every verb that changes something is done by an operator the CLI identified by their token
(``YIBAO_OPERATOR_TOKEN`` or ``--token-file``, ``operator_from_token``); the monitoring API by the
same token as a bearer token. The first operator comes from ``yibao-central init``, which registers
an admin while the centre has no operator at all (``bootstrap_admin``) and prints the token once.
Tokens are stored only as their SHA-256; a disabled operator's token is dropped at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner

from central.policy.bundles import Actor, audit_in
from central.policy.documents import check_area
from central.policy.tuf_repo import load_signer
from central.storage.store import Store, now_iso

from .config import CentralConfig
from .errors import (
    AreaForbidden,
    DocumentInvalid,
    MonitorInputInvalid,
    OperatorDisabled,
    OperatorExists,
    OperatorTokenInvalid,
    OperatorTokenRequired,
    OperatorUnknown,
    RoleForbidden,
)

__all__ = [
    "MONITORING_ROLES",
    "ROLES",
    "TOKEN_ENV",
    "Operator",
    "acting_operator",
    "add_operator",
    "bootstrap_admin",
    "disable_operator",
    "get_operator",
    "home_signers",
    "issue_token",
    "list_operators",
    "may_see",
    "operator_by_token",
    "operator_from_token",
    "require_area",
    "require_role",
    "require_supervisor",
    "set_areas",
    "token_hash",
]

ROLES = ("reviewer", "supervisor", "policy", "admin")
#: The roles that work the review queue (suspicions, cases, decisions).
MONITORING_ROLES = ("reviewer", "supervisor")
#: Where the CLI looks for the acting operator's token when no ``--token-file`` is given.
TOKEN_ENV = "YIBAO_OPERATOR_TOKEN"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
#: Operator tokens carry a prefix so a leaked one is recognisable in a secret scanner.
TOKEN_PREFIX = "yop_"


@dataclass(frozen=True, slots=True)
class Operator:
    """A registered monitoring operator (``operators`` table)."""

    name: str
    main_area: str  # "" for an admin who manages no area
    areas: tuple[str, ...]  # managed areas besides the main one, sorted
    role: str  # the roles, in ROLES order, joined by commas
    created_at: str
    disabled_at: str | None = None

    @property
    def scope(self) -> frozenset[str]:
        """Every pooling area this operator sees and acts on."""
        return frozenset(a for a in (self.main_area, *self.areas) if a)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.role.split(","))

    def has(self, *roles: str) -> bool:
        """Whether the operator holds any of ``roles``."""
        return any(r in self.roles for r in roles)

    @property
    def supervisor(self) -> bool:
        return self.has("supervisor")

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
            "roles": list(self.roles),
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


def require_role(operator: Operator, roles: str | Sequence[str], what: str) -> None:
    """Refuse unless ``operator`` holds one of ``roles`` (``RoleForbidden`` naming who may, and how)."""
    wanted = (roles,) if isinstance(roles, str) else tuple(roles)
    if not operator.has(*wanted):
        who = " or ".join(f"a {r}" for r in wanted)
        raise RoleForbidden(
            f"only {who} operator may {what}; {operator.name} holds {operator.role.replace(',', ', ')} "
            f"(an admin grants roles: `yibao-central operators areas {operator.name} --role ROLE`)"
        )


def _check_roles(roles: str | Iterable[str]) -> str:
    """Roles as stored: known, without repeats, in ``ROLES`` order, joined by commas."""
    given = [roles] if isinstance(roles, str) else list(roles)
    given = [r for text in given for r in text.split(",")]
    unknown = [r for r in given if r not in ROLES]
    if unknown or not given:
        raise MonitorInputInvalid(f"role {', '.join(unknown) or '(none)'} is not one of {', '.join(ROLES)}")
    return ",".join(r for r in ROLES if r in given)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise MonitorInputInvalid(
            f"operator name {name!r} must be 1-64 letters, digits, '.', '_', '@' or '-', starting with a "
            "letter or digit"
        )
    return name


def _check_areas(main: str | None, manage: Iterable[str], role: str) -> tuple[str, tuple[str, ...]]:
    """A main area is required for a reviewer or supervisor; policy and admin acts are centre-wide."""
    try:
        if main:
            check_area(main)
        elif any(r in MONITORING_ROLES for r in role.split(",")):
            raise MonitorInputInvalid(f"an operator with role {role} needs a main pooling area (--area AREA)")
        managed = tuple(sorted({check_area(a) for a in manage} - {main}))
    except DocumentInvalid as exc:
        raise MonitorInputInvalid(exc.problems[0]) from None
    return main or "", managed


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


def operator_from_token(conn: sqlite3.Connection, token_file: str | os.PathLike[str] | None) -> Operator:
    """The CLI's acting operator: the token in ``token_file``, else in ``$YIBAO_OPERATOR_TOKEN``.

    A missing token, one that is unknown or replaced, and a disabled operator's (dropped at disable)
    are refused with what to do; the file wins when both are given.
    """
    where = f"--token-file {token_file}" if token_file else f"${TOKEN_ENV}"
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            why = exc.strerror or exc
            raise OperatorTokenRequired(f"cannot read --token-file {token_file}: {why}") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise OperatorTokenRequired(
            f"this verb is done by a registered operator: set {TOKEN_ENV} to your operator token or pass "
            "--token-file FILE (`yibao-central init` prints the first admin's; `operators add` and "
            "`operators token` print others)"
        )
    sql = f"SELECT {_COLUMNS} FROM operators WHERE token_hash = ?"
    row = conn.execute(sql, (token_hash(token),)).fetchone()
    if row is None or row[5] is not None:
        raise OperatorTokenInvalid(
            f"the operator token in {where} is not valid (unknown, replaced, or its operator was disabled); "
            f"set {TOKEN_ENV} or --token-file to a current token (an admin prints a new one with "
            "`yibao-central operators token NAME`)"
        )
    return _row(row)


def acting_operator(
    conn: sqlite3.Connection, token_file: str | os.PathLike[str] | None, roles: str | Sequence[str], what: str
) -> Operator:
    """The CLI's acting operator (``operator_from_token``) if they hold one of ``roles``."""
    op = operator_from_token(conn, token_file)
    require_role(op, roles, what)
    return op


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
    area: str | None,
    manage: Iterable[str] = (),
    role: str | Iterable[str] = "reviewer",
    only_if_none: bool = False,
) -> tuple[Operator, str]:
    """Register an operator; returns it and its API token (shown once, only its hash is kept).

    ``only_if_none``: refuse (``OperatorExists``) unless the centre has no operator yet (the bootstrap).
    """
    _check_name(name)
    role = _check_roles(role)
    main, managed = _check_areas(area, manage, role)
    token, digest = _new_token()
    now = now_iso()

    def tx(conn: sqlite3.Connection) -> Operator:
        if only_if_none and conn.execute("SELECT 1 FROM operators LIMIT 1").fetchone():
            raise OperatorExists("the centre has operators already; an admin adds more with `operators add`")
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


def bootstrap_admin(
    store: Store, name: str = "admin", area: str | None = None
) -> tuple[Operator, str] | None:
    """The first operator, an admin, while the centre has none (``init``); None when there are operators."""
    if store.read(lambda conn: conn.execute("SELECT 1 FROM operators LIMIT 1").fetchone()):
        return None
    try:
        return add_operator(store, Actor("init", "the first administrator"), name, area=area, role="admin",
                            only_if_none=True)  # fmt: skip
    except OperatorExists:  # another init got there first
        return None


def set_areas(
    store: Store,
    actor: Actor,
    name: str,
    *,
    manage: Iterable[str],
    main: str | None = None,
    role: str | Iterable[str] | None = None,
) -> Operator:
    """Replace an operator's managed areas (and main area or roles, when given)."""
    checked = _check_roles(role) if role else None
    manage = list(manage)

    def tx(conn: sqlite3.Connection) -> Operator:
        op = get_operator(conn, name, enabled=False)
        new_role = checked or op.role
        new_main, managed = _check_areas(main or op.main_area, manage, new_role)
        conn.execute(
            "UPDATE operators SET main_area = ?, areas = ?, role = ? WHERE name = ?",
            (new_main, json.dumps(list(managed)), new_role, name),
        )
        audit_in(conn, actor, "operator.areas", {"name": name, "area": new_main, "manage": list(managed),
                                                 "role": new_role, "was": op.to_json()})  # fmt: skip
        return Operator(name, new_main, managed, new_role, op.created_at, op.disabled_at)

    return store.write(tx)


def disable_operator(store: Store, actor: Actor, name: str) -> Operator:
    """Disable an operator: their token stops working at once; the row stays (audit)."""

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
    at hand. Kept here so ``central.monitoring.routes`` does not import the CLI (which imports the API).
    """
    if key_files:
        return [load_signer(Path(k)) for k in key_files]
    found = sorted(config.operators_dir.glob("*.pem")) if config.operators_dir.is_dir() else []
    return [load_signer(p) for p in found]
