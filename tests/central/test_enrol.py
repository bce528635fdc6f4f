"""Enrolment over real HTTP: tokens are one-time, expiring, bound to a hospital, stored hashed."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import msgspec

from central.api import CONFIG_KEY
from central.intake.enrol import issue_token
from central.policy.tuf_repo import TufRepository
from protocol.batch import KeyPair, key_fingerprint
from protocol.wire import ENROLL_PATH, PROTOCOL_HEADER, root_fingerprint

from .conftest import HOSPITAL, Server


def _request(token: str, key: KeyPair, hospital: str = HOSPITAL) -> dict:
    return {
        "token": token,
        "fixmedins_code": hospital,
        "public_key": key.public_bytes.hex(),
        "agent_version": "t",
    }


def _error_code(reply) -> str:
    return reply.json()["error"]["code"]


def test_enrol_registers_the_key_and_answers_with_its_fingerprint(server: Server) -> None:
    key = KeyPair.generate()
    reply = server.post_json(ENROLL_PATH, _request(issue_token(server.store, HOSPITAL), key))
    assert reply.status == 201
    body = reply.json()
    root = TufRepository.open(server.app[CONFIG_KEY]).current_root_bytes()
    assert body == {
        "agent_id": f"{HOSPITAL}-01",
        "fixmedins_code": HOSPITAL,
        "protocol_version": 1,
        "key_fingerprint": key_fingerprint(key.public_bytes),
        "tuf_root": root.decode(),
        "root_fingerprint": root_fingerprint(root),
        "pooling_area": "110100",
        "client_cert": "",  # no CSR in this request (insecure-dev server): no client certificate
    }
    assert reply.headers[PROTOCOL_HEADER] == "1"
    agents = server.agents()
    assert agents[0]["agent_id"] == f"{HOSPITAL}-01" and agents[0]["last_seq"] == 0
    assert agents[0]["chain_head"] == "00" * 32 and agents[0]["revoked"] is False


def test_the_agent_list_answers_operators_and_only_of_their_areas(server: Server) -> None:
    """Agents' keys, hospitals and versions are the operators' to see, each of their own areas."""
    from central.operators import add_operator

    from .conftest import ACTOR

    server.post_json(ENROLL_PATH, _request(issue_token(server.store, HOSPITAL), KeyPair.generate()))
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic eDp5"}):
        reply = server.request("GET", "/v1/agents", headers=headers)
        assert reply.status == 401 and reply.json()["error"]["code"] == "operator_token_invalid"
    _, far = add_operator(server.store, ACTOR, "far", area="370200")
    reply = server.request("GET", "/v1/agents", headers={"Authorization": f"Bearer {far}"})
    assert reply.status == 200 and reply.json() == []  # an agent of 110100 is not theirs to see
    assert [a["fixmedins_code"] for a in server.agents()] == [HOSPITAL]


def test_second_agent_of_a_hospital_gets_the_next_id(server: Server) -> None:
    ids = []
    for _ in range(2):
        reply = server.post_json(
            ENROLL_PATH, _request(issue_token(server.store, HOSPITAL), KeyPair.generate())
        )
        ids.append(reply.json()["agent_id"])
    assert ids == [f"{HOSPITAL}-01", f"{HOSPITAL}-02"]


def test_replaying_the_same_enrolment_returns_the_same_agent(server: Server) -> None:
    key = KeyPair.generate()
    request = _request(issue_token(server.store, HOSPITAL), key)
    first = server.post_json(ENROLL_PATH, request)
    again = server.post_json(ENROLL_PATH, request)
    assert (first.status, again.status) == (201, 200)
    assert first.json() == again.json()
    assert len(server.agents()) == 1


def test_token_reused_with_another_key_is_refused(server: Server) -> None:
    token = issue_token(server.store, HOSPITAL)
    assert server.post_json(ENROLL_PATH, _request(token, KeyPair.generate())).status == 201
    reply = server.post_json(ENROLL_PATH, _request(token, KeyPair.generate()))
    assert reply.status == 401 and _error_code(reply) == "token_used"


def test_expired_token_is_refused(server: Server) -> None:
    token = issue_token(server.store, HOSPITAL, 1, now=datetime.now(UTC) - timedelta(hours=2))
    reply = server.post_json(ENROLL_PATH, _request(token, KeyPair.generate()))
    assert reply.status == 401 and _error_code(reply) == "token_expired"
    assert server.agents() == []


def test_token_for_another_hospital_is_refused_and_stays_usable(server: Server) -> None:
    token = issue_token(server.store, HOSPITAL)
    reply = server.post_json(ENROLL_PATH, _request(token, KeyPair.generate(), hospital="H99999999999"))
    assert reply.status == 401 and _error_code(reply) == "token_invalid"
    assert "another hospital" in reply.json()["error"]["message"]
    assert server.post_json(ENROLL_PATH, _request(token, KeyPair.generate())).status == 201


def test_unknown_token_is_refused(server: Server) -> None:
    reply = server.post_json(ENROLL_PATH, _request("not-a-token", KeyPair.generate()))
    assert reply.status == 401 and _error_code(reply) == "token_invalid"


def test_malformed_enrolment_bodies_are_400(server: Server) -> None:
    headers = {"Content-Type": "application/json"}
    for body in (b"{not json", b"[]", b'{"token": 1}', b""):
        reply = server.request("POST", ENROLL_PATH, body, headers)
        assert reply.status == 400 and _error_code(reply) == "decode_malformed", body
    bad_key = {**_request(issue_token(server.store, HOSPITAL), KeyPair.generate()), "public_key": "abcd"}
    reply = server.post_json(ENROLL_PATH, bad_key)
    assert reply.status == 400 and "public_key" in reply.json()["error"]["message"]


def test_unsupported_protocol_version_is_refused(server: Server) -> None:
    body = _request(issue_token(server.store, HOSPITAL), KeyPair.generate())
    reply = server.request(
        "POST",
        ENROLL_PATH,
        msgspec.json.encode(body),
        {"Content-Type": "application/json", PROTOCOL_HEADER: "7"},
    )
    assert reply.status == 400 and _error_code(reply) == "protocol_unsupported"


def test_only_a_hash_of_the_token_is_stored(config, store) -> None:
    token = issue_token(store, HOSPITAL)
    dump = "\n".join(sqlite3.connect(config.db_path).iterdump())
    assert token not in dump


def test_tokens_never_look_like_a_command_line_option(server: Server) -> None:
    tokens = [issue_token(server.store, HOSPITAL) for _ in range(200)]
    assert all(t.startswith("yb1_") for t in tokens) and len(set(tokens)) == 200
