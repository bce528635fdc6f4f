"""First contact: make the agent's identity and register it with the centre.

Nothing is written to the home directory until the centre has accepted the enrolment, so
a failed attempt (wrong token, centre down) can simply be repeated.
"""

from __future__ import annotations

import importlib.metadata
import json
import secrets
import ssl
from pathlib import Path

from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import Metadata, Root

from protocol.batch import KeyPair, key_fingerprint
from protocol.wire import ENROLL_PATH, PROTOCOL_HEADER, root_fingerprint

from .config import AgentConfig, save_config
from .durable import write_atomic
from .errors import ConfigError, EnrolFailed
from .store import Outbox
from .tls import ClientTls, enrolment_call, fetch_trust, make_csr

__all__ = ["check_tuf_root", "enrol", "load_key", "pin_tuf_root", "pinned_root_fingerprint"]


def software_version() -> str:
    """The installed package's version, which the centre lists per agent (``agents list``)."""
    try:
        return importlib.metadata.version("yibao-edge")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def load_key(config: AgentConfig) -> KeyPair:
    try:
        return KeyPair.from_private_bytes(config.key_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the agent key {config.key_path}: {exc}") from exc


def check_tuf_root(root_json: bytes, fingerprint: str = "") -> str:
    """Parse the root the centre sent, check it is signed by a threshold of its own keys; its fingerprint.

    ``fingerprint``: what the centre says it is; a different one means the bytes were changed on the way.
    """
    try:
        md = Metadata[Root].from_bytes(root_json)
        md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
    except (RepositoryError, ValueError, TypeError) as exc:
        raise EnrolFailed(f"the centre's TUF root does not verify ({exc}); do not use this centre") from None
    actual = root_fingerprint(root_json)
    if fingerprint and fingerprint != actual:
        raise EnrolFailed(
            "the TUF root received does not match the fingerprint the centre announced; do not use this "
            "centre"
        )
    return actual


def pin_tuf_root(config: AgentConfig, root_json: bytes) -> Path:
    """Write the trust anchor for policy bundles: ``HOME/tuf/metadata/root.json``."""
    config.tuf_metadata_dir.mkdir(parents=True, exist_ok=True)
    path = config.tuf_metadata_dir / "root.json"
    write_atomic(path, root_json)
    return path


def pinned_root_fingerprint(config: AgentConfig) -> str | None:
    """Fingerprint of the root pinned at enrolment (the oldest in ``root_history`` once the client ran)."""
    history = config.tuf_metadata_dir / "root_history"
    candidates = (
        sorted(history.glob("*.root.json"), key=lambda p: int(p.name.split(".")[0]))
        if history.is_dir()
        else []
    )
    path = candidates[0] if candidates else config.tuf_metadata_dir / "root.json"
    try:
        return root_fingerprint(path.read_bytes())
    except OSError:
        return None


async def enrol(
    home: Path,
    central_url: str,
    token: str,
    hospital: str,
    *,
    ca_hash: str | None = None,
    insecure_dev: bool = False,
) -> AgentConfig:
    """Create key, enrol, then write config, key, HIS token and database.

    Over ``https://`` the centre's trust bundle is fetched and pinned only if its digest is ``ca_hash``
    (``agent.tls`` rule 1), and the enrolment carries a CSR for the client certificate; ``http://``
    is refused unless ``insecure_dev``.
    """
    home = Path(home)
    central_url = central_url.rstrip("/")
    if central_url.startswith("https://"):
        if not ca_hash:
            raise ConfigError(
                "enrolling over https needs --ca-hash sha256:… (the centre's `yibao-central tls show` prints "
                "it; get it from the operator with the token)"
            )
    elif not central_url.startswith("http://"):
        raise ConfigError(f"--central {central_url!r} must be an https:// URL")
    elif not insecure_dev:
        raise ConfigError(
            f"--central {central_url} is plain HTTP: health data must travel over TLS; use https:// with "
            "--ca-hash, or --insecure-dev on a development machine"
        )
    config = AgentConfig(
        home=home, central_url=central_url, fixmedins_code=hospital, insecure_dev=insecure_dev and not ca_hash
    )
    if config.config_path.exists():
        raise ConfigError(f"{home} already holds an enrolled agent; use another --home")
    trust = await fetch_trust(central_url, ca_hash) if ca_hash else None
    tls_key, csr = make_csr(hospital) if trust else (b"", "")
    key = KeyPair.generate()
    request = {
        "token": token,
        "fixmedins_code": hospital,
        "public_key": key.public_bytes.hex(),
        "agent_version": software_version(),
        "csr": csr,
    }
    ssl_context: ssl.SSLContext | bool = True
    if trust is not None:
        ssl_context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=trust.decode())
    status, body = await enrolment_call(
        "POST",
        central_url,
        ENROLL_PATH,
        ssl_context=ssl_context,
        json=request,
        headers={PROTOCOL_HEADER: "1"},
    )
    text = body.decode("utf-8", "replace")
    try:
        answer = json.loads(text)
    except json.JSONDecodeError:
        answer = {}
    if status != 201:
        err = answer.get("error", {}) if isinstance(answer, dict) else {}
        raise EnrolFailed(
            f"the centre refused enrolment ({err.get('code', status)}): {err.get('message', text[:200])}"
        )
    if answer.get("key_fingerprint") not in (None, key_fingerprint(key.public_bytes)):
        raise EnrolFailed("the centre registered a different key fingerprint; do not use this centre")
    tuf_root = (answer.get("tuf_root") or "").encode()
    if tuf_root:
        check_tuf_root(tuf_root, answer.get("root_fingerprint") or "")
    client_cert = answer.get("client_cert") or ""
    if trust is not None and not client_cert:
        raise EnrolFailed(
            "the centre issued no client certificate for this agent; it cannot upload without one"
        )
    home.mkdir(parents=True, exist_ok=True)
    if trust is not None:
        ClientTls.install(config.tls_dir, trust, tls_key, client_cert)
    config.agent_id = answer["agent_id"]
    config.pooling_area = answer.get("pooling_area") or ""
    if tuf_root:
        pin_tuf_root(config, tuf_root)
    write_atomic(config.key_path, key.private_bytes(), 0o600)
    write_atomic(config.token_path, (secrets.token_urlsafe(32) + "\n").encode(), 0o600)
    Outbox(config.db_path, agent_id=config.agent_id).close()
    save_config(config)
    return config
