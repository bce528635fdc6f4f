"""A stand-in for the agent's HIS API, served over real loopback HTTP for the simulator's tests.

This is not the agent: it is an honest, minimal implementation of the same contract
(``POST /v1/settlements`` → 201 / 200 duplicate / error JSON, ``POST
/v1/settlements/{setl_id}/reversal`` → 201), used so the simulator's retry and counting
logic can be tested against faults we choose exactly. It stores nothing durable, and it
validates each body with the protocol's own rules so a malformed one would show.

Faults are chosen by the settlement's serial (the last part of ``his_setl_no``):

- ``n % 10 == 3``: the first attempt is committed, then the answer is withheld past the
  client's timeout (a lost answer): the retry must get ``duplicate``.
- ``n % 10 == 5``: the first attempt is refused ``503 outbox_full`` without committing.
- ``n % 10 == 7``: every attempt is refused ``503 outbox_full``.
- ``n % 10 == 9``: refused ``400 validation_failed`` (final; never retried).
- ``n % 20 == 1``: the first attempt is committed, then the connection is dropped.

Like the agent, it answers ``409 his_setl_no_conflict`` when a ``his_setl_no`` it holds
comes back with a different body: a retry must re-send the same settlement, not a new one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from protocol.errors import error_body
from protocol.records import FeeDetail, Person, Settlement, Visit, check_settlement, decimal_text, to_fen

TOKEN = "his-test-token"


def as_record(body: dict) -> Settlement:
    """The conversion an agent makes: money to fen, cnt/pric to canonical decimal text."""
    lines = [
        FeeDetail(
            chrgitm_lv=ln.get("chrgitm_lv"),
            cnt=decimal_text(Decimal(ln["cnt"]), 4),
            days=ln.get("days"),
            det_item_fee_sumamt=to_fen(Decimal(ln["det_item_fee_sumamt"])),
            dosage=ln.get("dosage"),
            feedetl_sn=ln["feedetl_sn"],
            list_type=ln["list_type"],
            med_list_codg=ln["med_list_codg"],
            medins_list_name=ln["medins_list_name"],
            pric=decimal_text(Decimal(ln["pric"]), 6),
        )
        for ln in body["feedetl"]
    ]
    return Settlement(
        feedetl=lines,
        fixmedins_code=body["fixmedins_code"],
        his_setl_no=body["his_setl_no"],
        mdtrt=Visit(**body["mdtrt"]),
        medfee_sumamt=to_fen(Decimal(body["medfee_sumamt"])),
        opter=body["opter"],
        opter_name=body["opter_name"],
        psn=Person(**body["psn"]),
        setl_id="S1",
        setl_time=body["mdtrt"]["endtime"],
    )


def serial(his_setl_no: str) -> int:
    return int(his_setl_no.rsplit("-", 1)[1])


def fault_of(n: int) -> str | None:
    if n % 20 == 1:
        return "drop"
    return {3: "lost_answer", 5: "busy_once", 7: "busy", 9: "invalid"}.get(n % 10)


@dataclass
class StandInAgent:
    hang_s: float = 1.0
    delay_s: float = 0.0
    faults: bool = True
    committed: dict[str, dict[str, Any]] = field(default_factory=dict)
    bodies: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    first_seen: dict[str, float] = field(default_factory=dict)
    reversals: list[dict[str, Any]] = field(default_factory=list)
    reversal_attempts: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    seq: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/settlements", self._settle)
        app.router.add_post("/v1/settlements/{setl_id}/reversal", self._reverse)
        return app

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}"

    def _commit(self, body: dict[str, Any], raw: bytes) -> dict[str, Any]:
        self.seq += 1
        receipt = {
            "setl_id": f"S{self.seq:08d}",
            "seq": self.seq,
            "hash": hashlib.sha256(raw).hexdigest(),
            "medfee_sumamt": body["medfee_sumamt"],
            "body": body,
        }
        self.committed[body["his_setl_no"]] = receipt
        return receipt

    @staticmethod
    def _answer(receipt: dict[str, Any], duplicate: bool) -> web.Response:
        data = {k: receipt[k] for k in ("setl_id", "seq", "hash", "medfee_sumamt")}
        return web.json_response({**data, "duplicate": duplicate}, status=200 if duplicate else 201)

    async def _settle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._settle_inner(request)
        finally:
            self.in_flight -= 1

    async def _settle_inner(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return web.json_response(error_body("unauthorized", "wrong HIS token"), status=401)
        raw = await request.read()
        body = json.loads(raw)
        check_settlement(as_record(body))  # the simulator must never send an invalid body
        his = body["his_setl_no"]
        attempt = len(self.bodies[his])
        self.bodies[his].append(raw)
        self.first_seen.setdefault(his, asyncio.get_running_loop().time())
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if his in self.committed:
            if self.committed[his]["body"] != body:
                return web.json_response(error_body("his_setl_no_conflict", "different body"), status=409)
            return self._answer(self.committed[his], duplicate=True)
        fault = fault_of(serial(his)) if self.faults else None
        if fault == "invalid":
            return web.json_response(
                error_body("validation_failed", "refused by the stand-in", [{"field": "psn.psn_no"}]),
                status=400,
            )
        if fault == "busy" or (fault == "busy_once" and attempt == 0):
            return web.json_response(error_body("outbox_full", "outbox is full"), status=503)
        receipt = self._commit(body, raw)
        if fault == "lost_answer" and attempt == 0:
            await asyncio.sleep(self.hang_s)
        if fault == "drop" and attempt == 0:
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        return self._answer(receipt, duplicate=False)

    async def _reverse(self, request: web.Request) -> web.Response:
        self.reversal_attempts += 1
        if not self._authorised(request):
            return web.json_response(error_body("unauthorized", "wrong HIS token"), status=401)
        setl_id = request.match_info["setl_id"]
        req = await request.json()
        assert set(req) == {"reason", "opter"} and req["reason"].strip()
        orig = next((r for r in self.committed.values() if r["setl_id"] == setl_id), None)
        if orig is None:
            return web.json_response(error_body("not_found", "no such settlement"), status=404)
        self.seq += 1
        rev = {
            "setl_id": f"R{self.seq:08d}",
            "orig_setl_id": setl_id,
            "seq": self.seq,
            "hash": "0" * 64,
            "medfee_sumamt": str(-Decimal(orig["medfee_sumamt"])),
        }
        self.reversals.append(rev)
        return web.json_response(rev, status=201)


async def serve(agent: StandInAgent) -> TestServer:
    """Start the stand-in on a free loopback port; the caller closes it."""
    server = TestServer(agent.app(), host="127.0.0.1")
    await server.start_server()
    return server


@contextmanager
def serving_in_thread(agent: StandInAgent) -> Iterator[str]:
    """The stand-in on its own event loop in a thread, for code that runs ``asyncio.run``."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        server = await serve(agent)
        box["url"] = str(server.make_url("")).rstrip("/")
        box["stop"] = asyncio.Event()
        box["loop"] = asyncio.get_running_loop()
        started.set()
        await box["stop"].wait()
        await server.close()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield box["url"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)
