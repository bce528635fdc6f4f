"""Operators and their area scope: in the library, through the CLI and through the JSON API."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from central.cli import main
from central.config import CentralConfig
from central.errors import (
    AreaForbidden,
    MonitorInputInvalid,
    NotFound,
    OperatorDisabled,
    OperatorExists,
    OperatorTokenInvalid,
    OperatorUnknown,
)
from central.monitoring.review import (
    get_case,
    open_case,
    review_suspicion,
    scoped_suspicions,
    visible_suspicion,
)
from central.operators import (
    disable_operator,
    get_operator,
    issue_token,
    list_operators,
    may_see,
    operator_by_token,
    set_areas,
    token_hash,
)
from central.storage.store import Store

from .conftest import Server
from .monitor_helpers import ADMIN, AREA, OTHER, finding, hit, operator, suspect


def test_operators_areas_tokens_and_disabling(store: Store) -> None:
    op, token = operator(store, "alice", AREA, manage=("120100", AREA), role="reviewer")
    assert op.areas == ("120100",) and op.scope == {AREA, "120100"}
    assert may_see(op, AREA) and may_see(op, "120100") and not may_see(op, OTHER) and not may_see(op, None)
    assert token.startswith("yop_") and len(token) > 40
    stored = store.read(lambda c: c.execute("SELECT token_hash FROM operators").fetchall())
    assert stored == [(token_hash(token),)]  # the token itself is never stored
    assert store.read(lambda c: operator_by_token(c, token)) == op
    with pytest.raises(OperatorExists):
        operator(store, "alice", OTHER)
    with pytest.raises(MonitorInputInvalid, match="6-digit"):
        operator(store, "bob", "37")
    with pytest.raises(MonitorInputInvalid, match="role"):
        operator(store, "bob", AREA, role="boss")
    with pytest.raises(MonitorInputInvalid, match="operator name"):
        operator(store, "bad name", AREA)

    moved = set_areas(store, ADMIN, "alice", manage=[OTHER], role="supervisor")
    assert moved.scope == {AREA, OTHER} and moved.supervisor
    new_token = issue_token(store, ADMIN, "alice")
    with pytest.raises(OperatorTokenInvalid):
        store.read(lambda c: operator_by_token(c, token))
    assert store.read(lambda c: operator_by_token(c, new_token)).name == "alice"
    disable_operator(store, ADMIN, "alice")
    for bad in (new_token, None, "", "yop_nonsense"):
        with pytest.raises(OperatorTokenInvalid):
            store.read(lambda c, bad=bad: operator_by_token(c, bad))
    with pytest.raises(OperatorDisabled):
        store.read(lambda c: get_operator(c, "alice"))
    with pytest.raises(OperatorUnknown):
        store.read(lambda c: get_operator(c, "nobody"))
    assert [o.name for o in store.read(list_operators)] == ["alice"]
    actions = store.read(lambda c: [r[0] for r in c.execute("SELECT action FROM audit_log ORDER BY id")])
    assert actions == ["operator.add", "operator.areas", "operator.token", "operator.disable"]


def test_an_operator_cannot_see_or_act_on_another_areas_objects(store: Store) -> None:
    here = operator(store, "here", AREA)[0]
    there = operator(store, "there", OTHER)[0]
    mine, theirs = suspect(store, finding(hit("A")), finding(hit("B"), area=OTHER))
    assert [s["id"] for s in store.read(lambda c: scoped_suspicions(c, here))] == [mine]
    with pytest.raises(AreaForbidden, match="370200"):
        store.read(lambda c: scoped_suspicions(c, here, area=OTHER))
    # another area's id answers exactly as an id that does not exist
    with pytest.raises(NotFound) as other_area:
        store.read(lambda c: visible_suspicion(c, here, theirs))
    with pytest.raises(NotFound) as unknown:
        store.read(lambda c: visible_suspicion(c, here, 999))
    assert other_area.value.code == unknown.value.code == "not_found"
    assert str(other_area.value).replace(str(theirs), "N") == str(unknown.value).replace("999", "N")
    with pytest.raises(NotFound):
        review_suspicion(store, here, theirs, "confirm", "not mine")
    review_suspicion(store, there, theirs, "confirm", "mine")
    with pytest.raises(NotFound):
        open_case(store, here, [theirs], "not mine")
    case = open_case(store, there, [theirs], "theirs")
    with pytest.raises(NotFound):
        store.read(lambda c: get_case(c, here, case["id"]))
    review_suspicion(store, here, mine, "confirm", "ok")
    with pytest.raises(AreaForbidden):  # an assignee must manage the case's area
        open_case(store, here, [mine], "x", assignee="there")


def _cli(config: CentralConfig, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--home", str(config.home), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_scope(
    config: CentralConfig, store: Store, capsys: pytest.CaptureFixture[str], act_as, monkeypatch
) -> None:
    admin = act_as()
    code, out, err = _cli(config, capsys, "operators", "add", "here", "--area", AREA, "--role", "supervisor")
    assert code == 0 and out.strip().startswith("yop_") and "shown once" in err
    here = out.strip()
    assert _cli(config, capsys, "operators", "add", "there", "--area", OTHER)[0] == 0
    code, out, _ = _cli(config, capsys, "operators", "list", "--json")
    assert [json.loads(line)["name"] for line in out.splitlines()] == ["admin", "here", "there"]
    mine, theirs = suspect(store, finding(hit("A")), finding(hit("B"), area=OTHER))

    code, _, err = _cli(config, capsys, "suspicions", "list")  # an admin does not work the review queue
    assert code == 4 and "reviewer or a supervisor" in err
    monkeypatch.setenv("YIBAO_OPERATOR_TOKEN", here)
    code, out, _ = _cli(config, capsys, "suspicions", "list", "--json")
    assert code == 0 and [json.loads(line)["id"] for line in out.splitlines()] == [mine]
    code, _, err = _cli(config, capsys, "suspicions", "list", "--area", OTHER)
    assert code == 1 and "does not manage pooling area 370200" in err
    code, _, err = _cli(config, capsys, "suspicions", "show", str(theirs))
    assert code == 1 and "does not exist in your areas" in err
    code, _, err = _cli(config, capsys, "suspicions", "review", str(theirs), "confirm", "--reason", "x")
    assert code == 1 and "does not exist in your areas" in err
    monkeypatch.setenv("YIBAO_OPERATOR_TOKEN", "yop_ghost")
    code, _, err = _cli(config, capsys, "suspicions", "list")
    assert code == 4 and "not valid" in err
    monkeypatch.delenv("YIBAO_OPERATOR_TOKEN")
    code, _, err = _cli(config, capsys, "suspicions", "review", str(mine), "confirm", "--reason", "seen")
    assert code == 4 and "YIBAO_OPERATOR_TOKEN" in err
    assert store.read(lambda c: c.execute("SELECT count(*) FROM reviews").fetchone()[0]) == 0

    monkeypatch.setenv("YIBAO_OPERATOR_TOKEN", here)
    code, _, err = _cli(config, capsys, "suspicions", "review", str(mine), "confirm", "--reason", "seen")
    assert code == 0 and "confirmed" in err
    code, out, err = _cli(config, capsys, "cases", "open", str(mine), "--title", "t", "--assignee", "there")
    assert code == 1 and "does not manage pooling area 110100" in err
    code, _, err = _cli(config, capsys, "operators", "disable", "here")  # not an admin
    assert code == 4 and "admin" in err
    monkeypatch.setenv("YIBAO_OPERATOR_TOKEN", admin)
    assert _cli(config, capsys, "operators", "disable", "here")[0] == 0
    monkeypatch.setenv("YIBAO_OPERATOR_TOKEN", here)
    code, _, err = _cli(config, capsys, "suspicions", "list")
    assert code == 4 and "disabled" in err


def _get(server: Server, path: str, token: str | None) -> tuple[int, object]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    reply = server.request("GET", path, headers=headers)
    return reply.status, reply.json()


def _post(server: Server, path: str, token: str, obj: object) -> tuple[int, object]:
    reply = server.request("POST", path, msgspec.json.encode(obj), {
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"
    })  # fmt: skip
    return reply.status, reply.json()


def test_api_scope(server: Server, tmp_path: Path) -> None:
    store = server.store
    _, here = operator(store, "here", AREA)
    _, there = operator(store, "there", OTHER)
    mine, theirs = suspect(store, finding(hit("A")), finding(hit("B"), area=OTHER))

    status, body = _get(server, "/v1/monitor/suspicions", here)
    assert status == 200 and [s["id"] for s in body] == [mine]  # type: ignore[union-attr]
    status, body = _get(server, f"/v1/monitor/suspicions?area={OTHER}", here)
    assert status == 403 and body["error"]["code"] == "area_forbidden"  # type: ignore[index]
    status, other = _get(server, f"/v1/monitor/suspicions/{theirs}", here)
    status2, unknown = _get(server, "/v1/monitor/suspicions/99999", here)
    assert status == status2 == 404
    assert other["error"]["code"] == unknown["error"]["code"] == "not_found"  # type: ignore[index]
    status, body = _post(server, f"/v1/monitor/suspicions/{theirs}/review", here,
                         {"outcome": "confirm", "reason": "not mine"})  # fmt: skip
    assert status == 404 and body["error"]["code"] == "not_found"  # type: ignore[index]
    status, body = _post(server, f"/v1/monitor/suspicions/{theirs}/review", there,
                         {"outcome": "confirm", "reason": "mine"})  # fmt: skip
    assert status == 200 and body["status"] == "confirmed"  # type: ignore[index]
    status, body = _post(server, "/v1/monitor/cases", here, {"suspicions": [theirs], "title": "t"})
    assert status == 404
    status, case = _post(server, "/v1/monitor/cases", there, {"suspicions": [theirs], "title": "t"})
    assert status == 201
    status, _ = _get(server, f"/v1/monitor/cases/{case['id']}", here)  # type: ignore[index]
    assert status == 404
    assert _get(server, "/v1/monitor/cases", here) == (200, [])
    status, body = _get(server, "/v1/monitor/suspicions", None)
    assert status == 401 and body["error"]["code"] == "operator_token_invalid"  # type: ignore[index]
    status, body = _get(server, "/v1/monitor/suspicions", "yop_forged")
    assert status == 401
