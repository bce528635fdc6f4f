"""Batches over real HTTP: stored once, duplicates, overlaps, gaps, and every refusal."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import msgspec

from central.cli import init_home
from central.config import CentralConfig
from central.intake.enrol import revoke_agent
from protocol.batch import BatchLimits, KeyPair
from protocol.chain import encode_body, encode_entry
from protocol.wire import PROTOCOL_HEADER, decode_ack

from .conftest import Chain, Server, enrol, reversal, rows, settlement, start_server


def _counts(server: Server) -> tuple[int, int]:
    records = rows(server.store, "SELECT count(*) FROM records")[0][0]
    settlements = rows(server.store, "SELECT count(*) FROM settlements")[0][0]
    return records, settlements


def _events(server: Server) -> list[tuple]:
    return rows(server.store, "SELECT agent_id, code, remote FROM security_events ORDER BY id")


def _error(reply) -> str:
    return reply.msgpack()["error"]["code"]


def test_batch_is_stored_and_acked(server: Server, agent: Chain) -> None:
    agent.extend(3)
    reply = server.post_batch(agent.batch(1, 3))
    assert reply.status == 200 and reply.headers[PROTOCOL_HEADER] == "1"
    ack = decode_ack(reply.body)
    assert (ack.code, ack.acked_seq, ack.stored, ack.duplicates, ack.rejected) == ("stored", 3, 3, 0, [])
    assert _counts(server) == (3, 3)
    listed = server.agents()[0]
    assert listed["last_seq"] == 3 and listed["chain_head"] == agent.head.hex() and listed["last_seen"]


def test_same_batch_twice_is_a_duplicate_and_stored_once(server: Server, agent: Chain) -> None:
    agent.extend(4)
    assert decode_ack(server.post_batch(agent.batch(1, 4)).body).code == "stored"
    reply = server.post_batch(agent.batch(1, 4))
    ack = decode_ack(reply.body)
    assert reply.status == 200
    assert (ack.code, ack.acked_seq, ack.stored, ack.duplicates) == ("duplicate", 4, 0, 4)
    assert _counts(server) == (4, 4)


def test_overlapping_batch_stores_only_the_new_records(server: Server, agent: Chain) -> None:
    agent.extend(5)
    server.post_batch(agent.batch(1, 3))
    ack = decode_ack(server.post_batch(agent.batch(2, 5)).body)
    assert (ack.code, ack.acked_seq, ack.stored, ack.duplicates) == ("stored", 5, 2, 2)
    assert _counts(server) == (5, 5)


def test_gap_answers_409_with_where_to_resend_from(server: Server, agent: Chain) -> None:
    agent.extend(6)
    server.post_batch(agent.batch(1, 2))
    reply = server.post_batch(agent.batch(4, 6))
    assert reply.status == 409
    ack = decode_ack(reply.body)
    assert (ack.code, ack.acked_seq, ack.resend_from, ack.stored) == ("gap", 2, 3, 0)
    assert _counts(server) == (2, 2)
    assert decode_ack(server.post_batch(agent.batch(3, 6)).body).acked_seq == 6


def test_tampered_record_is_refused_recorded_and_nothing_stored(server: Server, agent: Chain) -> None:
    agent.extend(3)
    good = agent.batch(1, 3)
    needle = b"HIS-S" + agent.agent_id.encode()
    at = good.index(needle) + 1
    tampered = good[:at] + b"X" + good[at + 1 :]
    reply = server.post_batch(tampered)
    assert reply.status == 422 and _error(reply) in ("chain_broken", "signature_invalid")
    assert _counts(server) == (0, 0)
    events = _events(server)
    assert [(e[0], e[1]) for e in events] == [(agent.agent_id, _error(reply))] and events[0][2] == "127.0.0.1"
    assert decode_ack(server.post_batch(good).body).acked_seq == 3


def test_batch_signed_by_another_key_is_refused(server: Server, agent: Chain) -> None:
    agent.extend(2)
    reply = server.post_batch(agent.batch(1, 2, key=KeyPair.generate()))
    assert reply.status == 422 and _error(reply) == "signature_invalid"
    assert _counts(server) == (0, 0)
    assert [e[1] for e in _events(server)] == ["signature_invalid"]


def test_unknown_agent_is_refused(server: Server) -> None:
    stranger = Chain("H00000000000-01", KeyPair.generate())
    stranger.extend(1)
    reply = server.post_batch(stranger.batch(1, 1))
    assert reply.status == 403 and _error(reply) == "agent_unknown"


def test_revoked_agent_is_refused(server: Server, agent: Chain) -> None:
    agent.extend(2)
    server.post_batch(agent.batch(1, 1))
    revoke_agent(server.store, agent.agent_id)
    reply = server.post_batch(agent.batch(2, 2))
    assert reply.status == 403 and _error(reply) == "agent_revoked"
    assert _counts(server) == (1, 1)
    assert server.agents()[0]["revoked"] is True


def test_malformed_bodies_are_refused_and_the_server_keeps_serving(server: Server, agent: Chain) -> None:
    agent.extend(2)
    good = agent.batch(1, 2)
    deep = b"\x91" * 100_000 + b"\xc0"
    for body in (good[: len(good) // 2], b"", b"\xc1", deep, msgspec.msgpack.encode({"v": 1}), b"\x00" * 50):
        reply = server.post_batch(body)
        assert reply.status == 400 and _error(reply) == "decode_malformed", body[:10]
    assert server.request("GET", "/v1/health").json() == {"ok": True}
    assert _counts(server) == (0, 0) and _events(server) == []
    assert decode_ack(server.post_batch(good).body).acked_seq == 2


def test_wrong_content_type_and_protocol_are_refused(server: Server, agent: Chain) -> None:
    agent.extend(1)
    reply = server.request("POST", "/v1/batches", agent.batch(1, 1), {"Content-Type": "application/json"})
    assert reply.status == 415 and _error(reply) == "content_type_unsupported"
    reply = server.post_batch(agent.batch(1, 1), **{PROTOCOL_HEADER: "2, 3"})
    assert reply.status == 400 and _error(reply) == "protocol_unsupported"


def test_record_whose_totals_do_not_add_up_is_chained_but_rejected(server: Server, agent: Chain) -> None:
    agent.append(settlement("OK-1"))
    agent.append(settlement("BAD-2", split=(3000, 1000, 999)))
    agent.append(settlement("OK-3"))
    ack = decode_ack(server.post_batch(agent.batch(1, 3)).body)
    assert (ack.code, ack.acked_seq, ack.stored) == ("stored", 3, 3)
    assert [(r.seq, r.code) for r in ack.rejected] == [(2, "validation_failed")]
    assert "does not add up" in ack.rejected[0].message
    assert rows(server.store, "SELECT setl_id FROM settlements ORDER BY seq") == [("OK-1",), ("OK-3",)]
    assert rows(server.store, "SELECT seq, status FROM records ORDER BY seq") == [
        (1, "ok"),
        (2, "rejected"),
        (3, "ok"),
    ]
    # the chain continues past the rejected record, and a resend repeats the rejection
    agent.append(settlement("OK-4"))
    assert decode_ack(server.post_batch(agent.batch(4, 4)).body).acked_seq == 4
    again = decode_ack(server.post_batch(agent.batch(1, 3)).body)
    assert again.code == "duplicate" and [r.seq for r in again.rejected] == [2]


def test_repeated_setl_id_is_rejected_not_counted_twice(server: Server, agent: Chain) -> None:
    agent.append(settlement("SAME"))
    agent.append(settlement("SAME"))
    ack = decode_ack(server.post_batch(agent.batch(1, 2)).body)
    assert ack.acked_seq == 2 and [(r.seq, r.code) for r in ack.rejected] == [(2, "setl_duplicate")]
    agent.append(settlement("SAME"))
    ack = decode_ack(server.post_batch(agent.batch(3, 3)).body)
    assert [(r.seq, r.code) for r in ack.rejected] == [(3, "setl_duplicate")]
    assert _counts(server) == (3, 1)


def test_record_of_another_hospital_or_bad_time_is_rejected(server: Server, agent: Chain) -> None:
    agent.append(settlement("OTHER", hospital="H99999999999"))
    agent.append(settlement("BADTIME", setl_time="yesterday"))
    ack = decode_ack(server.post_batch(agent.batch(1, 2)).body)
    assert [(r.seq, r.code) for r in ack.rejected] == [(1, "hospital_mismatch"), (2, "field_invalid")]


def test_undecodable_body_is_rejected_and_nan_quantity_does_not_break_the_batch(
    server: Server, agent: Chain
) -> None:
    agent.append_body("setl", msgspec.msgpack.encode({"not": "a settlement"}))
    agent.append(settlement("NAN", lines=(("NaN", "1", 100),), split=None))
    agent.append(settlement("OK"))
    ack = decode_ack(server.post_batch(agent.batch(1, 3)).body)
    assert ack.acked_seq == 3 and [r.seq for r in ack.rejected] == [1, 2]
    assert ack.rejected[0].code == "decode_malformed"


def test_reversal_is_stored_as_its_own_record(server: Server, agent: Chain) -> None:
    original = settlement("ORIG")
    agent.append(original)
    agent.append(reversal(original, "REV"))
    assert decode_ack(server.post_batch(agent.batch(1, 2)).body).rejected == []
    (row,) = rows(
        server.store,
        "SELECT kind, psn_no, orig_setl_id, medfee_sumamt, setl_date FROM settlements WHERE setl_id = 'REV'",
    )
    assert row == ("revs", None, "ORIG", -original.medfee_sumamt, "2026-11-24")


def test_lost_marker_keeps_the_chain_going(server: Server, agent: Chain) -> None:
    agent.extend(1)
    agent.append_lost()
    agent.extend(1)
    ack = decode_ack(server.post_batch(agent.batch(1, 3)).body)
    assert (ack.acked_seq, ack.rejected) == (3, [])
    assert rows(server.store, "SELECT seq, status FROM records ORDER BY seq") == [
        (1, "ok"),
        (2, "lost"),
        (3, "ok"),
    ]


def test_different_record_for_a_held_seq_is_a_chain_conflict(server: Server, agent: Chain) -> None:
    agent.extend(2)
    server.post_batch(agent.batch(1, 2))
    fork = Chain(agent.agent_id, agent.key)
    fork.extend(3, prefix="F")
    reply = server.post_batch(fork.batch(1, 2))
    assert reply.status == 409 and _error(reply) == "chain_conflict"
    reply = server.post_batch(fork.batch(2, 3))
    assert reply.status == 409 and _error(reply) == "chain_conflict"
    assert [e[1] for e in _events(server)] == ["chain_conflict"]  # the repeat folds into the first row
    assert _counts(server) == (2, 2)


def test_batch_that_does_not_link_to_the_held_head_is_refused(server: Server, agent: Chain) -> None:
    agent.extend(2)
    server.post_batch(agent.batch(1, 2))
    fork = Chain(agent.agent_id, agent.key)
    fork.extend(3, prefix="F")
    reply = server.post_batch(fork.batch(3, 3))
    assert reply.status == 422 and _error(reply) == "chain_broken"
    assert [e[1] for e in _events(server)] == ["chain_broken"]
    assert _counts(server) == (2, 2)


def test_first_batch_must_start_from_genesis(server: Server, agent: Chain) -> None:
    agent.entries.append(encode_entry(agent.agent_id, 1, b"\x01" * 32, "setl", encode_body(settlement("X"))))
    reply = server.post_batch(agent.batch(1, 1))
    assert reply.status == 422 and _error(reply) == "chain_broken"
    assert _counts(server) == (0, 0)


def test_oversized_bodies_are_413(tmp_path) -> None:
    config = CentralConfig(
        home=tmp_path / "small", batch_limits=BatchLimits(max_bytes=4096), insecure_dev=True
    )
    init_home(config)
    srv, stop = start_server(config)
    try:
        chain = enrol(srv.store)
        chain.extend(40)
        big = chain.batch(1, 40)
        assert 4096 < len(big) < config.client_max_size
        reply = srv.post_batch(big)
        assert reply.status == 413 and _error(reply) == "decode_limit_exceeded"
        reply = srv.post_batch(b"\x00" * (config.client_max_size + 10))
        assert reply.status == 413 and _error(reply) == "decode_limit_exceeded"
        assert decode_ack(srv.post_batch(chain.batch(1, 2)).body).acked_seq == 2
    finally:
        stop()


def test_concurrent_uploads_and_racing_duplicates_store_everything_once(server: Server) -> None:
    chains = [enrol(server.store) for _ in range(3)]
    for c in chains:
        c.extend(60)

    def upload(c: Chain) -> list[str]:
        codes = []
        for first in range(1, 61, 20):
            body = c.batch(first, first + 19)
            codes.append(decode_ack(server.post_batch(body).body).code)
            codes.append(decode_ack(server.post_batch(body).body).code)
        return codes

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(upload, chains + chains))  # every chain uploaded by two racing senders
    flat = [code for codes in results for code in codes]
    assert flat.count("stored") == 9 and set(flat) == {"stored", "duplicate"}
    assert _counts(server) == (180, 180)
    assert {a["last_seq"] for a in server.agents()} == {60}
