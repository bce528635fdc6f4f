"""The uploader: moves the outbox to the centre, forever, safely.

It reads the outbox in bounded batches from the acked cursor, signs each batch once, and
posts it. Whatever happens — timeouts, a centre that is down for days, a lost
acknowledgement, a duplicate delivery — the next step is the same: send from the centre's
``acked_seq + 1``. The centre is idempotent on (agent, seq), so resending is always safe.

Retries use tenacity: exponential backoff with full jitter, capped, and no stop condition.
Refusals that a retry cannot fix (revoked agent, bad signature) raise an alarm and keep
retrying slowly, because an operator's fix on either side must be picked up unattended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from protocol.batch import KeyPair, encode_batch, sign_batch
from protocol.wire import BATCH_PATH, MSGPACK, PROTOCOL_HEADER, BatchAck, decode_ack

from .config import AgentConfig
from .store import Outbox
from .tls import client_ssl, client_tls

__all__ = ["Uploader"]

log = logging.getLogger("yibao.agent.uploader")


class _Retry(Exception):
    """A failed attempt that will be tried again."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Shrink(Exception):
    """The centre found the batch too large: re-read a smaller one, don't resend this one."""


_ALARMING = {"agent_revoked", "agent_unknown", "signature_invalid", "chain_broken", "chain_conflict"}


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


class Uploader:
    def __init__(self, config: AgentConfig, outbox: Outbox, key: KeyPair) -> None:
        self.config = config
        self.outbox = outbox
        self.key = key
        self.reachable: bool | None = None
        self.last_upload_at: float | None = None
        self.last_attempt_at: float | None = None
        self.last_error: str | None = None
        self.batches_sent = 0
        self.records_acked = 0
        self._cursor = outbox.acked_seq
        self._max_records = config.batch_max_records
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Called with (seconds, outcome code) after every upload attempt (the metrics' latency histogram).
        self.on_attempt: Callable[[float, str], None] | None = None

    def wake(self) -> None:
        """Called from the outbox writer thread when records are appended: upload at once."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def status(self) -> dict[str, Any]:
        return {
            "url": self.config.central_url,
            "reachable": self.reachable,
            "last_upload_at": _iso(self.last_upload_at),
            "last_attempt_at": _iso(self.last_attempt_at),
            "last_error": self.last_error,
            "batches_sent": self.batches_sent,
            "tls": tls.status() if (tls := client_tls(self.config.home, self.config.central_url)) else None,
        }

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=self.config.upload_timeout_s)
        connector = aiohttp.TCPConnector(ssl=client_ssl(self.config.home, self.config.central_url))
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            self._session = session
            next_prune = time.monotonic() + 60
            while not self._stop.is_set():
                sent = await self.drain_once()
                if time.monotonic() > next_prune:
                    await asyncio.wrap_future(self.outbox.prune())
                    next_prune = time.monotonic() + 3600
                if sent == 0:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.config.idle_poll_s)
                    except TimeoutError:
                        pass
        self._session = None

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def drain_once(self) -> int:
        """Send one batch from the cursor (retrying until the centre answers); records acked."""
        # The outbox's acked seq is the truth: a heartbeat's answer may have rewound it (a centre
        # restored from a backup holds less than it acknowledged).
        self._cursor = self.outbox.acked_seq
        loop = asyncio.get_running_loop()
        pending = await loop.run_in_executor(
            None, self.outbox.read_pending, self._cursor, self._max_records, self.config.batch_max_bytes
        )
        if not pending:
            return 0
        batch = sign_batch(self.key, self.config.agent_id, pending[0].seq, [p.raw for p in pending])
        body = encode_batch(batch)
        try:
            ack = await self._post_with_retry(body, batch.first_seq, batch.last_seq)
        except _Shrink:
            return 1
        if ack is None:  # stopping
            return 0
        before = self.outbox.acked_seq
        await asyncio.wrap_future(self.outbox.ack(ack.acked_seq, ack.rejected))
        self._cursor = self.outbox.acked_seq
        if ack.code == "gap":
            log.warning("centre asks to resend from seq %s", ack.resend_from)
        self.records_acked += max(0, self._cursor - before)
        return max(1, self._cursor - before) if ack.code != "gap" else 1

    async def _post_with_retry(self, body: bytes, first: int, last: int) -> BatchAck | None:
        retrying = AsyncRetrying(
            wait=wait_random_exponential(
                multiplier=self.config.backoff_initial_s, max=self.config.backoff_max_s
            ),
            retry=retry_if_exception_type(_Retry),
            reraise=True,
        )
        async for attempt in retrying:
            if self._stop.is_set():
                return None
            with attempt:
                started, outcome = time.perf_counter(), "ok"
                try:
                    return await self._post(body, first, last)
                except _Retry as exc:
                    outcome = exc.code
                    raise
                except _Shrink:
                    outcome = "batch_too_large"
                    raise
                finally:
                    if self.on_attempt is not None:
                        self.on_attempt(time.perf_counter() - started, outcome)
        return None  # pragma: no cover - tenacity never stops without a stop condition

    async def _post(self, body: bytes, first: int, last: int) -> BatchAck:
        assert self._session is not None
        self.last_attempt_at = time.time()
        url = self.config.central_url.rstrip("/") + BATCH_PATH
        headers = {"Content-Type": MSGPACK, PROTOCOL_HEADER: "1"}
        try:
            async with self._session.post(url, data=body, headers=headers) as resp:
                data = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.reachable = False
            self.last_error = "central_unreachable"
            log.info("upload of %s-%s failed: %s; will retry", first, last, type(exc).__name__)
            raise _Retry("central_unreachable", str(exc)) from exc
        self.reachable = True
        if status in (200, 409):
            try:
                ack = decode_ack(data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                ack = None
            if ack is not None:
                self.last_upload_at = time.time()
                self.last_error = None
                self.batches_sent += 1
                for code in _ALARMING & set(self.outbox.alarms):
                    await asyncio.wrap_future(self.outbox.clear_alarm(code))
                return ack
        code, message = self._error_of(data, status)
        self.last_error = code
        if status == 413 and self._max_records > 1:
            self._max_records = max(1, self._max_records // 2)
            log.warning(
                "centre refused a batch as too large; batches now up to %s records", self._max_records
            )
            raise _Shrink()
        if code in _ALARMING:
            await asyncio.wrap_future(
                self.outbox.raise_alarm(code, f"the centre refuses this agent's uploads: {message}")
            )
        log.warning("centre answered %s (%s) to batch %s-%s; will retry", status, code, first, last)
        raise _Retry(code, message)

    @staticmethod
    def _error_of(data: bytes, status: int) -> tuple[str, str]:
        try:
            err = msgspec.msgpack.decode(data)["error"]
            return str(err["code"]), str(err.get("message", ""))
        except Exception:
            return f"http_{status}", f"HTTP {status}"
