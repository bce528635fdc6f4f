"""A faulty network between an agent and the centre, for tests and demos.

An HTTP proxy that forwards to the real centre and, on request, misbehaves the ways real
links do: it loses the answer after the centre has acted on the request (a lost
acknowledgement), delivers a request twice, flips a byte inside a record of a batch in
transit, refuses connections as if the link were down, or blocks only the batches (the
agent's heartbeats still pass, so the centre learns it is behind). It runs in its own thread with
its own event loop so a test can drive real agent and centre processes through it.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from protocol.batch import decode_batch, encode_batch

__all__ = ["FaultyLink"]


@dataclass
class _Faults:
    down: bool = False
    lose_answers: int = 0  # forward, let the centre act, then drop the answer
    duplicate: int = 0  # forward the same request twice
    tamper: int = 0  # flip a byte in a batch record before forwarding
    block_batches: bool = False  # answer every batch 503, as a proxy in the way does; the rest passes
    seen: dict[str, int] = field(default_factory=dict)


class FaultyLink:
    """``FaultyLink(upstream).start()`` → ``.url`` to give the agent as its centre."""

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.host, self.port = host, port
        self.faults = _Faults()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultnet", daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def set(self, **faults: object) -> None:
        with self._lock:
            for name, value in faults.items():
                if not hasattr(self.faults, name):
                    raise ValueError(f"unknown fault {name!r}")
                setattr(self.faults, name, value)

    def count(self, event: str) -> int:
        with self._lock:
            return self.faults.seen.get(event, 0)

    def _take(self, name: str) -> bool:
        with self._lock:
            left = getattr(self.faults, name)
            if left > 0:
                setattr(self.faults, name, left - 1)
                self.faults.seen[name] = self.faults.seen.get(name, 0) + 1
                return True
            return False

    def start(self) -> FaultyLink:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A short shutdown grace: long-polls held open through the link must not stall stop().
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
        if self._session:
            await self._session.close()

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as resp:
            data = await resp.read()
            keep = {"Content-Type": resp.headers.get("Content-Type", "application/octet-stream")}
            return resp.status, data, keep

    def _tampered(self, body: bytes) -> bytes:
        batch = decode_batch(body)
        records = list(batch.records)
        victim = records[0]
        flipped = victim[:-3] + bytes([victim[-3] ^ 0x01]) + victim[-2:]
        records[0] = flipped
        return encode_batch(
            type(batch)(
                agent_id=batch.agent_id,
                chain_head=batch.chain_head,
                first_seq=batch.first_seq,
                last_seq=batch.last_seq,
                records=records,
                sig=batch.sig,
            )
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.faults.down:
            self._take_event("refused")
            assert request.transport is not None
            request.transport.close()
            raise ConnectionResetError("link down")
        is_batch = request.path == "/v1/batches"
        if is_batch and self.faults.block_batches:
            self._take_event("blocked")
            return web.Response(status=503, text="blocked by the faulty link")
        if is_batch and self._take("tamper"):
            body = self._tampered(body)
        if is_batch and self._take("duplicate"):
            await self._forward(request, body)
        status, data, headers = await self._forward(request, body)
        if is_batch and self._take("lose_answers"):
            assert request.transport is not None
            request.transport.close()  # the centre acted; the agent never hears it
            raise ConnectionResetError("answer lost")
        return web.Response(status=status, body=data, headers=headers)

    def _take_event(self, name: str) -> None:
        with self._lock:
            self.faults.seen[name] = self.faults.seen.get(name, 0) + 1
