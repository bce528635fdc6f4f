"""Policy bundles: what operators push to every agent, and how a bundle file is laid out.

A bundle is a TUF target (``central.policy.tuf_repo`` publishes it, ``agent.policy`` fetches it with
``tuf.ngclient``); TUF proves *which* file is current and untampered, this module says what is
inside it. Kinds:

- ``blacklist``: cards (``card`` = card identification code ``card_sn``), persons (``person`` =
  ``psn_no``) and employers (``employer`` = ``emp_no``), each entry with reason, source and
  effective time. Travels as deltas (``base_seq`` = the sequence it applies on) with periodic
  full snapshots (``base_seq`` = None).
- ``cards``: what the card office says about cards, per pooling area, for the desk: *corrections*
  keyed by the old ``card_sn`` (the card was replaced by ``new_card_sn``, or some of the data it carries
  is outdated: ``fields``) and *notices* keyed by an id (a top-up, a balance or a message for one card,
  with an amount in integer fen where it has one, shown between ``valid_from`` and ``valid_to``).
  Deltas and snapshots like the blacklist, because a correction must reach every agent of the area
  quickly and the list only grows with the area's card population.
- ``rules``, ``policy``, ``catalogue``, ``keys``: always full; the body is one document.

File layout (``encode_*`` / ``iter_*``): a zlib stream of msgpack objects. The first is the
header map (``BundleHeader``); for a blacklist the rest are entries, one msgpack array each,
so a 10-million-entry snapshot is written and applied as a stream, never held whole:
``["+", list_type, id, reason, source, effective_at]`` adds or replaces, ``["-", list_type, id]``
removes. A ``cards`` bundle's entries are ``["+c", card_sn, new_card_sn, [field, ...], reason]`` and
``["-c", card_sn]`` (a correction set or withdrawn; ``new_card_sn`` "" = not replaced), ``["+n", id,
card_sn, type, amount_fen, text, valid_from, valid_to]`` and ``["-n", id]`` (a notice; ``amount_fen``
nil for a message). For other kinds the second object is the body document and nothing follows.

The TUF target name is ``target_name(area, kind, seq, full)``; its custom metadata is
``header.custom()``, so an agent can choose delta or snapshot from metadata alone, before any
download.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any, BinaryIO, Literal

import msgpack

from .errors import BundleInvalid

__all__ = [
    "BLACKLIST_TYPES",
    "CORRECTION_FIELDS",
    "DELTA_KINDS",
    "KINDS",
    "NOTICE_TYPES",
    "BlacklistEntry",
    "BundleHeader",
    "CardCorrection",
    "CardNotice",
    "CardsEntry",
    "correction_problems",
    "encode_blacklist",
    "encode_cards",
    "encode_document",
    "iter_blacklist",
    "iter_cards",
    "notice_problems",
    "read_document",
    "read_header",
    "target_name",
]

KINDS = ("blacklist", "rules", "policy", "catalogue", "keys", "cards")
#: Kinds that travel as deltas on the previous bundle with periodic full snapshots.
DELTA_KINDS = ("blacklist", "cards")
#: What a card correction may name as outdated: the card's data as ``agent.identity.Identity`` carries it.
CORRECTION_FIELDS = ("psn_no", "psn_name", "gend", "brdy", "naty", "insuplc_admdvs", "issued", "expires")
#: topup: money put on the card's account; balance: the account's balance; message: text only.
NOTICE_TYPES = ("topup", "balance", "message")
#: Largest amount a notice may carry: 10 million yuan, in fen (far above any account; catches unit slips).
MAX_NOTICE_FEN = 1_000_000_000
#: card (card_sn), person (psn_no), employer (emp_no): benefits refused; doctor (dr_codg), hospital
#: (fixmedins_code): a suspension decided after a review (``docs/MONITORING.md``), lifted by removal.
BLACKLIST_TYPES = ("card", "person", "employer", "doctor", "hospital")
FORMAT = 1
#: Largest decompressed header or document; a blacklist streams, so it has no such bound.
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class BundleHeader:
    kind: str
    #: Pooling area (6-digit ``admdvs``) the bundle is for; agents refuse another area's bundle.
    area: str
    #: Monotonic per (area, kind): a newer bundle always has a larger ``seq``.
    seq: int
    #: For a blacklist delta: the ``seq`` it applies on. ``None``: a full bundle.
    base_seq: int | None
    #: ISO-8601 UTC time the operator published it.
    created: str
    format: int = FORMAT

    @property
    def full(self) -> bool:
        return self.base_seq is None

    def custom(self) -> dict[str, Any]:
        """TUF target custom metadata: what an agent needs to choose before downloading."""
        return {
            "kind": self.kind,
            "area": self.area,
            "seq": self.seq,
            "base_seq": self.base_seq,
            "created": self.created,
            "format": self.format,
        }

    @classmethod
    def from_custom(cls, custom: Any) -> BundleHeader:
        if not isinstance(custom, dict):
            raise BundleInvalid("bundle metadata is not a map")
        try:
            header = cls(
                kind=custom["kind"],
                area=custom["area"],
                seq=custom["seq"],
                base_seq=custom.get("base_seq"),
                created=custom["created"],
                format=custom.get("format", FORMAT),
            )
        except (KeyError, TypeError) as exc:
            raise BundleInvalid(f"bundle metadata lacks {exc}") from None
        header.check()
        return header

    def check(self) -> None:
        if self.kind not in KINDS:
            raise BundleInvalid(f"unknown bundle kind {self.kind!r}")
        if not (isinstance(self.area, str) and len(self.area) == 6 and self.area.isdigit()):
            raise BundleInvalid("bundle area must be a 6-digit area code")
        if not isinstance(self.seq, int) or isinstance(self.seq, bool) or self.seq < 1:
            raise BundleInvalid("bundle seq must be a positive integer")
        if self.base_seq is not None:
            if self.kind not in DELTA_KINDS:
                raise BundleInvalid(f"a {self.kind} bundle is always full")
            if not isinstance(self.base_seq, int) or not 0 <= self.base_seq < self.seq:
                raise BundleInvalid("a delta's base_seq must be below its seq")
        if self.format != FORMAT:
            raise BundleInvalid(f"bundle format {self.format} is not supported by this version")

    def to_map(self) -> dict[str, Any]:
        return self.custom()


def target_name(area: str, kind: str, seq: int, full: bool) -> str:
    return f"{area}/{kind}/{seq:012d}.{'full' if full else 'delta'}.bin"


@dataclass(frozen=True, slots=True)
class BlacklistEntry:
    op: Literal["+", "-"]
    list_type: str
    id: str
    reason: str = ""
    source: str = ""
    #: ISO-8601 time from which the entry applies (an entry may be published ahead of time).
    effective_at: str = ""


def _writer(out: BinaryIO) -> tuple[Any, Any]:
    comp = zlib.compressobj(6)
    packer = msgpack.Packer(use_bin_type=True)

    def write(obj: Any) -> None:
        out.write(comp.compress(packer.pack(obj)))

    def close() -> None:
        out.write(comp.flush())

    return write, close


def encode_blacklist(out: BinaryIO, header: BundleHeader, entries: Iterable[BlacklistEntry]) -> int:
    """Stream a blacklist bundle into ``out``; returns the number of entries written."""
    header.check()
    if header.kind != "blacklist":
        raise BundleInvalid("encode_blacklist needs a blacklist header")
    write, close = _writer(out)
    write(header.to_map())
    n = 0
    for e in entries:
        if e.list_type not in BLACKLIST_TYPES:
            raise BundleInvalid(f"unknown blacklist type {e.list_type!r}")
        if e.op == "+":
            write(["+", e.list_type, e.id, e.reason, e.source, e.effective_at])
        elif e.op == "-":
            if header.full:
                raise BundleInvalid("a full blacklist holds additions only")
            write(["-", e.list_type, e.id])
        else:
            raise BundleInvalid(f"unknown blacklist operation {e.op!r}")
        n += 1
    close()
    return n


def encode_document(out: BinaryIO, header: BundleHeader, document: Any) -> None:
    """A full non-blacklist bundle: the header, then one document (maps, lists, text, ints)."""
    header.check()
    if header.kind in DELTA_KINDS:
        raise BundleInvalid(f"a {header.kind} bundle is written with encode_{header.kind}")
    write, close = _writer(out)
    write(header.to_map())
    write(document)
    close()


def _objects(src: BinaryIO, max_document: int) -> Iterator[Any]:
    decomp = zlib.decompressobj()
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max_document, strict_map_key=True)
    try:
        while True:
            chunk = src.read(_CHUNK)
            if not chunk:
                tail = decomp.flush()
                if tail:
                    unpacker.feed(tail)
                    yield from unpacker
                if not decomp.eof:
                    raise BundleInvalid("the bundle file is cut short")
                return
            data = decomp.decompress(chunk, max_document)
            while data:
                unpacker.feed(data)
                yield from unpacker
                data = (
                    decomp.decompress(decomp.unconsumed_tail, max_document) if decomp.unconsumed_tail else b""
                )
    except zlib.error as exc:
        raise BundleInvalid(f"the bundle file is not a valid compressed stream: {exc}") from None
    except (msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError, msgpack.exceptions.StackError,
            msgpack.exceptions.BufferFull, ValueError) as exc:  # fmt: skip
        raise BundleInvalid(f"the bundle file is malformed: {type(exc).__name__}") from None


def _header(obj: Any) -> BundleHeader:
    return BundleHeader.from_custom(obj)


def read_header(src: BinaryIO) -> BundleHeader:
    """Only the header (the first object) of a bundle file."""
    for obj in _objects(src, MAX_DOCUMENT_BYTES):
        return _header(obj)
    raise BundleInvalid("the bundle file is empty")


def _open_entries(src: BinaryIO, kind: str) -> tuple[BundleHeader, Iterator[Any]]:
    """A delta kind's header, checked to be ``kind``, and the stream of entry objects after it."""
    objects = _objects(src, MAX_DOCUMENT_BYTES)
    try:
        header = _header(next(objects))
    except StopIteration:
        raise BundleInvalid("the bundle file is empty") from None
    if header.kind != kind:
        raise BundleInvalid(f"expected a {kind} bundle, found {header.kind}")
    return header, objects


def iter_blacklist(src: BinaryIO) -> tuple[BundleHeader, Iterator[BlacklistEntry]]:
    """The header, and an iterator over the entries that decodes as it goes."""
    header, objects = _open_entries(src, "blacklist")

    def entries() -> Iterator[BlacklistEntry]:
        for obj in objects:
            if not isinstance(obj, list) or not obj or obj[0] not in ("+", "-"):
                raise BundleInvalid("a blacklist entry is not [op, type, id, ...]")
            if obj[0] == "+" and len(obj) == 6 and all(isinstance(x, str) for x in obj):
                entry = BlacklistEntry("+", obj[1], obj[2], obj[3], obj[4], obj[5])
            elif obj[0] == "-" and len(obj) == 3 and all(isinstance(x, str) for x in obj):
                if header.full:
                    raise BundleInvalid("a full blacklist holds additions only")
                entry = BlacklistEntry("-", obj[1], obj[2])
            else:
                raise BundleInvalid("a blacklist entry has the wrong shape")
            if entry.list_type not in BLACKLIST_TYPES or not entry.id or len(entry.id) > 64:
                raise BundleInvalid("a blacklist entry has an unknown type or a bad id")
            yield entry

    return header, entries()


def read_document(src: BinaryIO) -> tuple[BundleHeader, Any]:
    """Header and body of a non-blacklist bundle; nothing may follow the body."""
    objects = _objects(src, MAX_DOCUMENT_BYTES)
    try:
        header = _header(next(objects))
        if header.kind in DELTA_KINDS:
            raise BundleInvalid(f"a {header.kind} bundle is read with iter_{header.kind}")
        body = next(objects)
    except StopIteration:
        raise BundleInvalid("the bundle file ends before its body") from None
    for _extra in objects:
        raise BundleInvalid("the bundle file has data after its body")
    return header, body


# ---- cards: corrections and notices ---------------------------------------------------------------

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CARD_SN = re.compile(r"[A-Za-z0-9]{1,32}")
_MAX_TEXT = 200


@dataclass(frozen=True, slots=True)
class CardCorrection:
    """The card office corrected what a card says: it was replaced, or some of its data is outdated."""

    #: The card the correction is about (the old card when replaced).
    card_sn: str
    #: The card that replaced it; "" when the card stays valid and only data changed.
    new_card_sn: str = ""
    #: Names from ``CORRECTION_FIELDS`` whose value on the card is no longer right.
    fields: tuple[str, ...] = ()
    reason: str = ""

    @property
    def replaced(self) -> bool:
        return bool(self.new_card_sn)


@dataclass(frozen=True, slots=True)
class CardNotice:
    """Something to tell the card's holder at the desk, between two dates (both included)."""

    id: str
    card_sn: str
    #: One of ``NOTICE_TYPES``.
    type: str
    #: Integer fen for ``topup`` and ``balance``; None for ``message``.
    amount_fen: int | None
    text: str
    #: ``YYYY-MM-DD`` (China Standard Time dates, as the card office writes them).
    valid_from: str
    valid_to: str


@dataclass(frozen=True, slots=True)
class CardsEntry:
    """One operation of a ``cards`` bundle: set (``+``) or withdraw (``-``) a correction or a notice."""

    op: Literal["+", "-"]
    item: Literal["correction", "notice"]
    #: ``card_sn`` of a correction, ``id`` of a notice.
    key: str
    correction: CardCorrection | None = None
    notice: CardNotice | None = None


def _iso_date(text: object) -> date | None:
    if not isinstance(text, str) or len(text) != 10:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _text_problem(value: object, name: str, *, required: bool) -> str | None:
    if not isinstance(value, str):
        return f"{name} must be text"
    if required and not value.strip():
        return f"{name} is required"
    if len(value) > _MAX_TEXT:
        return f"{name} is longer than {_MAX_TEXT} characters"
    return None


def correction_problems(c: CardCorrection) -> list[tuple[str, str]]:
    """(field, message) for everything wrong with a correction; [] when it is valid."""
    problems: list[tuple[str, str]] = []
    if not isinstance(c.card_sn, str) or not _CARD_SN.fullmatch(c.card_sn):
        problems.append(("card_sn", "the card identification code: 1-32 letters or digits"))
    if not isinstance(c.new_card_sn, str) or (c.new_card_sn and not _CARD_SN.fullmatch(c.new_card_sn)):
        problems.append(("new_card_sn", "the new card's identification code: 1-32 letters or digits"))
    elif c.new_card_sn and c.new_card_sn == c.card_sn:
        problems.append(("new_card_sn", "a card cannot be replaced by itself"))
    fields = c.fields if isinstance(c.fields, tuple | list) else None
    if fields is None or not all(isinstance(f, str) for f in fields):
        problems.append(("fields", "a list of field names"))
    else:
        unknown = sorted({f for f in fields if f not in CORRECTION_FIELDS})
        if unknown:
            problems.append(("fields", f"unknown field(s) {', '.join(unknown)}; known: "
                             f"{', '.join(CORRECTION_FIELDS)}"))  # fmt: skip
        if len(set(fields)) != len(fields):
            problems.append(("fields", "a field is named twice"))
        if not fields and not c.new_card_sn:
            problems.append(("fields", "name the outdated fields, or the new card that replaced this one"))
    problem = _text_problem(c.reason, "reason", required=True)
    if problem:
        problems.append(("reason", problem))
    return problems


def notice_problems(n: CardNotice) -> list[tuple[str, str]]:
    """(field, message) for everything wrong with a notice; [] when it is valid."""
    problems: list[tuple[str, str]] = []
    if not isinstance(n.id, str) or not _KEY.fullmatch(n.id):
        problems.append(("id", "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"))
    if not isinstance(n.card_sn, str) or not _CARD_SN.fullmatch(n.card_sn):
        problems.append(("card_sn", "the card identification code: 1-32 letters or digits"))
    if n.type not in NOTICE_TYPES:
        problems.append(("type", f"one of {', '.join(NOTICE_TYPES)}"))
    amount = n.amount_fen
    if n.type == "message":
        if amount is not None:
            problems.append(("amount_fen", "a message carries no amount"))
    elif n.type in NOTICE_TYPES:
        if not isinstance(amount, int) or isinstance(amount, bool):
            problems.append(("amount_fen", f"a {n.type} needs an amount in integer fen"))
        elif not 0 <= amount <= MAX_NOTICE_FEN:
            problems.append(("amount_fen", f"0 to {MAX_NOTICE_FEN} fen"))
        elif n.type == "topup" and amount == 0:
            problems.append(("amount_fen", "a top-up of nothing: give the amount put on the card"))
    problem = _text_problem(n.text, "text", required=True)
    if problem:
        problems.append(("text", problem))
    start, end = _iso_date(n.valid_from), _iso_date(n.valid_to)
    if start is None:
        problems.append(("valid_from", "a date like 2026-12-07"))
    if end is None:
        problems.append(("valid_to", "a date like 2026-12-31"))
    if start is not None and end is not None and end < start:
        problems.append(("valid_to", "before valid_from"))
    return problems


def _refuse(what: str, problems: list[tuple[str, str]]) -> None:
    if problems:
        raise BundleInvalid(f"{what}: " + "; ".join(f"{f}: {m}" for f, m in problems))


def encode_cards(out: BinaryIO, header: BundleHeader, entries: Iterable[CardsEntry]) -> int:
    """Stream a ``cards`` bundle into ``out``; every entry is validated; returns the entries written."""
    header.check()
    if header.kind != "cards":
        raise BundleInvalid("encode_cards needs a cards header")
    write, close = _writer(out)
    write(header.to_map())
    n = 0
    for e in entries:
        if e.op == "-":
            if header.full:
                raise BundleInvalid("a full cards bundle holds no withdrawals")
            if e.item not in ("correction", "notice") or not isinstance(e.key, str) or not e.key:
                raise BundleInvalid("a withdrawal names a correction's card_sn or a notice's id")
            write(["-c" if e.item == "correction" else "-n", e.key])
        elif e.op == "+" and e.item == "correction" and e.correction is not None:
            c = e.correction
            _refuse("a card correction", correction_problems(c))
            write(["+c", c.card_sn, c.new_card_sn, list(c.fields), c.reason])
        elif e.op == "+" and e.item == "notice" and e.notice is not None:
            m = e.notice
            _refuse("a card notice", notice_problems(m))
            write(["+n", m.id, m.card_sn, m.type, m.amount_fen, m.text, m.valid_from, m.valid_to])
        else:
            raise BundleInvalid(f"unknown cards operation {e.op!r} {e.item!r}")
        n += 1
    close()
    return n


def _cards_entry(obj: Any, full: bool) -> CardsEntry:
    if not isinstance(obj, list) or not obj or obj[0] not in ("+c", "-c", "+n", "-n"):
        raise BundleInvalid("a cards entry is not [op, ...] with op +c, -c, +n or -n")
    op = obj[0]
    if op[0] == "-":
        if full:
            raise BundleInvalid("a full cards bundle holds no withdrawals")
        if len(obj) != 2 or not isinstance(obj[1], str) or not obj[1] or len(obj[1]) > 64:
            raise BundleInvalid("a cards withdrawal has the wrong shape")
        return CardsEntry("-", "correction" if op == "-c" else "notice", obj[1])
    if op == "+c":
        if not (len(obj) == 5 and isinstance(obj[3], list)):
            raise BundleInvalid("a card correction has the wrong shape")
        c = CardCorrection(obj[1], obj[2], tuple(obj[3]), obj[4])
        _refuse("a card correction", correction_problems(c))
        return CardsEntry("+", "correction", c.card_sn, correction=c)
    if len(obj) != 8:
        raise BundleInvalid("a card notice has the wrong shape")
    n = CardNotice(*obj[1:])
    _refuse("a card notice", notice_problems(n))
    return CardsEntry("+", "notice", n.id, notice=n)


def iter_cards(src: BinaryIO) -> tuple[BundleHeader, Iterator[CardsEntry]]:
    """The header, and an iterator over the validated entries that decodes as it goes."""
    header, objects = _open_entries(src, "cards")

    def entries() -> Iterator[CardsEntry]:
        for obj in objects:
            yield _cards_entry(obj, header.full)

    return header, entries()
