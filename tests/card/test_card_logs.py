"""Card logs at the agent, through real pcscd and vpcd: a read chains ``used``, a refused card chains
``auth_failed``, and the cashier's lost-card report chains ``lost``; bad reports change nothing."""

from __future__ import annotations

from agent.store import Outbox
from protocol.chain import decode_body, decode_entry
from protocol.records import CardLog
from tests.card.conftest import PSN_NO
from tests.card.test_api_identify import _run


def card_logs(outbox: Outbox) -> list[tuple[str, CardLog]]:
    out = []
    for pending in outbox.read_pending(0, 100, 1 << 20):
        entry = decode_entry(pending.raw)
        record = decode_body(entry)
        assert isinstance(record, CardLog), entry.kind
        out.append((pending.raw, record))
    return out


def test_a_card_read_chains_a_usage_log_without_personal_data(tmp_path, insert):
    insert("valid")

    async def scenario(http, outbox):
        async with http.get("/v1/card") as r:
            ident = (await r.json())["identity"]
            assert r.status == 200
        ((raw, log),) = card_logs(outbox)
        assert (log.event, log.card_sn, log.fixmedins_code, log.opter) == (
            "used", ident["card_sn"], "H37021100001", "his"
        )
        assert PSN_NO.encode() not in raw and ident["psn_name"].encode("utf-8") not in raw

    _run(tmp_path, scenario)


def test_a_counterfeit_card_chains_a_failed_authentication(tmp_path, insert):
    insert("cloned")

    async def scenario(http, outbox):
        async with http.get("/v1/card") as r:
            assert r.status == 422 and (await r.json())["error"]["code"] == "card_auth_failed"
        ((_raw, log),) = card_logs(outbox)
        assert (log.event, log.code) == ("auth_failed", "card_auth_failed") and log.card_sn

    _run(tmp_path, scenario)


def test_no_card_logs_nothing(tmp_path, insert):
    async def scenario(http, outbox):
        async with http.get("/v1/card?wait=0.1") as r:
            assert r.status == 404
        assert outbox.last_seq == 0

    _run(tmp_path, scenario)


def test_the_cashier_reports_a_card_lost_and_bad_reports_change_nothing(tmp_path, insert):
    async def scenario(http, outbox):
        for body, field in (
            ({"card_sn": "110100D15600000503"}, None),  # no reason: the JSON shape is wrong
            ({"card_sn": "1101 00", "reason": "lost"}, "card_sn"),
            ({"card_sn": "110100D15600000503", "reason": "  "}, "reason"),
        ):
            async with http.post("/v1/card/lost", json=body) as r:
                err = (await r.json())["error"]
                assert r.status == 400 and err["code"] == "validation_failed", err
                if field:
                    assert [d["field"] for d in err["details"]] == [field]
        async with http.post("/v1/card/lost", data=b"{not json") as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "validation_failed"
        assert outbox.last_seq == 0  # nothing chained
        async with http.post(
            "/v1/card/lost", json={"card_sn": "110100D15600000503", "reason": "lost on the bus"}
        ) as r:
            answer = await r.json()
            assert r.status == 201 and answer["event"] == "lost" and answer["seq"] == 1
        ((_raw, log),) = card_logs(outbox)
        assert (log.event, log.card_sn, log.reason, log.log_id) == (
            "lost", "110100D15600000503", "lost on the bus", answer["log_id"]
        )

    _run(tmp_path, scenario)
