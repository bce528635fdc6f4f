"""The signed heartbeat: every ``heartbeat_s`` (≤ 60 s), idle or not, the agent tells the centre how far
its chain reaches (``protocol.wire.Heartbeat``).

Uploads only tell the centre what it has; settlements waiting here (the centre unreachable, the
uploader stuck on a refusal) are invisible to it. The heartbeat closes that gap: signed with the
enrolment key, it lets ``yibao-central reconcile`` say "complete up to T", "behind by N" or, when
the beats stop, "silent since T". A heartbeat that cannot be delivered is not queued: the next one
supersedes it, and the centre's "silent since" is the truth about a link that is down. The answer
carries the centre's acked seq: an idle agent learns from it that a centre restored from a backup
holds less than it acknowledged, and resends from there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgpack

from protocol.batch import KeyPair
from protocol.wire import HEARTBEAT_PATH, MSGPACK, PROTOCOL_HEADER, Heartbeat, sign_heartbeat

from .config import AgentConfig
from .store import Outbox
from .tls import client_ssl

__all__ = ["HeartbeatSender"]

log = logging.getLogger(__name__)


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts is not None else None


class HeartbeatSender:
    """Builds, signs and posts heartbeats; ``status()`` says when the last one was delivered."""

    def __init__(self, config: AgentConfig, outbox: Outbox, key: KeyPair) -> None:
        self.config = config
        self.outbox = outbox
        self.key = key
        self.last_sent_at: float | None = None
        self.last_error: str | None = None
        self.sent = 0
        #: Called when a heartbeat's answer shows the centre holding less than the agent was told.
        self.on_centre_behind: Callable[[], None] | None = None
        self._stop = asyncio.Event()

    def build(self, now: float | None = None) -> Heartbeat:
        now = time.time() if now is None else now
        last_seq, head, acked, oldest = self.outbox.snapshot()
        return Heartbeat(
            agent_id=self.config.agent_id,
            at=datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
            last_seq=last_seq,
            head=head,
            acked_seq=acked,
            oldest_pending_ms=None if oldest is None else max(0, round((now - oldest) * 1000)),
        )

    async def send_once(self, session: aiohttp.ClientSession) -> bool:
        """One heartbeat; False (logged, kept in ``last_error``) when it was not stored."""
        body = sign_heartbeat(self.key, self.build())
        url = self.config.central_url.rstrip("/") + HEARTBEAT_PATH
        try:
            async with session.post(
                url, data=body, headers={"Content-Type": MSGPACK, PROTOCOL_HEADER: "1"}
            ) as resp:
                data = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.last_error = "central_unreachable"
            log.info("heartbeat not delivered: %s", type(exc).__name__)
            return False
        if status != 200:
            code, message = f"http_{status}", ""
            try:
                error = msgpack.unpackb(data)["error"]
                code, message = str(error["code"]), str(error["message"])
            except (ValueError, TypeError, KeyError, msgpack.UnpackException):
                pass
            self.last_error = code
            log.warning("the centre refused the heartbeat (%s): %s", code, message)
            return False
        self.last_sent_at = time.time()
        self.last_error = None
        self.sent += 1
        try:
            held = int(msgpack.unpackb(data)["acked_seq"])
        except (ValueError, TypeError, KeyError, msgpack.UnpackException):
            return True  # an older centre answers without it
        if held < self.outbox.acked_seq:
            # The centre was restored from a backup and holds less than it acknowledged: rewind the
            # cursor (the outbox raises the central_behind alarm) and let the uploader resend.
            await asyncio.wrap_future(self.outbox.ack(held))
            if self.on_centre_behind is not None:
                self.on_centre_behind()
        return True

    async def run(self) -> None:
        """Until ``stop()``: a heartbeat at once, then every ``heartbeat_s``; never raises on the network."""
        timeout = aiohttp.ClientTimeout(total=min(self.config.upload_timeout_s, self.config.heartbeat_s))
        connector = aiohttp.TCPConnector(ssl=client_ssl(self.config.home, self.config.central_url))
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while not self._stop.is_set():
                await self.send_once(session)
                try:
                    await asyncio.wait_for(self._stop.wait(), self.config.heartbeat_s)
                except TimeoutError:
                    pass

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> dict[str, Any]:
        """For ``GET /v1/status``: whether the centre hears this agent (a silent link shows here first).

        ``last_error`` is None after a delivered beat, else the reason the last one was not stored
        (``central_unreachable`` or the centre's error code); ``sent`` counts delivered beats since start.
        """
        return {
            "last_sent_at": _iso(self.last_sent_at),
            "last_error": self.last_error,
            "sent": self.sent,
            "interval_s": self.config.heartbeat_s,
        }
