"""msgspec's encoder (the hot path) must produce exactly the reference canonical bytes.

The record structs declare their fields in sorted key order so that msgspec emits
canonical msgpack; if a field were added out of order, or msgspec chose another integer
or string width, the agent and the centre would hash different bytes for one record.
"""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from protocol.canonical import decode_canonical, encode_canonical
from protocol.chain import ENTRY_VERSION, GENESIS, decode_body, decode_entry, encode_body, encode_entry
from protocol.records import FeeDetail, Person, Reversal, Settlement, Visit

from .strategies import any_reversal, any_settlement, valid_record, valid_settlement


@given(any_settlement)
def test_settlement_fast_path_equals_the_reference_encoder(rec):
    assert encode_body(rec) == encode_canonical(msgspec.to_builtins(rec))


@given(any_reversal)
def test_reversal_fast_path_equals_the_reference_encoder(rec):
    assert encode_body(rec) == encode_canonical(msgspec.to_builtins(rec))


@given(any_settlement)
def test_fast_path_bytes_are_accepted_by_the_canonical_decoder(rec):
    body = encode_body(rec)
    assert encode_canonical(decode_canonical(body)) == body


def test_record_fields_are_declared_in_canonical_key_order():
    for cls in (Settlement, Reversal, Visit, Person, FeeDetail):
        names = list(cls.__struct_fields__)
        assert names == sorted(names, key=lambda n: n.encode("utf-8")), cls.__name__


@given(valid_record)
def test_a_valid_record_survives_entry_encoding_and_body_decoding(rec):
    kind = "setl" if isinstance(rec, Settlement) else "revs"
    raw = encode_entry("H1-01", 1, GENESIS, kind, encode_body(rec))
    entry = decode_entry(raw)
    assert (entry.version, entry.agent_id, entry.seq, entry.prev_hash, entry.kind) == (
        ENTRY_VERSION,
        "H1-01",
        1,
        GENESIS,
        kind,
    )
    assert decode_body(entry) == rec
    # The entry as a whole is canonical msgpack too: [version, agent, seq, prev, kind, body].
    assert encode_canonical(decode_canonical(raw)) == raw


@given(
    st.text(max_size=40),
    st.integers(1, 2**63 - 1),
    st.binary(min_size=32, max_size=32),
    st.sampled_from(["setl", "revs"]),
    valid_settlement(),
)
def test_entry_header_fast_path_equals_the_reference_encoder(agent_id, seq, prev_hash, kind, rec):
    body = encode_body(rec)
    reference = encode_canonical([ENTRY_VERSION, agent_id, seq, prev_hash, kind, msgspec.to_builtins(rec)])
    assert encode_entry(agent_id, seq, prev_hash, kind, body) == reference
