"""Maker-checker for what agents enforce: change requests (``docs/POLICY.md``, "Who may change policy").

A blacklist change (add, remove, import of a CSV), a card correction or notice (``cards`` bundle,
``central.policy.card_notices``) or a ``policy``/``rules``/``catalogue``/``keys`` document is not
published by the operator who asks for it. It becomes a **change request**:

1. ``propose_*`` (a ``policy`` operator, the *maker*) validates the change exactly as the publishing
   verb would, holds it as it will be published (the document's JSON, or every blacklist entry in
   ``change_entries``), and records its ``digest`` (SHA-256 over that content) and its ``base``: what
   it was proposed against (the list's current rows for the entries it touches; the newest bundle seq
   of the document's kind and area). Nothing is published; ``change.propose`` is audited.
2. ``approve`` by another ``policy`` operator (a *checker*) who names the digest they reviewed
   (``--digest``): the maker is refused (``SelfApproval``), a digest that is not the request's is
   refused (``ChangeDigestMismatch``), a request no longer pending is refused (``ChangeState``).
   With ``approvals_required`` = N, N-1 checkers besides the maker must approve; the last one
   publishes.
3. The publish goes through ``Policy`` (the signed TUF path, unchanged) with a ``TxHook``: inside the
   transaction that records the bundle, the request is read again (still pending, not yet approved by
   this checker, the same digest) and its base recomputed; if the entry or a newer document changed
   since, ``ChangeBaseMoved`` and nothing is recorded. The approval, the request's ``published``
   status, the bundle and the audit rows commit together: a crash leaves the request pending or
   published, never half.
4. ``reject`` (any ``policy`` operator, the maker too: a withdrawal) ends a pending request with a
   reason.

``approvals_required`` = 1 (a development or single-operator setup) still records the request, then
publishes it at once at the maker's word; the CLI says that maker-checker is off.

Roles are checked here (``require_role``), not only in the CLI, so every caller gets the same rule.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner

from central.errors import (
    CardEntryUnknown,
    ChangeBaseMoved,
    ChangeDigestMismatch,
    ChangeState,
    DocumentInvalid,
    MonitorInputInvalid,
    NotFound,
    SelfApproval,
)
from central.operators import Operator, require_role
from central.storage.store import Store, now_iso
from protocol.bundles import CardsEntry, correction_problems, notice_problems

from .bundles import Actor, Policy, Published, audit_in, resolve_area, stage_blacklist_csv
from .card_notices import describe_entries, entries_from_json, entries_to_json
from .documents import check_area, check_blacklist_fields, load_json_document, validate_document

__all__ = [
    "DOCUMENT_KINDS",
    "STATUSES",
    "approve",
    "describe",
    "get_change",
    "list_changes",
    "propose_blacklist_add",
    "propose_blacklist_import",
    "propose_blacklist_remove",
    "propose_cards",
    "propose_document",
    "propose_lost_card",
    "reject",
]

DOCUMENT_KINDS = ("policy", "rules", "catalogue", "keys")
STATUSES = ("pending", "published", "rejected")
_COLUMNS = (
    "id, action, kind, area, digest, document, what, entries, base, maker, reason, created_at, status, "
    "decided_by, decided_at, decision_reason, bundle_seq"
)
_KEYS = tuple(c.strip() for c in _COLUMNS.split(","))
_ENTRY = "op, list_type, id, reason, source, effective_at"

# -- reading --------------------------------------------------------------------------------------


def _row(conn: sqlite3.Connection, change_id: int) -> dict[str, Any]:
    row = conn.execute(f"SELECT {_COLUMNS} FROM change_requests WHERE id = ?", (change_id,)).fetchone()
    if row is None:
        raise NotFound(f"no change request {change_id} (`yibao-central changes list` shows them)")
    change = dict(zip(_KEYS, row, strict=True))
    change["approvals"] = [
        {"operator": who, "at": at}
        for who, at in conn.execute(
            "SELECT operator, at FROM change_approvals WHERE change_id = ? ORDER BY at, operator",
            (change_id,),
        )
    ]
    return change


def get_change(conn: sqlite3.Connection, change_id: int, *, entries: int = 50) -> dict[str, Any]:
    """One change request, its approvals and its first ``entries`` blacklist entries (``entries_shown``)."""
    change = _row(conn, change_id)
    change["document"] = json.loads(change["document"]) if change["document"] is not None else None
    change["entries_shown"] = [
        dict(zip(("op", "list_type", "id", "reason", "source", "effective_at"), r, strict=True))
        for r in conn.execute(
            f"SELECT {_ENTRY} FROM change_entries WHERE change_id = ? ORDER BY line LIMIT ?",
            (change_id, max(0, entries)),
        )
    ]
    return change


def list_changes(
    conn: sqlite3.Connection, *, status: str | None = "pending", area: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Change requests, newest first (``status`` None: every status)."""
    if status is not None and status not in STATUSES:
        raise MonitorInputInvalid(f"--status {status!r} is not one of {', '.join(STATUSES)} or all")
    where, params = [], []
    if status is not None:
        where.append("status = ?")
        params.append(status)
    if area is not None:
        where.append("area = ?")
        params.append(check_area(area))
    sql = f"SELECT id FROM change_requests{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY id DESC"
    ids = [r[0] for r in conn.execute(sql + " LIMIT ?", (*params, max(1, limit)))]
    return [_row(conn, i) for i in ids]


def describe(change: dict[str, Any]) -> str:
    """One line saying what the change publishes (for the operator's terminal, never a log)."""
    action = change["action"]
    head = f"change {change['id']} [{change['status']}] {action} area {change['area']}"
    return f"{head}: {change['what']} (by {change['maker']}, digest {change['digest']})"


# -- proposing ------------------------------------------------------------------------------------


def _blacklist_base(conn: sqlite3.Connection, change_id: int, area: str) -> str:
    """What the list holds now for every entry the change touches (absent rows too), as a digest."""
    h = hashlib.sha256()
    for row in conn.execute(
        "SELECT e.line, b.reason, b.source, b.effective_at, b.added_seq FROM change_entries AS e "
        "LEFT JOIN blacklist AS b ON b.area = ? AND b.list_type = e.list_type AND b.id = e.id "
        "WHERE e.change_id = ? ORDER BY e.line",
        (area, change_id),
    ):
        h.update(json.dumps(row, separators=(",", ":")).encode() + b"\n")
    return "entries sha256:" + h.hexdigest()


def _document_base(conn: sqlite3.Connection, kind: str, area: str) -> str:
    row = conn.execute("SELECT max(seq) FROM bundles WHERE area = ? AND kind = ?", (area, kind)).fetchone()
    return f"{kind} seq {row[0] or 0}"


def _cards_base(conn: sqlite3.Connection, document: str, area: str) -> str:
    """What the area holds now for every correction and notice the change touches, as a digest."""
    h = hashlib.sha256()
    for e in entries_from_json(json.loads(document)):
        if e.item == "correction":
            row = conn.execute(
                "SELECT new_card_sn, fields, reason, added_seq FROM card_corrections "
                "WHERE area = ? AND card_sn = ?",
                (area, e.key),
            ).fetchone()
        else:
            row = conn.execute(
                "SELECT card_sn, type, amount_fen, text, valid_from, valid_to, added_seq FROM card_notices "
                "WHERE area = ? AND id = ?",
                (area, e.key),
            ).fetchone()
        h.update(
            json.dumps([e.item, e.key, list(row) if row else None], separators=(",", ":")).encode() + b"\n"
        )
    return "cards sha256:" + h.hexdigest()


def _base(conn: sqlite3.Connection, change: dict[str, Any]) -> str:
    if change["kind"] == "cards":
        return _cards_base(conn, change["document"], change["area"])
    if change["kind"] == "blacklist":
        return _blacklist_base(conn, change["id"], change["area"])
    return _document_base(conn, change["kind"], change["area"])


def _digest(conn: sqlite3.Connection, change: dict[str, Any]) -> str:
    """SHA-256 over exactly what approval publishes: the action, area, document or every entry."""
    h = hashlib.sha256()
    head = {"action": change["action"], "kind": change["kind"], "area": change["area"],
            "document": change["document"]}  # fmt: skip
    h.update(json.dumps(head, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
    for row in conn.execute(
        f"SELECT {_ENTRY} FROM change_entries WHERE change_id = ? ORDER BY line", (change["id"],)
    ):
        h.update(json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def _propose(
    store: Store,
    policy: Policy,
    op: Operator,
    *,
    action: str,
    kind: str,
    area: str | None,
    what: str,
    reason: str,
    document: str | None = None,
    entries: Iterator[tuple[Any, ...]] | None = None,
    count: int = 0,
    must_hold: tuple[str, str] | None = None,
    must_hold_cards: tuple[str, str] | None = None,
    signers: Sequence[CryptoSigner] = (),
) -> tuple[dict[str, Any], Published | None]:
    require_role(op, "policy", f"propose a {kind} change")
    if len(reason) > 500:
        raise MonitorInputInvalid("--reason is longer than 500 characters")
    if policy.config.approvals_required == 1:
        policy.repo.check_targets_signers(signers)  # published at once: refuse before recording anything

    def tx(conn: sqlite3.Connection) -> dict[str, Any]:
        chosen = resolve_area(conn, area)
        if (
            must_hold is not None
            and not conn.execute(
                "SELECT 1 FROM blacklist WHERE area = ? AND list_type = ? AND id = ?", (chosen, *must_hold)
            ).fetchone()
        ):
            raise DocumentInvalid(
                "the blacklist entry",
                [f"area {chosen} holds no {must_hold[0]} with that id (`yibao-central blacklist list "
                 f"--area {chosen} --type {must_hold[0]}` shows the entries)"],
            )  # fmt: skip
        if must_hold_cards is not None:
            item, key = must_hold_cards
            table, column = (
                ("card_corrections", "card_sn") if item == "correction" else ("card_notices", "id")
            )
            if not conn.execute(
                f"SELECT 1 FROM {table} WHERE area = ? AND {column} = ?", (chosen, key)
            ).fetchone():
                raise CardEntryUnknown(
                    f"area {chosen} holds no {item} {key}; nothing was proposed (`yibao-central cards list "
                    f"--area {chosen}` shows what it holds)"
                )
        at = now_iso()
        change_id = conn.execute(
            f"INSERT INTO change_requests ({_COLUMNS}) "
            "VALUES (NULL, ?, ?, ?, '', ?, ?, ?, '', ?, ?, ?, 'pending', NULL, NULL, NULL, NULL)",
            (action, kind, chosen, document, what, count, op.name, reason, at),
        ).lastrowid
        assert change_id is not None
        if entries is not None:
            conn.executemany(
                f"INSERT INTO change_entries (change_id, line, {_ENTRY}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                ((change_id, line, *row) for line, row in enumerate(entries, 1)),
            )
        change = _row(conn, change_id)
        change["digest"], change["base"] = _digest(conn, change), _base(conn, change)
        conn.execute(
            "UPDATE change_requests SET digest = ?, base = ? WHERE id = ?",
            (change["digest"], change["base"], change_id),
        )
        audit_in(conn, op.actor(reason), "change.propose", {
            "change": change_id, "action": action, "area": chosen, "what": what, "entries": count,
            "digest": change["digest"],
        })  # fmt: skip
        return change

    change = store.write(tx)
    if policy.config.approvals_required > 1:
        return change, None
    published = _publish(store, policy, op, change, change["digest"], signers, reason, maker_alone=True)
    return store.read(lambda c: _row(c, change["id"])), published


def propose_blacklist_add(
    store: Store, policy: Policy, op: Operator, *, list_type: str, entry_id: str, reason: str,
    source: str = "", effective_at: str | None = None, area: str | None = None, why: str = "",
    signers: Sequence[CryptoSigner] = (),
) -> tuple[dict[str, Any], Published | None]:  # fmt: skip
    """Propose adding (or replacing) one entry; ``effective_at`` None: from the moment it is published.

    Returns the request and, when ``approvals_required`` is 1, what was published at once."""
    problems, when = check_blacklist_fields(list_type, entry_id, reason, source, effective_at)
    if area is not None:
        check_area(area)
    if problems:
        raise DocumentInvalid("the blacklist entry", [f"--{f.replace('_', '-')}: {m}" for f, m in problems])
    row = ("+", list_type, entry_id, reason.strip(), source, when)
    return _propose(store, policy, op, action="blacklist.add", kind="blacklist", area=area,
                    what=f"+ {list_type} {entry_id}: {reason.strip()}", reason=why, entries=iter([row]),
                    count=1, signers=signers)  # fmt: skip


def propose_lost_card(
    conn: sqlite3.Connection, *, agent_id: str, area: str, card_sn: str, reason: str, log_seq: int
) -> int:
    """A lost-card report an agent chained becomes a pending ``blacklist.add`` of the card, in the
    caller's (the ingest's) transaction; returns the change id.

    The maker is ``desk:AGENT_ID``, not an operator: the cashier reported it, and it is signed by the
    agent's chain, but nothing an agent says is published unchecked — a ``policy`` operator approves it
    (``changes approve``, as any request; the maker cannot be a checker, since no operator is named so).
    It stays pending whatever ``approvals_required`` is: the centre holds no signing key here. A card the
    area already blacklists still gets a request (the operator sees the new report and may reject it).
    """
    source = f"desk report {agent_id}#{log_seq}"
    problems, when = check_blacklist_fields("card", card_sn, reason, source, None)
    if problems:  # the card log validated, so only a centre-side rule can refuse it
        raise DocumentInvalid("the lost-card report", [f"{f}: {m}" for f, m in problems])
    at = now_iso()
    what = f"+ card {card_sn}: {reason.strip()} (lost-card report, agent {agent_id} seq {log_seq})"
    maker = f"desk:{agent_id}"
    change_id = conn.execute(
        f"INSERT INTO change_requests ({_COLUMNS}) "
        "VALUES (NULL, 'blacklist.add', 'blacklist', ?, '', NULL, ?, 1, '', ?, ?, ?, 'pending', NULL, NULL, "
        "NULL, NULL)",
        (area, what, maker, "lost-card report at the desk", at),
    ).lastrowid
    assert change_id is not None
    conn.execute(
        f"INSERT INTO change_entries (change_id, line, {_ENTRY}) VALUES (?, 1, '+', 'card', ?, ?, ?, ?)",
        (change_id, card_sn, reason.strip(), source, when),
    )
    change = _row(conn, change_id)
    change["digest"], change["base"] = _digest(conn, change), _base(conn, change)
    conn.execute(
        "UPDATE change_requests SET digest = ?, base = ? WHERE id = ?",
        (change["digest"], change["base"], change_id),
    )
    audit_in(conn, Actor(maker, "lost-card report at the desk"), "change.propose", {
        "change": change_id, "action": "blacklist.add", "area": area, "what": "card lost at the desk",
        "entries": 1, "digest": change["digest"], "agent": agent_id, "seq": log_seq,
    })  # fmt: skip
    return change_id


def propose_blacklist_remove(
    store: Store, policy: Policy, op: Operator, *, list_type: str, entry_id: str, area: str | None = None,
    why: str = "", signers: Sequence[CryptoSigner] = (),
) -> tuple[dict[str, Any], Published | None]:  # fmt: skip
    """Propose removing one entry the area's list holds (refused now when it does not)."""
    problems, _ = check_blacklist_fields(list_type, entry_id, None, "", None)
    if area is not None:
        check_area(area)
    if problems:
        raise DocumentInvalid("the blacklist entry", [f"--{f.replace('_', '-')}: {m}" for f, m in problems])
    row = ("-", list_type, entry_id, None, None, None)
    return _propose(store, policy, op, action="blacklist.remove", kind="blacklist", area=area,
                    what=f"- {list_type} {entry_id}", reason=why, entries=iter([row]), count=1,
                    must_hold=(list_type, entry_id), signers=signers)  # fmt: skip


def propose_blacklist_import(
    store: Store, policy: Policy, op: Operator, path: Path | str, *, area: str | None = None, why: str = "",
    signers: Sequence[CryptoSigner] = (),
) -> tuple[dict[str, Any], Published | None]:  # fmt: skip
    """Propose adding every entry of a CSV (validated now: all or none); entries without an effective
    time apply from the proposal's time, as ``blacklist import`` would have made them."""
    path = Path(path)
    if area is not None:
        check_area(area)
    require_role(op, "policy", "propose a blacklist change")
    staging, count = stage_blacklist_csv(path, now_iso())
    try:

        def rows() -> Iterator[tuple[Any, ...]]:
            for row in staging.execute(
                "SELECT list_type, id, reason, source, effective_at FROM rows ORDER BY line"
            ):
                yield ("+", *row)

        return _propose(store, policy, op, action="blacklist.import", kind="blacklist", area=area,
                        what=f"{count} entries from {path.name}", reason=why, entries=rows(), count=count,
                        signers=signers)  # fmt: skip
    finally:
        staging.close()


def _flag(field: str) -> str:
    """The ``yibao-central cards`` option that carries a correction's or notice's field."""
    return {"amount_fen": "--amount", "fields": "--field"}.get(field, "--" + field.replace("_", "-"))


def propose_cards(
    store: Store, policy: Policy, op: Operator, entries: list[CardsEntry], *, action: str,
    area: str | None = None, why: str = "", signers: Sequence[CryptoSigner] = (),
) -> tuple[dict[str, Any], Published | None]:  # fmt: skip
    """Propose card corrections / notices (``cards.correct``, ``cards.notify``) or withdrawing one
    (``cards.withdraw``: refused now when the area does not hold it). Validated now, as approval will."""
    if area is not None:
        check_area(area)
    problems = []
    for e in entries:
        if e.correction is not None:
            problems += [f"{_flag(f)}: {m}" for f, m in correction_problems(e.correction)]
        if e.notice is not None:
            problems += [f"{_flag(f)}: {m}" for f, m in notice_problems(e.notice)]
    if problems:
        raise DocumentInvalid("the card change", problems)
    withdraw = next(((e.item, e.key) for e in entries if e.op == "-"), None)
    text = json.dumps(entries_to_json(entries), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _propose(store, policy, op, action=action, kind="cards", area=area, what=describe_entries(entries),
                    reason=why, document=text, count=len(entries), must_hold_cards=withdraw,
                    signers=signers)  # fmt: skip


def propose_document(
    store: Store, policy: Policy, op: Operator, kind: str, path: Path | str, *, area: str | None = None,
    action: str | None = None, why: str = "", signers: Sequence[CryptoSigner] = (),
) -> tuple[dict[str, Any], Published | None]:  # fmt: skip
    """Propose publishing a ``policy``/``rules``/``catalogue``/``keys`` document file (validated now)."""
    if kind not in DOCUMENT_KINDS:
        raise MonitorInputInvalid(f"kind {kind!r} is not one of {', '.join(DOCUMENT_KINDS)}")
    if area is not None:
        check_area(area)
    path = Path(path)
    document = load_json_document(path)
    _, doc_area, items = validate_document(kind, document, area=area, what=path.name)
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _propose(store, policy, op, action=action or f"{kind}.publish", kind=kind, area=doc_area,
                    what=f"{kind} document {path.name} ({items} items)", reason=why, document=text,
                    count=items, signers=signers)  # fmt: skip


# -- deciding -------------------------------------------------------------------------------------


def _check_pending(
    conn: sqlite3.Connection, change_id: int, op: Operator, digest: str, *, maker_alone: bool = False
) -> dict[str, Any]:
    """The request, if ``op`` may approve it with ``digest`` now; raises what stands in the way."""
    change = _row(conn, change_id)
    if change["status"] != "pending":
        who = change["decided_by"]
        raise ChangeState(f"change {change_id} is {change['status']} (by {who}); nothing done")
    if change["maker"] == op.name and not maker_alone:
        raise SelfApproval(
            f"{op.name} proposed change {change_id} and may not approve it: another policy operator has to "
            f"(`yibao-central changes approve {change_id} --digest {change['digest']}` with their token)"
        )
    if any(a["operator"] == op.name for a in change["approvals"]):
        raise ChangeState(f"{op.name} approved change {change_id} already; another policy operator has to")
    if digest != change["digest"]:
        raise ChangeDigestMismatch(
            f"change {change_id} holds content with digest {change['digest']}, not {digest}: review it again "
            f"(`yibao-central changes show {change_id}`) and approve the digest shown"
        )
    if _base(conn, change) != change["base"]:
        raise ChangeBaseMoved(
            f"what change {change_id} was proposed against changed since (the entry was replaced or removed, "
            "or a newer document was published); reject it and propose the change again"
        )
    return change


def _record_approval(
    conn: sqlite3.Connection, change: dict[str, Any], op: Operator, reason: str, published: Published | None
) -> None:
    at = now_iso()
    conn.execute("INSERT INTO change_approvals (change_id, operator, at) VALUES (?, ?, ?)",
                 (change["id"], op.name, at))  # fmt: skip
    detail: dict[str, Any] = {"change": change["id"], "action": change["action"], "area": change["area"],
                              "digest": change["digest"]}  # fmt: skip
    if published is not None:
        conn.execute(
            "UPDATE change_requests SET status = 'published', decided_by = ?, decided_at = ?, "
            "decision_reason = ?, bundle_seq = ? WHERE id = ?",
            (op.name, at, reason, published.seq, change["id"]),
        )
        detail.update(kind=published.kind, seq=published.seq)
    audit_in(conn, op.actor(reason), "change.approve" if published is not None else "change.approval", detail)


class _Approval:
    """The ``TxHook`` of the last approval: re-checks the request in the publishing transaction."""

    def __init__(self, change_id: int, op: Operator, digest: str, reason: str, maker_alone: bool) -> None:
        self.change_id, self.op, self.digest, self.reason = change_id, op, digest, reason
        self.maker_alone = maker_alone
        self.change: dict[str, Any] = {}

    def check(self, conn: sqlite3.Connection) -> None:
        self.change = _check_pending(conn, self.change_id, self.op, self.digest, maker_alone=self.maker_alone)

    def done(self, conn: sqlite3.Connection, published: Published) -> None:
        _record_approval(conn, self.change, self.op, self.reason, published)


def _publish(
    store: Store, policy: Policy, op: Operator, change: dict[str, Any], digest: str,
    signers: Sequence[CryptoSigner], reason: str, *, maker_alone: bool = False,
) -> Published:  # fmt: skip
    """Publish the request through ``Policy`` as its maker's act, the approval in the same transaction."""
    hook = _Approval(change["id"], op, digest, reason, maker_alone)
    by = "at the maker's word (approvals_required = 1)" if maker_alone else f"approved by {op.name}"
    why = f": {change['reason']}" if change["reason"] else ""
    actor = Actor(change["maker"], f"change {change['id']} {by}{why}"[:500])
    area, cid = change["area"], change["id"]
    if change["kind"] == "cards":
        entries = entries_from_json(json.loads(change["document"]))
        return policy.cards_change(actor, signers, entries, action=change["action"], area=area,
                                   detail={"change": cid, "what": change["what"]}, hook=hook)  # fmt: skip
    if change["kind"] != "blacklist":
        document = json.loads(change["document"])
        return policy.publish_document(actor, signers, change["kind"], document, area=area,
                                       what=change["what"], action=change["action"], hook=hook)  # fmt: skip
    first = store.read(lambda c: c.execute(
        f"SELECT {_ENTRY} FROM change_entries WHERE change_id = ? ORDER BY line LIMIT 1", (cid,)
    ).fetchone())  # fmt: skip
    _, list_type, entry_id, entry_reason, source, effective_at = first
    if change["action"] == "blacklist.add":
        return policy.blacklist_add(actor, signers, list_type=list_type, entry_id=entry_id,
                                    reason=entry_reason, source=source, effective_at=effective_at, area=area,
                                    hook=hook)  # fmt: skip
    if change["action"] == "blacklist.remove":
        return policy.blacklist_remove(actor, signers, list_type=list_type, entry_id=entry_id, area=area,
                                       hook=hook)  # fmt: skip

    def rows(conn: sqlite3.Connection) -> Iterator[tuple[str, str, str, str, str]]:
        yield from conn.execute(
            "SELECT list_type, id, reason, source, effective_at FROM change_entries WHERE change_id = ? "
            "ORDER BY line",
            (cid,),
        ).fetchall()

    return policy.blacklist_rows(actor, signers, rows, change["entries"], {"file": change["what"]},
                                 area=area, hook=hook)  # fmt: skip


def approve(
    store: Store, policy: Policy, op: Operator, change_id: int, digest: str,
    signers: Sequence[CryptoSigner] = (), reason: str = "",
) -> tuple[dict[str, Any], Published | None]:  # fmt: skip
    """Approve a pending change as ``op`` (a ``policy`` operator, not its maker) who reviewed ``digest``.

    Returns the request and what was published (None while more approvals are needed: the approval
    is recorded). Everything is checked before anything is signed, and again in the transaction.
    """
    require_role(op, "policy", "approve a change")
    change = store.read(lambda c: _check_pending(c, change_id, op, digest))
    needed = policy.config.approvals_required - 1
    if len(change["approvals"]) + 1 < needed:

        def tx(conn: sqlite3.Connection) -> None:
            _record_approval(conn, _check_pending(conn, change_id, op, digest), op, reason, None)

        store.write(tx)
        return store.read(lambda c: _row(c, change_id)), None
    published = _publish(store, policy, op, change, digest, signers, reason)
    return store.read(lambda c: _row(c, change_id)), published


def reject(store: Store, op: Operator, change_id: int, reason: str) -> dict[str, Any]:
    """End a pending change unpublished (a checker's refusal, or the maker's withdrawal), with why."""
    require_role(op, "policy", "reject a change")
    why = (reason or "").strip()
    if not 1 <= len(why) <= 500:
        raise MonitorInputInvalid("--reason is required (up to 500 characters): say why it is rejected")

    def tx(conn: sqlite3.Connection) -> dict[str, Any]:
        change = _row(conn, change_id)
        if change["status"] != "pending":
            raise ChangeState(f"change {change_id} is {change['status']}; nothing done")
        at = now_iso()
        conn.execute(
            "UPDATE change_requests SET status = 'rejected', decided_by = ?, decided_at = ?, "
            "decision_reason = ? WHERE id = ?",
            (op.name, at, why, change_id),
        )
        audit_in(conn, op.actor(why), "change.reject", {"change": change_id, "action": change["action"],
                                                        "area": change["area"]})  # fmt: skip
        return _row(conn, change_id)

    return store.write(tx)
