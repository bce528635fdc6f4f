"""``GET /v1/agents/records``: an agent's own entries back, for an agent restored from an older backup.

Only the agent itself, signed with its key, gets them; only its own, only what the centre holds; bad
parameters are refused with what is wrong.
"""

from __future__ import annotations

from datetime import UTC, datetime

from protocol import canonical
from protocol.wire import PROTOCOL_HEADER, RECORDS_PATH, decode_ack, sign_request

from .conftest import Chain, Reply, Server, enrol


def _get(server: Server, chain: Chain, query: str, *, as_agent: Chain | None = None) -> Reply:
    path = f"{RECORDS_PATH}?{query}"
    signer = as_agent or chain
    at = datetime.now(UTC).isoformat(timespec="seconds")
    headers = sign_request(signer.key, chain.agent_id, "GET", path, at)
    return server.request("GET", path, headers={**headers, PROTOCOL_HEADER: "1"})


def test_an_agent_gets_back_exactly_its_own_held_entries_in_pages(server: Server, agent: Chain) -> None:
    agent.extend(7)
    assert decode_ack(server.post_batch(agent.batch(1, 7)).body).acked_seq == 7
    other = enrol(server.store)
    other.extend(2)
    server.post_batch(other.batch(1, 2))

    reply = _get(server, agent, "after=2&limit=3")
    assert reply.status == 200, reply.body
    answer = canonical.decode_canonical(reply.body)
    assert answer["acked_seq"] == 7
    assert [bytes(e) for e in answer["records"]] == agent.entries[2:5]
    rest = canonical.decode_canonical(_get(server, agent, "after=5").body)
    assert [bytes(e) for e in rest["records"]] == agent.entries[5:7]
    assert canonical.decode_canonical(_get(server, agent, "after=7").body)["records"] == []


def test_refusals_name_what_is_wrong(server: Server, agent: Chain) -> None:
    agent.extend(2)
    server.post_batch(agent.batch(1, 2))
    unsigned = server.request("GET", f"{RECORDS_PATH}?after=0", headers={PROTOCOL_HEADER: "1"})
    assert unsigned.status == 401
    forged = _get(server, agent, "after=0", as_agent=enrol(server.store))  # another agent's key
    assert forged.status == 422 and forged.msgpack()["error"]["code"] == "signature_invalid"
    bad = (("", "after is required"), ("after=x", "whole number"), ("after=0&limit=0", "between"))
    for query, problem in bad:
        reply = _get(server, agent, query)
        assert reply.status == 400 and problem in reply.msgpack()["error"]["message"], (query, reply.body)
