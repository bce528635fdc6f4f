"""The collector's settings: one typed dataclass, validated when it is built.

Every setting has a documented default so that ``yibao-central --home DIR serve`` works
with nothing else. The home directory holds the database (``central.db``); nothing else
is written outside it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from protocol.batch import BatchLimits

from .errors import ConfigInvalid

__all__ = ["CONFIG_NAME", "DAY_S", "DB_NAME", "DEFAULT_LISTEN", "HOME_ENV", "CentralConfig", "parse_listen"]

HOME_ENV = "YIBAO_HOME"
DB_NAME = "central.db"
#: Optional settings file in the home: a JSON object of ``CentralConfig`` fields (numbers, text, booleans).
CONFIG_NAME = "central.json"
DEFAULT_LISTEN = "127.0.0.1:8720"
#: Bytes allowed above ``BatchLimits.max_bytes`` for HTTP framing slack before aiohttp refuses a body.
BODY_SLACK = 64 * 1024
DAY_S = 86_400.0


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


def _settings_file(path: Path) -> dict[str, object]:
    """The settings ``home/central.json`` holds (none when there is no such file), type-checked."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigInvalid(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigInvalid(f"{path} is not JSON ({exc}); fix or remove it") from None
    if not isinstance(data, dict):
        raise ConfigInvalid(f"{path} must hold a JSON object of settings")
    known = {f.name: f for f in fields(CentralConfig) if f.name not in ("home", "batch_limits")}
    for key, value in data.items():
        if key not in known:
            raise ConfigInvalid(f"{path}: unknown setting {key!r} (known: {', '.join(sorted(known))})")
        default = known[key].default
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and isinstance(default, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ConfigInvalid(f"{path}: {key} must be {type(default).__name__}, like {default!r}")
    return data


def _looks_like_dsn(text: str) -> bool:
    return text.startswith(("postgresql://", "postgres://")) or ("=" in text and "dbname" in text)


@dataclass(frozen=True)
class CentralConfig:
    """Settings of one central collector.

    - ``home``: directory holding ``central.db``; from ``--home`` or ``$YIBAO_HOME``.
    - ``listen``: ``HOST:PORT`` the HTTP API binds (default ``127.0.0.1:8720``; port 0 picks one).
    - ``token_ttl_hours``: how long an enrolment token stays usable (default 24 h).
    - ``batch_limits``: the most a batch may hold (bytes, records, bytes per record); the
      agents' uploaders stay below ``protocol.batch.BatchLimits`` defaults.

    Policy bundles (``docs/POLICY.md``; the TUF repository lives in ``home/tuf``):

    - ``root_expiry_s`` / ``targets_expiry_s`` / ``snapshot_expiry_s`` / ``timestamp_expiry_s``:
      how long each role's metadata stays valid (365 d, 90 d, 7 d, 1 d); tests use seconds.
      The server re-signs snapshot and timestamp (online keys) once half their life is gone.
    - ``operator_keys`` / ``root_threshold`` / ``targets_threshold``: at ``init``, how many operator
      keys are created and how many must sign root (2 of 3) and targets (1).
    - ``full_every`` / ``full_ratio``: a new full blacklist snapshot after this many deltas, or when
      the entries in the deltas since the last full exceed this share of its entries.
    - ``policy_poll_s``: longest wait of ``GET /v1/policy/changes`` (30 s); ``changes_check_s``: how
      often the server looks for a new timestamp (publishes come from other processes, 0.2 s).
    - ``resign_check_s``: how often the server checks the online roles' expiry (at most this, and
      never less often than a quarter of the timestamp's life).
    - ``insecure_dev``: serve plain HTTP and accept agent routes without a client certificate. Only for a
      development machine (``serve --insecure-dev``); the default is HTTPS with mutual TLS on agent routes
      (``central.tls``), from the CA ``init`` creates in ``home/tls``.
    - ``client_cert_days``: life of an agent's client certificate (365 d); agents renew at two thirds.
    - ``tls_check_s``: how often the server looks for a rotated server certificate (60 s).
    - ``approvals_required``: how many operators must agree before a blacklist change or a policy,
      rules, catalogue or keys document is published (``central.policy.changes``): 2 (the maker and one
      checker) by default, so no single operator can change what agents enforce. 1 publishes at the
      maker's word: only for a development or single-operator setup, and every verb says so.
    - ``database``: ``"sqlite"`` (``home/central.db``, the embedded default) or a PostgreSQL DSN
      (``docs/POSTGRES.md``); the DSN may carry a password, which no log line or message repeats.
    - ``reuse_port``: bind the listen address with SO_REUSEPORT so a second collector on the same machine
      serves the same address (the kernel spreads connections); PostgreSQL only.

    Any of these but ``home`` and ``batch_limits`` may be set in ``home/central.json`` (a JSON object;
    an unknown key or a value of the wrong type is refused); arguments given to ``from_home`` win.
    - ``keep_versions``: old ``N.snapshot.json`` / ``N.targets.json`` and target files still referenced
      by the last few targets versions stay on disk for clients in the middle of an update.
    """

    home: Path
    listen: str = DEFAULT_LISTEN
    token_ttl_hours: float = 24.0
    batch_limits: BatchLimits = field(default_factory=BatchLimits)
    root_expiry_s: float = 365 * DAY_S
    targets_expiry_s: float = 90 * DAY_S
    snapshot_expiry_s: float = 7 * DAY_S
    timestamp_expiry_s: float = 1 * DAY_S
    operator_keys: int = 3
    root_threshold: int = 2
    targets_threshold: int = 1
    full_every: int = 50
    full_ratio: float = 0.25
    policy_poll_s: float = 30.0
    changes_check_s: float = 0.2
    resign_check_s: float = 60.0
    keep_versions: int = 3
    insecure_dev: bool = False
    client_cert_days: int = 365
    tls_check_s: float = 60.0
    approvals_required: int = 2
    database: str = "sqlite"
    reuse_port: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home))
        parse_listen(self.listen)
        if not self.token_ttl_hours > 0:
            raise ConfigInvalid("token TTL must be a positive number of hours")
        for name in ("root_expiry_s", "targets_expiry_s", "snapshot_expiry_s", "timestamp_expiry_s"):
            if not getattr(self, name) >= 1:
                raise ConfigInvalid(f"{name} must be at least 1 second")
        if not 1 <= self.root_threshold <= self.operator_keys:
            raise ConfigInvalid("root_threshold must be between 1 and the number of operator keys")
        if not 1 <= self.targets_threshold <= self.operator_keys:
            raise ConfigInvalid("targets_threshold must be between 1 and the number of operator keys")
        if self.full_every < 1 or not 0 < self.full_ratio <= 1:
            raise ConfigInvalid("full_every must be at least 1 and full_ratio in (0, 1]")
        if not (self.policy_poll_s > 0 and self.changes_check_s > 0 and self.resign_check_s > 0):
            raise ConfigInvalid("policy_poll_s, changes_check_s and resign_check_s must be positive")
        if self.keep_versions < 1:
            raise ConfigInvalid("keep_versions must be at least 1")
        if not self.tls_check_s > 0:
            raise ConfigInvalid("tls_check_s must be positive")
        if self.client_cert_days < 1:
            raise ConfigInvalid("client_cert_days must be at least 1")
        if not 1 <= self.approvals_required <= 5:
            raise ConfigInvalid("approvals_required must be between 1 and 5 (2: a maker and one checker)")
        if self.database != "sqlite" and not _looks_like_dsn(self.database):
            raise ConfigInvalid(
                f"database must be \"sqlite\" or a PostgreSQL DSN (postgresql://USER@HOST/DB or "
                f"'host=… dbname=…'), not {self.database!r}"
            )
        if self.reuse_port and self.database == "sqlite":
            raise ConfigInvalid(
                "reuse_port lets several collectors share one address, which needs a shared database: set "
                "`database` to a PostgreSQL DSN (one SQLite file has one collector)"
            )

    @classmethod
    def from_home(cls, home: str | os.PathLike[str] | None, **kwargs: object) -> CentralConfig:
        """Build from an explicit home or ``$YIBAO_HOME``; says what to do when neither is set."""
        chosen = home if home is not None else os.environ.get(HOME_ENV)
        if not chosen:
            raise ConfigInvalid(f"no home directory: pass --home DIR or set ${HOME_ENV}")
        settings = {**_settings_file(Path(chosen) / CONFIG_NAME), **kwargs}
        return cls(home=Path(chosen), **settings)  # type: ignore[arg-type]

    @property
    def db_path(self) -> Path:
        return self.home / DB_NAME

    @property
    def where(self) -> str:
        """The database in words, password left out: the SQLite file, or the PostgreSQL server."""
        if self.database == "sqlite":
            return str(self.db_path)
        from central.storage.postgres import redact_dsn

        return redact_dsn(self.database)

    @property
    def tuf_dir(self) -> Path:
        """The TUF repository: ``metadata/`` and ``targets/``, served as ``/tuf/...``."""
        return self.home / "tuf"

    @property
    def tls_dir(self) -> Path:
        """The centre's CA, server certificate and the trust bundle agents pin (``central.tls``)."""
        return self.home / "tls"

    @property
    def keys_dir(self) -> Path:
        """Online (snapshot, timestamp) private keys, one ``<keyid>.pem`` each."""
        return self.home / "keys"

    @property
    def operators_dir(self) -> Path:
        """Demo/test operator keys made by ``init``; production operators keep theirs elsewhere."""
        return self.home / "operators"

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    @property
    def client_max_size(self) -> int:
        """aiohttp's body cap: a little above the batch limit so the decoder gives the precise error."""
        return self.batch_limits.max_bytes + BODY_SLACK
