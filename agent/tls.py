"""The agent's side of TLS: the centre's pinned trust bundle, the client certificate, its renewal.

Rules (the centre's side is ``central.tls``):

1. At enrolment the operator hands the hospital two things: the one-time token and the digest of
   the centre's trust bundle (``--ca-hash sha256:…``, printed by ``yibao-central init`` and ``tls
   show``). The agent fetches the bundle, refuses it unless its SHA-256 matches, and pins it in
   ``HOME/tls/trust.pem``: from then on every connection to the centre verifies the server against
   that bundle alone (and the host name), so a machine in the middle with any other CA is refused.
2. The agent makes its own TLS key (``HOME/tls/client.key``, 0600, never sent) and a certificate
   signing request; the centre answers the client certificate with the enrolment. Every connection to
   the centre presents it (mutual TLS).
3. One ``ClientTls`` per process holds the SSL context every client (uploader, policy, history,
   heartbeat) shares; a renewed certificate is loaded into it in place, so open sessions use the new
   one for their next connection.
4. Renewal over mTLS once a third of the certificate's life is left; an alarm (``tls_cert_expiring``)
   when fewer than ``EXPIRY_WARNING_DAYS`` are left, so an agent offline for months is noticed before
   its certificate stops its uploads.
5. ``http://`` only when the agent was enrolled with ``--insecure-dev``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tuf.ngclient import Urllib3Fetcher

from protocol.wire import CERT_RENEW_PATH, PROTOCOL_HEADER, TLS_TRUST_PATH

from .config import AgentConfig
from .durable import write_atomic
from .errors import ConfigError, EnrolFailed

__all__ = [
    "EXPIRY_WARNING_DAYS",
    "ClientTls",
    "TlsFetcher",
    "client_ssl",
    "enrolment_call",
    "fetch_trust",
    "make_csr",
    "parse_ca_hash",
]

EXPIRY_WARNING_DAYS = 30


def parse_ca_hash(text: str) -> str:
    """``sha256:<64 hex>`` (or the bare hex) → the hex digest; anything else is a config error."""
    value = text.strip().lower().removeprefix("sha256:")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ConfigError(
            f"--ca-hash {text!r} is not sha256:<64 hex digits>; copy it from `yibao-central tls show`"
        )
    return value


async def fetch_trust(central_url: str, ca_hash: str, *, timeout_s: float = 30.0) -> bytes:
    """The centre's trust bundle, accepted only if its SHA-256 is ``ca_hash`` (rule 1).

    The download itself cannot verify the server (we have no anchor yet); the digest, carried out of
    band with the token, is what makes the bundle trustworthy.
    """
    expected = parse_ca_hash(ca_hash)
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    status, body = await enrolment_call(
        "GET", central_url, TLS_TRUST_PATH, ssl_context=insecure, timeout_s=timeout_s
    )
    if status != 200:
        raise EnrolFailed(f"the centre did not give its trust bundle ({status}); is {central_url} a centre?")
    actual = hashlib.sha256(body).hexdigest()
    if actual != expected:
        raise EnrolFailed(
            f"the centre's trust bundle has digest sha256:{actual}, not the sha256:{expected} given: "
            "someone may be between you and the centre, or the hash is of another centre; do not enrol"
        )
    try:
        certs = x509.load_pem_x509_certificates(body)
    except ValueError:
        raise EnrolFailed("the centre's trust bundle holds no PEM certificate") from None
    if not certs:
        raise EnrolFailed("the centre's trust bundle holds no PEM certificate")
    return body


async def enrolment_call(
    method: str,
    central_url: str,
    path: str,
    *,
    ssl_context: ssl.SSLContext | bool,
    timeout_s: float = 30.0,
    **kw: Any,
) -> tuple[int, bytes]:
    """One request of enrolment, on a session of its own: (status, body), or ``EnrolFailed`` saying why."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async with session.request(method, central_url.rstrip("/") + path, ssl=ssl_context, **kw) as resp:
                return resp.status, await resp.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise EnrolFailed(
            f"cannot reach the centre at {central_url}: {exc}; check the URL and network"
        ) from exc


def make_csr(agent_hint: str) -> tuple[bytes, str]:
    """A new EC P-256 key (PEM) and a CSR for it; the centre puts the agent id in the certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent_hint or "yibao-agent")]))
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, csr.public_bytes(serialization.Encoding.PEM).decode()


class ClientTls:
    """The SSL context for every connection to the centre, from ``HOME/tls`` (rule 3)."""

    def __init__(self, tls_dir: Path) -> None:
        self.dir = Path(tls_dir)
        for path in (self.trust_path, self.cert_path, self.key_path):
            if not path.is_file():
                raise ConfigError(
                    f"{path} is missing: this agent was not enrolled over TLS; enrol it again with "
                    "--central https://… --ca-hash sha256:…"
                )
        self.context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.trust_path))
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_identity()

    def _load_identity(self) -> None:
        """The key and certificate into the context (connections from now on), and the certificate kept."""
        self.context.load_cert_chain(str(self.cert_path), str(self.key_path))
        self._cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())

    @property
    def trust_path(self) -> Path:
        return self.dir / "trust.pem"

    @property
    def cert_path(self) -> Path:
        return self.dir / "client.crt"

    @property
    def key_path(self) -> Path:
        return self.dir / "client.key"

    @staticmethod
    def install(tls_dir: Path, trust: bytes, key_pem: bytes, cert_pem: str) -> None:
        """Write what enrolment got; a context already made for this home is dropped (new trust bundle)."""
        tls_dir = Path(tls_dir)
        tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(tls_dir / "trust.pem", trust)
        _write_identity(tls_dir, key_pem, cert_pem)
        _SHARED.pop(tls_dir.parent.resolve(), None)

    def certificate(self) -> x509.Certificate:
        return self._cert

    def status(self, now: datetime | None = None) -> dict[str, Any]:
        cert = self.certificate()
        now = now or datetime.now(UTC)
        left = (cert.not_valid_after_utc - now).total_seconds() / 86_400
        return {
            "client_cert_not_after": cert.not_valid_after_utc.isoformat(),
            "client_cert_days_left": round(left, 2),
            "expiring": left < EXPIRY_WARNING_DAYS,
        }

    def renewal_due(self, now: datetime | None = None) -> bool:
        cert = self.certificate()
        now = now or datetime.now(UTC)
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        return cert.not_valid_after_utc - now < life / 3

    async def renew(self, session: aiohttp.ClientSession, central_url: str, agent_id: str) -> str:
        """A new key and certificate over mTLS with the current one; loaded in place. The new not-after."""
        key_pem, csr = make_csr(agent_id)
        url = central_url.rstrip("/") + CERT_RENEW_PATH
        async with session.post(
            url, json={"csr": csr}, ssl=self.context, headers={PROTOCOL_HEADER: "1"}
        ) as resp:
            answer = await resp.json(content_type=None)
            if resp.status != 200 or not isinstance(answer, dict) or "client_cert" not in answer:
                err = answer.get("error", {}) if isinstance(answer, dict) else {}
                raise EnrolFailed(
                    f"certificate renewal refused ({err.get('code', resp.status)}): {err.get('message')}"
                )
        _write_identity(self.dir, key_pem, answer["client_cert"])
        self._load_identity()
        return self._cert.not_valid_after_utc.isoformat()


def _write_identity(tls_dir: Path, key_pem: bytes, cert_pem: str) -> None:
    """The key first, then its certificate, each atomically (the key never leaves this directory)."""
    write_atomic(tls_dir / "client.key", key_pem, 0o600)
    write_atomic(tls_dir / "client.crt", cert_pem.encode())


_SHARED: dict[Path, ClientTls] = {}


def client_tls(home: Path, central_url: str) -> ClientTls | None:
    """The process's one ``ClientTls`` for this home (rule 3), or None for an ``http://`` centre."""
    if not central_url.startswith("https://"):
        return None
    key = Path(home).resolve()
    if key not in _SHARED:
        _SHARED[key] = ClientTls(Path(home) / "tls")
    return _SHARED[key]


def client_ssl(home: Path, central_url: str) -> ssl.SSLContext | bool:
    """What aiohttp's ``ssl=`` takes: our pinned mutual-TLS context, or True (plain HTTP ignores it)."""
    tls = client_tls(home, central_url)
    return tls.context if tls is not None else True


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):  # empty: the service binds 127.0.0.1
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def his_server_ssl(config: AgentConfig) -> ssl.SSLContext | None:
    """The HIS API's server context when ``his_tls_cert``/``his_tls_key`` are set, else None.

    Refuses a listen address off this machine without TLS (unless ``insecure_dev``): the HIS API
    carries settlements and identities, and plain HTTP is only harmless on loopback.
    """
    host = config.listen.rpartition(":")[0]
    if not config.his_tls_cert:
        if not _is_loopback(host) and not config.insecure_dev:
            raise ConfigError(
                f"the HIS API would listen on {config.listen} in plain HTTP: off loopback it must be HTTPS; "
                "set his_tls_cert and his_tls_key in agent.json (the hospital CA's certificate for this "
                "machine), or listen on 127.0.0.1"
            )
        return None
    cert, key = (Path(config.his_tls_cert), Path(config.his_tls_key))
    cert, key = (p if p.is_absolute() else config.home / p for p in (cert, key))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"the HIS API's TLS certificate {cert} and key {key} cannot be used ({exc}); check the paths "
            "and that the key belongs to the certificate (PEM)"
        ) from None
    return context


class TlsFetcher(Urllib3Fetcher):
    """python-tuf's urllib3 fetcher over our pinned, mutually authenticated context."""

    def __init__(self, context: ssl.SSLContext, app_user_agent: str = "yibao-agent") -> None:
        super().__init__(app_user_agent=app_user_agent)
        self._proxy_env = urllib3.PoolManager(ssl_context=context, headers={"User-Agent": app_user_agent})
