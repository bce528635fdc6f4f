"""Card logs at the centre: stored once from the chain, a lost card becomes a pending blacklist change
an operator approves, and the replacement gate waits until every agent applied *and* logged the entry."""

from __future__ import annotations

import sqlite3

import pytest

from central.intake.ingest import Ingestor
from central.intake.reports import record_report
from central.operators import Operator, add_operator
from central.policy import changes
from central.policy.bundles import Policy
from central.policy.cards import replacement_gate
from central.storage.store import Store
from protocol.chain import encode_body
from protocol.records import CardLog
from protocol.wire import PolicyReport, sign_report

from .conftest import ACTOR, AREA, HOSPITAL, Chain, enrol, settlement

AT = "2026-11-24T10:00:00+08:00"


def card_log(event: str, n: int, **fields: object) -> CardLog:
    return CardLog(event=event, at=AT, fixmedins_code=HOSPITAL, log_id=f"C{n:04d}", opter="li.na",
                   **fields)  # type: ignore[arg-type]  # fmt: skip


def append_log(chain: Chain, log: CardLog) -> None:
    chain.append_body("card", encode_body(log))


def rows(store: Store, sql: str) -> list[tuple]:
    return store.read(lambda c: c.execute(sql).fetchall())


def report(store: Store, agent: Chain, blacklist: int) -> None:
    versions = {"blacklist": blacklist}
    data = sign_report(agent.key, PolicyReport(agent_id=agent.agent_id, at=AT, versions=versions))
    assert record_report(store, data)


@pytest.fixture
def checker(store: Store) -> Operator:
    return add_operator(store, ACTOR, "checker", area=None, role="policy")[0]


def test_card_logs_are_stored_once_and_a_lost_card_becomes_a_pending_change(
    store: Store, policy: Policy, signers, checker
) -> None:
    chain = enrol(store)
    chain.append(settlement(f"S{chain.agent_id}-1"))
    append_log(chain, card_log("used", 1, card_sn="110100D15600000501"))
    append_log(chain, card_log("auth_failed", 2, card_sn="110100D15600000502", code="card_auth_failed"))
    append_log(chain, card_log("lost", 3, card_sn="110100D15600000503", reason="lost on the bus"))
    ingestor = Ingestor(store)
    ack = ingestor.ingest(chain.batch(1, 4))
    assert (ack.code, ack.acked_seq, ack.rejected) == ("stored", 4, [])
    again = ingestor.ingest(chain.batch(1, 4))  # re-sent: nothing stored twice
    assert again.code == "duplicate"
    held = rows(store, "SELECT seq, event, card_sn, code, reason, change_id FROM card_logs ORDER BY seq")
    (change_id,) = [r[5] for r in held if r[5] is not None]
    assert held == [
        (2, "used", "110100D15600000501", None, None, None),
        (3, "auth_failed", "110100D15600000502", "card_auth_failed", None, None),
        (4, "lost", "110100D15600000503", None, "lost on the bus", change_id),
    ]
    assert rows(store, "SELECT count(*) FROM settlements") == [(1,)]
    from central.intake.reconcile import verify_stored_chain
    from central.storage.store import get_agent

    def verified(c: sqlite3.Connection) -> tuple:
        agent = get_agent(c, chain.agent_id)
        assert agent is not None
        return verify_stored_chain(c, agent)

    assert store.read(verified) == (True, True, None)  # card logs count as held records, not missing ones
    change = store.read(lambda c: changes.get_change(c, change_id))
    assert (change["status"], change["action"], change["area"], change["maker"]) == (
        "pending", "blacklist.add", AREA, f"desk:{chain.agent_id}"
    )
    assert [(e["list_type"], e["id"]) for e in change["entries_shown"]] == [("card", "110100D15600000503")]
    assert policy.blacklist_list(AREA) == []  # nothing an agent says is published unchecked

    done, published = changes.approve(store, policy, checker, change_id, change["digest"], signers, "checked")
    assert published is not None and done["status"] == "published"
    assert [e["id"] for e in policy.blacklist_list(AREA)] == ["110100D15600000503"]


def test_a_bad_card_log_is_rejected_in_the_chain_and_changes_nothing(store: Store) -> None:
    chain = enrol(store)
    append_log(chain, card_log("used", 1))  # no card_sn: does not validate
    append_log(chain, CardLog(event="lost", at=AT, fixmedins_code="H99999999999", log_id="C2", opter="x",
                              card_sn="110100D1", reason="lost"))  # another hospital  # fmt: skip
    chain.append(settlement(f"S{chain.agent_id}-3"))
    ack = Ingestor(store).ingest(chain.batch(1, 3))
    assert ack.acked_seq == 3
    assert [(r.seq, r.code) for r in ack.rejected] == [(1, "validation_failed"), (2, "hospital_mismatch")]
    assert "card_sn" in ack.rejected[0].message
    assert rows(store, "SELECT count(*) FROM card_logs") == [(0,)]
    assert rows(store, "SELECT count(*) FROM change_requests") == [(0,)]
    assert rows(store, "SELECT count(*) FROM settlements") == [(1,)]  # the chain flows on


def test_the_gate_waits_until_every_agent_applied_and_logged_the_entry(store: Store, policy, signers) -> None:
    a, b = enrol(store), enrol(store)
    policy.blacklist_add(ACTOR, signers, list_type="card", entry_id="C-OLD", reason="stolen", area=AREA)
    lost = policy.blacklist_add(ACTOR, signers, list_type="card", entry_id="C-LOST", reason="lost", area=AREA)
    report(store, a, lost.seq)
    report(store, b, lost.seq)  # both applied it, neither logged it yet
    gate = store.read(lambda c: replacement_gate(c, "C-LOST"))
    assert gate["replacement_allowed"] is False and gate["logged_by_agents"] == 0
    assert {w["agent_id"]: (w["applied"], w["logged"]) for w in gate["areas"][0]["waiting"]} == {
        a.agent_id: (True, False), b.agent_id: (True, False)
    }
    ingestor = Ingestor(store)
    append_log(a, card_log("blacklist_applied", 1, area=AREA, bundle_seq=lost.seq))
    append_log(b, card_log("blacklist_applied", 2, area=AREA, bundle_seq=lost.seq - 1))  # an older bundle
    ingestor.ingest(a.batch(1, 1))
    ingestor.ingest(b.batch(1, 1))
    gate = store.read(lambda c: replacement_gate(c, "C-LOST"))
    (area,) = gate["areas"]
    assert gate["replacement_allowed"] is False and gate["logged_by_agents"] == 1
    assert [(w["agent_id"], w["logged_seq"]) for w in area["waiting"]] == [(b.agent_id, lost.seq - 1)]
    append_log(b, card_log("blacklist_applied", 3, area=AREA, bundle_seq=lost.seq))
    ingestor.ingest(b.batch(2, 2))
    gate = store.read(lambda c: replacement_gate(c, "C-LOST"))
    assert gate["replacement_allowed"] is True and gate["areas"][0]["waiting"] == []


def test_a_blacklist_applied_log_of_another_area_is_refused(store: Store) -> None:
    chain = enrol(store)
    append_log(chain, card_log("blacklist_applied", 1, area="370200", bundle_seq=1))
    ack = Ingestor(store).ingest(chain.batch(1, 1))
    assert [r.code for r in ack.rejected] == ["field_invalid"]
    assert store.read(lambda c: c.execute("SELECT count(*) FROM card_logs").fetchone()) == (0,)


def test_card_logs_table_comes_from_a_new_migration(store: Store) -> None:
    def names(c: sqlite3.Connection) -> list[str]:
        return [r[0] for r in c.execute("SELECT name FROM _migrations ORDER BY version")]

    assert store.read(names)[15] == "_m016_card_logs"  # version 16; later migrations follow it


def test_the_gate_over_http_within_the_operators_areas(server, policy, signers) -> None:
    from tests.central.monitor_helpers import operator

    from .test_monitor_api import Client, _error

    store = server.store
    a = enrol(store)
    lost = policy.blacklist_add(ACTOR, signers, list_type="card", entry_id="C-LOST", reason="lost", area=AREA)
    mine = Client(server, operator(store, "mine", AREA, role="reviewer")[1])
    other = Client(server, operator(store, "other", "370200", role="reviewer")[1])
    status, gate = mine.get("/cards/C-LOST/gate")
    assert status == 200 and gate["replacement_allowed"] is False  # type: ignore[index]
    assert [w["agent_id"] for w in gate["areas"][0]["waiting"]] == [a.agent_id]  # type: ignore[index]
    report(store, a, lost.seq)
    append_log(a, card_log("blacklist_applied", 1, area=AREA, bundle_seq=lost.seq))
    Ingestor(store).ingest(a.batch(1, 1))
    status, gate = mine.get("/cards/C-LOST/gate")
    assert status == 200 and gate["replacement_allowed"] is True  # type: ignore[index]
    assert _error(other.get("/cards/C-LOST/gate")) == (404, "not_found")  # not an area of theirs
    assert _error(other.get(f"/cards/C-LOST/gate?area={AREA}"))[0] == 403
