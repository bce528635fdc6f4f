"""The centre's TLS: its own certificate authority, the server certificate, and agents' client certificates.

Health data (person numbers, diagnoses, drug lines) crosses the hospital's network and the bureau's,
so everything an agent and the centre say to each other is TLS, and the agent routes are mutual TLS.

Rules:

1. ``init`` creates a CA (ECDSA P-256, 10 years) in ``HOME/tls/`` and a server certificate it signs
   for ``localhost``, ``127.0.0.1``, ``::1`` and every ``--tls-name``; the CA key never leaves the
   home (0600). An operator may instead install a certificate and key of the bureau's own PKI
   (``tls import``); the chain's root then joins the *trust bundle*.
2. The trust bundle (``HOME/tls/trust.pem``: our CA, plus any imported issuer) is what an agent pins
   at enrolment. Its SHA-256 (``sha256:<hex>``, printed by ``init`` and ``tls show``) travels to the
   hospital out of band with the enrolment token; the agent fetches the bundle, refuses it unless the
   digest matches, and from then on trusts nothing else. A machine in the middle with another CA is
   refused at the TLS handshake.
3. An agent sends a certificate signing request with its enrolment; the centre answers a client
   certificate (``clientAuth``, ``CN`` = the agent id, ``client_cert_days``). Agent routes
   (batches, history, policy, reports, heartbeats, renewal) require a client certificate that chains
   to our CA and whose ``CN`` is an enrolled, unrevoked agent; a signed message naming another agent
   than the certificate is refused (``agent_mismatch``).
4. Rotation: ``tls rotate`` issues a new server certificate from the CA; the running server picks it
   up within a minute (``ServerTls.reload_if_changed``). Agents renew their client certificate over
   mTLS (``POST /v1/agents/cert``) once a third of its life is left. Expiry within
   ``EXPIRY_WARNING_DAYS`` is an alarm on both sides.
5. Plain HTTP only with ``--insecure-dev`` (the demo and a few tests), and said loudly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from central.policy.tuf_repo import atomic_write

from .errors import CertificateInvalid, ConfigInvalid

__all__ = [
    "EXPIRY_WARNING_DAYS",
    "CertInfo",
    "ServerTls",
    "TlsFiles",
    "cert_info",
    "create_tls",
    "import_server_cert",
    "issue_client_cert",
    "peer_agent_id",
    "rotate_server_cert",
    "trust_digest",
]

EXPIRY_WARNING_DAYS = 30
CA_DAYS = 3650
SERVER_DAYS = 397
DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


@dataclass(frozen=True)
class TlsFiles:
    """Where the centre keeps its TLS material: ``HOME/tls/``."""

    dir: Path

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def trust(self) -> Path:
        """What agents pin: our CA and any imported issuer, PEM, in this order."""
        return self.dir / "trust.pem"

    def exists(self) -> bool:
        return all(p.is_file() for p in (self.ca_key, self.ca_cert, self.server_key, self.server_cert))

    def require(self) -> None:
        if not self.exists():
            raise ConfigInvalid(
                f"no TLS material in {self.dir}: run `yibao-central init` (it creates the centre's CA), or "
                "serve with --insecure-dev on a development machine only"
            )

    def server_info(self) -> CertInfo:
        return cert_info(x509.load_pem_x509_certificate(self.server_cert.read_bytes()))

    def ca_info(self) -> CertInfo:
        return cert_info(x509.load_pem_x509_certificate(self.ca_cert.read_bytes()))

    def load_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigInvalid(f"{self.ca_key} is not the centre's EC CA key")
        return cert, key


def _issue_server(
    files: TlsFiles, names: list[str], *, now: datetime, days: int = SERVER_DAYS
) -> x509.Certificate:
    ca_cert, ca_key = files.load_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(min(now + timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    atomic_write(files.server_key, _key_pem(key), 0o600)
    atomic_write(files.server_cert, _cert_pem(cert) + _cert_pem(ca_cert))
    return cert


def create_tls(
    tls_dir: Path, names: list[str] | None = None, *, now: datetime | None = None, ca_days: int = CA_DAYS
) -> bool:
    """Create the CA, the server certificate and the trust bundle; idempotent (False when they exist)."""
    files = TlsFiles(Path(tls_dir))
    if files.exists():
        return False
    now = now or datetime.now(UTC)
    files.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    # A random suffix: two centres (a test and a production one, two provinces) never share a CA name.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Yibao Edge centre CA {os.urandom(4).hex()}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=ca_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    atomic_write(files.ca_key, _key_pem(key), 0o600)
    atomic_write(files.ca_cert, _cert_pem(ca))
    _issue_server(files, _names(names), now=now)
    atomic_write(files.trust, _cert_pem(ca))
    return True


def _names(names: list[str] | None) -> list[str]:
    chosen = list(dict.fromkeys([*(names or []), *DEFAULT_NAMES]))
    for n in chosen:
        if not n or any(c.isspace() for c in n):
            raise ConfigInvalid(f"TLS name {n!r} must be a host name or an IP address")
    return chosen


def rotate_server_cert(
    tls_dir: Path, names: list[str] | None = None, *, now: datetime | None = None
) -> CertInfo:
    """A new server key and certificate from the CA; keeps the names of the current one unless given."""
    files = TlsFiles(Path(tls_dir))
    files.require()
    if names is None:
        current = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        try:
            san = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
                str(v) for v in san.get_values_for_type(x509.IPAddress)
            ]
        except x509.ExtensionNotFound:
            names = None
    cert = _issue_server(files, _names(names), now=now or datetime.now(UTC))
    return cert_info(cert)


def import_server_cert(tls_dir: Path, cert_file: Path, key_file: Path) -> CertInfo:
    """Install the bureau's own server certificate (chain PEM) and key; its root joins the trust bundle.

    Checked before anything is replaced: the key matches the certificate, it is valid now, it is for
    server authentication, and the file carries its issuing chain up to a self-signed root.
    """
    files = TlsFiles(Path(tls_dir))
    files.require()
    try:
        chain = x509.load_pem_x509_certificates(Path(cert_file).read_bytes())
        key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise CertificateInvalid(f"cannot read the certificate or key: {exc}") from None
    leaf = chain[0]
    if leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise CertificateInvalid(f"{key_file} is not the key of the first certificate in {cert_file}")
    now = datetime.now(UTC)
    if not leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc:
        raise CertificateInvalid(
            f"the certificate is not valid now (until {leaf.not_valid_after_utc:%Y-%m-%d})"
        )
    root = chain[-1]
    if root.issuer != root.subject or len(chain) < 2:
        raise CertificateInvalid(
            f"{cert_file} must hold the certificate followed by its issuing chain up to the root CA"
        )
    # Check with OpenSSL itself that the chain verifies, in a context that trusts only that root.
    probe = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    probe.load_verify_locations(cadata=_cert_pem(root).decode())
    probe.load_cert_chain(str(cert_file), str(key_file))
    ca_cert, _ = files.load_ca()
    atomic_write(files.server_key, _key_pem(key), 0o600)  # type: ignore[arg-type]
    atomic_write(files.server_cert, b"".join(_cert_pem(c) for c in chain))
    atomic_write(files.trust, _cert_pem(ca_cert) + _cert_pem(root))
    return cert_info(leaf)


def trust_digest(tls_dir: Path) -> str:
    """``sha256:<hex>`` of the trust bundle's bytes: what the agent's ``--ca-hash`` must be."""
    return "sha256:" + hashlib.sha256(TlsFiles(Path(tls_dir)).trust.read_bytes()).hexdigest()


def issue_client_cert(
    tls_dir: Path, csr_pem: str, agent_id: str, *, days: int, now: datetime | None = None
) -> str:
    """A client certificate for ``agent_id`` from its CSR; PEM. The CSR's own subject is ignored."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError:
        raise CertificateInvalid("csr is not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise CertificateInvalid("the certificate signing request's signature does not verify")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise CertificateInvalid("the certificate signing request must be for an EC (P-256) key")
    files = TlsFiles(Path(tls_dir))
    ca_cert, ca_key = files.load_ca()
    now = now or datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(min(now + timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _cert_pem(cert).decode()


@dataclass(frozen=True)
class CertInfo:
    subject: str
    not_after: str
    days_left: float
    serial: str

    @property
    def expiring(self) -> bool:
        return self.days_left < EXPIRY_WARNING_DAYS

    def to_json(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "expiring": self.expiring}


def cert_info(cert: x509.Certificate, *, now: datetime | None = None) -> CertInfo:
    now = now or datetime.now(UTC)
    left = (cert.not_valid_after_utc - now).total_seconds() / 86_400
    return CertInfo(cert.subject.rfc4514_string(), cert.not_valid_after_utc.isoformat(), round(left, 2),
                    format(cert.serial_number, "x"))  # fmt: skip


class ServerTls:
    """The server's SSL context: TLS 1.2+, client certificates optional at the handshake, checked per route.

    Optional rather than required at the handshake because enrolment (an agent with no certificate
    yet) and the operators' API share the port; the agent routes refuse a request without one.
    """

    def __init__(self, tls_dir: Path) -> None:
        self.files = TlsFiles(Path(tls_dir))
        self.files.require()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.verify_mode = ssl.CERT_OPTIONAL
        self.context.load_verify_locations(cafile=str(self.files.ca_cert))
        self._loaded: float = 0.0
        self.reload_if_changed()

    def reload_if_changed(self) -> bool:
        """Load the server certificate again when ``tls rotate``/``tls import`` replaced it."""
        mtime = max(self.files.server_cert.stat().st_mtime, self.files.server_key.stat().st_mtime)
        if mtime == self._loaded:
            return False
        self.context.load_cert_chain(str(self.files.server_cert), str(self.files.server_key))
        self._loaded = mtime
        return True

    def server_cert_info(self) -> CertInfo:
        return self.files.server_info()


def peer_agent_id(peercert: dict | None) -> str | None:
    """The agent id (``CN``) of a verified client certificate as ``ssl`` reports it, else None."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
