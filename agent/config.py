"""The agent's settings: one typed object, validated at start, every value documented.

Settings live in ``HOME/agent.json`` (written by ``yibao-agent init``); unknown keys fail
at start with the list of known ones, so a typo is never silently ignored.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import ConfigError

__all__ = ["AgentConfig", "load_config", "save_config"]

_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?$|^https?://\[[0-9A-Fa-f:]+\](:\d{1,5})?$")


@dataclass
class AgentConfig:
    #: Directory holding the key, the database and the HIS token.
    home: Path
    #: Base URL of the central collector, e.g. ``https://centre.example:8720``; ``http://`` only with
    #: ``insecure_dev``.
    central_url: str = ""
    #: Enrolled with ``--insecure-dev``: plain HTTP to the centre and no client certificate. A
    #: development machine only; the default is HTTPS, the centre's trust bundle pinned in ``HOME/tls``.
    insecure_dev: bool = False
    #: Agent id assigned by the centre at enrolment.
    agent_id: str = ""
    #: The designated institution this agent serves (``fixmedins_code``).
    fixmedins_code: str = ""
    #: Where the HIS-facing API listens. Loopback by default: the HIS runs on this machine. Any other
    #: address needs ``his_tls_cert``/``his_tls_key`` (or ``insecure_dev``), since the traffic leaves it.
    listen: str = "127.0.0.1:8710"
    #: PEM certificate chain and key for serving the HIS API over HTTPS (relative paths are in the
    #: home); the hospital's own CA usually issues them. Empty: plain HTTP, loopback only.
    his_tls_cert: str = ""
    his_tls_key: str = ""
    #: Largest HIS request body accepted (bytes); larger gets 413.
    max_body_bytes: int = 1024 * 1024
    #: Outbox limit in records not yet acknowledged; beyond it new settlements are refused.
    outbox_max_records: int = 2_000_000
    #: Outbox limit in bytes not yet acknowledged.
    outbox_max_bytes: int = 4 * 1024**3
    #: Refuse new settlements when the disk holding the outbox has less free space (bytes).
    min_free_disk_bytes: int = 256 * 1024**2
    #: Most records committed in one transaction (group commit).
    group_max: int = 256
    #: Upload batch bounds; the centre refuses batches above its own limits.
    batch_max_records: int = 2000
    batch_max_bytes: int = 4 * 1024**2
    #: Acknowledged records are kept this long (seconds) before pruning.
    retention_s: float = 7 * 24 * 3600
    #: Upload retry backoff: exponential with jitter, capped; never gives up.
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0
    #: Per-request timeout for uploads (seconds).
    upload_timeout_s: float = 30.0
    #: Idle poll interval of the uploader when the outbox is empty (seconds).
    idle_poll_s: float = 1.0
    #: PC/SC reader holding the patient's card: a substring of its name; empty = the first reader
    #: that is not the PSAM's.
    card_reader: str = ""
    #: PC/SC reader holding the PSAM (issuer security module): a substring of its name; empty = found
    #: by selecting the PSAM application in each reader with a card.
    psam_reader: str = ""
    #: E-voucher issuer keys trusted by this agent: key id → Ed25519 public key, base64url (raw 32
    #: bytes). Until the signed ``keys`` bundle exists, operators set these here.
    evoucher_issuers: dict[str, str] = field(default_factory=dict)
    #: Clock-skew allowance when checking a voucher's issue and expiry times (seconds).
    evoucher_skew_s: float = 30.0
    #: Pooling area (6-digit ``admdvs``) whose policy bundles this agent obeys; set at enrolment.
    pooling_area: str = ""
    #: Warn (status ``policy.warning``, alarm ``blacklist_stale``) when the blacklist was last confirmed
    #: current by a verified update longer ago than this (seconds). The agent keeps serving.
    blacklist_max_age_s: float = 24 * 3600
    #: Fallback policy update interval (seconds) when no change signal arrives; also the longest
    #: wait between two signed reports to the centre (capped at 600 s by the contract).
    policy_poll_s: float = 300.0
    #: Client timeout of the long-poll change signal (seconds): a bit over the centre's ~30 s hold.
    policy_changes_timeout_s: float = 35.0
    #: How often the agent sends its signed heartbeat (seconds); the contract is at least every 60 s,
    #: since the centre calls an agent silent after three missed beats of the contract's minute.
    heartbeat_s: float = 60.0
    #: The hospital's grade for benefit and price rules: "1", "2", "3" or "0" (ungraded); set by the
    #: operator at installation. Empty: unknown (level-specific rules and ceilings do not apply).
    hosp_lv: str = ""
    #: The doctor's and cashier's patience for cross-hospital history from the centre (seconds).
    history_timeout_s: float = 0.3
    #: Days of history the prescription checks look back.
    history_days: int = 90
    #: Drop folder for HIS products that only exchange files (docs/DROPFOLDER.md): a directory holding
    #: ``inbox/``, ``processing/``, ``results/``, ``done/``, ``rejected/``; relative to home. Empty: off.
    dropfolder: str = ""
    #: A file in ``inbox/`` is taken only once its size and mtime have not changed for this long
    #: (milliseconds): a HIS writing in place is not read half-way. 0 trusts the rename contract alone.
    dropfolder_stable_ms: int = 1000
    #: Periodic scan of ``inbox/`` (seconds), beside the file events (which can be missed).
    dropfolder_poll_s: float = 2.0
    #: Files settled at once (bounded concurrency; concurrent settlements share a group commit).
    dropfolder_workers: int = 8
    #: HIS origins allowed to embed the desk pages in an iframe (``https://his.example:8443``); the CSP
    #: ``frame-ancestors`` of ``/desk/``. Empty: this origin only. A cross-site HIS needs the agent on
    #: HTTPS too (the session cookie is then ``SameSite=None; Secure``; docs/DESK.md).
    desk_frame_ancestors: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def db_path(self) -> Path:
        return self.home / "agent.db"

    @property
    def tls_dir(self) -> Path:
        """The pinned trust bundle and this agent's TLS client key and certificate (``agent.tls``)."""
        return self.home / "tls"

    @property
    def key_path(self) -> Path:
        return self.home / "agent.key"

    @property
    def token_path(self) -> Path:
        return self.home / "his.token"

    @property
    def evoucher_db_path(self) -> Path:
        return self.home / "evoucher.db"

    @property
    def config_path(self) -> Path:
        return self.home / "agent.json"

    @property
    def policy_db_path(self) -> Path:
        return self.home / "policy.db"

    @property
    def tuf_dir(self) -> Path:
        """TUF client state: ``metadata/`` (pinned and trusted metadata), ``download/`` (in transit)."""
        return self.home / "tuf"

    @property
    def tuf_metadata_dir(self) -> Path:
        return self.tuf_dir / "metadata"

    @property
    def dropfolder_path(self) -> Path | None:
        """The drop folder's root, or None when it is off."""
        return (self.home / self.dropfolder) if self.dropfolder else None

    def validate(self) -> AgentConfig:
        problems = []
        for name in (
            "max_body_bytes",
            "outbox_max_records",
            "outbox_max_bytes",
            "group_max",
            "batch_max_records",
            "batch_max_bytes",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        if self.backoff_initial_s <= 0 or self.backoff_max_s < self.backoff_initial_s:
            problems.append("backoff_initial_s must be > 0 and <= backoff_max_s")
        if self.pooling_area and not (len(self.pooling_area) == 6 and self.pooling_area.isdigit()):
            problems.append("pooling_area must be a 6-digit area code")
        for name in ("blacklist_max_age_s", "policy_poll_s", "policy_changes_timeout_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        for origin in self.desk_frame_ancestors:
            if not _ORIGIN.match(str(origin)):
                problems.append(f"desk_frame_ancestors: {origin!r} is not an origin such as https://his.example:8443")
        if bool(self.his_tls_cert) != bool(self.his_tls_key):
            problems.append("his_tls_cert and his_tls_key go together: set both (HTTPS) or neither")
        if not 0 < self.heartbeat_s <= 60:
            problems.append("heartbeat_s must be above 0 and at most 60 (the centre expects one a minute)")
        if self.dropfolder_stable_ms < 0 or self.dropfolder_poll_s <= 0:
            problems.append("dropfolder_stable_ms must be >= 0 and dropfolder_poll_s positive")
        if not 1 <= self.dropfolder_workers <= 64:
            problems.append("dropfolder_workers must be 1 to 64")
        if problems:
            raise ConfigError("invalid agent settings: " + "; ".join(problems))
        return self


_KNOWN = {f.name for f in fields(AgentConfig)} - {"home", "extra"}


def load_config(home: Path | str | None) -> AgentConfig:
    """Read ``HOME/agent.json``; ``home`` falls back to ``$YIBAO_HOME``."""
    if home is None:
        home = os.environ.get("YIBAO_HOME")
    if not home:
        raise ConfigError("no agent home: pass --home DIR or set YIBAO_HOME")
    home = Path(home)
    path = home / "agent.json"
    if not path.exists():
        raise ConfigError(f"{path} not found: run 'yibao-agent --home {home} init' first")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    unknown = set(data) - _KNOWN
    if unknown:
        raise ConfigError(f"unknown settings {sorted(unknown)} in {path}; known: {sorted(_KNOWN)}")
    return AgentConfig(home=home, **data).validate()


def save_config(config: AgentConfig) -> None:
    data = {k: v for k, v in asdict(config).items() if k not in ("home", "extra")}
    tmp = config.config_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, config.config_path)
