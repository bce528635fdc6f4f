"""A real TUF repository for agent tests, built with ``tuf.api.metadata`` and served over loopback HTTP.

It lays files out as ``ngclient`` reads them with consistent snapshots (``N.root.json``,
``timestamp.json``, ``V.snapshot.json``, ``V.targets.json``, ``targets/<dir>/<sha256>.<basename>``)
under ``/tuf/metadata/`` and ``/tuf/targets/``, publishes policy bundles as targets with the custom
metadata of docs/POLICY.md, and can produce every attack an agent must refuse: a bad signature, a
key the root does not name, a rollback, expired metadata, a mix of versions, a bundle of another
kind or area, a delta on the wrong base, a root rotation without its threshold.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import tarfile
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from protocol.bundles import (
    BlacklistEntry,
    BundleHeader,
    CardsEntry,
    encode_blacklist,
    encode_cards,
    encode_document,
    target_name,
)

AREA = "370200"
OTHER_AREA = "110100"


def in_(**delta: float) -> datetime:
    return (datetime.now(UTC) + timedelta(**delta)).replace(microsecond=0)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def card(id_: str, reason: str = "lost", effective_at: str = "") -> BlacklistEntry:
    return BlacklistEntry("+", "card", id_, reason, "test", effective_at)


def unlist(list_type: str, id_: str) -> BlacklistEntry:
    return BlacklistEntry("-", list_type, id_)


class Repo:
    """Root (2 of 3 by default), targets, snapshot and timestamp keys; bundles of one area by default."""

    def __init__(self, base: Path, *, area: str = AREA, root_keys: int = 3, root_threshold: int = 2) -> None:
        self.base = base
        self.area = area
        self.metadata_dir = base / "tuf" / "metadata"
        self.targets_dir = base / "tuf" / "targets"
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        self.root_signers = [CryptoSigner.generate_ed25519() for _ in range(root_keys)]
        self.targets_signer = CryptoSigner.generate_ed25519()
        self.snapshot_signer = CryptoSigner.generate_ed25519()
        self.timestamp_signer = CryptoSigner.generate_ed25519()
        root = Root(expires=in_(days=365), consistent_snapshot=True)
        for s in self.root_signers:
            root.add_key(s.public_key, Root.type)
        root.roles[Root.type].threshold = root_threshold
        root.add_key(self.targets_signer.public_key, Targets.type)
        root.add_key(self.snapshot_signer.public_key, Snapshot.type)
        root.add_key(self.timestamp_signer.public_key, Timestamp.type)
        self.root = Metadata(root)
        for s in self.root_signers[:root_threshold]:
            self.root.sign(s, append=True)
        self._write_root()
        self.targets = Metadata(Targets(expires=in_(days=90)))
        self.snapshot = Metadata(Snapshot(expires=in_(days=7)))
        self.timestamp = Metadata(Timestamp(expires=in_(days=1)))
        self._first = True
        self.publish()

    # ---- metadata ------------------------------------------------------------------------------

    @staticmethod
    def _bytes(md: Metadata) -> bytes:
        return md.to_bytes(JSONSerializer(compact=False))

    def _write_root(self) -> None:
        (self.metadata_dir / f"{self.root.signed.version}.root.json").write_bytes(self._bytes(self.root))

    def root_bytes(self, version: int | None = None) -> bytes:
        """The exact bytes of ``N.root.json`` (what enrolment hands the agent)."""
        version = version or self.root.signed.version
        return (self.metadata_dir / f"{version}.root.json").read_bytes()

    def publish(
        self,
        *,
        targets_signers: list[CryptoSigner] | None = None,
        snapshot_signers: list[CryptoSigner] | None = None,
        timestamp_signers: list[CryptoSigner] | None = None,
        timestamp_expires: datetime | None = None,
        snapshot_expires: datetime | None = None,
    ) -> int:
        """New targets, snapshot and timestamp versions, signed (by default with the right keys)."""
        if not self._first:
            self.targets.signed.version += 1
            self.snapshot.signed.version += 1
            self.timestamp.signed.version += 1
        self._first = False
        tv = self.targets.signed.version
        self.targets.signatures.clear()
        for s in targets_signers or [self.targets_signer]:
            self.targets.sign(s, append=True)
        (self.metadata_dir / f"{tv}.targets.json").write_bytes(self._bytes(self.targets))
        self.snapshot.signed.meta["targets.json"] = MetaFile(version=tv)
        self.snapshot.signed.expires = snapshot_expires or in_(days=7)
        self.snapshot.signatures.clear()
        for s in snapshot_signers or [self.snapshot_signer]:
            self.snapshot.sign(s, append=True)
        sv = self.snapshot.signed.version
        (self.metadata_dir / f"{sv}.snapshot.json").write_bytes(self._bytes(self.snapshot))
        self.timestamp.signed.snapshot_meta = MetaFile(version=sv)
        self.timestamp.signed.expires = timestamp_expires or in_(days=1)
        self.timestamp.signatures.clear()
        for s in timestamp_signers or [self.timestamp_signer]:
            self.timestamp.sign(s, append=True)
        (self.metadata_dir / "timestamp.json").write_bytes(self._bytes(self.timestamp))
        return self.timestamp.signed.version

    def rotate_root(
        self,
        *,
        replace: int = 0,
        old_signers: Iterable[CryptoSigner] | None = None,
        new_signers: Iterable[CryptoSigner] | None = None,
    ) -> CryptoSigner:
        """Root N+1 with root key ``replace`` swapped for a new one; signed by the given old and new keys.

        Default: a threshold of both (a valid rotation). Returns the new key.
        """
        new_key = CryptoSigner.generate_ed25519()
        root = self.root.signed
        old = list(self.root_signers)
        root.revoke_key(old[replace].public_key.keyid, Root.type)
        root.add_key(new_key.public_key, Root.type)
        root.version += 1
        root.expires = in_(days=365)
        new = [*old[:replace], new_key, *old[replace + 1 :]]
        threshold = root.roles[Root.type].threshold
        kept = [s for s in old if s is not old[replace]]
        old_signers = list(old_signers) if old_signers is not None else kept[:threshold]
        new_signers = list(new_signers) if new_signers is not None else [new_key, *kept][:threshold]
        self.root.signatures.clear()
        for s in {id(s): s for s in [*old_signers, *new_signers]}.values():
            self.root.sign(s, append=True)
        self._write_root()
        self.root_signers = new
        return new_key

    # ---- targets -------------------------------------------------------------------------------

    def add_target(self, name: str, data: bytes, custom: Any) -> TargetFile:
        tf = TargetFile.from_data(name, data, ["sha256"])
        tf.unrecognized_fields["custom"] = custom
        self.targets.signed.targets[name] = tf
        self.write_target_file(name, data)
        return tf

    def write_target_file(self, name: str, data: bytes, digest: str | None = None) -> Path:
        digest = digest or hashlib.sha256(data).hexdigest()
        dirname, _, basename = name.rpartition("/")
        path = self.targets_dir / dirname / f"{digest}.{basename}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def served_target_path(self, name: str) -> Path:
        tf = self.targets.signed.targets[name]
        dirname, _, basename = name.rpartition("/")
        return self.targets_dir / dirname / f"{tf.hashes['sha256']}.{basename}"

    def remove_targets(self, kind: str | None = None, area: str | None = None) -> None:
        for name in list(self.targets.signed.targets):
            a, k, _ = name.split("/", 2)
            if (kind is None or k == kind) and (area is None or a == area):
                del self.targets.signed.targets[name]

    def blacklist(
        self,
        seq: int,
        entries: Iterable[BlacklistEntry],
        *,
        base: int | None = None,
        area: str | None = None,
        file_header: BundleHeader | None = None,
        custom: dict | None = None,
        name: str | None = None,
    ) -> str:
        """Publish a blacklist target (full when ``base`` is None). ``file_header``/``custom``: attacks."""
        header = BundleHeader("blacklist", area or self.area, seq, base, now_iso())
        buf = io.BytesIO()
        encode_blacklist(buf, file_header or header, entries)
        name = name or target_name(header.area, "blacklist", seq, base is None)
        self.add_target(name, buf.getvalue(), custom or header.custom())
        return name

    def cards(self, seq: int, entries: Iterable[CardsEntry], *, base: int | None = None) -> str:
        """Publish a ``cards`` target (corrections and notices; full when ``base`` is None)."""
        header = BundleHeader("cards", self.area, seq, base, now_iso())
        buf = io.BytesIO()
        encode_cards(buf, header, entries)
        name = target_name(header.area, "cards", seq, base is None)
        self.add_target(name, buf.getvalue(), header.custom())
        return name

    def document(
        self,
        kind: str,
        seq: int,
        body: Any,
        *,
        area: str | None = None,
        file_header: BundleHeader | None = None,
        custom: dict | None = None,
        name: str | None = None,
    ) -> str:
        header = BundleHeader(kind, area or self.area, seq, None, now_iso())
        buf = io.BytesIO()
        fh = file_header or header
        if fh.kind == "blacklist":
            encode_blacklist(buf, fh, [])
        else:
            encode_document(buf, fh, body)
        name = name or target_name(header.area, kind, seq, True)
        self.add_target(name, buf.getvalue(), custom or header.custom())
        return name

    # ---- attacks on served files ---------------------------------------------------------------

    def tamper_signature(self, filename: str) -> None:
        """Flip one character of the first signature in a served metadata file."""
        path = self.metadata_dir / filename
        doc = json.loads(path.read_bytes())
        sig = doc["signatures"][0]["sig"]
        doc["signatures"][0]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]
        path.write_text(json.dumps(doc, indent=1))

    def file(self, filename: str) -> bytes:
        return (self.metadata_dir / filename).read_bytes()

    def put(self, filename: str, data: bytes) -> None:
        (self.metadata_dir / filename).write_bytes(data)

    # ---- export (offline sites) ----------------------------------------------------------------

    def export(self, out: Path, *, kinds: Iterable[str] | None = None, tamper: bool = False) -> Path:
        """A tar as ``yibao-central bundle export`` writes: ``metadata/<file>``, ``targets/<hash>.<name>``."""
        wanted = set(kinds) if kinds is not None else None
        with tarfile.open(out, "w") as tar:
            for path in sorted(self.metadata_dir.iterdir()):
                tar.add(path, arcname=f"metadata/{path.name}")
            for name in self.targets.signed.targets:
                if wanted is None or name.split("/")[1] in wanted:
                    path = self.served_target_path(name)
                    rel = path.relative_to(self.targets_dir).as_posix()
                    if tamper:
                        data = bytearray(path.read_bytes())
                        data[-1] ^= 1
                        info = tarfile.TarInfo(f"targets/{rel}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(bytes(data)))
                    else:
                        tar.add(path, arcname=f"targets/{rel}")
        return out

    def copy_to(self, other: Path) -> None:
        shutil.copytree(self.base / "tuf", other / "tuf", dirs_exist_ok=True)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """A static HTTP server on loopback for ``directory``; yields its base URL."""

    def handler(*args: Any, **kwargs: Any) -> _Quiet:
        return _Quiet(*args, directory=str(directory), **kwargs)

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
