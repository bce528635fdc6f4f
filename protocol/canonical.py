"""Canonical msgpack: one value, one byte string.

Hashes and signatures are computed over bytes, so the bytes of a value must not depend
on who encoded it. The rules (checked by ``decode_canonical``, which re-encodes what it
decoded and refuses any difference):

1. Types: nil, bool, int (-2**63 .. 2**64-1), str (UTF-8), bin, array, map. No float
   (money is integer fen, other decimals are canonical decimal text), no ext types.
2. Every integer, string, binary, array and map uses its shortest msgpack form.
3. Map keys are str, unique, sorted by their UTF-8 bytes.

The typed records in ``protocol.records`` declare their fields in that sorted order, so
msgspec's fast encoder produces exactly these bytes; a property test holds the two
encoders to the same output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from .errors import DecodeError, EncodingError, LimitExceeded

__all__ = ["Limits", "decode_canonical", "encode_canonical"]

_MAX_ENCODE_DEPTH = 512
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


class Limits:
    """Bounds applied before and while decoding untrusted bytes."""

    __slots__ = ("max_bytes", "max_container", "max_depth", "max_str")

    def __init__(
        self,
        *,
        max_bytes: int = 16 * 1024 * 1024,
        max_depth: int = 16,
        max_container: int = 100_000,
        max_str: int = 1024 * 1024,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.max_container = max_container
        self.max_str = max_str


DEFAULT_LIMITS = Limits()


def _normalise(value: Any, depth: int) -> Any:
    if depth > _MAX_ENCODE_DEPTH:
        raise EncodingError(f"value nests deeper than {_MAX_ENCODE_DEPTH} levels; flatten the record")
    if value is None or isinstance(value, bool | str | bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise EncodingError(f"integer {value} is outside the msgpack range")
        return value
    if isinstance(value, float):
        raise EncodingError("floats have no canonical form; use integer fen or decimal text")
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise EncodingError(f"map key {key!r} is not a string")
            items.append((key.encode("utf-8"), key, _normalise(item, depth + 1)))
        items.sort(key=lambda kv: kv[0])
        return {key: item for _, key, item in items}
    if isinstance(value, Sequence):
        return [_normalise(item, depth + 1) for item in value]
    raise EncodingError(f"type {type(value).__name__} has no canonical msgpack form")


def encode_canonical(value: Any) -> bytes:
    """Encode ``value`` under the rules above; the reference every fast path must match."""
    return msgpack.packb(_normalise(value, 0), use_bin_type=True)


def _check_depth(value: Any, max_depth: int) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                raise LimitExceeded(f"nesting deeper than {max_depth} levels")
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            if depth > max_depth:
                raise LimitExceeded(f"nesting deeper than {max_depth} levels")
            stack.extend((v, depth + 1) for v in item)


def decode_canonical(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decode untrusted bytes, refusing anything oversized, too deep or not canonical."""
    if len(data) > limits.max_bytes:
        raise LimitExceeded(f"message of {len(data)} bytes exceeds the {limits.max_bytes} limit")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=limits.max_str,
            max_bin_len=limits.max_bytes,
            max_array_len=limits.max_container,
            max_map_len=limits.max_container,
            max_ext_len=1 << 20,
        )
    except msgpack.ExtraData as exc:
        raise DecodeError("trailing bytes after the message") from exc
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        text = str(exc)
        if "exceeds" in text:
            raise LimitExceeded(f"message exceeds a decoding limit: {text}") from exc
        if type(exc).__name__ == "StackError":  # the C unpacker's own nesting bound (~1024)
            raise LimitExceeded(f"nesting deeper than {limits.max_depth} levels") from exc
        raise DecodeError(f"malformed msgpack: {text or type(exc).__name__}") from exc
    _check_depth(value, limits.max_depth)
    try:
        again = encode_canonical(value)
    except EncodingError as exc:
        raise DecodeError(f"not canonical: {exc.message}") from exc
    if again != data:
        raise DecodeError("not canonical msgpack (key order or non-shortest encoding)")
    return value
