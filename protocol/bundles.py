"""Policy bundles: what operators push to every agent, and how a bundle file is laid out.

A bundle is a TUF target (``central.policy.tuf_repo`` publishes it, ``agent.policy`` fetches it with
``tuf.ngclient``); TUF proves *which* file is current and untampered, this module says what is
inside it. Kinds:

- ``blacklist``: cards (``card`` = card identification code ``card_sn``), persons (``person`` =
  ``psn_no``) and employers (``employer`` = ``emp_no``), each entry with reason, source and
  effective time. Travels as deltas (``base_seq`` = the sequence it applies on) with periodic
  full snapshots (``base_seq`` = None).
- ``rules``, ``policy``, ``catalogue``, ``keys``: always full; the body is one document.

File layout (``encode_*`` / ``iter_*``): a zlib stream of msgpack objects. The first is the
header map (``BundleHeader``); for a blacklist the rest are entries, one msgpack array each,
so a 10-million-entry snapshot is written and applied as a stream, never held whole:
``["+", list_type, id, reason, source, effective_at]`` adds or replaces, ``["-", list_type, id]``
removes. For other kinds the second object is the body document and nothing follows.

The TUF target name is ``target_name(area, kind, seq, full)``; its custom metadata is
``header.custom()``, so an agent can choose delta or snapshot from metadata alone, before any
download.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import msgpack

from .errors import BundleInvalid

__all__ = [
    "BLACKLIST_TYPES",
    "KINDS",
    "BlacklistEntry",
    "BundleHeader",
    "encode_blacklist",
    "encode_document",
    "iter_blacklist",
    "read_document",
    "read_header",
    "target_name",
]

KINDS = ("blacklist", "rules", "policy", "catalogue", "keys")
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
            if self.kind != "blacklist":
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
    if header.kind == "blacklist":
        raise BundleInvalid("a blacklist is written with encode_blacklist")
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


def iter_blacklist(src: BinaryIO) -> tuple[BundleHeader, Iterator[BlacklistEntry]]:
    """The header, and an iterator over the entries that decodes as it goes."""
    objects = _objects(src, MAX_DOCUMENT_BYTES)
    try:
        header = _header(next(objects))
    except StopIteration:
        raise BundleInvalid("the bundle file is empty") from None
    if header.kind != "blacklist":
        raise BundleInvalid(f"expected a blacklist bundle, found {header.kind}")

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
        if header.kind == "blacklist":
            raise BundleInvalid("a blacklist is read with iter_blacklist")
        body = next(objects)
    except StopIteration:
        raise BundleInvalid("the bundle file ends before its body") from None
    for _extra in objects:
        raise BundleInvalid("the bundle file has data after its body")
    return header, body
