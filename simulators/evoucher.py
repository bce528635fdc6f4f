"""An e-voucher issuer standing in for the national medical-insurance app, for tests and the demo.

The real issuer signs vouchers on its servers and the phone shows them as a QR code. Here one
Ed25519 key in a directory (``issuer.key``: the raw 32-byte private key, mode 600; a PEM
PKCS#8 key placed there is read too) signs vouchers with ``protocol.evoucher.issue_voucher``.
The key id defaults to the first 8 hex digits of the public key's fingerprint, so the same key
always signs under the same ``kid`` without a second file to keep in step.

An agent trusts the issuer once its key is in ``agent.json``::

    yibao-sim evoucher --issuer-dir DIR --show-key
    {"kid": "1f3a9c2e", "public_key": "EKoL507C…"}      →  "evoucher_issuers": {"1f3a9c2e": "EKoL507C…"}

``yibao-sim evoucher --psn-no N`` prints only the voucher text on stdout (what a QR scanner
would type), so scripts can capture it; ``--png FILE`` also draws the QR code with ``segno``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.batch import KeyPair, key_fingerprint
from protocol.evoucher import MAX_LIFETIME_S, dump_public_key, issue_voucher

__all__ = [
    "DEFAULT_AREA",
    "DEFAULT_ISSUER_DIR",
    "DEFAULT_TTL_S",
    "KEY_FILE",
    "Issuer",
    "add_cli",
    "default_kid",
    "issue",
    "render_png",
    "run",
]

KEY_FILE = "issuer.key"
DEFAULT_ISSUER_DIR = Path(os.environ.get("YIBAO_EVOUCHER_ISSUER_DIR", "~/.yibao-sim/evoucher")).expanduser()
DEFAULT_AREA = "370200"
#: Real apps refresh the code every minute or so; two minutes leaves time to walk to the desk.
DEFAULT_TTL_S = 120


def default_kid(public_bytes: bytes) -> str:
    """A key id derived from the key itself: stable, short (8 characters keep the QR small)."""
    return key_fingerprint(public_bytes)[:8]


class Issuer:
    """One issuer key and the ``kid`` it signs under."""

    def __init__(self, key: KeyPair, kid: str | None = None) -> None:
        self.key = key
        self.kid = kid or default_kid(key.public_bytes)

    @classmethod
    def generate(cls, kid: str | None = None) -> Issuer:
        """A fresh key held only in memory (tests)."""
        return cls(KeyPair.generate(), kid)

    @classmethod
    def load_or_create(cls, directory: Path | str, kid: str | None = None) -> Issuer:
        """The key in ``directory/issuer.key``, created (mode 600) if there is none yet.

        Creation is atomic (written aside, then hard-linked into place), so two processes
        starting together end up with the same key rather than a torn file.
        """
        directory = Path(directory)
        path = directory / KEY_FILE
        if not path.exists():
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=".issuer-", dir=directory)  # mkstemp creates it 0600
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(KeyPair.generate().private_bytes())
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    pass  # another process won the race: use its key
            finally:
                os.unlink(tmp)
        return cls(_read_key(path), kid)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.key.public_bytes)

    @property
    def public_key_b64(self) -> str:
        return dump_public_key(self.public_key)

    def issuers_config(self) -> dict[str, str]:
        """The ``evoucher_issuers`` entry an agent needs to trust this issuer."""
        return {self.kid: self.public_key_b64}

    def issue(
        self,
        psn_no: str,
        *,
        insuplc_admdvs: str = DEFAULT_AREA,
        ttl_s: int = DEFAULT_TTL_S,
        now: float | None = None,
        nonce: bytes | None = None,
    ) -> str:
        """A signed voucher as the text a QR scanner types."""
        return issue_voucher(self.key, self.kid, psn_no, insuplc_admdvs, ttl_s, now=now, nonce=nonce)


def _read_key(path: Path) -> KeyPair:
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        private = serialization.load_pem_private_key(data, password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError(f"{path} holds a PEM key that is not Ed25519")
        key = KeyPair(private)
    elif len(data) == 32:
        key = KeyPair.from_private_bytes(data)
    else:
        raise ValueError(f"{path} is neither a raw 32-byte Ed25519 private key nor a PEM one")
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # a private key readable by others is tightened, not refused
    return key


def issue(
    psn_no: str,
    *,
    issuer_dir: Path | str = DEFAULT_ISSUER_DIR,
    kid: str | None = None,
    insuplc_admdvs: str = DEFAULT_AREA,
    ttl_s: int = DEFAULT_TTL_S,
    now: float | None = None,
) -> str:
    """One voucher signed by the issuer key in ``issuer_dir`` (created if missing)."""
    return Issuer.load_or_create(issuer_dir, kid).issue(
        psn_no, insuplc_admdvs=insuplc_admdvs, ttl_s=ttl_s, now=now
    )


def render_png(text: str, path: Path | str, *, scale: int = 4) -> Path:
    """Draw ``text`` as a QR code (error correction M, 4-module quiet zone) into a PNG file."""
    import segno  # imported here: only drawing needs it

    path = Path(path)
    segno.make(text, error="m", micro=False, boost_error=False).save(path, kind="png", scale=scale, border=4)
    return path


# ---- yibao-sim evoucher ----------------------------------------------------------------------


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``evoucher`` verb to ``yibao-sim``'s sub-commands."""
    p = subparsers.add_parser(
        "evoucher",
        help="issue a signed medical-insurance e-voucher (QR) for a person",
        description=(
            "Print a signed e-voucher as the text a QR scanner types (and only that, on stdout), "
            "optionally also drawn as a PNG QR code. The issuer key lives in --issuer-dir and is "
            "created on first use; --show-key prints the key id and public key to put in the "
            "agent's evoucher_issuers."
        ),
    )
    p.add_argument("--psn-no", metavar="N", help="person number: 18 characters, 17 digits then a digit or X")
    p.add_argument(
        "--ttl",
        type=int,
        default=DEFAULT_TTL_S,
        metavar="S",
        help=f"seconds the voucher stays valid (default {DEFAULT_TTL_S}, at most {MAX_LIFETIME_S})",
    )
    p.add_argument("--png", type=Path, metavar="FILE", help="also write the QR code as a PNG image")
    p.add_argument(
        "--issuer-dir",
        type=Path,
        default=DEFAULT_ISSUER_DIR,
        metavar="DIR",
        help=f"directory of the issuer key (default {DEFAULT_ISSUER_DIR}, or $YIBAO_EVOUCHER_ISSUER_DIR)",
    )
    p.add_argument("--kid", metavar="KID", help="issuer key id (default: derived from the key)")
    p.add_argument(
        "--area",
        default=DEFAULT_AREA,
        metavar="CODE",
        help=f"insured area insuplc_admdvs, 6 digits (default {DEFAULT_AREA})",
    )
    p.add_argument(
        "--show-key",
        action="store_true",
        help='print {"kid", "public_key"} as JSON instead of issuing a voucher',
    )
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """The ``evoucher`` verb; returns the exit status (2 for bad arguments or an unreadable key)."""
    try:
        issuer = Issuer.load_or_create(args.issuer_dir, args.kid)
    except (OSError, ValueError) as exc:
        print(f"yibao-sim: cannot load or create the issuer key in {args.issuer_dir}: {exc}", file=sys.stderr)
        return 2
    if args.show_key:
        print(json.dumps({"kid": issuer.kid, "public_key": issuer.public_key_b64}))
        return 0
    if not args.psn_no:
        print("yibao-sim: evoucher needs --psn-no (or --show-key)", file=sys.stderr)
        return 2
    try:
        text = issuer.issue(args.psn_no, insuplc_admdvs=args.area, ttl_s=args.ttl)
    except ValueError as exc:  # the message names the rule, never echoes the person number
        print(f"yibao-sim: {exc}", file=sys.stderr)
        return 2
    if args.png is not None:
        try:
            render_png(text, args.png)
        except OSError as exc:
            print(f"yibao-sim: cannot write {args.png}: {exc}", file=sys.stderr)
            return 2
    print(text)
    return 0
