"""The replacement-card gate: allowed only once every agent of the area applied (and logged) the lost card's
entry; tests/central/test_card_logs.py covers the logging half."""

from __future__ import annotations

import json

import pytest

from central.cli import main
from central.errors import NotFound
from central.intake.ingest import Ingestor
from central.intake.reports import record_report
from central.policy.cards import replacement_gate
from protocol.chain import encode_body
from protocol.records import CardLog
from protocol.wire import PolicyReport, sign_report

from .conftest import ACTOR, AREA, HOSPITAL, Chain, enrol


def report(store, agent: Chain, blacklist: int) -> None:
    data = sign_report(agent.key, PolicyReport(agent_id=agent.agent_id, at="2026-11-24T10:00:00+08:00",
                                              versions={"blacklist": blacklist}))  # fmt: skip
    assert record_report(store, data)


def test_the_replacement_waits_for_every_agent_of_the_area(store, policy, signers, config, capsys) -> None:
    a, b = enrol(store), enrol(store)
    other_area = enrol(store, "H37021100001")  # another area's agent is not asked
    policy.blacklist_add(ACTOR, signers, list_type="card", entry_id="C-OLD", reason="other", area=AREA)
    lost = policy.blacklist_add(ACTOR, signers, list_type="card", entry_id="C-LOST", reason="lost", area=AREA)
    report(store, a, lost.seq)
    report(store, b, lost.seq - 1)  # still holds the bundle before the loss
    report(store, other_area, 0)
    for agent in (a, b):  # both logged the bundle: this test is about applying it (test_card_logs: logging)
        log = CardLog(event="blacklist_applied", at="2026-11-24T10:00:00+08:00", fixmedins_code=HOSPITAL,
                      log_id=f"C-{agent.agent_id}", opter="agent", area=AREA,
                      bundle_seq=lost.seq)  # fmt: skip
        agent.append_body("card", encode_body(log))
        assert Ingestor(store).ingest(agent.batch(1, 1)).rejected == []
    gate = store.read(lambda c: replacement_gate(c, "C-LOST"))
    assert gate["replacement_allowed"] is False
    (area,) = gate["areas"]
    assert (area["area"], area["bundle_seq"], area["agents"]) == (AREA, lost.seq, 2)
    assert [w["agent_id"] for w in area["waiting"]] == [b.agent_id]
    home = ["--home", str(config.home)]
    assert main([*home, "cards", "gate", "C-LOST"]) == 2
    out = capsys.readouterr().out
    assert "NOT YET" in out and f"waiting for {b.agent_id}" in out
    report(store, b, lost.seq)
    assert main([*home, "cards", "gate", "C-LOST", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["replacement_allowed"] is True


def test_an_agent_that_never_reported_has_not_applied_it_and_a_revoked_one_does_not_count(
    store, policy, signers
) -> None:
    from central.intake.enrol import revoke_agent

    silent, gone = enrol(store), enrol(store)
    policy.blacklist_add(ACTOR, signers, list_type="card", entry_id="C-LOST", reason="lost", area=AREA)
    gate = store.read(lambda c: replacement_gate(c, "C-LOST"))
    assert [w["blacklist_version"] for w in gate["areas"][0]["waiting"]] == [None, None]
    revoke_agent(store, gone.agent_id)
    gate = store.read(lambda c: replacement_gate(c, "C-LOST"))
    assert [w["agent_id"] for w in gate["areas"][0]["waiting"]] == [silent.agent_id]


def test_a_card_on_no_blacklist_is_refused_with_what_to_do(store, config, capsys) -> None:
    with pytest.raises(NotFound, match="report it lost first"):
        store.read(lambda c: replacement_gate(c, "C-NEVER"))
    assert main(["--home", str(config.home), "cards", "gate", "C-NEVER"]) == 1
    assert "blacklist add --type card" in capsys.readouterr().err
