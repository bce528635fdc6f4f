"""A settlement refused because of its card is a card event: ``auth_failed`` with the refusal's code,
chained before the cashier is answered (``agent.cardlog``), so the centre's history of a lost card shows
where it was tried. Refusals for anything but the card (the person, the employer) log nothing, a preview
logs nothing, and a log that cannot be chained never hides the refusal."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.errors import Blacklisted, CardReplaced
from agent.policy_store import PolicyStore
from agent.settle import settle_body
from agent.store import Outbox
from protocol.bundles import BlacklistEntry, BundleHeader, CardCorrection, CardsEntry
from protocol.chain import decode_body, decode_entry
from protocol.records import CardLog, Settlement
from tests.agent.tufrepo import AREA, card, now_iso
from tests.conftest import example_settlement

HOSPITAL = "H37021100001"
LOST, OLD, NEW = "370200A000000011", "370200A000000012", "370200A000000013"


@pytest.fixture
def policy(tmp_path: Path) -> PolicyStore:
    store = PolicyStore(tmp_path / "policy.db")
    store.apply_blacklist(
        BundleHeader("blacklist", AREA, 1, None, now_iso()),
        [card(LOST, reason="reported lost"),
         BlacklistEntry("+", "person", "P-DECEASED", "deceased", "civil affairs", "")],
    )  # fmt: skip
    correction = CardCorrection(OLD, NEW, ("expires",), "replaced after loss")
    store.apply_cards(
        BundleHeader("cards", AREA, 1, None, now_iso()),
        [CardsEntry("+", "correction", OLD, correction=correction)],
    )
    yield store
    store.close()


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "agent.db", agent_id="A1")
    yield box
    box.close()


def body(no: str, *, card_sn: str, psn_no: str | None = None) -> bytes:
    b = example_settlement(no)
    b["fixmedins_code"] = HOSPITAL
    b["psn"]["card_sn"] = card_sn
    if psn_no:
        b["psn"]["psn_no"] = psn_no
    return json.dumps(b).encode()


def chained(outbox: Outbox) -> list[CardLog | Settlement]:
    return [decode_body(decode_entry(p.raw)) for p in outbox.read_pending(0, 100, 1 << 20)]


def settle(raw: bytes, outbox: Outbox, policy: PolicyStore, tmp_path: Path) -> tuple[int, dict]:
    config = AgentConfig(home=tmp_path, agent_id="A1", fixmedins_code=HOSPITAL)
    return asyncio.run(settle_body(raw, config, outbox, policy=policy))


def test_a_blacklisted_or_replaced_card_refused_at_settlement_is_logged(outbox, policy, tmp_path) -> None:
    with pytest.raises(Blacklisted):
        settle(body("S1", card_sn=LOST), outbox, policy, tmp_path)
    with pytest.raises(CardReplaced):
        settle(body("S2", card_sn=OLD), outbox, policy, tmp_path)
    logs = chained(outbox)
    assert [(r.event, r.card_sn, r.code, r.fixmedins_code, r.opter) for r in logs] == [
        ("auth_failed", LOST, "blacklisted", HOSPITAL, example_settlement()["opter"]),
        ("auth_failed", OLD, "card_replaced", HOSPITAL, example_settlement()["opter"]),
    ]
    assert all(isinstance(r, CardLog) for r in logs) and outbox.last_seq == 2  # no settlement written
    # each refused attempt is one log: the HIS sending it again is tried again
    with pytest.raises(Blacklisted):
        settle(body("S1", card_sn=LOST), outbox, policy, tmp_path)
    assert outbox.last_seq == 3


def test_refusals_for_anything_but_the_card_log_nothing(outbox, policy, tmp_path) -> None:
    with pytest.raises(Blacklisted) as err:
        settle(body("S1", card_sn="370200A000000099", psn_no="P-DECEASED"), outbox, policy, tmp_path)
    assert err.value.extra["list_type"] == "person"
    assert outbox.last_seq == 0
    status, _answer = settle(body("S2", card_sn="370200A000000099"), outbox, policy, tmp_path)
    assert status == 201 and [type(r).__name__ for r in chained(outbox)] == ["Settlement"]


def test_a_log_the_outbox_refuses_does_not_hide_the_refusal(policy, tmp_path, caplog) -> None:
    full = Outbox(tmp_path / "full.db", agent_id="A1", max_records=0)  # a backlog at its limit
    try:
        with pytest.raises(Blacklisted):
            settle(body("S1", card_sn=LOST), full, policy, tmp_path)
        assert full.last_seq == 0
    finally:
        full.close()
    assert "was not logged (outbox_full)" in caplog.text and LOST not in caplog.text
