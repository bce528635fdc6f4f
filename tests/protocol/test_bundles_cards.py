"""The ``cards`` bundle kind: corrections and notices round-trip through the file format, deltas and
snapshots obey the same header rules as the blacklist, and every bad entry is refused with a clear reason
on both the writing and the reading side (an agent never applies what the centre could not have written)."""

from __future__ import annotations

import io
import zlib

import msgpack
import pytest

from protocol.bundles import (
    DELTA_KINDS,
    KINDS,
    BundleHeader,
    CardCorrection,
    CardNotice,
    CardsEntry,
    correction_problems,
    encode_cards,
    encode_document,
    iter_cards,
    notice_problems,
    read_document,
    read_header,
)
from protocol.errors import BundleInvalid

CREATED = "2026-12-07T03:00:00+00:00"


def replaced(old: str = "370200A000000001", new: str = "370200A000000002") -> CardsEntry:
    c = CardCorrection(old, new, ("expires",), "card replaced after loss")
    return CardsEntry("+", "correction", old, correction=c)


def topup(nid: str = "N1", fen: int | None = 5000, kind: str = "topup", **kw: str) -> CardsEntry:
    values = {"valid_from": "2026-12-01", "valid_to": "2026-12-31", **kw}
    n = CardNotice(nid, "370200A000000003", kind, fen, "account topped up", values["valid_from"],
                   values["valid_to"])  # fmt: skip
    return CardsEntry("+", "notice", nid, notice=n)


def encode(header: BundleHeader, entries: list[CardsEntry]) -> bytes:
    buf = io.BytesIO()
    encode_cards(buf, header, entries)
    return buf.getvalue()


def raw_bundle(header: BundleHeader, *objects: object) -> bytes:
    packer = msgpack.Packer(use_bin_type=True)
    return zlib.compress(b"".join(packer.pack(o) for o in (header.to_map(), *objects)))


def test_cards_is_a_kind_that_travels_as_deltas():
    assert "cards" in KINDS and "cards" in DELTA_KINDS


def test_a_full_bundle_round_trips_corrections_and_notices():
    header = BundleHeader("cards", "370200", 1, None, CREATED)
    entries = [replaced(), topup(), topup("N2", None, "message"), topup("N3", 0, "balance")]
    data = encode(header, entries)
    assert read_header(io.BytesIO(data)) == header
    got_header, got = iter_cards(io.BytesIO(data))
    assert got_header == header and list(got) == entries
    correction = entries[0].correction
    assert correction is not None and correction.replaced


def test_a_delta_carries_withdrawals_and_a_full_bundle_refuses_them():
    delta = BundleHeader("cards", "370200", 3, 2, CREATED)
    entries = [CardsEntry("-", "correction", "370200A000000001"), CardsEntry("-", "notice", "N1"), topup()]
    _, got = iter_cards(io.BytesIO(encode(delta, entries)))
    assert [(e.op, e.item, e.key) for e in got] == [("-", "correction", "370200A000000001"),
                                                   ("-", "notice", "N1"), ("+", "notice", "N1")]  # fmt: skip
    full = BundleHeader("cards", "370200", 3, None, CREATED)
    with pytest.raises(BundleInvalid, match="no withdrawals"):
        encode(full, [CardsEntry("-", "notice", "N1")])
    with pytest.raises(BundleInvalid, match="no withdrawals"):
        list(iter_cards(io.BytesIO(raw_bundle(full, ["-n", "N1"])))[1])


def test_a_cards_bundle_is_not_a_document_nor_another_kind():
    header = BundleHeader("cards", "370200", 1, None, CREATED)
    with pytest.raises(BundleInvalid, match="encode_cards"):
        encode_document(io.BytesIO(), header, {})
    with pytest.raises(BundleInvalid, match="iter_cards"):
        read_document(io.BytesIO(encode(header, [topup()])))
    rules = BundleHeader("rules", "370200", 1, None, CREATED)
    buf = io.BytesIO()
    encode_document(buf, rules, {"rules": []})
    with pytest.raises(BundleInvalid, match="expected a cards bundle"):
        iter_cards(io.BytesIO(buf.getvalue()))
    with pytest.raises(BundleInvalid, match="always full"):
        BundleHeader("rules", "370200", 2, 1, CREATED).check()
    BundleHeader("cards", "370200", 2, 1, CREATED).check()  # a cards delta is allowed


@pytest.mark.parametrize(
    ("entry", "field", "words"),
    [
        (topup(fen=12.5), "amount_fen", "integer fen"),  # type: ignore[arg-type]
        (topup(fen=True), "amount_fen", "integer fen"),  # type: ignore[arg-type]
        (topup(fen=None), "amount_fen", "integer fen"),
        (topup(fen=-1), "amount_fen", "0 to"),
        (topup(fen=0), "amount_fen", "top-up of nothing"),
        (topup(fen=100, kind="message"), "amount_fen", "no amount"),
        (topup(kind="refund"), "type", "topup, balance, message"),
        (topup(valid_from="2026-13-01"), "valid_from", "a date"),
        (topup(valid_to="31.12.2026"), "valid_to", "a date"),
        (topup(valid_from="2026-12-31", valid_to="2026-12-01"), "valid_to", "before valid_from"),
        (topup(nid="bad id!"), "id", "letters"),
    ],
)
def test_a_bad_notice_is_refused_with_its_field(entry: CardsEntry, field: str, words: str):
    assert entry.notice is not None
    problems = notice_problems(entry.notice)
    assert any(f == field and words in m for f, m in problems), problems
    header = BundleHeader("cards", "370200", 1, None, CREATED)
    with pytest.raises(BundleInvalid, match=field):
        encode(header, [entry])
    n = entry.notice
    obj = ["+n", n.id, n.card_sn, n.type, n.amount_fen, n.text, n.valid_from, n.valid_to]
    with pytest.raises(BundleInvalid, match=field):  # the reading side refuses what no centre writes
        list(iter_cards(io.BytesIO(raw_bundle(header, obj)))[1])


@pytest.mark.parametrize(
    ("correction", "field", "words"),
    [
        (CardCorrection("370200A000000001", "", (), "x"), "fields", "name the outdated fields"),
        (CardCorrection("370200A000000001", "", ("shoe_size",), "x"), "fields", "unknown field"),
        (CardCorrection("370200A000000001", "", ("brdy", "brdy"), "x"), "fields", "twice"),
        (CardCorrection("370200A000000001", "370200A000000001", (), "x"), "new_card_sn", "by itself"),
        (CardCorrection("3702 00", "370200A000000002", (), "x"), "card_sn", "letters or digits"),
        (CardCorrection("370200A000000001", "370200A000000002", (), " "), "reason", "required"),
    ],
)
def test_a_bad_correction_is_refused_with_its_field(correction: CardCorrection, field: str, words: str):
    problems = correction_problems(correction)
    assert any(f == field and words in m for f, m in problems), problems
    with pytest.raises(BundleInvalid, match=field):
        encode(BundleHeader("cards", "370200", 1, None, CREATED),
               [CardsEntry("+", "correction", correction.card_sn, correction=correction)])  # fmt: skip


@pytest.mark.parametrize(
    "obj",
    [["+x", "a"], ["+c", "370200A000000001", "", "brdy", "x"], ["+n", "N1"], ["-c"], ["-n", 5], "text"],
)
def test_a_malformed_entry_is_refused(obj: object):
    header = BundleHeader("cards", "370200", 2, 1, CREATED)
    with pytest.raises(BundleInvalid):
        list(iter_cards(io.BytesIO(raw_bundle(header, obj)))[1])
