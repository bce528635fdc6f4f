"""Console sessions and CSRF: an operator logs in once with their operator token, then uses a cookie.

Rules:

1. The session is server-side: the cookie holds only a random id (``secrets.token_urlsafe(32)``),
   ``HttpOnly``, ``SameSite=Strict``, ``Path=/console/``, ``Secure`` whenever the request came over TLS.
   The session keeps the operator token in the server's memory and every request looks the operator
   up again with it (``central.operators.operator_by_token``, the API's own check), so a disabled
   operator or a replaced token stops working on the next click, not at expiry.
2. A session ends after ``IDLE_S`` without a request, after ``MAX_AGE_S`` in all, at logout, and when
   the server restarts (sessions are not written anywhere: nothing to steal from the disk).
3. Every POST carries the session's CSRF token in a hidden ``csrf`` field, compared in constant time;
   a POST whose ``Origin`` header names another site is refused too. The login form, posted before
   any session exists, carries a nonce that must match its own ``SameSite=Strict`` cookie.
4. A failed login changes nothing and says what to do; the log names the operator on success, never
   the token.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .errors import CsrfRefused, OriginRefused

__all__ = [
    "COOKIE",
    "IDLE_S",
    "LOGIN_COOKIE",
    "MAX_AGE_S",
    "Session",
    "Sessions",
    "check_csrf",
    "set_cookie",
]

COOKIE = "yc_session"
LOGIN_COOKIE = "yc_login"
PATH = "/console/"
#: A session unused this long is over (seconds).
IDLE_S = 30 * 60
#: No session lives longer than this, used or not (seconds).
MAX_AGE_S = 12 * 3600
#: Sessions held at most; the oldest go first (a flood of logins cannot fill the memory).
MAX_SESSIONS = 10_000


@dataclass(slots=True)
class Session:
    """One logged-in operator's session (server memory only)."""

    id: str
    token: str
    name: str
    csrf: str
    created: float
    last_seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind ok|error, message)

    def expired(self, now: float) -> bool:
        return now - self.last_seen > IDLE_S or now - self.created > MAX_AGE_S


class Sessions:
    """The server's sessions by id; the event loop is the only thread that touches them."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._by_id: dict[str, Session] = {}
        self._clock = clock

    def __len__(self) -> int:
        return len(self._by_id)

    def create(self, token: str, name: str) -> Session:
        now = self._clock()
        if len(self._by_id) >= MAX_SESSIONS:
            self._sweep(now)
        while len(self._by_id) >= MAX_SESSIONS:
            del self._by_id[min(self._by_id, key=lambda k: self._by_id[k].created)]
        session = Session(secrets.token_urlsafe(32), token, name, secrets.token_urlsafe(32), now, now)
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of ``session_id`` (touched), or None when unknown or expired (then dropped)."""
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if session.expired(now):
            del self._by_id[session_id]
            return None
        session.last_seen = now
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._by_id.pop(session_id, None)

    def _sweep(self, now: float) -> None:
        for key in [k for k, s in self._by_id.items() if s.expired(now)]:
            del self._by_id[key]


def set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str) -> None:
    """A console cookie: HttpOnly, SameSite=Strict, on /console/ only, Secure over TLS."""
    response.set_cookie(
        name, value, path=PATH, httponly=True, samesite="Strict", secure=request.secure, max_age=MAX_AGE_S
    )


def _same_origin(request: web.Request) -> bool:
    """No ``Origin`` (some clients send none) leaves the CSRF token to decide; ``null`` is another site."""
    origin = request.headers.get("Origin")
    return origin is None or origin == f"{request.scheme}://{request.host}"


def check_csrf(request: web.Request, expected: str, given: Any) -> None:
    """Refuse a POST from another site or without ``expected`` (``CsrfRefused``, 403; nothing done)."""
    if not _same_origin(request):
        raise OriginRefused(
            "this form was posted from another site; open the console at this server's address and retry"
        )
    if not isinstance(given, str) or not given or not hmac.compare_digest(given, expected):
        raise CsrfRefused(
            "the form is missing this session's security token (it is stale or did not come from the "
            "console); reload the page and submit it again"
        )
