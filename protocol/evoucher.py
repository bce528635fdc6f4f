"""The medical-insurance e-voucher: a short signed token a phone shows as a QR code.

A scanner at the desk "types" the QR code into the HIS as text, so the token is plain ASCII
and short enough for a small QR code. Its format, version 1::

    YBV1.<base64url, no padding, of canonical msgpack [claims, signature]>

``claims`` is a map with one-letter keys (every byte counts in a QR code)::

    a  insuplc_admdvs  str, 6 digits: the insured area
    e  expires_at      int, Unix seconds
    i  issued_at       int, Unix seconds
    k  kid             str, the issuer key id (1-32 of A-Z a-z 0-9 . _ -)
    n  nonce           bin, 16 random bytes; as text, 32 lowercase hex digits
    p  psn_no          str, 18 characters: 17 digits and a digit or X (the social-security number)

``signature`` is Ed25519 (64 bytes) over the canonical encoding of
``["yibao-evoucher/1", claims]``: the domain string keeps a voucher signature from ever being
taken for any other signature an issuer key makes. With an 8-character ``kid`` a token is
196 characters, which fits a version-10 QR code at error-correction level M.

Decoding is strict because the text comes from anyone's phone: one spelling per token (the
msgpack must be canonical and the base64 must re-encode to the very same text, so no two texts
carry the same voucher and every changed character is refused), exactly the six claims, each of
the right type and form, a trusted ``kid``, a valid signature, then the times with a clock-skew
allowance. Whether the nonce was used before is the verifier's ledger's business (see
``agent.evoucher``); ``VoucherReplayed`` is defined with the other refusals in
``protocol.errors``.

The nonce is shown as hex rather than base64 because it becomes ``mdtrt_cert_no`` in HIS
databases, some of which compare text case-insensitively.

Error messages say what the cashier or operator should do and never contain the person number.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .canonical import Limits, decode_canonical, encode_canonical
from .errors import (
    DecodeError,
    VoucherBadSignature,
    VoucherExpired,
    VoucherMalformed,
    VoucherNotYetValid,
    VoucherUnknownIssuer,
    VoucherUnsupportedVersion,
)

__all__ = [
    "DEFAULT_SKEW_S",
    "MAX_LIFETIME_S",
    "NONCE_BYTES",
    "PREFIX",
    "VERSION",
    "Signer",
    "VoucherClaims",
    "dump_public_key",
    "iso_utc",
    "issue_voucher",
    "load_issuers",
    "load_public_key",
    "verify_voucher",
]

VERSION = 1
PREFIX = f"YBV{VERSION}."
_DOMAIN = f"yibao-evoucher/{VERSION}"
NONCE_BYTES = 16
SIG_BYTES = 64
#: The longest lifetime (expiry minus issue) a voucher may claim. Phone apps refresh their code
#: every minute or so; a voucher valid for longer than a day is not one an app shows.
MAX_LIFETIME_S = 24 * 3600
DEFAULT_SKEW_S = 30.0
#: Longest scanned text even looked at: a token is ~200 characters; more is junk (or an attack).
MAX_TEXT_CHARS = 512

_PSN_NO = re.compile(r"[0-9]{17}[0-9X]", re.ASCII)
_ADMDVS = re.compile(r"[0-9]{6}", re.ASCII)
_KID = re.compile(r"[A-Za-z0-9._-]{1,32}", re.ASCII)
_B64URL = re.compile(r"[A-Za-z0-9_-]*", re.ASCII)
_VERSIONED = re.compile(r"YBV([0-9]{1,4})\.", re.ASCII)
_CLAIM_KEYS = frozenset("aeiknp")
_LIMITS = Limits(max_bytes=MAX_TEXT_CHARS, max_depth=2, max_container=8, max_str=64)
_INT_MAX = 2**40  # far beyond any real Unix time; keeps arithmetic and ISO formatting sane

_RETRY = "ask the patient to refresh the code in the app and scan it again, or use the social-security card"


class Signer(Protocol):
    """Anything that signs with an Ed25519 key: ``Ed25519PrivateKey`` or ``protocol.batch.KeyPair``."""

    def sign(self, data: bytes, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class VoucherClaims:
    """What a verified voucher says. ``psn_no`` is personal data: it is kept out of ``repr``."""

    psn_no: str = field(repr=False)
    insuplc_admdvs: str
    issued_at: int
    expires_at: int
    #: The 16-byte nonce as 32 lowercase hex digits (``mdtrt_cert_no`` of the identity).
    nonce: str
    kid: str

    @property
    def issued_iso(self) -> str:
        return iso_utc(self.issued_at)

    @property
    def expires_iso(self) -> str:
        return iso_utc(self.expires_at)


def iso_utc(seconds: int) -> str:
    """Unix seconds as ISO-8601 UTC to the second, e.g. ``2026-11-23T01:12:00Z``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- base64url, one spelling only ----------------------------------------------------------------


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Decode unpadded base64url, or ``None`` if ``text`` is not the one encoding of some bytes.

    Python's decoder ignores stray characters and the unused low bits of the last character;
    both would let two different texts mean the same bytes, so the result must re-encode to
    exactly ``text``.
    """
    if len(text) % 4 == 1 or not _B64URL.fullmatch(text):
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if _b64encode(data) == text else None


# ---- issuer keys -------------------------------------------------------------------------------


def dump_public_key(key: Ed25519PublicKey) -> str:
    """The form ``evoucher_issuers`` in ``agent.json`` holds: base64url of the raw 32 bytes."""
    return _b64encode(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def load_public_key(text: str) -> Ed25519PublicKey:
    """Parse ``dump_public_key``'s form; ``ValueError`` says what is wrong (for the operator)."""
    raw = _b64decode(text.strip()) if isinstance(text, str) else None
    if raw is None or len(raw) != 32:
        raise ValueError(
            "an e-voucher issuer public key must be the base64url text (no padding) of its raw "
            "32 bytes, 43 characters, as 'yibao-sim evoucher --show-key' prints it"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def load_issuers(keys: Mapping[str, str]) -> dict[str, Ed25519PublicKey]:
    """``{kid: base64url key}`` from configuration → trusted keys; ``ValueError`` names the bad kid."""
    trusted = {}
    for kid, text in keys.items():
        if not isinstance(kid, str) or not _KID.fullmatch(kid):
            raise ValueError(
                f"e-voucher issuer key id {kid!r} is not 1-32 characters of letters, digits, '.', '_' or '-'"
            )
        try:
            trusted[kid] = load_public_key(text)
        except ValueError as exc:
            raise ValueError(f"e-voucher issuer {kid!r}: {exc}") from None
    return trusted


# ---- issue ------------------------------------------------------------------------------------


def _signed_bytes(claims: Mapping[str, Any]) -> bytes:
    return encode_canonical([_DOMAIN, claims])


def issue_voucher(
    private_key: Signer,
    kid: str,
    psn_no: str,
    insuplc_admdvs: str,
    ttl_s: int,
    now: float | None = None,
    nonce: bytes | None = None,
) -> str:
    """Sign a voucher valid from ``now`` for ``ttl_s`` seconds; what the issuer's app would show.

    Bad arguments raise ``ValueError``: they are the issuer's bug, not a voucher to refuse.
    """
    if not _KID.fullmatch(kid):
        raise ValueError("kid must be 1-32 characters of letters, digits, '.', '_' or '-'")
    if not isinstance(psn_no, str) or not _PSN_NO.fullmatch(psn_no):
        raise ValueError("psn_no must be 18 characters: 17 digits, then a digit or X")
    if not _ADMDVS.fullmatch(insuplc_admdvs):
        raise ValueError("insuplc_admdvs must be 6 digits")
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 0 < ttl_s <= MAX_LIFETIME_S:
        raise ValueError(f"ttl_s must be an integer number of seconds, 1 to {MAX_LIFETIME_S}")
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
    issued = int(time.time() if now is None else now)
    claims = {"a": insuplc_admdvs, "e": issued + ttl_s, "i": issued, "k": kid, "n": nonce, "p": psn_no}
    signature = private_key.sign(_signed_bytes(claims))
    return PREFIX + _b64encode(encode_canonical([claims, signature]))


# ---- verify -----------------------------------------------------------------------------------


def _malformed(reason: str) -> VoucherMalformed:
    return VoucherMalformed(
        f"the scanned code is not a valid medical-insurance e-voucher ({reason}); {_RETRY}"
    )


def _int_claim(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < _INT_MAX


def _decode(text: str) -> tuple[dict[str, Any], bytes]:
    """Text → (claims map, signature), refusing anything that is not exactly a v1 token."""
    if not isinstance(text, str):
        raise _malformed("the scanner sent no text")
    text = text.strip()
    if not text:
        raise _malformed("the scanner sent empty text")
    if len(text) > MAX_TEXT_CHARS:
        raise _malformed(f"{len(text)} characters is far longer than an e-voucher")
    if not text.startswith(PREFIX):
        versioned = _VERSIONED.match(text)
        if versioned:
            raise VoucherUnsupportedVersion(
                f"this is an e-voucher of format version {int(versioned.group(1))}, which this agent "
                f"does not read (it reads version {VERSION}); the operator should update the agent. "
                "Meanwhile use the social-security card"
            )
        raise _malformed("it does not start with the e-voucher prefix; was another code scanned?")
    raw = _b64decode(text[len(PREFIX) :])
    if raw is None:
        raise _malformed("its characters are not valid base64url; the scan may be incomplete")
    try:
        value = decode_canonical(raw, _LIMITS)
    except DecodeError as exc:
        raise _malformed("its content does not decode") from exc
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], dict)):
        raise _malformed("its content has the wrong shape")
    claims, signature = value
    if set(claims) != _CLAIM_KEYS:
        missing = sorted(_CLAIM_KEYS - set(claims))
        extra = len(set(claims) - _CLAIM_KEYS)
        raise _malformed(f"claims missing {missing} / {extra} unknown")
    if not isinstance(signature, bytes) or len(signature) != SIG_BYTES:
        raise _malformed("its signature has the wrong size")
    problems = [
        name
        for name, ok in (
            ("insured area", isinstance(claims["a"], str) and _ADMDVS.fullmatch(claims["a"])),
            ("expiry time", _int_claim(claims["e"])),
            ("issue time", _int_claim(claims["i"])),
            ("issuer key id", isinstance(claims["k"], str) and _KID.fullmatch(claims["k"])),
            ("nonce", isinstance(claims["n"], bytes) and len(claims["n"]) == NONCE_BYTES),
            ("person number", isinstance(claims["p"], str) and _PSN_NO.fullmatch(claims["p"])),
        )
        if not ok
    ]
    if problems:
        raise _malformed("bad " + ", ".join(problems))
    if not 0 < claims["e"] - claims["i"] <= MAX_LIFETIME_S:
        raise _malformed(f"its lifetime is not between 1 s and {MAX_LIFETIME_S} s")
    return claims, signature


def verify_voucher(
    text: str,
    trusted: Mapping[str, Ed25519PublicKey],
    now: float,
    skew_s: float = DEFAULT_SKEW_S,
) -> VoucherClaims:
    """Decode, check issuer and signature, then times; return the claims or raise a ``VoucherError``.

    Valid means ``issued_at - skew_s <= now < expires_at + skew_s``: the phone's issuer and this
    computer need not agree to the second. The nonce is *not* checked against earlier uses here.
    """
    claims, signature = _decode(text)
    kid = claims["k"]
    key = trusted.get(kid)
    if key is None:
        if not trusted:
            raise VoucherUnknownIssuer(
                "this agent trusts no e-voucher issuer yet, so it cannot accept e-vouchers: the "
                "operator must add the issuer public keys to 'evoucher_issuers' in agent.json and "
                "restart the agent. Meanwhile use the social-security card"
            )
        raise VoucherUnknownIssuer(
            f"the e-voucher is signed by issuer key '{kid}', which this agent does not trust: "
            "the operator should check 'evoucher_issuers' in agent.json (a new issuer key?). "
            "Meanwhile use the social-security card"
        )
    try:
        key.verify(signature, _signed_bytes(claims))
    except InvalidSignature:
        raise VoucherBadSignature(
            "the e-voucher's signature does not match its content (altered or counterfeit code); "
            "do not accept it: " + _RETRY
        ) from None
    issued, expires = claims["i"], claims["e"]
    if issued > now + skew_s:
        raise VoucherNotYetValid(
            f"the e-voucher was issued {int(issued - now)} s later than this computer's clock "
            f"(allowance {skew_s:g} s): check the date and time of this computer, then {_RETRY}"
        )
    if now >= expires + skew_s:
        raise VoucherExpired(
            f"the e-voucher expired {int(now - expires)} s ago: {_RETRY}; if freshly refreshed "
            "codes are refused too, check the date and time of this computer"
        )
    return VoucherClaims(
        psn_no=claims["p"],
        insuplc_admdvs=claims["a"],
        issued_at=issued,
        expires_at=expires,
        nonce=claims["n"].hex(),
        kid=kid,
    )
