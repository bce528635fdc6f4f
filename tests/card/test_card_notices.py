"""Card corrections and notices end to end at the agent, through real pcscd and vpcd: a ``cards`` bundle
from a TUF repository on loopback (fetched by the agent's real TUF client) says the virtual card was
replaced and carries a top-up notice; ``GET /v1/card`` shows both beside the identity; a settlement (and a
preview) with that card is refused ``card_replaced`` with nothing written but the read's card log; a card
whose data is only outdated is shown corrected and still settles."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.api import create_app
from agent.card import CardReader
from agent.config import AgentConfig
from agent.enrol import pin_tuf_root
from agent.policy import PolicyClient
from agent.policy_store import PolicyStore
from agent.store import Outbox
from protocol.bundles import CardCorrection, CardNotice, CardsEntry
from protocol.chain import decode_body, decode_entry
from protocol.records import CardLog
from simulators.vcard import card_for
from tests.agent.tufrepo import AREA, Repo, serve
from tests.card.conftest import PSN_NO
from tests.conftest import example_settlement, with_client

TOKEN = "his-secret-token"
OTHER_PSN = "370202199002022345"
NEW_CARD = "370202N000000001"


def _publish_cards(repo: Repo, card_sn: str, data_only_sn: str) -> None:
    replaced = CardCorrection(card_sn, NEW_CARD, ("expires",), "replaced after loss")
    corrected = CardCorrection(data_only_sn, "", ("psn_name",), "name changed by deed poll")
    topup = CardNotice(
        "TOPUP-7", card_sn, "topup", 20000, "district subsidy credited", "2020-01-01", "2099-12-31"
    )
    expired = CardNotice("OLD-1", card_sn, "message", None, "renew by June", "2020-01-01", "2020-06-30")
    repo.cards(1, [
        CardsEntry("+", "correction", card_sn, correction=replaced),
        CardsEntry("+", "correction", data_only_sn, correction=corrected),
        CardsEntry("+", "notice", topup.id, notice=topup),
        CardsEntry("+", "notice", expired.id, notice=expired),
    ])  # fmt: skip
    repo.publish()


def _run(tmp_path: Path, scenario) -> None:
    async def main() -> None:
        repo = Repo(tmp_path / "repo")
        _publish_cards(repo, card_for(PSN_NO).card_sn, card_for(OTHER_PSN).card_sn)
        with serve(repo.base) as url:
            config = AgentConfig(home=tmp_path, agent_id="H1-01", fixmedins_code="H37021100001",
                                 central_url=url, pooling_area=AREA)  # fmt: skip
            pin_tuf_root(config, repo.root_bytes())
            policy = PolicyStore(config.policy_db_path)
            result = await asyncio.to_thread(PolicyClient(config, policy).update)
            assert result.ok and [a.kind for a in result.applied] == ["cards"], result.refused
            outbox = Outbox(tmp_path / "agent.db", agent_id="H1-01")
            reader = CardReader()
            app = create_app(config, outbox, None, TOKEN, card_reader=reader, policy=policy)
            try:
                await with_client(app, TOKEN, scenario, outbox)
            finally:
                outbox.close()
                reader.close()
                policy.close()

    asyncio.run(main())


def _settlement(his_setl_no: str, ident: dict) -> dict:
    body = example_settlement(his_setl_no)
    body["psn"].update(
        psn_no=ident["psn_no"], card_sn=ident["card_sn"], insuplc_admdvs=ident["insuplc_admdvs"]
    )
    body["mdtrt_cert_type"], body["mdtrt_cert_no"] = ident["mdtrt_cert_type"], ident["mdtrt_cert_no"]
    return body


def test_a_replaced_card_is_shown_with_its_notice_and_refused_at_settlement(tmp_path, insert):
    insert("valid", PSN_NO)

    async def scenario(http, outbox):
        async with http.get("/v1/card") as r:
            body = await r.json()
            assert r.status == 200, body
        ident = body["identity"]
        assert ident["card_sn"] == card_for(PSN_NO).card_sn and ident["authenticated"] is True
        assert body["correction"] == {
            "card_sn": ident["card_sn"], "replaced": True, "new_card_sn": NEW_CARD, "fields": ["expires"],
            "reason": "replaced after loss", "bundle_seq": 1,
        }  # fmt: skip
        # valid today only: the June 2020 message is over
        assert [(n["id"], n["type"], n["amount_fen"]) for n in body["notices"]] == [
            ("TOPUP-7", "topup", 20000)
        ]
        assert outbox.last_seq == 1  # the read's `used` log

        settle = _settlement("REPLACED-1", ident)
        for path in ("/v1/settlements/preview", "/v1/settlements"):
            async with http.post(path, json=settle) as r:
                err = (await r.json())["error"]
                assert r.status == 403, err
            assert err["code"] == "card_replaced" and err["new_card_sn"] == NEW_CARD
            assert "new social-security card" in err["action"] and NEW_CARD in err["message"]
            assert PSN_NO not in err["message"] and ident["psn_name"] not in err["message"]
        # no settlement; the settlement's refusal (not the preview's) is chained as the card's event
        assert outbox.last_seq == 2 and not outbox.has_settlement("REPLACED-1")
        refused = decode_body(decode_entry(outbox.read_pending(1, 1, 1 << 20)[0].raw))
        assert isinstance(refused, CardLog)
        assert (refused.event, refused.code) == ("auth_failed", "card_replaced")
        assert refused.card_sn == ident["card_sn"]

    _run(tmp_path, scenario)


def test_a_card_with_outdated_data_is_shown_corrected_and_still_settles(tmp_path, insert):
    insert("valid", OTHER_PSN)

    async def scenario(http, outbox):
        async with http.get("/v1/card") as r:
            body = await r.json()
            assert r.status == 200, body
        assert body["correction"]["replaced"] is False and body["correction"]["new_card_sn"] is None
        assert body["correction"]["fields"] == ["psn_name"] and body["notices"] == []
        async with http.post("/v1/settlements", json=_settlement("CORRECTED-1", body["identity"])) as r:
            assert r.status == 201, await r.text()

    _run(tmp_path, scenario)
