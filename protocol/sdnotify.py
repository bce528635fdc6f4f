"""systemd's notify protocol: readiness, stopping, and watchdog pings from ``Type=notify`` services.

Both servers say ``READY=1`` only once they listen (so ``systemctl start`` returns when the API
answers, and units ordered after them start on a working service), ``STOPPING=1`` when a signal
arrives, and, when the unit sets ``WatchdogSec=``, ``WATCHDOG=1`` at half that interval from a task
on their event loop: a loop that hangs, or a health check that fails (the outbox's writer thread
gone), stops the pings and systemd restarts the service. The protocol is a datagram to the
``AF_UNIX`` socket in ``$NOTIFY_SOCKET``; without it (not under systemd) every call does nothing.
It lives in ``protocol`` because the agent and the centre both need it and import nothing of each other.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

__all__ = ["keep_watchdog", "notify", "watchdog_interval"]

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; False when not run by systemd or it failed."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("systemd notification %r failed: %s", state.split("=", 1)[0], exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between pings (half of ``WatchdogSec``), or None when no watchdog is asked for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2_000_000, 0.05)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number of microseconds; no watchdog pings", usec)
        return None


async def keep_watchdog(healthy: Callable[[], bool] = lambda: True) -> None:
    """Ping the watchdog while ``healthy()``; returns at once when no watchdog is configured."""
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        if healthy():
            notify("WATCHDOG=1")
        else:
            log.error("health check failed: no watchdog ping, systemd will restart the service")
        await asyncio.sleep(interval)
