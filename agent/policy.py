"""Policy bundles from the centre: a TUF client (python-tuf's ``ngclient``) and what the agent adds.

Trust starts at the root pinned at enrolment (``HOME/tuf/metadata/root.json``, its fingerprint printed
by ``yibao-agent init``). ``ngclient.Updater`` does every check TUF specifies: threshold signatures
by the keys the trusted root names, root rotation signed by a threshold of the old and the new keys,
no version older than one trusted (rollback), consistent versions across roles (mix-and-match),
expiry (freeze), lengths and hashes of every file (endless data, tampering). On top, the agent:

1. reads each target's custom metadata (``protocol.bundles.BundleHeader.custom()``), keeps the ones for
   its pooling area, and per kind chooses what to fetch: for a blacklist the chain of deltas from the
   held sequence if the metadata lists one up to the newest, else the newest full snapshot (and the
   deltas after it); for other kinds the newest full bundle;
2. downloads each chosen bundle through TUF (length and hash verified), then checks the header inside
   the file against the signed custom metadata — kind, area, seq, base — and, inside the apply
   transaction, that the seq is newer than the held one and that a delta's base is the held seq;
3. applies it atomically (``agent.policy_store``).

Every refusal, TUF's or ours, keeps the last good state, is recorded as a problem with its code
(``yibao-agent policy status``, ``GET /v1/status``), logged without personal data and reported to the
centre. When metadata can no longer be verified as current (the link is down for days, or someone
replays old metadata) the agent keeps enforcing the last verified bundles and raises an alarm; it never
falls back to "no blacklist".

``PolicyClient.run`` long-polls the centre's change signal (``GET /v1/policy/changes?have=N``), runs
``update`` in a thread when something changed (or every ``policy_poll_s``), and posts a signed report
after each attempt. Sites without a link apply an exported tar file with the same client
(``TarFetcher``; ``yibao-agent policy apply FILE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import random
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
import msgspec
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_random_exponential
from tuf.api import exceptions as tuf_exc
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from protocol import errors as perrors
from protocol.batch import KeyPair
from protocol.bundles import KINDS, BundleHeader, target_name
from protocol.evoucher import load_issuers
from protocol.metrics import epoch
from protocol.wire import (
    MSGPACK,
    POLICY_CHANGES_PATH,
    POLICY_REPORT_PATH,
    PROTOCOL_HEADER,
    TUF_METADATA_PATH,
    TUF_TARGETS_PATH,
    PolicyChanges,
    PolicyReport,
    sign_report,
)

from .config import AgentConfig
from .enrol import pinned_root_fingerprint
from .errors import (
    BundleInvalid,
    BundleNotNewer,
    BundleUnavailable,
    BundleWrongArea,
    PolicyError,
    PolicyNotConfigured,
    PolicyRefused,
    PolicyStoreFailed,
    PolicyUnreachable,
    TufExpired,
    TufRepositoryInvalid,
    TufRollback,
    TufRootRotationRefused,
    TufSignatureInvalid,
    TufTargetMismatch,
)
from .policy_store import Applied, PolicyStore
from .tls import TlsFetcher, client_ssl, client_tls

__all__ = [
    "OFFLINE_BASE",
    "PolicyClient",
    "TarFetcher",
    "UpdateResult",
    "error_from_tuf",
    "issuers_from_keys_bundle",
    "plan_kind",
    "policy_status",
]

log = logging.getLogger("yibao.agent.policy")

#: Base URL the offline client uses; ``TarFetcher`` maps it onto the members of the export.
OFFLINE_BASE = "tar://export"
#: The contract: a report at least this often (seconds), even when nothing changes.
REPORT_EVERY_S = 600.0
#: Shortest time between two change-signal requests (a centre that answers at once must not spin us).
MIN_POLL_GAP_S = 1.0
#: Alarm codes this module raises.
ALARM_EXPIRED = "policy_metadata_expired"
ALARM_STALE = "blacklist_stale"
ALARM_REFUSED = "policy_update_refused"
#: Problem code of a bundle kind this agent does not know (skipped; reported, never a refusal).
CODE_KIND_UNKNOWN = "bundle_kind_unknown"

_ROLES = ("root", "timestamp", "snapshot", "targets")


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def error_from_tuf(exc: BaseException) -> PolicyError:
    """python-tuf's exception → the agent's refusal (or failure) with a stable code."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, tuf_exc.UnsignedMetadataError):
        if text.startswith("root"):
            return TufRootRotationRefused(
                f"a new root was refused ({text}): a root rotation needs a threshold of the old root's "
                "keys and of its own; the trusted root is kept"
            )
        return TufSignatureInvalid(
            f"metadata refused ({text}): a bad or missing signature, or a key the trusted root does not name"
        )
    if isinstance(exc, tuf_exc.BadVersionNumberError):
        return TufRollback(f"metadata refused as a rollback or a mix of versions: {text}")
    if isinstance(exc, tuf_exc.ExpiredMetadataError):
        return TufExpired(f"metadata refused as expired: {text}")
    if isinstance(exc, tuf_exc.LengthOrHashMismatchError | tuf_exc.DownloadLengthMismatchError):
        return TufTargetMismatch(f"a file does not match its signed length or hash: {text}")
    if isinstance(exc, tuf_exc.RepositoryError):
        return TufRepositoryInvalid(f"metadata refused: {text}")
    if isinstance(exc, tuf_exc.DownloadHTTPError):
        return PolicyUnreachable(f"the repository answered HTTP {exc.status_code}: {text}")
    if isinstance(exc, tuf_exc.DownloadError):
        cause = exc.__cause__
        detail = f"{text}: {type(cause).__name__}" if cause is not None else text
        return PolicyUnreachable(
            f"cannot read the policy repository ({detail}); the held bundles stay in force"
        )
    if isinstance(exc, OSError):
        return PolicyStoreFailed(f"cannot write the TUF client's files: {exc}")
    return PolicyError(f"policy update failed: {type(exc).__name__}: {text}")


class TarFetcher(FetcherInterface):
    """Reads an exported repository (``yibao-central bundle export``) instead of the network.

    ``<OFFLINE_BASE>/tuf/metadata/X`` → member ``metadata/X``, ``<OFFLINE_BASE>/tuf/targets/X`` →
    ``targets/X``; a missing member answers 404, which TUF takes as "no newer root" for roots.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self._tar = tarfile.open(self.path, "r:*")
            self._members = {m.name.removeprefix("./"): m for m in self._tar.getmembers() if m.isfile()}
        except (OSError, tarfile.TarError) as exc:
            raise PolicyUnreachable(f"cannot read {self.path} as a policy export (tar): {exc}") from None

    def member_names(self) -> list[str]:
        return sorted(self._members)

    def _fetch(self, url: str) -> Iterator[bytes]:
        prefix = OFFLINE_BASE + "/"
        rel = unquote(url[len(prefix) :]) if url.startswith(prefix) else ""
        name = None
        if rel.startswith(TUF_METADATA_PATH.lstrip("/")):
            name = "metadata/" + rel[len(TUF_METADATA_PATH.lstrip("/")) :]
        elif rel.startswith(TUF_TARGETS_PATH.lstrip("/")):
            name = "targets/" + rel[len(TUF_TARGETS_PATH.lstrip("/")) :]
        member = self._members.get(name) if name else None
        if member is None:
            raise tuf_exc.DownloadHTTPError(f"{name or url} is not in {self.path.name}", 404)
        src = self._tar.extractfile(member)
        if src is None:  # pragma: no cover - isfile() members always extract
            raise tuf_exc.DownloadHTTPError(f"{name} is not a file", 404)
        return self._chunks(src)

    @staticmethod
    def _chunks(src: Any) -> Iterator[bytes]:
        with src:
            while chunk := src.read(1 << 16):
                yield chunk

    def close(self) -> None:
        self._tar.close()


@dataclass
class UpdateResult:
    """One update attempt: what was applied, what was refused, what is current."""

    at: float
    applied: list[Applied] = field(default_factory=list)
    refused: list[PolicyError] = field(default_factory=list)
    #: Kinds already at the newest sequence listed (or with nothing listed for this area).
    current: list[str] = field(default_factory=list)
    #: Kinds whose bundle files are not in an offline export.
    missing: list[str] = field(default_factory=list)
    tuf: dict[str, int] = field(default_factory=dict)
    #: Whether the metadata listed anything for this agent's pooling area.
    area_listed: bool = False
    #: Kinds listed for this area that this agent version does not know (skipped, not refused).
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused

    @property
    def result(self) -> str:
        return "ok" if self.ok else self.refused[0].code

    def to_json(self) -> dict[str, Any]:
        return {
            "at": _iso(self.at),
            "result": self.result,
            "applied": [a.to_json() for a in self.applied],
            "refused": [{"code": e.code, "kind": e.kind, "message": e.message} for e in self.refused],
            "current": self.current,
            "missing": self.missing,
            "skipped": self.skipped,
            "tuf": self.tuf,
        }


Candidate = tuple[BundleHeader, str]


def plan_kind(kind: str, candidates: list[Candidate], held: int) -> list[Candidate]:
    """What to fetch for one kind, from the signed metadata alone; [] when already current.

    Blacklist: the chain of deltas from ``held`` when it reaches the newest sequence listed, else the
    newest full bundle newer than ``held`` and the deltas after it. Other kinds: the newest full bundle.
    Raises ``BundleNotNewer`` when everything listed is older than what is held (a rollback of the list)
    and ``BundleUnavailable`` when no way leads from ``held`` to the newest.
    """
    if not candidates:
        return []
    newest = max(h.seq for h, _ in candidates)
    if newest < held:
        raise BundleNotNewer(
            f"the newest {kind} listed is seq {newest}, older than the held seq {held}: a rollback",
            kind=kind,
        )
    if newest == held:
        return []
    deltas = {h.base_seq: (h, p) for h, p in candidates if not h.full}
    fulls = sorted((c for c in candidates if c[0].full), key=lambda c: c[0].seq)

    def chain_from(seq: int) -> list[Candidate]:
        chain: list[Candidate] = []
        while seq < newest and seq in deltas:
            chain.append(deltas[seq])
            seq = deltas[seq][0].seq
        return chain if seq == newest else []

    if held > 0:
        chain = chain_from(held)
        if chain:
            return chain
    newer_fulls = [c for c in fulls if c[0].seq > held]
    if not newer_fulls:
        raise BundleUnavailable(
            f"no {kind} delta chain from the held seq {held} to seq {newest} and no newer full bundle",
            kind=kind,
        )
    full = newer_fulls[-1]
    if full[0].seq == newest:
        return [full]
    rest = chain_from(full[0].seq)
    if not rest:
        raise BundleUnavailable(
            f"no {kind} delta chain from full seq {full[0].seq} to seq {newest}", kind=kind
        )
    return [full, *rest]


def _read_role(metadata_dir: Path, role: str) -> dict[str, Any] | None:
    try:
        return json.loads((metadata_dir / f"{role}.json").read_bytes())["signed"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def tuf_versions(metadata_dir: Path) -> dict[str, Any]:
    """Versions and expiries of the metadata the TUF client trusts (read from its cache)."""
    out: dict[str, Any] = {}
    expiries = []
    for role in _ROLES:
        signed = _read_role(metadata_dir, role)
        if signed is None:
            continue
        out[role] = int(signed.get("version", 0))
        exp = epoch(signed.get("expires"))
        if exp is not None:
            out[f"{role}_expires"] = _iso(exp)
            expiries.append(exp)
    out["expires"] = _iso(min(expiries)) if expiries else None
    return out


def _alarm_conditions(config: AgentConfig, store: PolicyStore, now: float) -> dict[str, str]:
    """Alarms that follow from the stored state and the clock (shown even when no update runs)."""
    meta = store.meta()
    held = store.held()
    out: dict[str, str] = {}
    bl = held.get("blacklist")
    bl_text = f"blacklist seq {bl['seq']}" if bl else "no blacklist yet"
    expires = epoch((meta.get("tuf") or {}).get("expires"))
    if expires is not None and now > expires:
        out[ALARM_EXPIRED] = (
            f"the last verified policy metadata expired at {_iso(expires)}; no current metadata could be "
            f"verified since. The agent keeps enforcing what it holds ({bl_text}); check the link to the "
            "centre (or apply a fresh export with 'yibao-agent policy apply')"
        )
    confirmed = (meta.get("confirmed_at") or {}).get("blacklist")
    if confirmed is None:
        out[ALARM_STALE] = (
            f"{bl_text}: the blacklist has never been confirmed current by a verified update; the agent "
            "serves, but cashiers cannot rely on it"
        )
    elif now - confirmed > config.blacklist_max_age_s:
        hours = (now - confirmed) / 3600
        out[ALARM_STALE] = (
            f"{bl_text} was last confirmed current {hours:.1f} h ago (limit "
            f"{config.blacklist_max_age_s / 3600:g} h); the agent keeps serving with it"
        )
    return out


def policy_status(config: AgentConfig, store: PolicyStore, *, now: float | None = None) -> dict[str, Any]:
    """What ``GET /v1/status`` → ``policy`` and ``yibao-agent policy status`` show."""
    now = time.time() if now is None else now
    meta = store.meta()
    held = store.held()
    confirmed = meta.get("confirmed_at") or {}
    bundles: dict[str, Any] = {}
    for kind in KINDS:
        h = held.get(kind)
        if h is None:
            bundles[kind] = None
            continue
        created = epoch(h["created"])
        bundles[kind] = {
            "seq": h["seq"],
            "created": h["created"],
            "age_s": round(now - created, 1) if created else None,
            "applied_at": _iso(h["applied_at"]),
            "confirmed_at": _iso(confirmed.get(kind)),
            "confirmed_age_s": round(now - confirmed[kind], 1) if kind in confirmed else None,
            "entries": h["entries"],
        }
    conditions = _alarm_conditions(config, store, now)
    alarms = {a["code"]: a for a in store.alarms()}
    for code, message in conditions.items():
        alarms.setdefault(code, {"code": code, "message": message, "since": None, "count": 0})["message"] = (
            message
        )
    for code in (ALARM_EXPIRED, ALARM_STALE):
        if code not in conditions:
            alarms.pop(code, None)
    return {
        "pooling_area": config.pooling_area or None,
        "root_fingerprint": pinned_root_fingerprint(config),
        "configured": (config.tuf_metadata_dir / "root.json").exists() and bool(config.pooling_area),
        "bundles": bundles,
        "tuf": meta.get("tuf"),
        "last_attempt": meta.get("last_attempt"),
        "last_success_at": meta.get("last_success_at"),
        "problems": store.problems(10),
        "alarms": sorted(alarms.values(), key=lambda a: a["code"]),
        "warning": conditions.get(ALARM_STALE) or conditions.get(ALARM_EXPIRED),
        "blacklist_max_age_s": config.blacklist_max_age_s,
    }


class _NetError(Exception):
    pass


class PolicyClient:
    """Keeps ``policy.db`` current from the centre's TUF repository (or an exported tar)."""

    def __init__(
        self,
        config: AgentConfig,
        store: PolicyStore,
        *,
        key: KeyPair | None = None,
        clock: Callable[[], float] = time.time,
        on_applied: Callable[[Applied], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.key = key
        self.clock = clock
        self.on_applied = on_applied
        self._lock = threading.Lock()
        self._stop = asyncio.Event()
        self._reported_problem_id = store.last_problem_id()
        self._pending_codes: set[str] = set()
        self._attempted_signal = 0
        self.last_report_at: float | None = None
        self.last_report_error: str | None = None
        self.reports_sent = 0

    # ---- one update --------------------------------------------------------------------------

    @property
    def metadata_dir(self) -> Path:
        return self.config.tuf_metadata_dir

    @property
    def download_dir(self) -> Path:
        return self.config.tuf_dir / "download"

    def check_configured(self) -> None:
        if not (self.metadata_dir / "root.json").exists():
            raise PolicyNotConfigured(
                f"no pinned TUF root in {self.metadata_dir}: this agent was enrolled before policy bundles "
                "existed; enrol it again to pin the centre's root"
            )
        if not self.config.pooling_area:
            raise PolicyNotConfigured(
                f"no pooling_area in {self.config.config_path}: set the 6-digit area whose bundles this "
                "agent obeys (the centre names it at enrolment)"
            )

    def _updater(self, base_url: str, fetcher: FetcherInterface | None) -> Updater:
        self.download_dir.mkdir(parents=True, exist_ok=True)
        history = self.metadata_dir / "root_history"
        # The pinned root the first time; afterwards the newest root this client verified.
        bootstrap = None if history.is_dir() else (self.metadata_dir / "root.json").read_bytes()
        base = base_url.rstrip("/")
        if fetcher is None and (tls := client_tls(self.config.home, base)) is not None:
            fetcher = TlsFetcher(tls.context, app_user_agent="yibao-agent/0.1")
        return Updater(
            str(self.metadata_dir),
            base + TUF_METADATA_PATH,
            str(self.download_dir),
            base + TUF_TARGETS_PATH,
            fetcher,
            UpdaterConfig(targets_max_length=32 * 1024 * 1024, app_user_agent="yibao-agent/0.1"),
            bootstrap=bootstrap,
        )

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One TUF client at a time per home: the service's thread and ``policy apply`` share the cache."""
        with self._lock:
            self.config.tuf_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.config.tuf_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def update(self, *, url: str | None = None, fetcher: FetcherInterface | None = None) -> UpdateResult:
        """Refresh TUF metadata and apply what this agent lacks. Refusals are recorded, not raised.

        ``url``: the repository's base URL (default ``central_url``); ``fetcher``: e.g. ``TarFetcher``
        with ``url=OFFLINE_BASE``. Raises only ``PolicyNotConfigured``. Runs in a worker thread.
        """
        self.check_configured()
        offline = isinstance(fetcher, TarFetcher)
        with self._exclusive():
            result = UpdateResult(at=self.clock())
            try:
                self._update_locked(url or self.config.central_url, fetcher, result, offline)
            except PolicyError as exc:
                self._refuse(result, exc)
            except Exception as exc:  # TUF's own, network, disk: all keep the held state
                self._refuse(result, error_from_tuf(exc))
            self._finish(result)
            return result

    def _update_locked(
        self, base_url: str, fetcher: FetcherInterface | None, result: UpdateResult, offline: bool
    ) -> None:
        area = self.config.pooling_area
        updater = self._updater(base_url, fetcher)
        updater.refresh()
        versions = tuf_versions(self.metadata_dir)
        result.tuf = {k: v for k, v in versions.items() if k in _ROLES}
        self.store.set_meta(tuf=versions, verified_at=result.at)
        signed = _read_role(self.metadata_dir, "targets") or {}
        listed: dict[str, list[Candidate]] = {kind: [] for kind in KINDS}
        for path, info in (signed.get("targets") or {}).items():
            custom = info.get("custom") if isinstance(info, dict) else None
            ours = path.startswith(area + "/")
            kind = custom.get("kind") if isinstance(custom, dict) else None
            if ours and isinstance(kind, str) and kind not in KINDS:
                # A kind a newer centre publishes: not ours to apply, and no reason to refuse the rest.
                self._skip_unknown(result, kind, path)
                continue
            try:
                header = BundleHeader.from_custom(custom)
            except perrors.BundleInvalid as exc:
                if ours:
                    self._refuse(result, BundleInvalid(f"target {path}: {exc.message}"))
                continue
            if header.area != area and not ours:
                continue
            result.area_listed = True
            if path != target_name(header.area, header.kind, header.seq, header.full):
                self._refuse(
                    result,
                    BundleInvalid(
                        f"target {path} does not carry the name its metadata implies "
                        f"({header.area}/{header.kind}/{header.seq})",
                        kind=header.kind,
                    ),
                )
                continue
            listed[header.kind].append((header, path))
        confirmed = dict(self.store.meta().get("confirmed_at") or {})
        for kind in KINDS:
            try:
                plan = plan_kind(kind, listed[kind], self.store.held_seq(kind))
            except PolicyRefused as exc:
                self._refuse(result, exc)
                continue
            done = True
            for header, path in plan:
                try:
                    result.applied.append(self._fetch_and_apply(updater, header, path))
                except tuf_exc.DownloadHTTPError as exc:
                    if offline and exc.status_code == 404:
                        result.missing.append(kind)
                    else:
                        self._refuse(result, _with_kind(error_from_tuf(exc), kind))
                    done = False
                    break
                except PolicyError as exc:
                    self._refuse(result, _with_kind(exc, kind))
                    done = False
                    break
                except Exception as exc:
                    self._refuse(result, _with_kind(error_from_tuf(exc), kind))
                    done = False
                    break
            if done:
                if not plan:
                    result.current.append(kind)
                confirmed[kind] = result.at
        self.store.set_meta(confirmed_at=confirmed)

    def _fetch_and_apply(self, updater: Updater, header: BundleHeader, path: str) -> Applied:
        info = updater.get_targetinfo(path)
        if info is None:  # pragma: no cover - listed in the very metadata just verified
            raise BundleUnavailable(f"target {path} vanished from the verified metadata", kind=header.kind)
        try:
            expect = BundleHeader.from_custom(info.custom)
        except perrors.BundleInvalid as exc:
            raise BundleInvalid(f"target {path}: {exc.message}", kind=header.kind) from None
        local = self.download_dir / quote(path, "")
        try:
            updater.download_target(info, str(local))
            applied = self.store.apply_file(local, expect=expect, area=self.config.pooling_area, target=path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                local.unlink()
        if self.on_applied is not None:
            try:
                self.on_applied(applied)
            except Exception:
                log.exception("acting on the new %s bundle failed", applied.kind)
        return applied

    def _skip_unknown(self, result: UpdateResult, kind: str, path: str) -> None:
        """Skip a target of a kind this agent does not know, and say so (problem, report, status) without
        refusing the update: the kinds it knows still apply, and no refusal alarm is raised."""
        if kind in result.skipped:
            return
        result.skipped.append(kind)
        result.area_listed = True
        self._pending_codes.add(CODE_KIND_UNKNOWN)
        message = (
            f"target {path} is a {kind!r} bundle, a kind this agent version does not know; it was skipped "
            "(the other kinds were applied). Upgrade the agent to enforce it"
        )
        try:
            last = self.store.problems(1)
            if not (last and last[0]["code"] == CODE_KIND_UNKNOWN and last[0]["kind"] == kind[:32]):
                self.store.record_problem(CODE_KIND_UNKNOWN, message, kind=kind[:32], at=result.at)
        except PolicyError as store_exc:  # pragma: no cover - disk failing: the log still says it
            log.error("cannot record the policy problem: %s", store_exc.message)
        log.info("policy update %s: skipped a %s bundle", CODE_KIND_UNKNOWN, kind[:32])

    def _refuse(self, result: UpdateResult, exc: PolicyError) -> None:
        result.refused.append(exc)
        kind = exc.kind
        self._pending_codes.add(exc.code)
        try:
            last = self.store.problems(1)
            # A link down for days would otherwise add the same line every poll.
            if not (isinstance(exc, PolicyUnreachable) and last and last[0]["code"] == exc.code):
                self.store.record_problem(exc.code, exc.message, kind=kind, at=result.at)
        except PolicyError as store_exc:  # pragma: no cover - disk failing: the log still says it
            log.error("cannot record the policy problem: %s", store_exc.message)
        level = logging.INFO if isinstance(exc, PolicyUnreachable) else logging.WARNING
        log.log(level, "policy update %s%s: %s", exc.code, f" ({kind})" if kind else "", exc.message)

    def _finish(self, result: UpdateResult) -> None:
        meta: dict[str, Any] = {"last_attempt": result.to_json()}
        if result.ok:
            meta["last_success_at"] = _iso(result.at)
        try:
            self.store.set_meta(**meta)
            refusals = [e for e in result.refused if isinstance(e, PolicyRefused)]
            if refusals:
                if self.store.raise_alarm(
                    ALARM_REFUSED,
                    f"the last policy update was refused ({refusals[0].code}): {refusals[0].message}",
                    at=result.at,
                ):
                    log.warning("alarm %s raised", ALARM_REFUSED)
            elif result.ok:
                self.store.clear_alarm(ALARM_REFUSED, at=result.at)
            self.evaluate_alarms(result.at)
        except PolicyError as exc:  # pragma: no cover - disk failing
            log.error("cannot record the policy update: %s", exc.message)

    def evaluate_alarms(self, now: float | None = None) -> dict[str, str]:
        """Raise or clear the time-based alarms (metadata expired, blacklist stale); the active ones."""
        now = self.clock() if now is None else now
        conditions = _alarm_conditions(self.config, self.store, now)
        for code in (ALARM_EXPIRED, ALARM_STALE):
            if code in conditions:
                if self.store.raise_alarm(code, conditions[code], at=now):
                    log.warning("alarm %s: %s", code, conditions[code])
                self._pending_codes.add(code)
            elif self.store.clear_alarm(code, at=now):
                log.info("alarm %s cleared", code)
        return conditions

    def apply_export(self, path: Path | str) -> UpdateResult:
        """Offline: run the same TUF client against an exported tar (``yibao-central bundle export``)."""
        fetcher = TarFetcher(path)
        try:
            result = self.update(url=OFFLINE_BASE, fetcher=fetcher)
        finally:
            fetcher.close()
        if result.ok and not result.area_listed:
            area = self.config.pooling_area
            exc = BundleWrongArea(f"{Path(path).name} holds no bundles for pooling area {area}")
            self._refuse(result, exc)
            self._finish(result)
        return result

    def status(self, now: float | None = None) -> dict[str, Any]:
        out = policy_status(self.config, self.store, now=self.clock() if now is None else now)
        out["report"] = {
            "last_sent_at": _iso(self.last_report_at),
            "last_error": self.last_report_error,
            "sent": self.reports_sent,
        }
        return out

    # ---- report ------------------------------------------------------------------------------

    def build_report(self) -> PolicyReport:
        """Versions this agent runs and the problem codes since the last report (plus active alarms)."""
        tuf = self.store.meta().get("tuf") or {}  # as of the last verified refresh
        versions = {role: int(tuf.get(role, 0)) for role in _ROLES}
        held = self.store.held()
        versions.update({kind: held[kind]["seq"] if kind in held else 0 for kind in KINDS})
        codes = set(self._pending_codes)
        codes.update(p["code"] for p in self.store.problems(100, since_id=self._reported_problem_id))
        codes.update(a["code"] for a in self.store.alarms())
        return PolicyReport(
            agent_id=self.config.agent_id,
            at=datetime.fromtimestamp(self.clock(), UTC).isoformat(timespec="seconds"),
            versions=versions,
            problems=sorted(codes),
        )

    async def post_report(self, session: aiohttp.ClientSession) -> bool:
        """Sign and post the report; False (logged) when the centre cannot be reached or refuses it."""
        if self.key is None or not self.config.central_url:
            return False
        last_id = self.store.last_problem_id()
        report = self.build_report()
        body = sign_report(self.key, report)
        url = self.config.central_url.rstrip("/") + POLICY_REPORT_PATH
        try:
            async with session.post(
                url,
                data=body,
                headers={"Content-Type": MSGPACK, PROTOCOL_HEADER: "1"},
                timeout=aiohttp.ClientTimeout(total=self.config.upload_timeout_s),
            ) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.last_report_error = "central_unreachable"
            log.info("policy report not delivered: %s", type(exc).__name__)
            return False
        if status >= 300:
            self.last_report_error = f"http_{status}"
            log.warning("the centre answered %s to the policy report", status)
            return False
        self.last_report_at = time.time()
        self.last_report_error = None
        self.reports_sent += 1
        self._reported_problem_id = last_id
        self._pending_codes.clear()
        return True

    # ---- the loop ----------------------------------------------------------------------------

    def _have(self) -> int:
        timestamp = _read_role(self.metadata_dir, "timestamp") or {}
        return max(int(timestamp.get("version", 0)), self._attempted_signal)

    async def _get_changes(self, session: aiohttp.ClientSession, have: int) -> int:
        url = self.config.central_url.rstrip("/") + POLICY_CHANGES_PATH
        try:
            async with session.get(
                url,
                params={"have": str(have)},
                headers={PROTOCOL_HEADER: "1"},
                timeout=aiohttp.ClientTimeout(total=self.config.policy_changes_timeout_s),
            ) as resp:
                data = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _NetError(type(exc).__name__) from exc
        if status != 200:
            raise _NetError(f"HTTP {status}")
        try:
            return msgspec.json.decode(data, type=PolicyChanges).timestamp_version
        except msgspec.MsgspecError as exc:
            raise _NetError(f"malformed change signal: {exc}") from None

    async def wait_for_change(self, session: aiohttp.ClientSession, budget_s: float) -> int | None:
        """Long-poll until the centre signals a newer timestamp version; None when ``budget_s`` ran out.

        Network errors are retried with capped, jittered exponential backoff (tenacity) inside the budget.
        """
        deadline = time.monotonic() + budget_s
        have = self._have()
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                retrying = AsyncRetrying(
                    wait=wait_random_exponential(
                        multiplier=self.config.backoff_initial_s, max=self.config.backoff_max_s
                    ),
                    retry=retry_if_exception_type(_NetError),
                    stop=stop_after_delay(max(0.0, deadline - started)),
                    reraise=True,
                )
                async for attempt in retrying:
                    with attempt:
                        if self._stop.is_set():
                            return None
                        version = await self._get_changes(session, have)
                if version > have:
                    return version
                gap = MIN_POLL_GAP_S - (time.monotonic() - started)
                if gap > 0:
                    await asyncio.sleep(gap)
        except _NetError as exc:
            log.info("policy change signal unavailable (%s); falling back to a periodic update", exc)
        return None

    async def attempt(self, session: aiohttp.ClientSession) -> UpdateResult | None:
        """One update in a worker thread, then the signed report."""
        try:
            result: UpdateResult | None = await asyncio.to_thread(self.update)
        except PolicyNotConfigured as exc:
            log.warning("policy updates are off: %s", exc.message)
            result = None
        await self.post_report(session)
        return result

    async def run(self) -> None:
        """Update at start, on every change signal and at least every ``policy_poll_s``; report each time."""
        poll_s = self.config.policy_poll_s
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        connector = aiohttp.TCPConnector(ssl=client_ssl(self.config.home, self.config.central_url))
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            next_update = 0.0
            next_report = time.monotonic() + REPORT_EVERY_S
            signal = 0
            failures = 0
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_update or signal > self._attempted_signal:
                    self._attempted_signal = max(self._attempted_signal, signal)
                    result = await self.attempt(session)
                    delay = poll_s
                    if (
                        result is not None
                        and result.refused
                        and all(isinstance(e, PolicyUnreachable) for e in result.refused)
                    ):
                        # The link failed mid-update: try again soon (capped, jittered), not in poll_s.
                        failures += 1
                        cap = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2**failures)
                        delay = min(poll_s, random.uniform(cap / 2, cap))
                    else:
                        failures = 0
                    next_update = time.monotonic() + delay
                    next_report = time.monotonic() + REPORT_EVERY_S
                elif now >= next_report:
                    await self.post_report(session)
                    next_report = time.monotonic() + REPORT_EVERY_S
                if self._stop.is_set():
                    break
                budget = max(0.0, min(next_update, next_report) - time.monotonic())
                signal = await self.wait_for_change(session, budget) or 0

    def stop(self) -> None:
        self._stop.set()


def _with_kind(exc: PolicyError, kind: str) -> PolicyError:
    if exc.kind is None:
        exc.kind = kind
    return exc


def issuers_from_keys_bundle(store: PolicyStore) -> dict | None:
    """The e-voucher issuer keys of the held ``keys`` bundle (loaded), or None when none is held."""
    doc = store.document("keys")
    if not isinstance(doc, dict) or not isinstance(doc.get("evoucher_issuers"), dict):
        return None
    return load_issuers(doc["evoucher_issuers"])
