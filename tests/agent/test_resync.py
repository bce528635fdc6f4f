"""Taking an agent's own records back after a restore (``Outbox.recover``, ``Outbox.hold_appends``):
only entries that continue the chain exactly are taken, all or none, and nothing is appended meanwhile.
The whole path through a real centre is ``tests/integration/test_backup.py``."""

from __future__ import annotations

import json

import pytest

from agent.errors import ChainDiverged, ResyncPending
from agent.intake import ReversalRequest, parse_settlement
from agent.store import Outbox
from protocol.chain import encode_entry
from tests.conftest import example_settlement


def _record(n: int):
    return parse_settlement(json.dumps(example_settlement(f"HIS-{n:06d}")).encode())


@pytest.fixture
def boxes(tmp_path):
    made = Outbox(tmp_path / "made.db", agent_id="H1-01")
    restored = Outbox(tmp_path / "restored.db", agent_id="H1-01")
    yield made, restored
    made.close()
    restored.close()


def _entries(box: Outbox) -> list[bytes]:
    return [p.raw for p in box.read_pending(0, 10_000, 1 << 30)]


def test_entries_that_continue_the_chain_are_taken_back_as_acknowledged(boxes) -> None:
    made, restored = boxes
    receipts = [made.append_settlement_sync(*_record(n)) for n in range(3)]
    made.submit(lambda conn: made._append_reversal(conn, receipts[1].setl_id,
                ReversalRequest(reason="left", opter="C1"), "H1")).result()  # fmt: skip
    assert restored.recover(_entries(made)).result() == 4
    assert (restored.last_seq, restored.acked_seq) == (4, 4)
    assert restored.status()["pending"] == 0
    # A retry of a taken-back settlement is answered with its receipt, whatever the body's digest.
    again = restored.append_settlement_sync(*_record(0))
    assert again.duplicate and again.setl_id == receipts[0].setl_id
    # The next settlement continues from the taken-back head.
    assert restored.append_settlement_sync(*_record(9)).seq == 5


def test_entries_that_do_not_continue_the_chain_change_nothing(boxes, tmp_path) -> None:
    made, restored = boxes
    for n in range(3):
        made.append_settlement_sync(*_record(n))
    entries = _entries(made)
    with pytest.raises(ChainDiverged, match="does not continue"):
        restored.recover(entries[1:]).result()  # a gap: seq 2 after nothing
    assert restored.last_seq == 0
    other = Outbox(tmp_path / "other.db", agent_id="H2-01")
    try:
        other.append_settlement_sync(*_record(0))
        with pytest.raises(ChainDiverged):
            restored.recover([*entries[:1], *_entries(other)]).result()  # all or none: not even seq 1
    finally:
        other.close()
    assert restored.last_seq == 0
    with pytest.raises(ChainDiverged, match="cannot read"):
        restored.recover([encode_entry("H1-01", 1, bytes(32), "setl", b"\x00")]).result()
    # Records of its own not yet at the centre and records the centre has: a fork, refused.
    restored.append_settlement_sync(*_record(7))
    with pytest.raises(ChainDiverged, match="forked"):
        restored.recover(entries).result()


def test_appends_are_refused_while_held(boxes) -> None:
    _, restored = boxes
    restored.hold_appends = "restored: taking back records first"
    with pytest.raises(ResyncPending, match="taking back"):
        restored.append_settlement_sync(*_record(1))
    assert restored.last_seq == 0
    restored.hold_appends = None
    assert restored.append_settlement_sync(*_record(1)).seq == 1
