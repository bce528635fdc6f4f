"""The outbox on real SQLite files: durability, idempotency, limits, chain, corruption."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import pytest

from agent.errors import HisSetlNoConflict, NotFound, OutboxFull
from agent.intake import ReversalRequest, parse_settlement
from agent.store import Outbox
from protocol.chain import GENESIS, LOST_MARKER_LEN, decode_body, verify_chain
from protocol.wire import Rejection
from tests.conftest import example_settlement


def _record(n: int, **changes):
    data = example_settlement(f"HIS-{n:06d}")
    data.update(changes)
    return parse_settlement(json.dumps(data).encode())


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(tmp_path / "agent.db", agent_id="H1-01", retention_s=0)
    yield box
    box.close()


def _append(box: Outbox, n: int):
    return box.append_settlement_sync(*_record(n))


def _all_entries(box: Outbox) -> list[bytes]:
    return [p.raw for p in box.read_pending(0, 10_000, 1 << 30)]


def test_concurrent_appends_get_contiguous_seqs_and_a_valid_chain(outbox):
    async def go():
        return await asyncio.gather(*(outbox.append_settlement(*_record(i)) for i in range(300)))

    receipts = asyncio.run(go())
    assert sorted(r.seq for r in receipts) == list(range(1, 301))
    linked = verify_chain(_all_entries(outbox), agent_id="H1-01", first_seq=1, prev_hash=GENESIS)
    assert len(linked) == 300 and linked[-1].hash == outbox._head.head_hash
    by_seq = {r.seq: r for r in receipts}
    assert all(by_seq[x.seq].hash == x.hash for x in linked)
    assert {decode_body(x.entry).his_setl_no for x in linked} == {f"HIS-{i:06d}" for i in range(300)}


def test_same_his_setl_no_answers_the_first_receipt(outbox):
    first = _append(outbox, 1)
    again = _append(outbox, 1)
    assert again.duplicate and (again.setl_id, again.seq, again.hash) == (
        first.setl_id,
        first.seq,
        first.hash,
    )
    assert outbox.last_seq == 1


def test_same_his_setl_no_with_other_content_is_a_conflict(outbox):
    _append(outbox, 1)
    data = example_settlement("HIS-000001")
    data["opter"] = "C0008"
    with pytest.raises(HisSetlNoConflict):
        outbox.append_settlement_sync(*parse_settlement(json.dumps(data).encode()))
    assert outbox.last_seq == 1


def test_chain_survives_reopen(tmp_path):
    box = Outbox(tmp_path / "a.db", agent_id="H1-01")
    for i in range(5):
        _append(box, i)
    head = box._head.head_hash
    box.close()
    box = Outbox(tmp_path / "a.db", agent_id="H1-01")
    try:
        assert box.last_seq == 5 and box._head.head_hash == head
        r = _append(box, 99)
        assert r.seq == 6
        verify_chain(_all_entries(box), agent_id="H1-01", first_seq=1, prev_hash=GENESIS)
        assert _append(box, 3).duplicate  # idempotency survives a restart too
    finally:
        box.close()


def test_outbox_limit_refuses_new_settlements_and_loses_nothing(tmp_path):
    box = Outbox(tmp_path / "a.db", agent_id="H1-01", max_records=3, retention_s=0)
    try:
        for i in range(3):
            _append(box, i)
        with pytest.raises(OutboxFull) as exc:
            _append(box, 3)
        assert exc.value.code == "outbox_full" and "refused" in exc.value.message
        assert "outbox_full" in box.alarms
        assert box.last_seq == 3 and len(_all_entries(box)) == 3
        assert _append(box, 1).duplicate  # a retry of an accepted one still answers
        box.ack(3).result()
        assert _append(box, 3).seq == 4
        assert "outbox_full" not in box.alarms
    finally:
        box.close()


def test_ack_advances_cursor_and_prunes_after_retention(tmp_path):
    box = Outbox(tmp_path / "a.db", agent_id="H1-01", retention_s=3600)
    try:
        for i in range(4):
            _append(box, i)
        box.ack(2).result()
        st = box.status()
        assert (st["acked_seq"], st["pending"]) == (2, 2)
        assert len(box.read_pending(0, 100, 1 << 30)) == 4  # retention keeps them
        box.retention_s = 0
        box.prune().result()
        rows = box._reader.execute("SELECT seq FROM outbox ORDER BY seq").fetchall()
        assert [r[0] for r in rows] == [3, 4]
    finally:
        box.close()


def test_prune_stops_at_the_first_young_row_and_works_in_bounded_chunks(tmp_path):
    box = Outbox(tmp_path / "a.db", agent_id="H1-01", retention_s=3600)
    try:
        for i in range(10):
            _append(box, i)
        # Rows 1..6 are old, 7 is young, 8 is old again (a clock step back): only the prefix goes.
        ages = {s: (7200 if s <= 6 or s == 8 else 0) for s in range(1, 11)}
        box.submit(
            lambda c: c.executemany(
                "UPDATE outbox SET created_at=? WHERE seq=?",
                [(time.time() - age, s) for s, age in ages.items()],
            )
        ).result()
        box.submit(lambda c: box._prune_acked(c, 9, time.time() - 3600, chunk=4)).result()
        seqs = [r[0] for r in box._reader.execute("SELECT seq FROM outbox ORDER BY seq")]
        assert seqs == [5, 6, 7, 8, 9, 10]  # one chunk of 4 per call
        box.submit(lambda c: box._prune_acked(c, 9, time.time() - 3600, chunk=4)).result()
        seqs = [r[0] for r in box._reader.execute("SELECT seq FROM outbox ORDER BY seq")]
        assert seqs == [7, 8, 9, 10]  # the young row 7 stops the prefix; unacked 10 always stays
    finally:
        box.close()


def test_reversal_is_a_new_record_and_idempotent(outbox):
    first = _append(outbox, 1)
    req = ReversalRequest(reason="patient cancelled", opter="C0007")
    rev = asyncio.run(outbox.append_reversal(first.setl_id, req, "H37021100001"))
    assert rev.kind == "revs" and rev.seq == 2 and rev.medfee_sumamt == -5120
    assert not rev.duplicate and rev.orig_setl_id == first.setl_id
    again = asyncio.run(outbox.append_reversal(first.setl_id, req, "H37021100001"))
    assert again.duplicate and again.setl_id == rev.setl_id
    linked = verify_chain(_all_entries(outbox), agent_id="H1-01", first_seq=1, prev_hash=GENESIS)
    body = decode_body(linked[1].entry)
    assert body.orig_setl_id == first.setl_id and body.medfee_sumamt == -5120
    with pytest.raises(NotFound):
        asyncio.run(outbox.append_reversal("nope", req, "H37021100001"))


def test_corrupt_record_is_quarantined_and_the_rest_flows(tmp_path):
    path = tmp_path / "a.db"
    box = Outbox(path, agent_id="H1-01")
    for i in range(5):
        _append(box, i)
    box.close()
    con = sqlite3.connect(path)
    rec = con.execute("SELECT record FROM outbox WHERE seq=3").fetchone()[0]
    damaged = rec[:40] + bytes([rec[40] ^ 0xFF]) + rec[41:]
    con.execute("UPDATE outbox SET record=? WHERE seq=3", (damaged,))
    con.commit()
    con.close()
    box = Outbox(path, agent_id="H1-01")
    try:
        entries = _all_entries(box)
        assert len(entries) == 5 and len(entries[2]) == LOST_MARKER_LEN
        linked = verify_chain(entries, agent_id="H1-01", first_seq=1, prev_hash=GENESIS)
        assert [x.lost for x in linked] == [False, False, True, False, False]
        assert "record_corrupt" in box.alarms
        assert box.status()["quarantined"] == 1
        q = box._reader.execute("SELECT record FROM quarantine WHERE seq=3").fetchone()[0]
        assert q == damaged  # kept for forensics, not deleted
        assert _all_entries(box)[2] == entries[2]  # stable on re-read
    finally:
        box.close()


def test_damaged_hash_column_with_intact_record_is_repaired(tmp_path):
    path = tmp_path / "a.db"
    box = Outbox(path, agent_id="H1-01")
    for i in range(3):
        _append(box, i)
    box.close()
    con = sqlite3.connect(path)
    con.execute("UPDATE outbox SET hash=? WHERE seq=2", (b"\x00" * 32,))
    con.commit()
    con.close()
    box = Outbox(path, agent_id="H1-01")
    try:
        entries = _all_entries(box)
        verify_chain(entries, agent_id="H1-01", first_seq=1, prev_hash=GENESIS)
        assert all(len(e) > LOST_MARKER_LEN for e in entries)
        assert box.status()["quarantined"] == 0
    finally:
        box.close()


def test_rejected_records_go_to_dead_letter(outbox):
    for i in range(3):
        _append(outbox, i)
    outbox.ack(3, [Rejection(seq=2, code="validation_failed", message="totals")]).result()
    row = outbox._reader.execute("SELECT seq, code, record FROM dead_letter").fetchone()
    assert row[0] == 2 and row[1] == "validation_failed" and row[2]
    assert "dead_letter" in outbox.alarms


def test_central_ahead_of_agent_is_an_alarm_not_a_jump(outbox):
    _append(outbox, 1)
    outbox.ack(50).result()
    assert outbox.acked_seq == 0 and "central_ahead" in outbox.alarms


def test_read_pending_is_bounded(outbox):
    for i in range(20):
        _append(outbox, i)
    assert len(outbox.read_pending(0, 7, 1 << 30)) == 7
    one = len(outbox.read_pending(0, 1, 1 << 30)[0].raw)
    assert len(outbox.read_pending(0, 100, one * 3)) == 3
    assert [p.seq for p in outbox.read_pending(15, 100, 1 << 30)] == [16, 17, 18, 19, 20]


def test_disk_nearly_full_refuses_new_settlements_with_an_alarm(tmp_path):
    from agent.errors import DiskNearlyFull

    box = Outbox(tmp_path / "a.db", agent_id="H1-01")
    try:
        _append(box, 1)
        box.min_free_disk_bytes = 1 << 62  # more than any disk has: "nearly full" from now on
        box._disk_checked_at = 0.0
        with pytest.raises(DiskNearlyFull) as exc:
            _append(box, 2)
        assert "MiB free" in exc.value.message and exc.value.http_status == 503
        assert "disk_nearly_full" in box.alarms and box.last_seq == 1
        assert _append(box, 1).duplicate  # answering a retry needs no space
        box.min_free_disk_bytes = 0
        box._disk_checked_at = 0.0
        assert _append(box, 2).seq == 2
        assert "disk_nearly_full" not in box.alarms
    finally:
        box.close()


def test_failed_commit_answers_every_caller_with_an_error_and_keeps_the_head(tmp_path):
    from agent.errors import StoreError

    box = Outbox(tmp_path / "a.db", agent_id="H1-01")
    try:
        _append(box, 1)
        head = (box.last_seq, box._head.head_hash)
        con = sqlite3.connect(tmp_path / "a.db")
        con.execute("CREATE TRIGGER boom BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'disk I/O'); END")
        con.commit()
        with pytest.raises(StoreError):
            _append(box, 2)
        assert (box.last_seq, box._head.head_hash) == head
        con.execute("DROP TRIGGER boom")
        con.commit()
        con.close()
        assert _append(box, 2).seq == 2
        verify_chain(_all_entries(box), agent_id="H1-01", first_seq=1, prev_hash=GENESIS)
    finally:
        box.close()
