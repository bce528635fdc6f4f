"""Canonical msgpack: one value has one byte string, and nothing else is accepted.

Hashes and signatures are computed over these bytes, so a second encoding of the same
value, or bytes the decoder accepts but re-encodes differently, would let two parties
disagree about what was signed.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from protocol.canonical import Limits, decode_canonical, encode_canonical
from protocol.errors import DecodeError, EncodingError, LimitExceeded

from .strategies import INT_MAX, INT_MIN, ints, short_texts, values

ROOMY = Limits(max_depth=64)


def normalised(value: Any) -> Any:
    """What a value decodes back to: tuples become lists, everything else stays."""
    if isinstance(value, list | tuple):
        return [normalised(v) for v in value]
    if isinstance(value, dict):
        return {k: normalised(v) for k, v in value.items()}
    return value


def _int_encodings(value: int) -> set[bytes]:
    """Every msgpack encoding of ``value``: fixint and each uint/int width it fits in."""
    forms: set[bytes] = set()
    if 0 <= value <= 0x7F or -32 <= value < 0:
        forms.add(struct.pack("b", value) if value < 0 else bytes([value]))
    for tag, fmt, lo, hi in (
        (0xCC, ">B", 0, 2**8 - 1),
        (0xCD, ">H", 0, 2**16 - 1),
        (0xCE, ">I", 0, 2**32 - 1),
        (0xCF, ">Q", 0, 2**64 - 1),
        (0xD0, ">b", -(2**7), 2**7 - 1),
        (0xD1, ">h", -(2**15), 2**15 - 1),
        (0xD2, ">i", -(2**31), 2**31 - 1),
        (0xD3, ">q", -(2**63), 2**63 - 1),
    ):
        if lo <= value <= hi:
            forms.add(bytes([tag]) + struct.pack(fmt, value))
    return forms


# --- round trip -------------------------------------------------------------------------------


@given(values)
def test_any_value_round_trips_to_identical_bytes(value):
    data = encode_canonical(value)
    back = decode_canonical(data, ROOMY)
    assert back == normalised(value)
    assert encode_canonical(back) == data


@given(st.dictionaries(short_texts, ints, max_size=20))
def test_map_keys_come_out_sorted_by_utf8_bytes_whatever_the_insertion_order(mapping):
    reordered = dict(reversed(list(mapping.items())))
    data = encode_canonical(reordered)
    assert data == encode_canonical(mapping)
    assert list(decode_canonical(data)) == sorted(mapping, key=lambda k: k.encode("utf-8"))


@given(ints)
def test_each_integer_has_exactly_one_accepted_encoding(value):
    canonical = encode_canonical(value)
    forms = _int_encodings(value)
    assert canonical in forms
    assert decode_canonical(canonical) == value
    for other in forms - {canonical}:
        with pytest.raises(DecodeError):
            decode_canonical(other)


def test_tuples_encode_as_arrays():
    assert encode_canonical((1, "a")) == encode_canonical([1, "a"])


# --- refusals of the encoder ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [1.5, 0.0, INT_MAX + 1, INT_MIN - 1, {1: "a"}, {b"k": 1}, {"a": 1.0}, [set()], object()],
    ids=[
        "float",
        "zero-float",
        "too-big",
        "too-small",
        "int-key",
        "bytes-key",
        "nested-float",
        "set",
        "object",
    ],
)
def test_values_without_a_canonical_form_are_refused(value):
    with pytest.raises(EncodingError):
        encode_canonical(value)


# --- refusals of the decoder ------------------------------------------------------------------


@given(st.dictionaries(short_texts, ints, min_size=2, max_size=10), st.randoms())
def test_unsorted_map_keys_are_refused(mapping, rnd):
    items = list(mapping.items())
    rnd.shuffle(items)
    assume([k for k, _ in items] != sorted(mapping, key=lambda k: k.encode("utf-8")))
    with pytest.raises(DecodeError):
        decode_canonical(msgpack.packb(dict(items)))


def test_duplicate_map_keys_are_refused():
    with pytest.raises(DecodeError):
        decode_canonical(b"\x82\xa1a\x01\xa1a\x02")


@pytest.mark.parametrize(
    "data",
    [
        b"\xd9\x01a",  # str8 for a one-character string
        b"\xda\x00\x01a",  # str16
        b"\xc5\x00\x01a",  # bin16 for one byte
        b"\xdc\x00\x01\xc0",  # array16 for one element
        b"\xde\x00\x01\xa1a\x01",  # map16 for one pair
        b"\xdd\x00\x00\x00\x00",  # array32, empty
    ],
    ids=["str8", "str16", "bin16", "array16", "map16", "array32"],
)
def test_non_shortest_container_and_string_forms_are_refused(data):
    with pytest.raises(DecodeError):
        decode_canonical(data)


@given(
    st.floats(width=32).map(lambda x: b"\xca" + struct.pack(">f", x))
    | st.floats().map(lambda x: b"\xcb" + struct.pack(">d", x))
)
def test_floats_are_refused(data):
    with pytest.raises(DecodeError):
        decode_canonical(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\xd4\x05\x00",  # fixext1
        b"\xd6\xff\x00\x00\x00\x01",  # timestamp32
        b"\xc7\x00\x05",  # ext8 with no payload
        b"\xc7\x03\x05abc",
    ],
    ids=["fixext1", "timestamp", "ext8-empty", "ext8"],
)
def test_ext_types_are_refused(data):
    with pytest.raises(DecodeError):
        decode_canonical(data)


@pytest.mark.parametrize(
    "data",
    [b"\xc1", b"\xa2\xff\xfe", b"\x81\xc4\x01k\x01"],
    ids=["reserved-byte", "invalid-utf8", "bin-map-key"],
)
def test_malformed_bytes_are_refused(data):
    with pytest.raises(DecodeError):
        decode_canonical(data)


@given(values, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_refused(value, tail):
    with pytest.raises(DecodeError):
        decode_canonical(encode_canonical(value) + tail, ROOMY)


@given(values, st.data())
def test_truncated_input_is_refused(value, data):
    encoded = encode_canonical(value)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(DecodeError):
        decode_canonical(encoded[:cut], ROOMY)


def _nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


@given(st.integers(1, 40), st.integers(0, 40))
def test_nesting_up_to_the_limit_is_accepted_and_beyond_it_refused(limit, depth):
    data = _nested(depth)
    if depth <= limit:
        assert encode_canonical(decode_canonical(data, Limits(max_depth=limit))) == data
    else:
        with pytest.raises(LimitExceeded):
            decode_canonical(data, Limits(max_depth=limit))


def test_nested_maps_count_towards_the_depth_limit():
    data = encode_canonical({"a": {"b": {"c": [1]}}})
    assert decode_canonical(data, Limits(max_depth=4)) == {"a": {"b": {"c": [1]}}}
    with pytest.raises(LimitExceeded):
        decode_canonical(data, Limits(max_depth=3))


@given(st.binary(min_size=1, max_size=200), st.data())
def test_oversized_messages_are_refused_before_parsing(payload, data):
    encoded = encode_canonical(payload)
    limit = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(LimitExceeded):
        decode_canonical(encoded, Limits(max_bytes=limit))
    assert decode_canonical(encoded, Limits(max_bytes=len(encoded))) == payload


def test_strings_and_containers_over_their_limits_are_refused():
    with pytest.raises(LimitExceeded):
        decode_canonical(encode_canonical("x" * 11), Limits(max_str=10))
    with pytest.raises(LimitExceeded):
        decode_canonical(encode_canonical(list(range(11))), Limits(max_container=10))
    with pytest.raises(LimitExceeded):
        decode_canonical(encode_canonical({str(i): i for i in range(11)}), Limits(max_container=10))
    assert decode_canonical(encode_canonical(list(range(10))), Limits(max_container=10)) == list(range(10))


def test_limit_exceeded_is_a_decode_error_so_callers_can_catch_one_class():
    assert issubclass(LimitExceeded, DecodeError)
