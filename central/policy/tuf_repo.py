"""The centre's TUF repository (python-tuf Metadata API) under ``CENTRAL_HOME/tuf/``.

Layout (consistent snapshots, as ``tuf.ngclient`` fetches it; ``docs/POLICY.md``):

- ``tuf/metadata/N.root.json`` (every root version), ``timestamp.json``, ``V.snapshot.json``,
  ``V.targets.json``;
- ``tuf/targets/<dir>/<sha256>.<file>`` for a target named ``<dir>/<file>``
  (``370200/blacklist/<sha256>.000000000042.delta.bin``).

Roles: root and targets are signed by operator keys (files an operator holds; ``init`` makes three
in ``CENTRAL_HOME/operators/`` for demos and tests), snapshot and timestamp by online keys kept in
``CENTRAL_HOME/keys/<keyid>.pem``; which online key signs is whatever the current root names, so a
key file written ahead of a rotation is harmless.

Rules:

1. Every file is written whole (temp file, fsync, ``os.replace``) and in dependency order: target
   files, then ``targets``, then ``snapshot``, then ``timestamp`` last. The published state is
   what ``timestamp.json`` reaches; a process killed mid-publish leaves unreferenced files that
   the next publish overwrites or prunes, never a half-visible state.
2. Every writer (the CLI publishing, the server re-signing) holds ``tuf/.lock`` (``flock``), so
   two processes never hand out the same version.
3. Nothing is signed that would not verify: targets needs its threshold of operator keys, a new
   root a threshold of the old root's keys *and* of its own, checked before anything is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from securesystemslib.signer import CryptoSigner, Signer, SSlibKey
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from central.config import CentralConfig
from central.errors import HomeNotInitialised, InternalError, RootRotationRefused, SigningRefused
from protocol.wire import root_fingerprint

__all__ = [
    "ONLINE_ROLES",
    "OPERATOR_ROLES",
    "RootInfo",
    "TufRepository",
    "atomic_write",
    "generate_key_file",
    "load_public_key",
    "load_signer",
    "public_key_json",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
OPERATOR_ROLES = ("root", "targets")
ONLINE_ROLES = ("snapshot", "timestamp")
_SERIALIZER = JSONSerializer(compact=False)
_VERSIONED = re.compile(r"^([1-9][0-9]{0,9})\.(root|snapshot|targets)\.json$")
_TMP_PREFIX = ".tmp-"


# -- files ---------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_path(path: Path) -> Path:
    return path.with_name(f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}")


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` whole or not at all (temp file, fsync, rename, fsync dir)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


class _HashingWriter:
    """A binary sink that hashes and counts what passes through to the file."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.length = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.length += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


# -- keys ----------------------------------------------------------------------------------------


def public_key_json(key: SSlibKey) -> bytes:
    """The ``.pub`` file: the TUF key dict with its keyid (what ``root rotate --add-key`` reads)."""
    return (json.dumps({"keyid": key.keyid, **key.to_dict()}, indent=1, sort_keys=True) + "\n").encode()


def generate_key_file(path: Path, *, overwrite: bool = False) -> SSlibKey:
    """A new Ed25519 operator key: ``path`` (PKCS#8 PEM, mode 0600) and ``path.pub`` (public, JSON)."""
    path = Path(path)
    pub_path = path.with_name(path.name + ".pub")
    if not overwrite:
        for p in (path, pub_path):
            if p.exists():
                raise SigningRefused(f"{p} already exists; choose another --out or move the old key away")
    signer = CryptoSigner.generate_ed25519()
    atomic_write(path, signer.private_bytes, mode=0o600)
    atomic_write(pub_path, public_key_json(signer.public_key))
    return signer.public_key


def load_signer(path: Path | str) -> CryptoSigner:
    """An operator or online private key file (PEM PKCS#8 Ed25519) as a TUF signer."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningRefused(f"cannot read key file {path}: {exc.strerror or exc}") from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise SigningRefused(
            f"{path} is not an unencrypted PEM private key; `yibao-central keys generate --out FILE` "
            "makes one"
        ) from None
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningRefused(f"{path} is not an Ed25519 key")
    return CryptoSigner(private)


def load_public_key(path: Path | str) -> SSlibKey:
    """A public key from a ``.pub`` file (``keys generate``), a PEM public key or a private key file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningRefused(f"cannot read key file {path}: {exc.strerror or exc}") from None
    public: Any = None
    if data.lstrip().startswith(b"{"):
        try:
            obj = json.loads(data)
            key = SSlibKey.from_dict(str(obj.pop("keyid", "")), obj)
            public = key._crypto_key()  # recompute the keyid below rather than trust the file's
        except (ValueError, KeyError, TypeError, AttributeError):
            public = None
    elif b"PRIVATE KEY" in data:
        return load_signer(path).public_key
    else:
        with contextlib.suppress(ValueError, TypeError):
            public = serialization.load_pem_public_key(data)
    if not isinstance(public, Ed25519PublicKey):
        raise SigningRefused(
            f"{path} is not an Ed25519 public key (a .pub file from `yibao-central keys generate`, or PEM)"
        )
    return SSlibKey.from_crypto(public)


# -- the repository ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RootInfo:
    version: int
    fingerprint: str
    expires: str
    keys: dict[str, list[str]]  # role → keyids
    thresholds: dict[str, int]


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _expiry(seconds: float) -> datetime:
    return _now() + timedelta(seconds=seconds)


def _role_keyids(root: Root, role: str) -> list[str]:
    return list(root.roles[role].keyids)


class TufRepository:
    """One home's repository. Cheap to build; every read goes to the files (other processes write)."""

    def __init__(self, config: CentralConfig) -> None:
        self.config = config
        self.dir = config.tuf_dir
        self.metadata_dir = self.dir / "metadata"
        self.targets_dir = self.dir / "targets"
        self.keys_dir = config.keys_dir
        self._rlock = threading.RLock()
        self._depth = 0
        self._lock_fd: int | None = None

    # -- opening -------------------------------------------------------------------------------

    @staticmethod
    def exists(config: CentralConfig) -> bool:
        return (config.tuf_dir / "metadata" / "1.root.json").exists()

    @classmethod
    def open(cls, config: CentralConfig) -> TufRepository:
        if not cls.exists(config):
            raise HomeNotInitialised(
                f"no TUF repository in {config.tuf_dir}; run `yibao-central --home {config.home} init` first"
            )
        return cls(config)

    @classmethod
    def create(cls, config: CentralConfig) -> tuple[TufRepository, list[Path]]:
        """A new repository with ``operator_keys`` fresh operator keys in ``operators/``.

        Returns the repository and the operator key files written. Root is written last, so a
        creation killed half-way is simply redone by the next ``init``.
        """
        repo = cls(config)
        with repo.lock():
            if cls.exists(config):
                raise InternalError(f"{config.tuf_dir} already holds a TUF repository")
            for d in (config.operators_dir, config.keys_dir):
                d.mkdir(parents=True, exist_ok=True, mode=0o700)
            paths = [config.operators_dir / f"operator-{i}.pem" for i in range(1, config.operator_keys + 1)]
            operators = [generate_key_file(p, overwrite=True) for p in paths]
            signers = [load_signer(p) for p in paths]
            online = {role: repo._new_online_key() for role in ONLINE_ROLES}
            root = Root(expires=_expiry(config.root_expiry_s), consistent_snapshot=True)
            for key in operators:
                for role in OPERATOR_ROLES:
                    root.add_key(key, role)
            for role, key in online.items():
                root.add_key(key, role)
            root.roles["root"].threshold = config.root_threshold
            root.roles["targets"].threshold = config.targets_threshold
            targets = Targets(version=1, expires=_expiry(config.targets_expiry_s))
            repo._write_versioned(Targets.type, 1, repo._sign(targets, signers))
            repo._publish_online(root, 1, 1)
            repo._write_versioned(Root.type, 1, repo._sign(root, signers))
        return repo, paths

    # -- locking -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive hold on the repository across processes (re-entrant within this object)."""
        with self._rlock:
            if self._depth == 0:
                self.dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._lock_fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._lock_fd is not None:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                    os.close(self._lock_fd)
                    self._lock_fd = None

    # -- reading -------------------------------------------------------------------------------

    def _versions(self, role: str) -> list[int]:
        found = []
        for p in self.metadata_dir.iterdir():
            m = _VERSIONED.match(p.name)
            if m and m.group(2) == role:
                found.append(int(m.group(1)))
        return sorted(found)

    def root_version(self) -> int:
        versions = self._versions(Root.type)
        if not versions:
            raise HomeNotInitialised(f"no root metadata in {self.metadata_dir}; run `yibao-central init`")
        return versions[-1]

    def current_root_bytes(self) -> bytes:
        """The exact bytes of the newest ``N.root.json`` (what enrolment hands an agent to pin)."""
        return (self.metadata_dir / f"{self.root_version()}.root.json").read_bytes()

    def root_fingerprint(self) -> str:
        return root_fingerprint(self.current_root_bytes())

    def root_md(self, version: int | None = None) -> Metadata[Root]:
        v = version if version is not None else self.root_version()
        return Metadata[Root].from_bytes((self.metadata_dir / f"{v}.root.json").read_bytes())

    def root_info(self) -> RootInfo:
        data = self.current_root_bytes()
        root = Metadata[Root].from_bytes(data).signed
        return RootInfo(
            version=root.version,
            fingerprint=root_fingerprint(data),
            expires=root.expires.isoformat(),
            keys={role: _role_keyids(root, role) for role in (*OPERATOR_ROLES, *ONLINE_ROLES)},
            thresholds={role: root.roles[role].threshold for role in (*OPERATOR_ROLES, *ONLINE_ROLES)},
        )

    def timestamp_md(self) -> Metadata[Timestamp]:
        return Metadata[Timestamp].from_bytes((self.metadata_dir / "timestamp.json").read_bytes())

    def timestamp_version(self) -> int:
        """The published version (what ``GET /v1/policy/changes`` announces)."""
        return self.timestamp_md().signed.version

    def snapshot_md(self) -> Metadata[Snapshot]:
        v = self.timestamp_md().signed.snapshot_meta.version
        return Metadata[Snapshot].from_bytes((self.metadata_dir / f"{v}.snapshot.json").read_bytes())

    def targets_md(self) -> Metadata[Targets]:
        v = self.snapshot_md().signed.meta[f"{Targets.type}.json"].version
        return Metadata[Targets].from_bytes((self.metadata_dir / f"{v}.targets.json").read_bytes())

    def versions(self) -> dict[str, int]:
        """Published role versions: ``root``, ``timestamp``, ``snapshot``, ``targets``."""
        ts = self.timestamp_md().signed
        snap_v = ts.snapshot_meta.version
        snap = Metadata[Snapshot].from_bytes((self.metadata_dir / f"{snap_v}.snapshot.json").read_bytes())
        return {
            "root": self.root_version(),
            "timestamp": ts.version,
            "snapshot": snap_v,
            "targets": snap.signed.meta[f"{Targets.type}.json"].version,
        }

    def target_path(self, target: TargetFile) -> Path:
        """Where a target's file lives (hash-prefixed, as consistent-snapshot clients fetch it)."""
        return self.targets_dir / target.get_prefixed_paths()[0]

    def export_metadata(self) -> list[tuple[str, Path]]:
        """``(name, file)`` of every root version, the timestamp, and the snapshot and targets it reaches."""
        with self.lock():
            names = [f"{v}.root.json" for v in self._versions(Root.type)]
            ts = self.timestamp_md().signed
            snap_v = ts.snapshot_meta.version
            snap = Metadata[Snapshot].from_bytes((self.metadata_dir / f"{snap_v}.snapshot.json").read_bytes())
            targets_v = snap.signed.meta[f"{Targets.type}.json"].version
            names += ["timestamp.json", f"{snap_v}.snapshot.json", f"{targets_v}.targets.json"]
            return [(name, self.metadata_dir / name) for name in names]

    def expiry_warnings(self, within_s: float | None = None) -> list[str]:
        """Operator-signed roles that expire soon (the server cannot re-sign those)."""
        warnings = []
        now = _now()
        for role, md, period in (
            ("root", self.root_md(), self.config.root_expiry_s),
            ("targets", self.targets_md(), self.config.targets_expiry_s),
        ):
            left = (md.signed.expires - now).total_seconds()
            if left < (within_s if within_s is not None else period / 6):
                warnings.append(
                    f"{role} metadata v{md.signed.version} expires at {md.signed.expires.isoformat()}: "
                    + (
                        "run `yibao-central root rotate` with the operator keys"
                        if role == "root"
                        else "run `yibao-central bundle sync --force` with an operator key"
                    )
                )
        return warnings

    # -- signing helpers -----------------------------------------------------------------------

    @staticmethod
    def _sign(signed: Root | Targets | Snapshot | Timestamp, signers: Iterable[Signer]) -> bytes:
        md = Metadata(signed)
        for signer in signers:
            md.sign(signer, append=True)
        return md.to_bytes(_SERIALIZER)

    def _write_versioned(self, role: str, version: int, data: bytes) -> None:
        atomic_write(self.metadata_dir / f"{version}.{role}.json", data)

    def _new_online_key(self) -> SSlibKey:
        signer = CryptoSigner.generate_ed25519()
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.keys_dir / f"{signer.public_key.keyid}.pem", signer.private_bytes, mode=0o600)
        return signer.public_key

    def _online_signer(self, root: Root, role: str) -> CryptoSigner:
        for keyid in root.roles[role].keyids:
            path = self.keys_dir / f"{keyid}.pem"
            if path.exists():
                return load_signer(path)
        raise InternalError(
            f"none of the {role} keys the root names is in {self.keys_dir}; restore the online keys from "
            "backup or rotate them (`yibao-central root rotate --rotate-online`)"
        )

    @staticmethod
    def _operator_signers(root: Root, role: str, signers: Sequence[CryptoSigner]) -> list[CryptoSigner]:
        """The given signers that hold ``role``'s keys; refused unless they reach its threshold."""
        keyids = set(root.roles[role].keyids)
        chosen: dict[str, CryptoSigner] = {}
        for s in signers:
            if s.public_key.keyid in keyids:
                chosen.setdefault(s.public_key.keyid, s)
        threshold = root.roles[role].threshold
        if len(chosen) < threshold:
            raise SigningRefused(
                f"{role} needs signatures of {threshold} of its {len(keyids)} operator keys and "
                f"{len(chosen)} of the keys given {'is' if len(chosen) == 1 else 'are'} among them; pass "
                "--key FILE for each operator key (`yibao-central root show` lists the key ids)"
            )
        return list(chosen.values())

    def check_targets_signers(self, signers: Sequence[CryptoSigner]) -> None:
        """Refuse, before anything is written, keys that cannot sign targets."""
        self._operator_signers(self.root_md().signed, Targets.type, signers)

    def _publish_online(
        self, root: Root, targets_version: int | None = None, snapshot_version: int | None = None
    ) -> int:
        """A new snapshot, then a new timestamp; returns the timestamp version.

        With ``targets_version``/``snapshot_version`` given (creation) nothing is read from disk.
        """
        if snapshot_version is None:
            old_ts = self.timestamp_md().signed
            old_snap = (
                Metadata[Snapshot]
                .from_bytes(
                    (self.metadata_dir / f"{old_ts.snapshot_meta.version}.snapshot.json").read_bytes()
                )
                .signed
            )
            snapshot_version = old_snap.version + 1
            ts_version = old_ts.version + 1
            if targets_version is None:
                targets_version = old_snap.meta[f"{Targets.type}.json"].version
        else:
            ts_version = 1
        assert targets_version is not None
        targets_bytes = (self.metadata_dir / f"{targets_version}.targets.json").read_bytes()
        targets_meta = MetaFile(
            version=targets_version,
            length=len(targets_bytes),
            hashes={"sha256": hashlib.sha256(targets_bytes).hexdigest()},
        )
        snapshot = Snapshot(
            version=snapshot_version,
            expires=_expiry(self.config.snapshot_expiry_s),
            meta={f"{Targets.type}.json": targets_meta},
        )
        snap_bytes = self._sign(snapshot, [self._online_signer(root, Snapshot.type)])
        self._write_versioned(Snapshot.type, snapshot_version, snap_bytes)
        timestamp = Timestamp(
            version=ts_version,
            expires=_expiry(self.config.timestamp_expiry_s),
            snapshot_meta=MetaFile(
                version=snapshot_version,
                length=len(snap_bytes),
                hashes={"sha256": hashlib.sha256(snap_bytes).hexdigest()},
            ),
        )
        self._write_timestamp(root, timestamp)
        self._prune_metadata(snapshot_version, targets_version)
        return ts_version

    def _prune_metadata(self, snapshot_version: int, targets_version: int) -> None:
        keep = self.config.keep_versions
        for p in self.metadata_dir.iterdir():
            m = _VERSIONED.match(p.name)
            if m is None or m.group(2) == Root.type:
                continue
            current = snapshot_version if m.group(2) == Snapshot.type else targets_version
            if int(m.group(1)) <= current - keep or int(m.group(1)) > current:
                with contextlib.suppress(OSError):
                    p.unlink()

    # -- publishing ------------------------------------------------------------------------------

    def write_target(self, name: str, write: Callable[[BinaryIO], T]) -> tuple[TargetFile, T]:
        """Stream a new target file: ``write(sink)`` writes it; returns its TUF entry and ``write``'s result.

        The file lands at its hash-prefixed path only when complete and fsynced; it is not
        published until ``set_targets`` lists it.
        """
        parent, _, base = name.rpartition("/")
        directory = self.targets_dir / parent
        directory.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_path(directory / base)
        try:
            with open(tmp, "xb") as f:
                sink = _HashingWriter(f)
                result = write(sink)  # type: ignore[arg-type]
                f.flush()
                os.fsync(f.fileno())
            digest = sink.sha256.hexdigest()
            os.replace(tmp, directory / f"{digest}.{base}")
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(directory)
        return TargetFile(sink.length, {"sha256": digest}, name), result

    def set_targets(
        self, targets: dict[str, TargetFile], signers: Sequence[CryptoSigner], *, force: bool = False
    ) -> int | None:
        """Publish exactly ``targets`` as a new targets version (then snapshot, then timestamp).

        Returns the new timestamp version, or None when the list is unchanged (and not ``force``).
        """
        with self.lock():
            root = self.root_md().signed
            chosen = self._operator_signers(root, Targets.type, signers)
            current = self.targets_md().signed
            if not force and current.targets == targets:
                return None
            for t in targets.values():
                path = self.target_path(t)
                if not path.is_file() or path.stat().st_size != t.length:
                    raise InternalError(f"target file {path} is missing or has the wrong length")
            new = Targets(
                version=current.version + 1,
                expires=_expiry(self.config.targets_expiry_s),
                targets=dict(targets),
            )
            data = self._sign(new, chosen)
            root.verify_delegate(Targets.type, *_payload(data))
            self._write_versioned(Targets.type, new.version, data)
            ts = self._publish_online(root, new.version)
            log.info("published targets v%d (%d targets) as timestamp v%d", new.version, len(targets), ts)
            return ts

    def resign_online(self, *, now: datetime | None = None) -> int | None:
        """Re-sign snapshot and timestamp once half their life is gone (or they no longer verify).

        The server calls this periodically; returns the new timestamp version, or None. ``now``
        (tests) is the time the expiry is judged at.
        """
        with self.lock():
            root = self.root_md().signed
            now = now or _now()
            ts_md = self.timestamp_md()
            snap_md = self.snapshot_md()

            def stale(md: Metadata[Any], period: float) -> bool:
                try:
                    root.verify_delegate(md.signed.type, md.signed_bytes, md.signatures)
                except UnsignedMetadataError:
                    return True
                return (md.signed.expires - now).total_seconds() <= period / 2

            new_snapshot = stale(snap_md, self.config.snapshot_expiry_s)
            if not new_snapshot and not stale(ts_md, self.config.timestamp_expiry_s):
                return None
            if new_snapshot:
                return self._publish_online(root)
            return self._new_timestamp(root, ts_md.signed)

    def _new_timestamp(self, root: Root, old: Timestamp) -> int:
        timestamp = Timestamp(
            version=old.version + 1,
            expires=_expiry(self.config.timestamp_expiry_s),
            snapshot_meta=deepcopy(old.snapshot_meta),
        )
        self._write_timestamp(root, timestamp)
        return timestamp.version

    def _write_timestamp(self, root: Root, timestamp: Timestamp) -> None:
        data = self._sign(timestamp, [self._online_signer(root, Timestamp.type)])
        atomic_write(self.metadata_dir / "timestamp.json", data)

    def rotate_root(
        self,
        signers: Sequence[CryptoSigner],
        *,
        add_keys: Sequence[SSlibKey] = (),
        remove_keyids: Sequence[str] = (),
        root_threshold: int | None = None,
        targets_threshold: int | None = None,
        rotate_online: bool = False,
    ) -> int:
        """Write ``N+1.root.json`` signed by a threshold of the old root's keys and of the new one's.

        Added keys and removed keyids apply to both operator roles (root and targets);
        ``rotate_online`` replaces the snapshot and timestamp keys (after a suspected theft). The
        targets metadata is re-signed when its keys or threshold changed, then snapshot and
        timestamp. Everything is checked before the first file is written; returns the new version.
        """
        with self.lock():
            old_md = self.root_md()
            old = old_md.signed
            new = deepcopy(old)
            new.version = old.version + 1
            new.expires = _expiry(self.config.root_expiry_s)
            operator_ids = {k for role in OPERATOR_ROLES for k in old.roles[role].keyids}
            for key in add_keys:
                for role in OPERATOR_ROLES:
                    if key.keyid not in new.roles[role].keyids:
                        new.add_key(key, role)
            for wanted in remove_keyids:
                matches = [
                    k for k in operator_ids if k == wanted or (len(wanted) >= 8 and k.startswith(wanted))
                ]
                if len(matches) != 1:
                    raise RootRotationRefused(
                        f"--remove-key {wanted!r} matches {len(matches)} operator keys; give a key id (or a "
                        "unique prefix of 8+ characters) from `yibao-central root show`"
                    )
                for role in OPERATOR_ROLES:
                    if matches[0] in new.roles[role].keyids:
                        new.revoke_key(matches[0], role)
            if root_threshold is not None:
                new.roles["root"].threshold = root_threshold
            if targets_threshold is not None:
                new.roles["targets"].threshold = targets_threshold
            for role in OPERATOR_ROLES:
                n, t = len(new.roles[role].keyids), new.roles[role].threshold
                if t < 1 or n < t:
                    raise RootRotationRefused(
                        f"the new root would give {role} {n} key{'s' if n != 1 else ''} and threshold {t}; "
                        "a role needs a threshold of at least 1 and at least that many keys"
                    )
            new_online: dict[str, SSlibKey] = {}
            if rotate_online:
                for role in ONLINE_ROLES:
                    for keyid in list(new.roles[role].keyids):
                        new.revoke_key(keyid, role)
                    new_online[role] = self._new_online_key()  # a file only; used once the root says so
                    new.add_key(new_online[role], role)

            md = Metadata(new)
            root_ids = set(old.roles["root"].keyids) | set(new.roles["root"].keyids)
            for signer in signers:
                if signer.public_key.keyid in root_ids and signer.public_key.keyid not in md.signatures:
                    md.sign(signer, append=True)
            result = new.get_root_verification_result(old, md.signed_bytes, md.signatures)
            if not result.verified:
                raise RootRotationRefused(
                    f"root v{new.version} needs {old.roles['root'].threshold} signatures of the current "
                    f"root keys (has {len(result.first.signed)}) and {new.roles['root'].threshold} of the "
                    f"new root keys (has {len(result.second.signed)}); pass --key FILE for more operator "
                    "keys. Nothing was written"
                )
            targets_changed = new.roles["targets"] != old.roles["targets"]
            if targets_changed:
                chosen = self._operator_signers(new, Targets.type, signers)
            data = md.to_bytes(_SERIALIZER)
            self._write_versioned(Root.type, new.version, data)
            if targets_changed:
                current = self.targets_md().signed
                targets = Targets(
                    version=current.version + 1,
                    expires=_expiry(self.config.targets_expiry_s),
                    targets=current.targets,
                )
                self._write_versioned(Targets.type, targets.version, self._sign(targets, chosen))
                self._publish_online(new, targets.version)
            else:
                self._publish_online(new)
            log.info("root rotated to v%d", new.version)
            return new.version

    # -- pruning -------------------------------------------------------------------------------

    def prune_targets(self, keep: Iterable[str] = (), min_age_s: float = 3600.0) -> int:
        """Delete target files no longer referenced by the last ``keep_versions`` targets versions.

        ``keep`` (paths relative to ``targets/``) are kept too: bundles recorded but not yet
        published. Leftover temp files older than ``min_age_s`` go as well. Returns files removed.
        """
        with self.lock():
            referenced = {str(Path(p)) for p in keep}
            current = self.targets_md().signed.version
            for v in range(max(1, current - self.config.keep_versions + 1), current + 1):
                path = self.metadata_dir / f"{v}.targets.json"
                if path.exists():
                    md = Metadata[Targets].from_bytes(path.read_bytes())
                    referenced.update(t.get_prefixed_paths()[0] for t in md.signed.targets.values())
            removed = 0
            now = _now().timestamp()
            for p in self.targets_dir.rglob("*"):
                if not p.is_file():
                    continue
                rel = str(p.relative_to(self.targets_dir))
                if rel in referenced:
                    continue
                if p.name.startswith(_TMP_PREFIX) and now - p.stat().st_mtime < min_age_s:
                    continue
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed += 1
            return removed


def _payload(data: bytes) -> tuple[bytes, dict[str, Any]]:
    md = Metadata[Targets].from_bytes(data)
    return md.signed_bytes, md.signatures
