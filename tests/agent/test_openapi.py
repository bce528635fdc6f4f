"""The agent's OpenAPI document against the running agent.

HIS vendors generate clients from ``/openapi.json``; a document that promises what the server
does not do is worse than none. So schemathesis generates requests from the document (valid and
deliberately invalid ones) and sends them to a real agent on loopback HTTP with a real outbox, the
sample rule, catalogue and policy bundles and a real e-voucher verifier (no card reader: the card
endpoint answers its documented ``no_reader``). It must find no server error and no answer that
breaks the document. Two plain tests keep the document from drifting: the served document is the
file, and every route the app registers is described (and nothing else is).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from agent.api import create_app
from agent.checks import DeskChecks
from agent.config import AgentConfig
from agent.evoucher import open_verifier
from agent.intake import parse_settlement
from agent.policy_store import PolicyStore
from agent.store import Outbox
from protocol.bundles import BundleHeader
from protocol.errors import ValidationFailed
from tests.conftest import example_settlement

ROOT = Path(__file__).resolve().parents[2]
OPENAPI_PATH = ROOT / "agent" / "openapi.json"
SAMPLES = ROOT / "docs" / "samples"
TOKEN = "his-openapi-token"
FIXMEDINS = "H37021100001"  # the institution of the document's example settlement

SCHEMA = schemathesis.openapi.from_path(OPENAPI_PATH)

#: What a running agent must never do: answer 5xx where the document promises none, answer a status,
#: content type or body the document does not describe, or serve a protected path without the token.
#: (Not ``negative_data_rejection``: the document gives the canonical forms, e.g. money with at most 2
#: decimals, while intake also reads equivalent ones such as "1.230" or a JSON number, as it should.)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,
]


class _Agent:
    """The agent's HIS API in a thread with its own event loop, wired as ``yibao-agent serve`` wires it but
    with no card reader, uploader or centre (the desk checks then say ``local_only``)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.url = ""
        self.app: web.Application | None = None
        self.routes: set[tuple[str, str]] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="openapi-agent", daemon=True)

    def __enter__(self) -> _Agent:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the agent did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        config = AgentConfig(home=self.home, agent_id="H1-01", fixmedins_code=FIXMEDINS, hosp_lv="3")
        outbox = Outbox(config.db_path, agent_id=config.agent_id, hosp_lv="3")
        policy = PolicyStore(config.policy_db_path)
        for seq, kind in enumerate(("rules", "catalogue", "policy"), start=1):
            doc = json.loads((SAMPLES / f"{kind}.json").read_text())
            policy.apply_document(BundleHeader(kind, "370200", seq, None, "2026-11-25T00:00:00Z"), doc)
        desk = DeskChecks(config.db_path, policy, None, hosp_lv="3")
        vouchers = open_verifier(config)
        self.app = create_app(config, outbox, None, TOKEN, vouchers=vouchers, policy=policy, desk=desk)
        self.routes = {
            (route.method, route.resource.canonical)
            for route in self.app.router.routes()
            if route.method != "HEAD" and route.resource is not None  # aiohttp adds HEAD beside each GET
        }
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._stop = asyncio.Event()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            desk.close()
            vouchers.close()
            policy.close()
            outbox.close()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Agent]:
    with _Agent(tmp_path_factory.mktemp("openapi-agent")) as running:
        yield running


@SCHEMA.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_the_running_agent_conforms_to_its_openapi_document(case: schemathesis.Case, agent: _Agent) -> None:
    checks = CHECKS
    if case.operation.label == "GET /v1/card":
        # Without a reader the card endpoint answers its documented 503 ``no_reader``: the one 5xx allowed.
        checks = [c for c in CHECKS if c is not not_a_server_error]
    response = case.call_and_validate(
        base_url=agent.url, headers={"Authorization": f"Bearer {TOKEN}"}, checks=checks, timeout=30
    )
    if response.status_code >= 500:
        assert case.operation.label == "GET /v1/card" and response.status_code == 503
        assert response.json()["error"]["code"] == "no_reader"


def test_the_document_is_valid_openapi_3_1() -> None:
    assert SCHEMA.raw_schema["openapi"].startswith("3.1")
    SCHEMA.validate()  # against the OpenAPI 3.1 meta-schema: code generators reject an invalid document


def test_the_served_document_is_the_file(agent: _Agent) -> None:
    answer = requests.get(f"{agent.url}/openapi.json", timeout=10)  # no token: vendors fetch it freely
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json() == json.loads(OPENAPI_PATH.read_text())


def _described() -> set[tuple[str, str]]:
    doc = json.loads(OPENAPI_PATH.read_text())
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    return {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in methods}


def _api_routes(agent: _Agent) -> set[tuple[str, str]]:
    """Every route but the desk's HTML pages (``/desk/`` outside ``/desk/api/``): the document describes
    what a program calls; the pages are a person's, driven in Chromium by tests/browser/test_desk.py."""
    return {(m, p) for m, p in agent.routes if not p.startswith("/desk/") or p.startswith("/desk/api/")}


def test_every_route_is_described_and_every_description_is_a_route(agent: _Agent) -> None:
    assert any(p.startswith("/desk/login") for _, p in agent.routes), "the desk pages are not registered"
    assert _api_routes(agent) - _described() == set(), "routes the OpenAPI document does not describe"
    assert _described() - _api_routes(agent) == set(), (
        "the OpenAPI document describes routes the agent does not serve"
    )


# ---- what the conformance test found: odd input the rule engine choked on (was 500, now 400) -----------


def _prescription(agent: _Agent, **change: object) -> requests.Response:
    body: dict = {
        "psn": {"psn_no": "37020000000001234567", "gend": "1", "brdy": "1958-04-02"},
        "mdtrt": {"med_type": "11", "dise_codg": "K21.9", "begntime": "2026-11-25T09:00:00+08:00"},
        "lines": [
            {"feedetl_sn": "1", "med_list_codg": "XA02BCA211A010010102134", "cnt": "1", "pric": "6.90"}
        ],
    }
    for path, value in change.items():
        *parents, leaf = path.split("__")
        target = body
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[leaf] = value
    return requests.post(
        f"{agent.url}/v1/checks/prescription",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lines__0__cnt": "abc"}, "lines[0].cnt"),
        ({"lines__0__pric": "NaN"}, "lines[0].pric"),
        ({"lines__0__cnt": "1e40"}, "lines[0].cnt"),
        ({"lines__0__pric": "1.1234567"}, "lines[0].pric"),
        ({"psn__brdy": "not a date"}, "$"),
        ({"mdtrt__begntime": "tomorrow"}, "$"),
    ],
)
def test_a_prescription_with_bad_values_is_a_400_naming_the_field(
    agent: _Agent, change: dict, field: str
) -> None:
    answer = _prescription(agent, **change)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "validation_failed"
    assert [d["field"] for d in error["details"]] == [field]


def test_a_prescription_repeating_a_line_number_is_a_400(agent: _Agent) -> None:
    line = {"feedetl_sn": "1", "med_list_codg": "XA02BCA211A010010102134", "cnt": "1", "pric": "6.90"}
    answer = _prescription(agent, lines=[line, dict(line)])
    assert answer.status_code == 400
    assert "feedetl_sn" in answer.json()["error"]["details"][0]["message"]


def test_a_good_prescription_still_gets_its_prompts(agent: _Agent) -> None:
    answer = _prescription(agent)
    assert answer.status_code == 200
    assert answer.json()["local_only"] is True


@pytest.fixture
def east_of_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The agent's zone where hospitals run it: local times without an offset are read in it."""
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("where", "field"),
    [
        (("mdtrt", "begntime"), "mdtrt.begntime"),
        (("feedetl", 0, "fee_ocur_time"), "feedetl[0].fee_ocur_time"),
    ],
)
def test_a_local_time_with_no_utc_instant_is_a_400_not_a_500(
    east_of_utc: None, where: tuple, field: str
) -> None:
    body = example_settlement()
    target = body
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = "0001-01-01T00:00:00"  # 8 hours before it is year 0: astimezone() raised ValueError
    with pytest.raises(ValidationFailed) as refused:
        parse_settlement(json.dumps(body).encode())
    assert [d["field"] for d in refused.value.details] == [field]
