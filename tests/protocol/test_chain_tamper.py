"""The hash chain and batch signature: an honest batch verifies, a tampered one never does.

The centre's completeness proof rests on this: one signature over (agent, first seq,
last seq, chain head) plus each entry's link to the one before. Every test below changes
one thing an attacker, a broken disk or a buggy agent could change, and demands that
``verify_batch`` refuses it with one of the protocol's own errors.
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from protocol.batch import Batch, KeyPair, decode_batch, encode_batch, sign_batch, verify_batch
from protocol.chain import GENESIS, decode_body, encode_body, encode_entry, record_hash, verify_chain
from protocol.errors import BadSignature, ChainBroken, DecodeError
from protocol.records import Settlement

from .strategies import valid_record

AGENT = "H37021100001-01"
KEY = KeyPair.from_private_bytes(bytes(range(32)))
OTHER_KEY = KeyPair.from_private_bytes(bytes(range(1, 33)))
REFUSALS = (ChainBroken, BadSignature, DecodeError)


def never_verifies(batch_bytes: bytes, anchor: bytes | None) -> bool:
    """True when decoding or verifying refuses the bytes with one of the protocol's own errors.

    Anything else escaping (``UnicodeDecodeError`` from a flip into a string field, a
    ``TypeError``, ``IndexError``…) is a crash, not a refusal, and fails the test: the centre
    answers a refusal with its code, a crash with a 500.
    """
    try:
        verify_batch(decode_batch(batch_bytes), KEY.public_bytes, prev_hash=anchor)
    except REFUSALS:
        return True
    return False


def build_chain(records: list, agent_id: str = AGENT) -> list[bytes]:
    entries, prev = [], GENESIS
    for seq, rec in enumerate(records, start=1):
        kind = "setl" if isinstance(rec, Settlement) else "revs"
        raw = encode_entry(agent_id, seq, prev, kind, encode_body(rec))
        entries.append(raw)
        prev = record_hash(raw)
    return entries


class Case:
    """A chain of records and a signed batch of its tail from ``first_seq`` on."""

    def __init__(self, records: list, start: int) -> None:
        self.records = records
        self.entries = build_chain(records)
        self.first_seq = start + 1
        self.batch_entries = self.entries[start:]
        self.anchor = record_hash(self.entries[start - 1]) if start else GENESIS
        self.batch = sign_batch(KEY, AGENT, self.first_seq, self.batch_entries)

    def replaced(self, **changes) -> Batch:
        return msgspec.structs.replace(self.batch, **changes)


@st.composite
def cases(draw: st.DrawFn, min_batch: int = 1) -> Case:
    records = draw(st.lists(valid_record, min_size=min_batch, max_size=6))
    start = draw(st.integers(0, len(records) - min_batch))
    return Case(records, start)


def refused(batch: Batch, anchor: bytes | None, public_key: bytes = KEY.public_bytes) -> bool:
    """Send the batch over the wire and verify it as the centre does."""
    try:
        verify_batch(decode_batch(encode_batch(batch)), public_key, prev_hash=anchor)
    except REFUSALS:
        return True
    return False


# --- the honest path --------------------------------------------------------------------------


@given(cases())
def test_an_honest_batch_verifies_after_the_wire_round_trip(case):
    decoded = decode_batch(encode_batch(case.batch))
    assert decoded == case.batch
    for anchor in (case.anchor, None):
        linked = verify_batch(decoded, KEY.public_bytes, prev_hash=anchor)
        assert [r.seq for r in linked] == list(range(case.first_seq, case.first_seq + len(linked)))
        assert [r.hash for r in linked] == [record_hash(raw) for raw in case.batch_entries]
        assert linked[-1].hash == decoded.chain_head
        assert [decode_body(r.entry) for r in linked] == case.records[case.first_seq - 1 :]


@given(cases())
def test_consecutive_batches_verify_against_the_head_of_the_previous_one(case):
    assume(case.first_seq > 1)
    head = sign_batch(KEY, AGENT, 1, case.entries[: case.first_seq - 1])
    first = verify_batch(head, KEY.public_bytes, prev_hash=GENESIS)
    verify_batch(case.batch, KEY.public_bytes, prev_hash=first[-1].hash)


# --- tampering --------------------------------------------------------------------------------


@given(cases(), st.data())
def test_any_single_byte_flip_in_any_record_never_verifies(case, data):
    i = data.draw(st.integers(0, len(case.batch_entries) - 1), label="record")
    raw = bytearray(case.batch_entries[i])
    j = data.draw(st.integers(0, len(raw) - 1), label="byte")
    raw[j] ^= data.draw(st.integers(1, 255), label="mask")
    records = list(case.batch_entries)
    records[i] = bytes(raw)
    anchor = data.draw(st.sampled_from([case.anchor, None]), label="anchor")
    assert never_verifies(encode_batch(case.replaced(records=records)), anchor)


@given(cases(), st.data())
def test_a_byte_flip_anywhere_in_the_wire_message_never_verifies_or_changes_nothing_signed(case, data):
    wire = bytearray(encode_batch(case.batch))
    j = data.draw(st.integers(0, len(wire) - 1), label="byte")
    wire[j] ^= data.draw(st.integers(1, 255), label="mask")
    if never_verifies(bytes(wire), case.anchor):
        return
    got = decode_batch(bytes(wire))
    # Only a flip that leaves every signed and chained field as it was may pass (for
    # example one that renames the optional version key, which then takes its default).
    original = case.batch
    assert (got.agent_id, got.first_seq, got.last_seq, got.chain_head, got.records, got.sig) == (
        original.agent_id,
        original.first_seq,
        original.last_seq,
        original.chain_head,
        original.records,
        original.sig,
    )


@given(cases(min_batch=2), st.data())
def test_swapping_two_records_is_refused(case, data):
    n = len(case.batch_entries)
    i = data.draw(st.integers(0, n - 2), label="i")
    j = data.draw(st.integers(i + 1, n - 1), label="j")
    records = list(case.batch_entries)
    records[i], records[j] = records[j], records[i]
    assert refused(case.replaced(records=records), case.anchor)
    assert refused(case.replaced(records=records), None)


@given(cases(min_batch=2), st.data())
def test_dropping_a_record_is_refused(case, data):
    n = len(case.batch_entries)
    i = data.draw(st.integers(0, n - 1), label="dropped")
    records = case.batch_entries[:i] + case.batch_entries[i + 1 :]
    # As sent: the envelope still claims n records.
    assert refused(case.replaced(records=records), case.anchor)
    # The envelope adjusted to the shorter list: the signature no longer matches.
    assert refused(case.replaced(records=records, last_seq=case.batch.last_seq - 1), case.anchor)
    # Re-signed honestly over a list with a hole in it: the chain shows the hole.
    if i < n - 1:
        resigned = sign_batch(KEY, AGENT, case.first_seq, records)
        assert refused(resigned, case.anchor)
        assert refused(resigned, None)


@given(cases(), st.binary(min_size=32, max_size=32))
def test_a_wrong_prev_hash_anchor_is_refused(case, anchor):
    assume(anchor != case.anchor)
    assert refused(case.batch, anchor)


@given(cases())
def test_a_signature_from_another_key_is_refused(case):
    forged = sign_batch(OTHER_KEY, AGENT, case.first_seq, case.batch_entries)
    assert refused(forged, case.anchor)
    with pytest.raises(BadSignature):
        verify_batch(forged, KEY.public_bytes, prev_hash=case.anchor)
    # And the honest batch does not verify under the other agent's key either.
    with pytest.raises(BadSignature):
        verify_batch(case.batch, OTHER_KEY.public_bytes, prev_hash=case.anchor)


@given(cases(), st.integers(-5, 5))
def test_a_changed_first_seq_is_refused(case, shift):
    assume(shift != 0 and case.first_seq + shift >= 1)
    first, last = case.first_seq + shift, case.batch.last_seq + shift
    # Both bounds moved, old signature: the signature covers the bounds.
    assert refused(case.replaced(first_seq=first, last_seq=last), case.anchor)
    # Only first_seq moved: the bounds no longer match the record count.
    assert refused(case.replaced(first_seq=first), case.anchor)
    # Signed honestly with the wrong first seq (an agent bug): the entries carry their seqs.
    resigned = sign_batch(KEY, AGENT, first, case.batch_entries)
    assert refused(resigned, case.anchor)
    assert refused(resigned, None)


@given(cases(), st.binary(min_size=32, max_size=32))
def test_a_replaced_chain_head_is_refused(case, head):
    assume(head != case.batch.chain_head)
    assert refused(case.replaced(chain_head=head), case.anchor)


@given(cases())
def test_a_batch_claimed_for_another_agent_is_refused(case):
    assert refused(case.replaced(agent_id=AGENT + "x"), case.anchor)
    # Even signed honestly under the other name, the entries name their own agent.
    resigned = sign_batch(KEY, AGENT + "x", case.first_seq, case.batch_entries)
    assert refused(resigned, case.anchor)


@given(cases(min_batch=2), st.data())
def test_verify_chain_alone_finds_a_gap_or_reorder(case, data):
    n = len(case.batch_entries)
    i = data.draw(st.integers(0, n - 2), label="dropped")
    records = case.batch_entries[:i] + case.batch_entries[i + 1 :]
    with pytest.raises(ChainBroken):
        verify_chain(records, agent_id=AGENT, first_seq=case.first_seq, prev_hash=case.anchor)
