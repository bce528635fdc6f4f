"""Signed heartbeats at the centre, and what reconcile says with them (``central.intake.heartbeats``,
``central.intake.reconcile``): real SQLite, real signatures, the real HTTP route."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import msgspec
import pytest

from central.cli import main
from central.errors import AgentMismatch, AgentUnknown, MalformedRequest, SignatureInvalid
from central.intake.heartbeats import SILENT_AFTER_S, held_heartbeats, record_heartbeat
from central.intake.ingest import Ingestor
from central.intake.reconcile import reconcile, render_table
from central.storage.store import Store
from protocol.batch import KeyPair
from protocol.chain import GENESIS, record_hash
from protocol.wire import HEARTBEAT_PATH, MSGPACK, PROTOCOL_HEADER, Heartbeat, sign_heartbeat

from ..metrics_page import curl, samples, value
from .conftest import HOSPITAL, Chain, Server, enrol, settlement

DAY = date(2026, 11, 24)
#: The period 2026-11-24 ends at midnight China time.
PERIOD_END = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)


def beat(
    chain: Chain, *, last_seq: int | None = None, acked: int, at: datetime,
    pending_since: datetime | None = None, key: KeyPair | None = None, head: bytes | None = None,
) -> bytes:  # fmt: skip
    """The heartbeat an agent holding ``chain`` up to ``last_seq`` would sign at ``at``."""
    last = len(chain.entries) if last_seq is None else last_seq
    if head is None:
        head = record_hash(chain.entries[last - 1]) if last else GENESIS
    age = None if pending_since is None else round((at - pending_since).total_seconds() * 1000)
    hb = Heartbeat(
        agent_id=chain.agent_id, at=at.isoformat(), last_seq=last, head=head, acked_seq=acked,
        oldest_pending_ms=age,
    )  # fmt: skip
    return sign_heartbeat(key or chain.key, hb)


def settle_day(store: Store, chain: Chain, count: int, upload: int) -> None:
    """``count`` settlements on DAY, the first ``upload`` of them uploaded."""
    for i in range(count):
        chain.append(settlement(f"S{i}", setl_time=f"2026-11-24T{9 + i:02d}:00:00+08:00"))
    if upload:
        Ingestor(store).ingest(chain.batch(1, upload))


def check_of(store: Store, *, now: datetime | None = None):
    rec = reconcile(store, HOSPITAL, DAY, DAY, now=now)
    [agent] = rec.agents
    return rec, agent


def test_five_settled_three_uploaded_is_behind_by_two(store: Store, chain: Chain, config, capsys) -> None:
    settle_day(store, chain, 5, 3)
    at = PERIOD_END + timedelta(minutes=1)
    since = PERIOD_END - timedelta(hours=3)
    answer = record_heartbeat(store, beat(chain, acked=3, at=at, pending_since=since))
    assert answer == {"stored": True, "acked_seq": 3}
    rec, agent = check_of(store, now=at + timedelta(seconds=5))
    assert (agent.state, agent.behind_by, agent.heartbeat_seq) == ("behind", 2, 5)
    assert agent.chain_ok and not agent.period_complete and not rec.ok and rec.exit_code == 3
    table = render_table(rec)
    assert "behind by 2" in table and "NOT provably complete" in table
    # The CLI on the real clock: the heartbeat was received just now, so the agent is not silent.
    argv = ["--home", str(config.home), "reconcile", "--hospital", HOSPITAL, "--from", "2026-11-24", "--to",
            "2026-11-24"]  # fmt: skip
    assert main(argv) == 3
    out = capsys.readouterr().out
    assert "NOT provably complete" in out and "behind by 2" in out


def test_caught_up_after_the_period_is_complete(store: Store, chain: Chain) -> None:
    settle_day(store, chain, 3, 3)
    at = PERIOD_END + timedelta(seconds=30)
    record_heartbeat(store, beat(chain, acked=3, at=at))
    rec, agent = check_of(store, now=at + timedelta(seconds=1))
    assert (agent.state, agent.since, agent.behind_by) == ("complete", at.isoformat(), 0)
    assert agent.period_complete and rec.ok and rec.exit_code == 0
    assert f"complete up to {at.isoformat()}" in render_table(rec)
    js = rec.to_json()
    assert js["ok"] and js["agents"][0]["state"] == "complete" and js["agents"][0]["period_complete"]


def test_a_heartbeat_from_before_the_end_leaves_the_period_open(store: Store, chain: Chain) -> None:
    settle_day(store, chain, 3, 3)
    at = PERIOD_END - timedelta(minutes=1)
    record_heartbeat(store, beat(chain, acked=3, at=at))
    rec, agent = check_of(store, now=at + timedelta(seconds=1))
    assert agent.state == "complete" and not agent.period_complete and rec.exit_code == 3


def test_pending_made_after_the_end_does_not_hold_the_period_open(store: Store, chain: Chain) -> None:
    settle_day(store, chain, 3, 3)
    chain.append(settlement("NEXTDAY", setl_time="2026-11-25T08:30:00+08:00"))
    at = PERIOD_END + timedelta(hours=1)
    made = PERIOD_END + timedelta(minutes=30)
    record_heartbeat(store, beat(chain, acked=3, at=at, pending_since=made))
    rec, agent = check_of(store, now=at)
    assert (agent.state, agent.behind_by) == ("behind", 1)
    assert agent.period_complete and rec.ok and rec.exit_code == 0


def test_no_heartbeat_for_three_minutes_is_silent(store: Store, chain: Chain) -> None:
    settle_day(store, chain, 2, 2)
    rec, agent = check_of(store)
    assert agent.state == "silent" and agent.since is None and "no heartbeat ever" in agent.describe()
    assert rec.exit_code == 3
    record_heartbeat(store, beat(chain, acked=2, at=datetime.now(UTC)))
    received = store.read(held_heartbeats)[chain.agent_id].received_at
    _, agent = check_of(store, now=datetime.now(UTC) + timedelta(seconds=SILENT_AFTER_S + 1))
    assert (agent.state, agent.since) == ("silent", received)
    _, agent = check_of(store, now=datetime.now(UTC))
    assert agent.state == "complete"


def test_a_head_other_than_the_centre_holds_is_a_fork(store: Store, chain: Chain) -> None:
    settle_day(store, chain, 3, 3)
    at = PERIOD_END + timedelta(minutes=1)
    record_heartbeat(store, beat(chain, acked=3, at=at, head=b"\x07" * 32))
    rec, agent = check_of(store, now=at)
    assert not agent.verified and "different chains" in agent.problem
    assert rec.exit_code == 2 and "NOT verified" in render_table(rec)


def test_the_newest_heartbeat_is_kept_and_a_replay_does_not_overwrite_it(store: Store, chain: Chain) -> None:
    settle_day(store, chain, 4, 2)
    old = beat(chain, last_seq=2, acked=2, at=PERIOD_END)
    new = beat(chain, acked=2, at=PERIOD_END + timedelta(minutes=2), pending_since=PERIOD_END)
    assert record_heartbeat(store, old)["stored"] and record_heartbeat(store, new)["stored"]
    assert record_heartbeat(store, old) == {"stored": False, "acked_seq": 2}  # genuine, but older
    held = store.read(held_heartbeats)[chain.agent_id]
    assert (held.last_seq, held.oldest_pending_s) == (4, 120.0)


@pytest.mark.parametrize(
    ("change", "error", "says"),
    [
        ({"key": KeyPair.generate()}, SignatureInvalid, "does not verify"),
        ({"at": datetime.now(UTC) + timedelta(hours=1)}, MalformedRequest, "ahead of the centre's clock"),
        ({"acked": 5}, MalformedRequest, "acked_seq <= last_seq"),
        ({"head": b"short"}, MalformedRequest, "32-byte"),
    ],
)
def test_a_bad_heartbeat_is_refused_and_nothing_is_stored(
    store: Store, chain: Chain, change: dict, error: type, says: str
) -> None:
    settle_day(store, chain, 3, 3)
    kw = {"acked": 3, "at": datetime.now(UTC), **change}
    with pytest.raises(error, match=says):
        record_heartbeat(store, beat(chain, **kw))
    assert store.read(held_heartbeats) == {}
    if error is SignatureInvalid:  # a forgery is a security event
        events = store.read(lambda c: c.execute("SELECT code FROM security_events").fetchall())
        assert events == [("signature_invalid",)]


def test_unknown_agents_and_other_agents_certificates_are_refused(store: Store, chain: Chain) -> None:
    other = enrol(store)
    data = beat(chain, acked=0, at=datetime.now(UTC))
    with pytest.raises(AgentMismatch):
        record_heartbeat(store, data, peer_agent=other.agent_id)
    with pytest.raises(AgentUnknown):
        record_heartbeat(
            store, beat(Chain("H11010100001-99", KeyPair.generate()), acked=0, at=datetime.now(UTC))
        )
    with pytest.raises(MalformedRequest, match="malformed"):
        record_heartbeat(store, b"\x93junk")
    assert store.read(held_heartbeats) == {}


def test_the_route_stores_a_heartbeat_and_answers_errors_in_msgpack(server: Server, agent: Chain) -> None:
    headers = {"Content-Type": MSGPACK, PROTOCOL_HEADER: "1"}
    reply = server.request("POST", HEARTBEAT_PATH, beat(agent, acked=0, at=datetime.now(UTC)), headers)
    assert (reply.status, reply.msgpack()) == (200, {"stored": True, "acked_seq": 0})
    assert server.store.read(held_heartbeats)[agent.agent_id].last_seq == 0
    agent.extend(3)
    reply = server.request("POST", HEARTBEAT_PATH, beat(agent, acked=0, at=datetime.now(UTC)), headers)
    [view] = server.agents()  # the fleet view: how many records the centre lacks, and whether it hears
    assert view["heartbeat"]["last_seq"] == 3 and view["heartbeat"]["records_behind"] == 3
    assert view["heartbeat"]["silent"] is False
    status, text = curl(server.url + "/metrics", None)  # open: this server runs with insecure_dev
    page = samples(text)
    assert status == 200 and value(page, "yibao_central_agent_records_behind", agent_id=agent.agent_id) == 3
    assert value(page, "yibao_central_agent_heartbeat_timestamp_seconds", agent_id=agent.agent_id) > 0
    forged = beat(agent, acked=0, at=datetime.now(UTC), key=KeyPair.generate())
    reply = server.request("POST", HEARTBEAT_PATH, forged, headers)
    assert reply.status == 422 and reply.msgpack()["error"]["code"] == "signature_invalid"
    reply = server.request(
        "POST", HEARTBEAT_PATH, msgspec.json.encode({}), {**headers, "Content-Type": "x/y"}
    )
    assert reply.status == 415
