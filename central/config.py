"""The collector's settings: one typed dataclass, validated when it is built.

Every setting has a documented default so that ``yibao-central --home DIR serve`` works
with nothing else. The home directory holds the database (``central.db``); nothing else
is written outside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from protocol.batch import BatchLimits

from .errors import ConfigInvalid

__all__ = ["DB_NAME", "DEFAULT_LISTEN", "HOME_ENV", "CentralConfig", "parse_listen"]

HOME_ENV = "YIBAO_HOME"
DB_NAME = "central.db"
DEFAULT_LISTEN = "127.0.0.1:8720"
#: Bytes allowed above ``BatchLimits.max_bytes`` for HTTP framing slack before aiohttp refuses a body.
BODY_SLACK = 64 * 1024


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` → (host, port); ``[::1]:8720`` for IPv6."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ConfigInvalid(f"listen address {listen!r} must look like HOST:PORT, e.g. {DEFAULT_LISTEN}")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigInvalid(f"listen port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigInvalid(f"listen port {port} is outside 0-65535")
    return host, port


@dataclass(frozen=True)
class CentralConfig:
    """Settings of one central collector.

    - ``home``: directory holding ``central.db``; from ``--home`` or ``$YIBAO_HOME``.
    - ``listen``: ``HOST:PORT`` the HTTP API binds (default ``127.0.0.1:8720``; port 0 picks one).
    - ``token_ttl_hours``: how long an enrolment token stays usable (default 24 h).
    - ``batch_limits``: the most a batch may hold (bytes, records, bytes per record); the
      agents' uploaders stay below ``protocol.batch.BatchLimits`` defaults.
    """

    home: Path
    listen: str = DEFAULT_LISTEN
    token_ttl_hours: float = 24.0
    batch_limits: BatchLimits = field(default_factory=BatchLimits)

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home))
        parse_listen(self.listen)
        if not self.token_ttl_hours > 0:
            raise ConfigInvalid("token TTL must be a positive number of hours")

    @classmethod
    def from_home(cls, home: str | os.PathLike[str] | None, **kwargs: object) -> CentralConfig:
        """Build from an explicit home or ``$YIBAO_HOME``; says what to do when neither is set."""
        chosen = home if home is not None else os.environ.get(HOME_ENV)
        if not chosen:
            raise ConfigInvalid(f"no home directory: pass --home DIR or set ${HOME_ENV}")
        return cls(home=Path(chosen), **kwargs)  # type: ignore[arg-type]

    @property
    def db_path(self) -> Path:
        return self.home / DB_NAME

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    @property
    def client_max_size(self) -> int:
        """aiohttp's body cap: a little above the batch limit so the decoder gives the precise error."""
        return self.batch_limits.max_bytes + BODY_SLACK
