"""Helpers for central's tests: valid settlements, signed chains, a real store and a real server.

Everything here is real: SQLite files in tmp dirs, the aiohttp app on a loopback port,
records built and signed with ``protocol`` exactly as an agent does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from aiohttp import web
from tuf.ngclient import Updater

from central.api import STORE_KEY, app_runner
from central.cli import init_home, operator_signers
from central.config import CentralConfig
from central.intake.enrol import enrol_agent, issue_token
from central.metrics import CentralMetrics
from central.policy.bundles import Actor, Policy
from central.policy.tuf_repo import TufRepository
from central.storage.base import is_postgres
from central.storage.store import Store
from protocol.batch import BatchLimits, KeyPair, encode_batch, sign_batch
from protocol.chain import GENESIS, encode_body, encode_entry, record_hash
from protocol.records import FeeDetail, Person, Reversal, Settlement, Visit
from protocol.wire import MSGPACK, PROTOCOL_HEADER, EnrollRequest

HOSPITAL = "H11010100001"
#: The pooling area ``HOSPITAL`` derives to.
AREA = "110100"
ACTOR = Actor("tester", "because the test says so")
T = TypeVar("T")


def settlement(
    setl_id: str,
    *,
    hospital: str = HOSPITAL,
    setl_time: str = "2026-11-24T10:00:00+08:00",
    lines: tuple[tuple[str, str, int], ...] = (("2", "12.5", 2500), ("1", "26.2", 2620)),
    split: tuple[int, int, int] | None = (3000, 1000, 1120),
    psn_no: str = "P0000000001",
) -> Settlement:
    """A settlement that validates: lines are (cnt, pric, line total in fen); split is fund/acct/cash."""
    details = [
        FeeDetail(
            cnt=cnt,
            pric=pric,
            det_item_fee_sumamt=total,
            feedetl_sn=f"{setl_id}-{i}",
            list_type="101",
            med_list_codg=f"XA01AAA0{i}",
            medins_list_name="drug",
        )
        for i, (cnt, pric, total) in enumerate(lines)
    ]
    fund, acct, cash = split if split else (None, None, None)
    return Settlement(
        feedetl=details,
        fixmedins_code=hospital,
        his_setl_no=f"HIS-{setl_id}",
        mdtrt=Visit(
            begntime="2026-11-24T09:30:00+08:00", dise_codg="J06.900", mdtrt_id=f"M-{setl_id}", med_type="11"
        ),
        medfee_sumamt=sum(t for _, _, t in lines),
        opter="cashier1",
        psn=Person(
            brdy="1970-01-01", gend="1", insuplc_admdvs="110100", insutype="310", psn_no=psn_no, psn_type="11"
        ),
        setl_id=setl_id,
        setl_time=setl_time,
        fund_pay_sumamt=fund,
        hifp_pay=fund,
        acct_pay=acct,
        psn_cash_pay=cash,
    )


def reversal(of: Settlement, setl_id: str, setl_time: str = "2026-11-24T11:00:00+08:00") -> Reversal:
    def neg(v: int | None) -> int | None:
        return None if v is None else -v

    return Reversal(
        fixmedins_code=of.fixmedins_code,
        medfee_sumamt=-of.medfee_sumamt,
        opter="cashier1",
        orig_setl_id=of.setl_id,
        reason="patient asked",
        setl_id=setl_id,
        setl_time=setl_time,
        fund_pay_sumamt=neg(of.fund_pay_sumamt),
        acct_pay=neg(of.acct_pay),
        psn_cash_pay=neg(of.psn_cash_pay),
        his_setl_no=of.his_setl_no,
    )


@dataclass
class Chain:
    """An agent's chain as the agent would build it; ``batch`` signs a slice of it."""

    agent_id: str
    key: KeyPair
    entries: list[bytes] = field(default_factory=list)

    @property
    def head(self) -> bytes:
        return record_hash(self.entries[-1]) if self.entries else GENESIS

    def append_body(self, kind: str, body: bytes) -> bytes:
        entry = encode_entry(self.agent_id, len(self.entries) + 1, self.head, kind, body)
        self.entries.append(entry)
        return entry

    def append(self, record: Settlement | Reversal) -> bytes:
        return self.append_body("setl" if isinstance(record, Settlement) else "revs", encode_body(record))

    def append_lost(self) -> bytes:
        """A lost marker: the hash of a record the agent can no longer read."""
        lost_entry = encode_entry(
            self.agent_id, len(self.entries) + 1, self.head, "setl", encode_body(settlement("LOST"))
        )
        marker = record_hash(lost_entry)
        self.entries.append(marker)
        return marker

    def extend(self, count: int, prefix: str = "S") -> None:
        start = len(self.entries) + 1
        for seq in range(start, start + count):
            self.append(settlement(f"{prefix}{self.agent_id}-{seq:06d}"))

    def batch(self, first: int, last: int, *, key: KeyPair | None = None) -> bytes:
        signed = sign_batch(key or self.key, self.agent_id, first, self.entries[first - 1 : last])
        return encode_batch(signed)


@pytest.fixture
def config(tmp_path: Path) -> CentralConfig:
    # In-process server on plain loopback HTTP: these tests are about ingest, policy and history, and
    # tests/integration/test_tls.py covers the same routes over mutual TLS with real processes.
    cfg = CentralConfig(
        home=tmp_path / "central", listen="127.0.0.1:0", batch_limits=BatchLimits(), insecure_dev=True
    )
    init_home(cfg)
    return cfg


@pytest.fixture
def store(config: CentralConfig) -> Iterator[Store]:
    with Store(config.db_path) as s:
        yield s


def rows(store: Store, sql: str, params: tuple = ()) -> list[tuple]:
    """A query's rows through the store, so a suite reads the same on SQLite and PostgreSQL (tests/pg)."""
    return store.read(lambda conn: [tuple(r) for r in conn.execute(sql, params).fetchall()])


def set_settings(home: Path, **settings: Any) -> None:
    """Change settings in ``home``'s central.json, keeping the others (on tests/pg, ``database``)."""
    path = home / "central.json"
    held = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**held, **settings}))


@contextlib.contextmanager
def failing_trigger(store: Store, table: str, event: str, message: str = "disk full") -> Iterator[None]:
    """A trigger that makes ``event`` on ``table`` (``INSERT``, ``UPDATE OF acked_seq``) fail inside the
    database, on SQLite or PostgreSQL (tests/pg); dropped on leaving."""
    if is_postgres(store):
        statements = [
            "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{message}'; END $$",
            f"CREATE TRIGGER boom BEFORE {event} ON {table} FOR EACH ROW EXECUTE FUNCTION boom()",
        ]
        drops = [f"DROP TRIGGER boom ON {table}", "DROP FUNCTION boom()"]
    else:
        statements = [
            f"CREATE TRIGGER boom BEFORE {event} ON {table} BEGIN SELECT RAISE(ABORT, '{message}'); END"
        ]
        drops = ["DROP TRIGGER boom"]

    def run(sql: str) -> None:
        store.write(lambda c: c.raw.execute(sql) if is_postgres(c) else c.execute(sql))

    for sql in statements:
        run(sql)
    try:
        yield
    finally:
        for sql in drops:
            run(sql)


def enrol(store: Store, hospital: str = HOSPITAL) -> Chain:
    """Enrol a fresh agent the way the HTTP endpoint does; returns its empty chain."""
    key = KeyPair.generate()
    token = issue_token(store, hospital)
    request = EnrollRequest(token=token, fixmedins_code=hospital, public_key=key.public_bytes.hex())
    response, _ = enrol_agent(store, request)
    return Chain(response.agent_id, key)


@pytest.fixture
def chain(store: Store) -> Chain:
    return enrol(store)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def msgpack(self) -> dict:
        return msgspec.msgpack.decode(self.body)

    def json(self) -> object:
        return msgspec.json.decode(self.body)


@dataclass
class Server:
    """The real app on a loopback port, driven by a plain blocking HTTP client."""

    url: str
    app: web.Application

    @property
    def store(self) -> Store:
        return self.app[STORE_KEY]

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Reply:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return Reply(resp.status, dict(resp.headers), resp.read())
        except urllib.error.HTTPError as err:
            return Reply(err.code, dict(err.headers), err.read())

    def agents(self) -> list[dict]:
        """``GET /v1/agents`` as an operator who manages every area an agent is enrolled in."""
        from central.operators import add_operator

        areas = self.store.read(
            lambda c: {r[0] for r in c.execute("SELECT pooling_area FROM agents") if r[0] is not None}
        )
        name = f"ops{len(self.store.read(lambda c: c.execute('SELECT name FROM operators').fetchall()))}"
        _, token = add_operator(self.store, ACTOR, name, area=AREA, manage=sorted(areas - {AREA}))
        reply = self.request("GET", "/v1/agents", headers={"Authorization": f"Bearer {token}"})
        assert reply.status == 200, reply.body
        return reply.json()  # type: ignore[return-value]

    def post_batch(self, data: bytes, **headers: str) -> Reply:
        return self.request(
            "POST", "/v1/batches", data, {"Content-Type": MSGPACK, PROTOCOL_HEADER: "1", **headers}
        )

    def post_json(self, path: str, obj: object) -> Reply:
        return self.request("POST", path, msgspec.json.encode(obj), {"Content-Type": "application/json"})


def start_server(
    config: CentralConfig, *, metrics: CentralMetrics | None = None
) -> tuple[Server, Callable[[], None]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-server", daemon=True)
    thread.start()
    runner = app_runner(config, metrics=metrics)

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=10)

    run(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    run(site.start())
    port = runner.addresses[0][1]

    def stop() -> None:
        run(runner.cleanup())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()

    return Server(f"http://127.0.0.1:{port}", runner.app), stop


@pytest.fixture
def server(config: CentralConfig) -> Iterator[Server]:
    srv, stop = start_server(config)
    try:
        yield srv
    finally:
        stop()


@pytest.fixture
def agent(server: Server) -> Chain:
    """An agent enrolled in the running server's store."""
    return enrol(server.store)


# -- policy bundles ------------------------------------------------------------------------------


@pytest.fixture
def repo(config: CentralConfig) -> TufRepository:
    return TufRepository.open(config)


@pytest.fixture
def signers(config: CentralConfig) -> list:
    """The three demo operator keys ``init`` made (root 2 of 3, targets 1 of 3)."""
    return operator_signers(config, None)


@pytest.fixture
def policy(store: Store, config: CentralConfig) -> Policy:
    return Policy(store, TufRepository.open(config), config)


def tuf_client(base_url: str, root: bytes, where: Path) -> Updater:
    """The real TUF client (``tuf.ngclient``) pinned to ``root``, against a served repository."""
    (where / "metadata").mkdir(parents=True, exist_ok=True)
    (where / "targets").mkdir(parents=True, exist_ok=True)
    return Updater(
        str(where / "metadata"),
        f"{base_url}/tuf/metadata/",
        str(where / "targets"),
        f"{base_url}/tuf/targets/",
        bootstrap=root,
    )


@pytest.fixture
def act_as(store: Store, monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """``act_as(name, role)``: register that operator and make ``central.cli.main`` act as them
    (``$YIBAO_OPERATOR_TOKEN``); returns the token. An admin by default."""
    from central.operators import add_operator

    def act(name: str = "admin", role: str = "admin", area: str | None = None) -> str:
        _, token = add_operator(store, ACTOR, name, area=area, role=role)
        monkeypatch.setenv("YIBAO_OPERATOR_TOKEN", token)
        return token

    return act
