"""A person's cross-hospital history, from the centre, within the doctor's patience.

Prompts are only as good as the history behind them: a duplicate prescription usually comes
from *another* hospital. The centre holds every hospital's settlements, so the agent asks it
(``GET /v1/persons/{psn_no}/history``, signed with the agent's key — these are medical
records, and the centre logs every lookup). A doctor will not wait: the answer must come
within ``history_timeout_s`` (300 ms by default) or the agent goes on with its local history
and says so (``cross_hospital: false``) rather than holding the prescription screen.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from protocol.batch import KeyPair
from protocol.wire import PERSON_HISTORY_PATH, PROTOCOL_HEADER, sign_request

__all__ = ["CentralHistory", "RemoteHistory"]

log = logging.getLogger("yibao.agent.history")


@dataclass
class RemoteHistory:
    """What the centre answered, or why there is nothing (``missing`` says why, for the doctor)."""

    lines: list[dict[str, Any]] = field(default_factory=list)
    ytd: dict[str, Any] | None = None
    ok: bool = False
    missing: str | None = None
    ms: float = 0.0


class CentralHistory:
    def __init__(
        self,
        central_url: str,
        agent_id: str,
        key: KeyPair,
        *,
        timeout_s: float = 0.3,
        ssl_context: ssl.SSLContext | bool = True,
    ) -> None:
        self.central_url = central_url.rstrip("/")
        self.ssl_context = ssl_context
        self.agent_id = agent_id
        self.key = key
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl_context))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(self, psn_no: str, days: int) -> RemoteHistory:
        """The person's lines of the last ``days`` days at every hospital, or why not (never raises)."""
        started = time.perf_counter()
        if not self.central_url:
            return RemoteHistory(missing="no central collector configured")
        path = PERSON_HISTORY_PATH.format(psn_no=urllib.parse.quote(psn_no, safe="")) + f"?days={days}"
        at = datetime.now(UTC).isoformat(timespec="seconds")
        headers = sign_request(self.key, self.agent_id, "GET", path, at)
        headers[PROTOCOL_HEADER] = "1"
        try:
            session = await self._http()
            async with asyncio.timeout(self.timeout_s):
                async with session.get(self.central_url + path, headers=headers) as resp:
                    body = await resp.json(content_type=None)
                    status = resp.status
        except TimeoutError:
            return RemoteHistory(
                missing=f"the centre did not answer within {self.timeout_s * 1000:.0f} ms",
                ms=(time.perf_counter() - started) * 1e3,
            )
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return RemoteHistory(
                missing=f"the centre is unreachable ({type(exc).__name__})",
                ms=(time.perf_counter() - started) * 1e3,
            )
        ms = (time.perf_counter() - started) * 1e3
        if status != 200 or not isinstance(body, dict):
            code = body.get("error", {}).get("code") if isinstance(body, dict) else None
            log.warning("the centre refused a history lookup: %s (%s)", status, code)
            return RemoteHistory(missing=f"the centre refused the lookup ({code or status})", ms=ms)
        lines = body.get("lines")
        if not isinstance(lines, list):
            return RemoteHistory(missing="the centre's answer had no lines", ms=ms)
        return RemoteHistory(lines=lines, ytd=body.get("ytd"), ok=True, ms=ms)
