"""Card logs at the centre: stored once from the chain, a lost card becomes a pending blacklist change
an operator approves, and the replacement gate waits until every agent applied *and* logged the entry."""

from __future__ import annotations

import json
import logging
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


def test_the_lost_cards_are_found_by_index_not_by_scanning_every_card_read(store: Store) -> None:
    """Migration 18: ``used_after_loss`` starts from the lost cards and a card's blacklist entries are
    found by card (the plans name the indexes; every card read of a province would be the scan)."""
    def plan(sql: str, *params: str) -> str:
        return " | ".join(r[3] for r in store.read(lambda c: c.execute("EXPLAIN QUERY PLAN " + sql, params)))

    lost = plan("SELECT card_sn FROM card_logs WHERE event = 'lost'")
    assert "card_logs USING INDEX card_logs_lost" in lost
    assert "blacklist USING INDEX blacklist_type_id" in plan(
        "SELECT area FROM blacklist WHERE list_type = 'card' AND id = ?", "C1"
    )


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


LOST_CARD = "110100D15600000777"
SECOND = "H11010100002"  # another hospital of the area


def _history_scenario(store: Store, policy: Policy, signers, checker: Operator) -> tuple[Chain, Chain]:
    """The card is used at A, reported lost at A (approved: blacklisted), then used at B (which had not
    applied the entry yet) and refused at A; another card's log is there too."""
    a, b = enrol(store), enrol(store, SECOND)
    at = "2026-11-24T{}:00+08:00".format
    append_log(a, CardLog(event="used", at=at("08:00"), fixmedins_code=HOSPITAL, log_id="C1", opter="li.na",
                          card_sn=LOST_CARD))  # fmt: skip
    append_log(a, CardLog(event="lost", at=at("09:00"), fixmedins_code=HOSPITAL, log_id="C2", opter="li.na",
                          card_sn=LOST_CARD, reason="stolen with the wallet"))  # fmt: skip
    append_log(a, CardLog(event="used", at=at("09:30"), fixmedins_code=HOSPITAL, log_id="C3", opter="li.na",
                          card_sn="110100D15600000888"))  # fmt: skip
    append_log(b, CardLog(event="used", at="2026-11-24T02:10:00+00:00", fixmedins_code=SECOND, log_id="C4",
                          opter="wang.wei", card_sn=LOST_CARD))  # 10:10 in Beijing  # fmt: skip
    append_log(a, CardLog(event="auth_failed", at=at("11:00"), fixmedins_code=HOSPITAL, log_id="C5",
                          opter="li.na", card_sn=LOST_CARD, code="blacklisted"))  # fmt: skip
    ingestor = Ingestor(store)
    assert ingestor.ingest(a.batch(1, 4)).rejected == [] and ingestor.ingest(b.batch(1, 1)).rejected == []
    (change_id,) = [r[0] for r in rows(store, "SELECT change_id FROM card_logs WHERE change_id IS NOT NULL")]
    change = store.read(lambda c: changes.get_change(c, change_id))
    changes.approve(store, policy, checker, change_id, change["digest"], signers, "checked")
    return a, b


def test_a_cards_history_shows_every_institution_and_the_uses_after_the_loss(
    store: Store, policy: Policy, signers, checker
) -> None:
    from central.errors import NotFound
    from central.intake.cardlogs import card_history

    _a, b = _history_scenario(store, policy, signers, checker)
    h = store.read(lambda c: card_history(c, LOST_CARD))
    assert [(e["event"], e["fixmedins_code"], e["code"], e["after_lost"]) for e in h["events"]] == [
        ("used", HOSPITAL, None, False),
        ("lost", HOSPITAL, None, False),
        ("used", SECOND, None, True),  # ordered by the moment, whatever the offset it was written with
        ("auth_failed", HOSPITAL, "blacklisted", True),
    ]
    assert h["lost_since"] == "2026-11-24T09:00:00+08:00"
    assert (h["used_after_lost"], h["refused_after_lost"], h["hospitals"]) == (1, 1, [HOSPITAL, SECOND])
    assert [(e["area"], e["reason"]) for e in h["blacklist"]] == [(AREA, "stolen with the wallet")]
    assert h["events"][1]["change_id"] is not None and h["events"][2]["agent_id"] == b.agent_id
    with pytest.raises(NotFound, match="in your areas"):
        store.read(lambda c: card_history(c, LOST_CARD, {"370200"}))
    with pytest.raises(NotFound, match="no card log"):
        store.read(lambda c: card_history(c, "110100D15600000999"))


def test_the_cli_prints_a_cards_history_for_a_known_operator_and_audits_it(
    store: Store, policy: Policy, signers, checker, config, act_as, capsys, monkeypatch
) -> None:
    from central.cli import main

    _history_scenario(store, policy, signers, checker)
    home = ["--home", str(config.home)]
    monkeypatch.delenv("YIBAO_OPERATOR_TOKEN", raising=False)
    assert main([*home, "cards", "history", LOST_CARD]) == 4  # no operator: refused, nothing read
    assert "YIBAO_OPERATOR_TOKEN" in capsys.readouterr().err
    act_as("rev", "reviewer", AREA)
    assert main([*home, "cards", "history", LOST_CARD]) == 0
    out = capsys.readouterr().out
    assert f"card {LOST_CARD}: lost or blacklisted since 2026-11-24T09:00:00+08:00" in out
    assert f"{SECOND}  used  by wang.wei" in out and out.count("AFTER LOST") == 1
    assert "4 events at 2 institutions; after the loss: 1 used, 1 refused" in out
    assert main([*home, "cards", "history", LOST_CARD, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["used_after_lost"] == 1
    audited = rows(store, "SELECT operator, detail FROM audit_log WHERE action = 'card.history'")
    assert [op for op, _ in audited] == ["rev", "rev"]
    assert LOST_CARD not in audited[0][1] and json.loads(audited[0][1])["events"] == 4
    assert main([*home, "cards", "history", "110100D15600000999"]) != 0  # unknown card: not found
    assert "no card log" in capsys.readouterr().err
    assert len(rows(store, "SELECT 1 FROM audit_log WHERE action = 'card.history'")) == 2  # not audited


def test_a_cards_history_over_http_within_the_operators_areas(server, policy, signers, caplog) -> None:
    from tests.central.monitor_helpers import operator

    from .test_monitor_api import Client, _error

    store = server.store
    checker = add_operator(store, ACTOR, "checker", area=None, role="policy")[0]
    _history_scenario(store, policy, signers, checker)
    mine = Client(server, operator(store, "mine", AREA, role="reviewer")[1])
    other = Client(server, operator(store, "other", "370200", role="reviewer")[1])
    status, h = mine.get(f"/cards/{LOST_CARD}/history")
    assert status == 200 and h["used_after_lost"] == 1 and len(h["events"]) == 4  # type: ignore[index]
    with caplog.at_level(logging.INFO):
        assert _error(other.get(f"/cards/{LOST_CARD}/history")) == (404, "not_found")
    assert "/v1/monitor/cards/{card_sn}/history refused (not_found)" in caplog.text
    assert LOST_CARD not in caplog.text  # the log names the route, not the card
    assert _error(Client(server, "not-a-token").get(f"/cards/{LOST_CARD}/history"))[0] == 401


def test_the_access_log_hides_the_card_number() -> None:
    from aiohttp.test_utils import make_mocked_request
    from aiohttp.web import Response

    from central.api import RedactingAccessLogger

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("test.cards.access")
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    RedactingAccessLogger(logger, "").log(
        make_mocked_request("GET", f"/v1/monitor/cards/{LOST_CARD}/history"), Response(status=200), 0.002
    )
    assert records and LOST_CARD not in records[0] and '"GET /v1/monitor/cards/-/history" 200' in records[0]


def test_in_the_second_of_the_loss_a_refusal_came_after_it_and_a_use_may_not_have(store: Store) -> None:
    from central.intake.cardlogs import card_history

    a = enrol(store)
    at = "2026-11-24T09:00:00+08:00"
    for n, (event, fields) in enumerate([
        ("lost", {"reason": "lost"}), ("used", {}), ("auth_failed", {"code": "blacklisted"}),
        ("auth_failed", {"code": "card_auth_failed"}),  # a chip that failed: not a refusal for the loss
    ], start=1):  # fmt: skip
        append_log(a, CardLog(event=event, at=at, fixmedins_code=HOSPITAL, log_id=f"T{n}", opter="li.na",
                              card_sn=LOST_CARD, **fields))  # type: ignore[arg-type]  # fmt: skip
    Ingestor(store).ingest(a.batch(1, 4))
    h = store.read(lambda c: card_history(c, LOST_CARD))
    assert [(e["event"], e["code"], e["after_lost"]) for e in h["events"]] == [
        ("lost", None, False), ("used", None, False), ("auth_failed", "blacklisted", True),
        ("auth_failed", "card_auth_failed", False),
    ]  # fmt: skip
    assert (h["used_after_lost"], h["refused_after_lost"]) == (0, 1)


def test_the_lost_cards_used_after_their_loss_are_listed_latest_first(
    store: Store, policy: Policy, signers, checker, config, act_as, capsys
) -> None:
    from central.cli import main
    from central.intake.cardlogs import used_after_loss

    _history_scenario(store, policy, signers, checker)
    # a second lost card, on the blacklist only (no desk report), read later at A
    policy.blacklist_add(ACTOR, signers, list_type="card", entry_id="110100D15600000555", reason="lost",
                         area=AREA)  # fmt: skip
    a = enrol(store)
    append_log(a, CardLog(event="used", at="2099-01-01T08:00:00+08:00", fixmedins_code=HOSPITAL, log_id="L1",
                          opter="li.na", card_sn="110100D15600000555"))  # fmt: skip
    append_log(a, CardLog(event="used", at="2026-11-24T12:00:00+08:00", fixmedins_code=HOSPITAL, log_id="L2",
                          opter="li.na", card_sn="110100D15600000888"))  # used, never lost: not listed
    Ingestor(store).ingest(a.batch(1, 2))
    found = store.read(lambda c: used_after_loss(c))
    assert [(f["card_sn"], f["used_after_lost"], f["hospitals"]) for f in found] == [
        ("110100D15600000555", 1, [HOSPITAL]),
        (LOST_CARD, 1, [SECOND]),
    ]
    assert found[1]["refused_after_lost"] == 1 and found[1]["last_used"] == "2026-11-24T02:10:00+00:00"
    assert store.read(lambda c: used_after_loss(c, {"370200"})) == []  # no agent of that area saw them
    assert [f["card_sn"] for f in store.read(lambda c: used_after_loss(c, limit=1))] == ["110100D15600000555"]
    act_as("rev", "reviewer", AREA)
    assert main(["--home", str(config.home), "cards", "used-after-loss"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1].startswith(f"{LOST_CARD}: lost since 2026-11-24T09:00:00+08:00; used 1 times")
    assert f"at {SECOND}; refused 1 times" in out and "2 lost cards used after their loss" in err
