"""The /v1/monitor JSON API on a real server: the workflow, its errors, publishing blacklist decisions."""

from __future__ import annotations

from datetime import date, timedelta

import msgspec
import pytest

from central.cli import main
from central.config import CentralConfig

from .conftest import Server
from .monitor_helpers import AREA, HOSPITAL, finding, hit, operator, suspect


class Client:
    def __init__(self, server: Server, token: str) -> None:
        self.server, self.token = server, token

    def get(self, path: str) -> tuple[int, object]:
        reply = self.server.request(
            "GET", "/v1/monitor" + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        assert reply.headers["Content-Type"].startswith("application/json")
        return reply.status, reply.json()

    def post(self, path: str, obj: object = None, *, raw: bytes | None = None) -> tuple[int, object]:
        body = raw if raw is not None else msgspec.json.encode(obj)
        reply = self.server.request("POST", "/v1/monitor" + path, body, {
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"
        })  # fmt: skip
        return reply.status, reply.json()


@pytest.fixture
def sup(server: Server) -> Client:
    return Client(server, operator(server.store, "sup", AREA)[1])


@pytest.fixture
def rev(server: Server) -> Client:
    return Client(server, operator(server.store, "rev", AREA, role="reviewer")[1])


def _error(reply: tuple[int, object]) -> tuple[int, str]:
    status, body = reply
    return status, body["error"]["code"]  # type: ignore[index]


def _count(server: Server, table: str) -> int:
    return server.store.read(lambda c: c.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_the_workflow_over_http(server: Server, sup: Client, rev: Client) -> None:
    a, b, c, d = suspect(
        server.store,
        finding(hit("A", evidence=({"value": 15, "threshold": 10},)), weight=60, amount_fen=100),
        finding(hit("B"), weight=60, amount_fen=900),
        finding(hit("C"), weight=30),
        finding(hit("S", mode="shadow")),
    )
    assert rev.get("/operators/me") == (200, {
        "name": "rev", "main_area": AREA, "areas": [], "scope": [AREA], "role": "reviewer",
        "roles": ["reviewer"],
        "created_at": rev.get("/operators/me")[1]["created_at"], "disabled_at": None,  # type: ignore[index]
    })  # fmt: skip
    status, queue = rev.get("/suspicions")
    assert status == 200 and [s["id"] for s in queue] == [a, b, c]  # type: ignore[union-attr]
    assert [s["severity"] for s in queue] == ["red", "yellow", "green"]  # type: ignore[union-attr]
    assert [s["id"] for s in rev.get("/suspicions?min_score=60")[1]] == [a, b]  # type: ignore[union-attr]
    assert [s["id"] for s in rev.get("/suspicions?status=shadow")[1]] == [d]  # type: ignore[union-attr]
    assert len(rev.get("/suspicions?status=all")[1]) == 4  # type: ignore[arg-type]
    assert _error(rev.get("/suspicions?status=bogus")) == (400, "input_invalid")
    assert _error(rev.get("/suspicions?min_score=x")) == (400, "input_invalid")
    status, one = rev.get(f"/suspicions/{a}")
    assert status == 200 and one["psn_no"] == "P0000000001" and one["reviews"] == []  # type: ignore[index]

    assert _error(rev.post(f"/suspicions/{a}/review", {"outcome": "confirm"})) == (400, "input_invalid")
    assert _error(rev.post(f"/suspicions/{a}/review", raw=b"{not json")) == (400, "decode_malformed")
    assert _error(rev.post(f"/suspicions/{a}/review", [1])) == (400, "decode_malformed")
    for s in (a, b, c):
        status, body = rev.post(f"/suspicions/{s}/review", {"outcome": "confirm", "reason": "records agree"})
        assert status == 200 and body["status"] == "confirmed"  # type: ignore[index]
    assert _error(rev.post(f"/suspicions/{a}/review", {"outcome": "dismiss", "reason": "x"})) == (
        409,
        "workflow_state",
    )
    assert rev.post(f"/suspicions/{d}/review", {"outcome": "dismiss", "reason": "false hit"})[0] == 200
    assert _error(rev.post("/cases", {"suspicions": [d], "title": "shadow"})) == (409, "workflow_state")
    assert _error(rev.post("/cases", {"suspicions": ["a"], "title": "t"})) == (400, "input_invalid")

    status, case = rev.post("/cases", {"suspicions": [a, b], "title": "duplicate dispensing"})
    assert status == 201 and case["status"] == "open" and case["amount_fen"] == 1000  # type: ignore[index]
    cid = case["id"]  # type: ignore[index]
    assert rev.post(f"/cases/{cid}/suspicions", {"suspicions": [c]})[0] == 200
    status, case = rev.post(f"/cases/{cid}/assign", {"assignee": "sup"})
    assert status == 200 and case["assignee"] == "sup"  # type: ignore[index]
    status, case = rev.post(f"/cases/{cid}/notes", {"text": "log attached", "kind": "evidence",
                                                    "detail": {"pages": 3}})  # fmt: skip
    assert status == 201 and case["notes"][-1]["detail"] == {"pages": 3}  # type: ignore[index]
    status, listed = rev.get("/cases")
    assert status == 200 and [(x["id"], x["suspicions"]) for x in listed] == [(cid, 3)]  # type: ignore[union-attr]

    deduction = {
        "kind": "deduction",
        "target_type": "hospital",
        "target_id": HOSPITAL,
        "reason": "overcharge",
    }
    assert _error(rev.post(f"/cases/{cid}/decisions", {**deduction, "amount": "12.30"})) == (
        403,
        "role_forbidden",
    )
    before = (_count(rev.server, "decisions"), _count(rev.server, "audit_log"))
    assert _error(sup.post(f"/cases/{cid}/decisions", {**deduction, "amount": "12.345"})) == (
        400,
        "input_invalid",
    )
    assert _error(sup.post(f"/cases/{cid}/decisions", {**deduction, "amount": 12.3})) == (
        400,
        "input_invalid",
    )
    assert (_count(rev.server, "decisions"), _count(rev.server, "audit_log")) == before
    status, dec = sup.post(f"/cases/{cid}/decisions", {**deduction, "amount": "12.30"})
    assert status == 201 and dec["amount_fen"] == 1230 and dec["status"] == "effective"  # type: ignore[index]
    until = (date.today() + timedelta(days=30)).isoformat()
    suspension = {
        "kind": "suspension",
        "target_type": "doctor",
        "target_id": "D001",
        "until": until,
        "reason": "r",
    }
    status, dec = sup.post(f"/cases/{cid}/decisions", suspension)
    assert status == 201 and dec["until"] == until  # type: ignore[index]
    # the test home holds the demo operator keys: the blacklist decision is published at once
    blacklist = {"kind": "blacklist", "target_type": "person", "target_id": "P0000000001", "reason": "resold"}
    status, dec = sup.post(f"/cases/{cid}/decisions", blacklist)
    assert status == 201 and dec["status"] == "effective" and dec["bundle_seq"] == 1  # type: ignore[index]
    status, decs = rev.get(f"/decisions?hospital={HOSPITAL}")
    assert status == 200 and [x["kind"] for x in decs] == ["deduction"]  # type: ignore[union-attr]

    assert _error(rev.post(f"/cases/{cid}/close", {"reason": "done"})) == (403, "role_forbidden")
    status, case = sup.post(f"/cases/{cid}/close", {"reason": "done"})
    assert status == 200 and case["status"] == "closed"  # type: ignore[index]
    assert _error(sup.post(f"/cases/{cid}/decisions", {**deduction, "amount": "1"})) == (
        409,
        "workflow_state",
    )
    assert _error(sup.post(f"/cases/{cid}/notes", {"text": "late"})) == (409, "workflow_state")

    status, quality = rev.get("/rules/quality")
    assert status == 200
    by_rule = {q["rule_id"]: q for q in quality}  # type: ignore[union-attr]
    assert (
        by_rule["A"]["precision"] == 1.0 and by_rule["S"]["precision"] == 0.0 and by_rule["S"]["shadow"] == 1
    )


def test_blacklist_decision_is_pending_without_keys(
    server: Server, sup: Client, rev: Client, config: CentralConfig, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (s,) = suspect(server.store, finding())
    rev.post(f"/suspicions/{s}/review", {"outcome": "confirm", "reason": "ok"})  # sup is the second person
    _, case = sup.post("/cases", {"suspicions": [s], "title": "card"})
    keys = config.operators_dir
    hidden = keys.with_name("operators.offline")
    keys.rename(hidden)  # a production server holds no operator keys
    try:
        status, dec = sup.post(f"/cases/{case['id']}/decisions", {  # type: ignore[index]
            "kind": "blacklist", "target_type": "card", "target_id": "CARD0001", "reason": "resold"
        })  # fmt: skip
    finally:
        hidden.rename(keys)
    assert status == 201 and dec["status"] == "pending_publish"  # type: ignore[index]
    assert "decisions publish" in dec["publish_error"]  # type: ignore[index]
    monkeypatch.setenv("YIBAO_OPERATOR_TOKEN", sup.token)
    code = main(["--home", str(config.home), "decisions", "publish"])
    out, err = capsys.readouterr()
    assert code == 0 and "1 pending decisions published" in err and "blacklist 110100 seq 1" in out
    status, decs = sup.get("/decisions?status=effective")
    assert [(x["id"], x["bundle_seq"]) for x in decs] == [(dec["id"], 1)]  # type: ignore[index,union-attr]


def test_screening_backtest_and_analysis_over_http(server: Server, sup: Client, rev: Client) -> None:
    """Supervisors start screens and backtests; bad input is refused with a reason and stores nothing."""
    import json
    import time
    from pathlib import Path

    today = date.today().isoformat()
    assert _error(rev.post("/screen", {"from": today, "to": today})) == (403, "role_forbidden")
    assert _error(sup.post("/screen", {"from": "2026-13-01", "to": today})) == (400, "input_invalid")
    assert _error(sup.post("/screen", {"from": today, "to": "2020-01-01"})) == (400, "input_invalid")
    assert _count(server, "screen_runs") == 0

    status, body = sup.post("/screen", {"from": today, "to": today})
    assert status == 202 and body == {"status": "started", "from": today, "to": today}
    deadline = time.monotonic() + 30
    while True:
        status, listed = sup.get("/runs")
        assert status == 200
        if listed and listed[0]["finished_at"]:
            break
        assert time.monotonic() < deadline, listed
        time.sleep(0.1)
    assert listed[0]["kind"] == "full" and listed[0]["date_from"] == today

    rules = json.loads((Path(__file__).parents[2] / "docs/samples/monitoring_rules.json").read_text())
    broken = {**rules, "rules": [{**rules["rules"][0], "template": "no_such_template"}]}
    status, err = sup.post("/rules/backtest", {"rules": broken, "from": today, "to": today})
    assert status == 400 and err["error"]["code"] == "input_invalid" and "template" in err["error"]["message"]
    assert _error(rev.post("/rules/backtest", {"rules": rules, "from": today, "to": today})) == (
        403, "role_forbidden",
    )  # fmt: skip
    status, report = sup.post("/rules/backtest", {"rules": rules, "from": today, "to": today})
    assert status == 200, report
    # a backtest stores nothing: no suspicion, no run
    assert _count(server, "suspicions") == 0 and _count(server, "screen_runs") == 1

    assert _error(sup.get(f"/analysis?area=370200&from={today}&to={today}")) == (403, "area_forbidden")
    assert _error(sup.get(f"/analysis?measure=nonsense&from={today}&to={today}")) == (400, "input_invalid")
    status, ranking = sup.get(f"/analysis?by=hospital&measure=cost_per_visit&from={today}&to={today}")
    assert status == 200 and ranking["area"] == AREA and ranking["results"] == []


def test_a_limit_over_the_maximum_is_refused_not_cut(server: Server, sup: Client) -> None:
    """limit past the maximum is a 400 naming it (a silently cut list looks like the whole one); at the
    maximum and below, the listings answer as before."""
    from central.monitoring.routes import MAX_LIMIT, MAX_RUNS

    (s,) = suspect(server.store, finding())
    sup.post(f"/suspicions/{s}/review", {"outcome": "confirm", "reason": "ok"})
    assert sup.post("/cases", {"suspicions": [s], "title": "t"})[0] == 201
    for path in ("/suspicions?status=all", "/cases?status=open", "/decisions?kind=deduction"):
        status, body = sup.get(f"{path}&limit={MAX_LIMIT + 1}")
        assert status == 400 and body == {"error": {  # the centre's error shape, nothing else
            "code": "input_invalid",
            "message": f"limit={MAX_LIMIT + 1} is more than the maximum, {MAX_LIMIT}; "
                       "page through the rest with offset",
        }}, (path, body)  # fmt: skip
        at_max = sup.get(f"{path}&limit={MAX_LIMIT}")
        assert at_max[0] == 200 and at_max == sup.get(path), path
    assert len(sup.get(f"/suspicions?status=all&limit={MAX_LIMIT}")[1]) == 1  # type: ignore[arg-type]
    assert len(sup.get("/cases?limit=1000&offset=1")[1]) == 0  # type: ignore[arg-type]
    status, body = sup.get(f"/runs?limit={MAX_RUNS + 1}")
    assert status == 400 and body["error"]["code"] == "input_invalid"  # type: ignore[index]
    assert f"maximum, {MAX_RUNS}" in body["error"]["message"]  # type: ignore[index]
    assert sup.get(f"/runs?limit={MAX_RUNS}") == (200, [])
