"""After a restore: take back from the centre what this agent made after its backup, before settling.

A backup is a moment; the agent went on settling and uploading after it. Restored, its outbox ends at
the backup while the centre holds more of its chain. Settling from the old head would give the next
record a seq the centre already has with other content: a fork the centre refuses, and every later
upload with it. So ``yibao-agent restore`` leaves a marker (``HOME/restored.json``), and while it is
there the outbox refuses appends (503 ``resync_pending``: the HIS retries) and this task asks the
centre for the agent's own entries after its head (``GET /v1/agents/records``, signed with the
agent's key, over its mutual-TLS link), appends each one only if it continues the chain exactly, and
then removes the marker. With the centre unreachable it keeps trying: refusing for a while is safe,
a fork is not. What the centre never received (made after the backup, never uploaded) is gone with the
lost disk; reconcile at the centre shows nothing missing because the centre never knew it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from protocol import canonical
from protocol.batch import KeyPair
from protocol.errors import ProtocolError
from protocol.wire import PROTOCOL_HEADER, RECORDS_PATH, sign_request

from .config import AgentConfig
from .durable import write_atomic
from .errors import ChainDiverged, StoreError
from .store import Outbox
from .tls import client_ssl

__all__ = ["MARKER", "Resync", "mark_restored"]

log = logging.getLogger(__name__)

MARKER = "restored.json"
#: Entries asked for per request (the centre answers at most 1000).
PAGE = 500
_HOLD = (
    "this agent was restored from a backup and is first taking back from the centre the settlements made "
    "after that backup (otherwise its records would fork); retry in a moment"
)


def mark_restored(home: Path, backup_created_at: str) -> None:
    """Written by ``yibao-agent restore``: the next ``serve`` takes back its records before settling."""
    note = {"restored_at": datetime.now(UTC).isoformat(timespec="seconds"), "backup_of": backup_created_at}
    write_atomic(home / MARKER, json.dumps(note).encode(), mode=0o600)


class Resync:
    """Holds the outbox's appends while a restore marker exists, until the centre's records are back."""

    def __init__(self, config: AgentConfig, outbox: Outbox, key: KeyPair) -> None:
        self.config = config
        self.outbox = outbox
        self.key = key
        self.marker = config.home / MARKER
        self.taken = 0
        self.last_error: str | None = None
        self.pending = self.marker.exists()
        if self.pending:
            outbox.hold_appends = _HOLD  # before the HIS API opens: not one settlement may fork

    async def _page(self, session: aiohttp.ClientSession) -> tuple[list[bytes], int]:
        path = f"{RECORDS_PATH}?after={self.outbox.last_seq}&limit={PAGE}"
        at = datetime.now(UTC).isoformat(timespec="seconds")
        headers = sign_request(self.key, self.config.agent_id, "GET", path, at)
        headers[PROTOCOL_HEADER] = "1"
        async with session.get(self.config.central_url + path, headers=headers) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise StoreError(f"the centre refused the records request ({resp.status}): {data[:200]!r}")
        answer = canonical.decode_canonical(data)
        records = [bytes(r) for r in answer["records"]]
        return records, int(answer["acked_seq"])

    async def run_once(self, session: aiohttp.ClientSession) -> bool:
        """Take back every page; True when the agent's head reached what the centre holds."""
        while True:
            records, held = await self._page(session)
            if records:
                self.taken += await asyncio.wrap_future(self.outbox.recover(records))
                continue
            if self.outbox.last_seq < held:
                mine = self.outbox.last_seq
                raise StoreError(f"the centre holds up to seq {held} but sent nothing after {mine}")
            return True

    async def run(self) -> None:
        if not self.pending:
            return
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=self.config.upload_timeout_s)
        delay = self.config.backoff_initial_s
        connector = aiohttp.TCPConnector(ssl=client_ssl(self.config.home, self.config.central_url))
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while True:
                try:
                    await self.run_once(session)
                    break
                except ChainDiverged as exc:
                    self.last_error = exc.message
                    log.error("records from the centre do not continue this agent's chain: %s", exc.message)
                    await asyncio.wrap_future(self.outbox.raise_alarm("chain_diverged", exc.message))
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError, TypeError,
                        StoreError, ProtocolError) as exc:  # fmt: skip
                    self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    log.warning("taking back records from the centre failed (%s); retrying",
                                type(exc).__name__)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.backoff_max_s)
        self.marker.unlink(missing_ok=True)
        self.outbox.hold_appends = None
        self.pending = False
        log.info("restore complete: took back %d records from the centre in %.1f s; settling again",
                 self.taken, time.monotonic() - started)  # fmt: skip
