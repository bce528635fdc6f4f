"""Desk sessions and CSRF: a cashier or doctor signs in once with their own ``ybu_`` token.

Rules (the centre's console works the same way; the agent cannot import it, so this is its own):

1. Server-side sessions: the cookie holds only a random id, ``HttpOnly``, ``Path=/desk/``, ``Secure``
   whenever the request came over TLS. ``SameSite=Strict`` by default; ``None`` when the agent is
   configured to be embedded by other origins (``desk_frame_ancestors``) and serves TLS — a cross-site
   iframe gets no ``Strict`` cookie, and browsers take ``None`` only with ``Secure``.
2. The session keeps the user's token in memory and every request authenticates it again
   (``agent.users``), so a disabled or rotated token stops at the next click. Sessions end after
   ``IDLE_S`` unused, ``MAX_AGE_S`` in all, at sign-out, and when the agent restarts.
3. Every POST carries the session's CSRF token (hidden ``csrf`` field, constant-time compare) and a POST
   whose ``Origin`` is not the agent's own is refused. The sign-in form carries a nonce matching its own
   cookie, so another site cannot sign a desk in under someone else's name.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .errors import CsrfRefused, OriginRefused

__all__ = ["COOKIE", "IDLE_S", "LOGIN_COOKIE", "MAX_AGE_S", "PATH", "Session", "Sessions", "check_csrf"]

COOKIE = "yd_session"
LOGIN_COOKIE = "yd_login"
PATH = "/desk/"
#: A desk left alone this long signs out (seconds): a cashier's lunch break, not a shift.
IDLE_S = 2 * 3600
#: No session lives longer than a long shift (seconds).
MAX_AGE_S = 12 * 3600
#: Sessions held at most; the oldest go first (a flood of sign-ins cannot fill the memory).
MAX_SESSIONS = 2_000


@dataclass(slots=True)
class Session:
    """One signed-in user's session (server memory only)."""

    id: str
    token: str
    csrf: str
    created: float
    last_seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # (ok|error, message)
    #: The doctor's patient read from a card when no bill names one (the Identity; never logged).
    patient: Any = None

    def expired(self, now: float) -> bool:
        return now - self.last_seen > IDLE_S or now - self.created > MAX_AGE_S


class Sessions:
    """The desk's sessions by id; only the event loop touches them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._by_id: dict[str, Session] = {}
        self._clock = clock

    def __len__(self) -> int:
        return len(self._by_id)

    def create(self, token: str) -> Session:
        now = self._clock()
        if len(self._by_id) >= MAX_SESSIONS:
            for key in [k for k, s in self._by_id.items() if s.expired(now)]:
                del self._by_id[key]
        while len(self._by_id) >= MAX_SESSIONS:
            del self._by_id[min(self._by_id, key=lambda k: self._by_id[k].created)]
        session = Session(secrets.token_urlsafe(32), token, secrets.token_urlsafe(32), now, now)
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session (touched), or None when unknown or expired (then dropped)."""
        session = self._by_id.get(session_id or "")
        if session is None:
            return None
        now = self._clock()
        if session.expired(now):
            del self._by_id[session.id]
            return None
        session.last_seen = now
        return session

    def drop(self, session_id: str | None) -> None:
        self._by_id.pop(session_id or "", None)


def set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str, *,
               embedded: bool) -> None:  # fmt: skip
    """A desk cookie; ``embedded``: other origins may frame the desk (``SameSite=None`` over TLS)."""
    samesite = "None" if embedded and request.secure else "Strict"
    response.set_cookie(
        name, value, path=PATH, httponly=True, samesite=samesite, secure=request.secure, max_age=MAX_AGE_S
    )


def check_csrf(request: web.Request, expected: str, given: object) -> None:
    """Refuse a POST from another origin or without ``expected``; nothing is done then."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise OriginRefused(
            "this form was posted from another site's page; open the desk at the agent's own address and "
            "retry"
        )
    if not isinstance(given, str) or not given or not hmac.compare_digest(given, expected):
        raise CsrfRefused(
            "the form is missing this session's security token (it is stale or did not come from the desk "
            "page); reload the page and submit it again"
        )
