"""Operator input files: the JSON documents behind ``policy``, ``catalogue``, ``rules`` and ``keys``
bundles, and the blacklist CSV. Each is validated whole before anything is published; every
problem is reported with its place (``benefits[2].fund_ratio``, ``line 14, column id``).

Common rules for the JSON documents: UTF-8 JSON, at most 16 MiB; unknown fields are refused (a
typo must not silently drop a setting); money is integer **fen**; ratios are decimal **strings**
(``"0.85"``, at most 4 decimals, 0 to 1); a number with a fraction or exponent is refused (use a
string); codes are strings. ``area`` is the 6-digit pooling area (``admdvs``) the bundle is for.

policy (``yibao-central policy publish FILE``), catalogue (``catalogue import FILE``) and rules
(``rules publish FILE``) are validated by the protocol's own loaders (``protocol.benefit.load_policy``,
``protocol.rules.load_knowledge`` / ``load_ruleset``) — the same code an agent runs when it applies
the bundle; their formats are documented in ``docs/RULES.md`` (a catalogue's national code lists,
checked row by row by ``protocol.catalogue_lists`` through ``load_knowledge``: "National code lists").

keys (``yibao-central keys publish FILE``): e-voucher issuer keys, exactly as ``agent.json`` holds them::

    {"evoucher_issuers": {"kid": "base64url of the raw 32-byte Ed25519 public key"}}

  The area comes from ``--area`` (or the centre's default area); an ``"area"`` field is accepted and
  left out of the bundle body.

blacklist CSV (``yibao-central blacklist import FILE.csv``): UTF-8, header exactly
``list_type,id,reason,source,effective_at``; ``list_type`` card|person|employer; ``id`` 1-64 of
``A-Za-z0-9 . _ -``; ``reason`` 1-200 characters (required); ``source`` up to 100; ``effective_at``
ISO-8601 with an offset (``2026-11-24T08:00:00+08:00``), empty = now. A (list_type, id) appears once.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from central.errors import DocumentInvalid
from protocol.benefit import policy_problems
from protocol.bundles import BLACKLIST_TYPES, DELTA_KINDS, KINDS
from protocol.document import AREA, HOSP_LEVELS, Checker, kind
from protocol.errors import RulesInvalid
from protocol.evoucher import load_issuers
from protocol.rules import load_knowledge, load_ruleset

__all__ = [
    "CSV_HEADER",
    "DOCUMENT_KINDS",
    "HOSP_LEVELS",
    "MAX_DOCUMENT_BYTES",
    "check_area",
    "check_blacklist_fields",
    "load_json_document",
    "normalise_time",
    "read_blacklist_csv",
    "validate_document",
]

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
DOCUMENT_KINDS = tuple(k for k in KINDS if k not in DELTA_KINDS)
CSV_HEADER = ["list_type", "id", "reason", "source", "effective_at"]

_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class _Float:
    """Marks a JSON number with a fraction or exponent, so validation can name where it is."""

    def __init__(self, text: str) -> None:
        self.text = text


def check_area(area: str) -> str:
    if not isinstance(area, str) or not AREA.match(area):
        raise DocumentInvalid("the area", [f"area {area!r} must be a 6-digit pooling area code like 370200"])
    return area


def normalise_time(text: str) -> str:
    """ISO-8601 with an offset → UTC text (``2026-11-24T00:00:00+00:00``); ValueError says why."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO-8601 time like 2026-11-24T08:00:00+08:00") from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset; write it like 2026-11-24T08:00:00+08:00")
    return when.astimezone(UTC).isoformat(timespec="seconds")


def check_blacklist_fields(
    list_type: str, entry_id: str, reason: str | None, source: str, effective_at: str | None
) -> tuple[list[tuple[str, str]], str | None]:
    """Problems as (field, message), and the normalised effective time (None when empty)."""
    problems = []
    if list_type not in BLACKLIST_TYPES:
        problems.append(("list_type", f"{list_type!r} is not one of {', '.join(BLACKLIST_TYPES)}"))
    if not _ID.match(entry_id or ""):
        problems.append(("id", "must be 1-64 letters, digits, '.', '_' or '-'"))
    if reason is not None and not 1 <= len(reason.strip()) <= 200:
        problems.append(("reason", "is required, up to 200 characters"))
    if len(source) > 100:
        problems.append(("source", "is longer than 100 characters"))
    when = None
    if effective_at:
        try:
            when = normalise_time(effective_at)
        except ValueError as exc:
            problems.append(("effective_at", str(exc)))
    return problems, when


# -- JSON documents ------------------------------------------------------------------------------


def load_json_document(path: Path | str) -> Any:
    """Read an operator's JSON file; numbers with fractions become markers the validators refuse."""
    path = Path(path)
    what = f"{path.name}"
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise DocumentInvalid(what, [f"the file is {size} bytes; the limit is {MAX_DOCUMENT_BYTES}"])
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise DocumentInvalid(what, [f"cannot read {path}: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise DocumentInvalid(what, [f"the file is not UTF-8 (byte {exc.start})"]) from None

    def bad_constant(name: str) -> Any:
        raise ValueError(f"{name} is not allowed")

    try:
        return json.loads(text, parse_float=_Float, parse_constant=bad_constant)
    except json.JSONDecodeError as exc:
        raise DocumentInvalid(what, [f"line {exc.lineno}, column {exc.colno}: {exc.msg}"]) from None
    except ValueError as exc:
        raise DocumentInvalid(what, [str(exc)]) from None


def _check_policy(c: Checker, doc: dict[str, Any]) -> int:
    # One validator for the centre's publish and the agent's apply: protocol.benefit's.
    for path, message in policy_problems(doc):
        if path != "area":  # validate_document checks the area itself
            c.add(path, message)
    benefits = doc.get("benefits") if isinstance(doc, dict) else None
    return len(benefits) if isinstance(benefits, list) else 0


def _from_loader(c: Checker, load: Any, doc: Any, key: str) -> int:
    # One validator for the centre's publish and the agent's apply: protocol.rules' loaders.
    try:
        load(doc)
    except RulesInvalid as exc:
        for problem in exc.problems:
            if not problem.startswith("area:"):  # validate_document checks the area itself
                c.add("", problem)
    items = doc.get(key) if isinstance(doc, dict) else None
    return len(items) if isinstance(items, list) else 0


def _check_catalogue(c: Checker, doc: dict[str, Any]) -> int:
    return _from_loader(c, load_knowledge, doc, "items")


def _check_rules(c: Checker, doc: dict[str, Any]) -> int:
    return _from_loader(c, load_ruleset, doc, "rules")


def _check_keys(c: Checker, doc: dict[str, Any]) -> int:
    c.obj(doc, "", {"evoucher_issuers"}, {"area"})
    issuers = doc.get("evoucher_issuers")
    if "evoucher_issuers" not in doc:
        return 0
    if not isinstance(issuers, dict):
        c.add("evoucher_issuers", f"must be an object of key id → public key, found {kind(issuers)}")
        return 0
    for kid, text in issuers.items():
        try:
            if not isinstance(text, str):
                raise ValueError(f"must be a string, found {kind(text)}")
            load_issuers({kid: text})
        except ValueError as exc:
            c.add(f"evoucher_issuers.{kid}", str(exc))
    return len(issuers)


_CHECKS = {"policy": _check_policy, "catalogue": _check_catalogue, "rules": _check_rules, "keys": _check_keys}


def validate_document(
    kind: str, doc: Any, *, area: str | None = None, what: str = ""
) -> tuple[Any, str | None, int]:
    """Validate ``doc`` for ``kind``; returns (bundle body, area, item count) or raises ``DocumentInvalid``.

    ``area`` (from ``--area``) must agree with the document's ``area`` when both are given; the area
    returned is None when neither names one (the caller falls back to the default area).
    """
    if kind not in _CHECKS:
        raise DocumentInvalid(what or kind, [f"unknown document kind {kind!r}; one of {', '.join(_CHECKS)}"])
    c = Checker()
    if not isinstance(doc, dict):
        c.add("", f"the document must be a JSON object, found {kind(doc)}")
        raise DocumentInvalid(what or f"the {kind} document", c.problems)
    count = _CHECKS[kind](c, doc)
    doc_area = doc.get("area")
    if doc_area is not None and (not isinstance(doc_area, str) or not AREA.match(doc_area)):
        c.add("area", f"{doc_area!r} must be a 6-digit pooling area code like 370200")
    elif area is not None and doc_area is not None and area != doc_area:
        c.add("area", f"the document is for {doc_area} but --area says {area}")
    if c.problems:
        raise DocumentInvalid(what or f"the {kind} document", c.problems)
    chosen = area if area is not None else doc_area
    body = {"evoucher_issuers": dict(doc["evoucher_issuers"])} if kind == "keys" else doc
    return body, chosen, count


# -- the blacklist CSV ---------------------------------------------------------------------------


def read_blacklist_csv(path: Path | str, default_time: str) -> Iterator[tuple[int, list[str], list[str]]]:
    """Rows of a blacklist CSV as (line, [list_type, id, reason, source, effective_at], problems).

    ``effective_at`` comes back normalised (``default_time`` when empty). The header problems come
    first, with line 1. A row with problems still yields (so every problem is reported).
    """
    path = Path(path)
    try:
        f = open(path, encoding="utf-8", newline="")
    except OSError as exc:
        yield 0, [], [f"cannot read {path}: {exc.strerror or exc}"]
        return
    try:
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as exc:
            yield 1, [], [f"line 1: {exc}"]
            return
        if header is not None and header and header[0].startswith("\ufeff"):
            header[0] = header[0][1:]
        if header != CSV_HEADER:
            yield 1, [], [f"line 1: the header must be exactly {','.join(CSV_HEADER)}"]
            return
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as exc:
                yield reader.line_num, [], [f"line {reader.line_num}: {exc}"]
                return
            line = reader.line_num
            if not row or row == [""]:
                continue
            if len(row) != len(CSV_HEADER):
                yield line, [], [f"line {line}: {len(row)} columns, expected {len(CSV_HEADER)}"]
                continue
            list_type, entry_id, reason, source, effective_at = (v.strip() for v in row)
            found, when = check_blacklist_fields(list_type, entry_id, reason, source, effective_at)
            problems = [f"line {line}, column {field}: {msg}" for field, msg in found]
            yield line, [list_type, entry_id, reason, source, when or default_time], problems
    finally:
        f.close()
