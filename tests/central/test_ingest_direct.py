"""The Ingestor without HTTP, as the benchmark drives it, and its all-or-nothing transaction."""

from __future__ import annotations

import pytest

from central.errors import (
    AgentUnknown,
    ChainInvalid,
    InternalError,
    LimitExceededError,
    MalformedRequest,
    SignatureInvalid,
)
from central.intake.ingest import Ingestor
from central.storage.store import Store, get_agent, security_events
from protocol.batch import BatchLimits, KeyPair

from .conftest import Chain, failing_trigger, rows, settlement


def test_ingest_stores_a_long_chain_in_batches(store: Store, chain: Chain) -> None:
    ingestor = Ingestor(store)
    chain.extend(250)
    for first in range(1, 251, 100):
        ack = ingestor.ingest(chain.batch(first, min(first + 99, 250)))
        assert ack.code == "stored"
    agent = store.read(lambda conn: get_agent(conn, chain.agent_id))
    assert agent is not None and agent.acked_seq == 250 and agent.head_hash == chain.head
    assert store.read(lambda conn: conn.execute("SELECT count(*) FROM settlements").fetchone()[0]) == 250


def test_errors_are_central_errors_with_codes(store: Store, chain: Chain) -> None:
    ingestor = Ingestor(store, BatchLimits(max_records=2))
    chain.extend(3)
    with pytest.raises(LimitExceededError):
        ingestor.ingest(chain.batch(1, 3))
    with pytest.raises(MalformedRequest):
        ingestor.ingest(b"\x93\x01\x02")
    with pytest.raises(SignatureInvalid) as bad:
        ingestor.ingest(chain.batch(1, 2, key=KeyPair.generate()), remote="10.0.0.9")
    assert (bad.value.code, bad.value.http_status) == ("signature_invalid", 422)
    stranger = Chain("nobody", KeyPair.generate())
    stranger.extend(1)
    with pytest.raises(AgentUnknown):
        ingestor.ingest(stranger.batch(1, 1))
    events = store.read(security_events)
    assert [(e["code"], e["remote"]) for e in events] == [("signature_invalid", "10.0.0.9")]


def test_a_failed_write_leaves_nothing_behind(store: Store, chain: Chain) -> None:
    """A trigger makes the agent update fail after records and settlements were inserted."""
    chain.extend(3)
    ingestor = Ingestor(store)
    with failing_trigger(store, "agents", "UPDATE OF acked_seq"):
        with pytest.raises(InternalError):
            ingestor.ingest(chain.batch(1, 3))
        assert rows(store, "SELECT count(*) FROM records") == [(0,)]
        assert rows(store, "SELECT count(*) FROM settlements") == [(0,)]
    assert ingestor.ingest(chain.batch(1, 3)).acked_seq == 3


def test_records_that_do_not_link_inside_a_batch_are_chain_broken(store: Store, chain: Chain) -> None:
    chain.extend(3)
    chain.entries[1], chain.entries[2] = chain.entries[2], chain.entries[1]
    with pytest.raises(ChainInvalid):
        Ingestor(store).ingest(chain.batch(1, 3))
    assert [e["code"] for e in store.read(security_events)] == ["chain_broken"]


def test_settlement_row_keeps_money_in_fen_and_the_local_date(store: Store, chain: Chain) -> None:
    chain.append(settlement("LATE", setl_time="2026-11-24T23:30:00+08:00"))
    Ingestor(store).ingest(chain.batch(1, 1))
    row = store.read(
        lambda conn: conn.execute(
            "SELECT setl_date, medfee_sumamt, fund_pay_sumamt, acct_pay, psn_cash_pay, psn_no, med_type, "
            "typeof(medfee_sumamt) FROM settlements"
        ).fetchone()
    )
    assert row == ("2026-11-24", 5120, 3000, 1000, 1120, "P0000000001", "11", "integer")
