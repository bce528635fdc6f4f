"""Refusals found in review: forged lost markers, bad UTF-8, absurd money, non-canonical decimals."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.batch import Batch, KeyPair, decode_batch, encode_batch, sign_batch, verify_batch
from protocol.chain import GENESIS, decode_entry, encode_body, encode_entry, record_hash
from protocol.errors import ChainBroken, DecodeError
from protocol.records import scaled, to_fen

from .strategies import valid_settlement


def _chain(records, agent="H1-01"):
    prev, entries = GENESIS, []
    for seq, rec in enumerate(records, start=1):
        entry = encode_entry(agent, seq, prev, "setl", encode_body(rec))
        entries.append(entry)
        prev = record_hash(entry)
    return entries


@given(st.lists(valid_settlement(), min_size=1, max_size=5), st.data())
def test_blanking_a_record_into_a_lost_marker_in_transit_is_refused(records, data):
    key = KeyPair.generate()
    entries = _chain(records)
    batch = sign_batch(key, "H1-01", 1, entries)
    victim = data.draw(st.integers(0, len(entries) - 1))
    forged = list(entries)
    forged[victim] = record_hash(entries[victim])
    tampered = Batch(
        agent_id=batch.agent_id,
        chain_head=batch.chain_head,
        first_seq=1,
        last_seq=batch.last_seq,
        lost=batch.lost,
        records=forged,
        sig=batch.sig,
    )
    with pytest.raises(ChainBroken):
        verify_batch(decode_batch(encode_batch(tampered)), key.public_bytes, prev_hash=GENESIS)


@given(st.lists(valid_settlement(), min_size=2, max_size=5), st.data())
def test_a_lost_marker_the_agent_signed_verifies(records, data):
    key = KeyPair.generate()
    entries = _chain(records)
    victim = data.draw(st.integers(0, len(entries) - 1))
    entries[victim] = record_hash(entries[victim])
    batch = sign_batch(key, "H1-01", 1, entries)
    assert batch.lost == [victim + 1]
    linked = verify_batch(decode_batch(encode_batch(batch)), key.public_bytes, prev_hash=GENESIS)
    assert [x.lost for x in linked] == [i == victim for i in range(len(entries))]


@given(valid_settlement())
def test_invalid_utf8_in_an_entry_is_a_decode_error(rec):
    entry = encode_entry("H1-01", 1, GENESIS, "setl", encode_body(rec))
    at = entry.index(b"setl")
    broken = entry[:at] + b"\xff" + entry[at + 1 :]
    with pytest.raises(DecodeError):
        decode_entry(broken)


def test_invalid_utf8_in_a_batch_is_a_decode_error():
    key = KeyPair.generate()
    data = encode_batch(sign_batch(key, "H1-01", 1, [b"x" * 40]))
    at = data.index(b"H1-01")
    with pytest.raises(DecodeError):
        decode_batch(data[:at] + b"\xff" + data[at + 1 :])


def test_a_wrong_length_public_key_is_a_bad_signature_not_a_crash():
    from protocol.errors import BadSignature

    key = KeyPair.generate()
    batch = sign_batch(key, "H1-01", 1, [b"y" * 40])
    with pytest.raises(BadSignature):
        verify_batch(batch, b"short", prev_hash=None)


@pytest.mark.parametrize("bad", ["Infinity", "-Infinity", "NaN", "sNaN", "1E+400"])
def test_to_fen_refuses_non_finite_and_absurd_amounts(bad):
    with pytest.raises(ValueError):
        to_fen(Decimal(bad))


@pytest.mark.parametrize("text", ["2.0", "5.", "002", "-0", "0.10", ".5", "+1", "1e3", ""])
def test_only_canonical_decimal_text_is_accepted_in_records(text):
    with pytest.raises(ValueError):
        scaled(text, 4)


@pytest.mark.parametrize("text,units", [("2", 20000), ("0.5", 5000), ("-1.25", -12500), ("0", 0)])
def test_canonical_decimal_text_scales_exactly(text, units):
    assert scaled(text, 4) == units
