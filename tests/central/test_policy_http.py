"""Policy over HTTP: the change signal (long-poll), signed agent reports, GET /v1/agents, enrolment."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest

from central.errors import AreaRequired
from central.intake.enrol import enrol_agent, issue_token, revoke_agent
from central.policy.bundles import Policy, set_default_area
from central.policy.tuf_repo import TufRepository
from central.storage.store import security_events
from protocol.batch import KeyPair
from protocol.wire import (
    MSGPACK,
    POLICY_CHANGES_PATH,
    POLICY_REPORT_PATH,
    PROTOCOL_HEADER,
    EnrollRequest,
    PolicyReport,
    sign_report,
)

from .conftest import ACTOR, AREA, HOSPITAL, Chain, Server, enrol, set_settings

BIN = Path(sys.executable).parent / "yibao-central"


def _changes(server: Server, query: str) -> tuple[int, dict, float]:
    started = time.monotonic()
    reply = server.request("GET", f"{POLICY_CHANGES_PATH}?{query}")
    return reply.status, reply.json(), time.monotonic() - started  # type: ignore[return-value]


def test_the_change_signal_answers_at_once_when_something_is_newer(server: Server) -> None:
    status, body, took = _changes(server, "have=0")
    assert status == 200 and body == {"timestamp_version": 1} and took < 1
    status, body, took = _changes(server, "have=1&wait=0.3")
    assert body == {"timestamp_version": 1} and 0.25 < took < 2
    assert _changes(server, "have=x")[0] == 400
    assert _changes(server, "have=-1")[0] == 400


def test_a_publish_from_another_process_wakes_the_long_poll(server: Server, config) -> None:
    from central.operators import add_operator

    _, token = add_operator(server.store, ACTOR, "ops1", area=None, role="policy")
    set_settings(config.home, approvals_required=1)  # one process publishes
    result: dict = {}

    def poll() -> None:
        result["answer"] = _changes(server, "have=1&wait=20")

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(0.3)
    started = time.monotonic()
    out = subprocess.run(
        [str(BIN), "--home", str(config.home), "blacklist", "add", "--type", "card", "--id", "C1",
         "--reason", "lost", "--area", AREA],
        capture_output=True, text=True, timeout=60, env={**os.environ, "YIBAO_OPERATOR_TOKEN": token},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    waiter.join(timeout=20)
    status, body, _ = result["answer"]
    assert status == 200 and body == {"timestamp_version": 2}
    assert time.monotonic() - started < 5  # the CLI's run plus at most a watcher tick


def test_shutdown_answers_waiting_polls(config) -> None:
    from .conftest import start_server

    srv, stop = start_server(config)
    result: dict = {}
    waiter = threading.Thread(target=lambda: result.setdefault("a", _changes(srv, "have=1")))
    waiter.start()
    time.sleep(0.3)
    started = time.monotonic()
    stop()
    waiter.join(timeout=10)
    assert result["a"][1] == {"timestamp_version": 1} and time.monotonic() - started < 5


def _report(agent: Chain, versions: dict[str, int], at: str = "2026-11-24T10:00:00+08:00", **kw) -> bytes:
    return sign_report(agent.key, PolicyReport(agent_id=agent.agent_id, at=at, versions=versions, **kw))


def _post_report(server: Server, data: bytes, content_type: str = MSGPACK):
    return server.request(
        "POST", POLICY_REPORT_PATH, data, {"Content-Type": content_type, PROTOCOL_HEADER: "1"}
    )


def test_reports_are_verified_and_agents_show_how_far_behind_they_are(server: Server, agent: Chain, config,
                                                                       signers) -> None:  # fmt: skip
    policy = Policy(server.store, TufRepository.open(config), config)
    for i in range(3):
        policy.blacklist_add(ACTOR, signers, list_type="card", entry_id=f"C{i}", reason="lost", area=AREA)
    policy.publish_document(ACTOR, signers, "rules", {"area": AREA, "format": 1, "rules": []})
    policy.publish_document(
        ACTOR, signers, "rules", {"area": "370200", "format": 1, "rules": []}
    )  # another area
    (view,) = server.agents()  # type: ignore[misc]
    assert view["pooling_area"] == AREA and view["policy"] is None
    assert view["behind"] == {"blacklist": 3, "rules": 1, "policy": 0, "catalogue": 0, "keys": 0, "cards": 0}

    versions = {"root": 1, "timestamp": 4, "snapshot": 4, "targets": 4, "blacklist": 2, "rules": 1}
    reply = _post_report(server, _report(agent, versions, problems=["bundle_rollback"]))
    assert reply.status == 200 and reply.msgpack() == {"stored": True}
    (view,) = server.agents()  # type: ignore[misc]
    assert view["policy"]["versions"] == versions and view["policy"]["problems"] == ["bundle_rollback"]
    assert view["policy"]["reported_at"] == "2026-11-24T10:00:00+08:00" and view["policy"]["received_at"]
    assert view["behind"] == {"blacklist": 1, "rules": 0, "policy": 0, "catalogue": 0, "keys": 0, "cards": 0}
    # an older report (a replay) is accepted but does not roll the view back
    old = _report(agent, {"blacklist": 1}, at="2026-11-24T09:00:00+08:00")
    assert _post_report(server, old).msgpack() == {"stored": False}
    (view,) = server.agents()  # type: ignore[misc]
    assert view["policy"]["versions"] == versions
    # a clock that ran ahead and was corrected does not pin the view
    assert (
        _post_report(server, _report(agent, {"blacklist": 9}, at="2099-01-01T00:00:00+00:00")).status == 200
    )
    assert _post_report(server, _report(agent, {"blacklist": 3})).msgpack() == {"stored": True}


def test_a_report_with_a_bad_signature_is_refused_and_recorded(server: Server, agent: Chain) -> None:
    forged = sign_report(
        KeyPair.generate(), PolicyReport(agent_id=agent.agent_id, at="2026-11-24T10:00:00+08:00", versions={})
    )
    reply = _post_report(server, forged)
    assert reply.status == 422 and reply.msgpack()["error"]["code"] == "signature_invalid"
    events = server.store.read(lambda conn: security_events(conn, agent.agent_id))
    assert [e["code"] for e in events] == ["signature_invalid"]
    (view,) = server.agents()  # type: ignore[misc]
    assert view["policy"] is None
    # a tampered version after signing
    report = msgspec.msgpack.decode(_report(agent, {"blacklist": 5}))
    report["versions"]["blacklist"] = 50
    assert _post_report(server, msgspec.msgpack.encode(report)).status == 422


def test_reports_from_unknown_or_revoked_agents_and_junk_are_refused(server: Server, agent: Chain) -> None:
    stranger = Chain("H11010100001-99", KeyPair.generate())
    reply = _post_report(server, _report(stranger, {}))
    assert reply.status == 403 and reply.msgpack()["error"]["code"] == "agent_unknown"
    assert _post_report(server, b"\x93junk").msgpack()["error"]["code"] == "decode_malformed"
    assert _post_report(server, _report(agent, {}), "application/json").status == 415
    assert _post_report(server, _report(agent, {"Blacklist": 1})).status == 400
    assert _post_report(server, _report(agent, {}, at="yesterday")).status == 400
    assert _post_report(server, b"\x00" * 70_000).status == 413
    revoke_agent(server.store, agent.agent_id)
    reply = _post_report(server, _report(agent, {}))
    assert reply.status == 403 and reply.msgpack()["error"]["code"] == "agent_revoked"


def test_enrolment_carries_the_pooling_area(store, config) -> None:
    key = KeyPair.generate()
    token = issue_token(store, "H37021100001")
    response, _ = enrol_agent(
        store, EnrollRequest(token=token, fixmedins_code="H37021100001", public_key=key.public_bytes.hex())
    )
    assert response.pooling_area == "370200"
    token = issue_token(store, "H37021100002", area="370211")
    request = EnrollRequest(token=token, fixmedins_code="H37021100002", public_key=key.public_bytes.hex())
    assert enrol_agent(store, request)[0].pooling_area == "370211"
    assert enrol_agent(store, request)[0].pooling_area == "370211"  # a replayed enrolment too
    with pytest.raises(AreaRequired, match="--area"):
        issue_token(store, "CLINIC7")
    set_default_area(store, "110100")
    token = issue_token(store, "CLINIC7")
    request = EnrollRequest(
        token=token, fixmedins_code="CLINIC7", public_key=KeyPair.generate().public_bytes.hex()
    )
    assert enrol_agent(store, request)[0].pooling_area == "110100"
    assert enrol(store).agent_id.startswith(HOSPITAL)
