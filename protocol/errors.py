"""The protocol's exception hierarchy and its stable error codes.

Every refusal has its own class and a code that never changes once shipped: the agent,
the centre and HIS vendors branch on the code, people read the message. The message
says what the operator should do; it never contains personal data (ID numbers, names).

Codes travel on the wire as ``{"error": {"code": ..., "message": ..., "details": [...]}}``
(JSON towards the HIS) or the same map in msgpack (between agent and centre).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadSignature",
    "BatchRefused",
    "BenefitNotFound",
    "BundleInvalid",
    "CardDataInvalid",
    "ChainBroken",
    "DecodeError",
    "EncodingError",
    "FieldError",
    "KnowledgeInvalid",
    "LimitExceeded",
    "PolicyInvalid",
    "ProtocolError",
    "RulesInvalid",
    "ValidationFailed",
    "VoucherBadSignature",
    "VoucherError",
    "VoucherExpired",
    "VoucherMalformed",
    "VoucherNotYetValid",
    "VoucherReplayed",
    "VoucherUnknownIssuer",
    "VoucherUnsupportedVersion",
    "error_body",
]


class ProtocolError(Exception):
    """Root of every error the protocol package raises."""

    code: str = "protocol_error"
    http_status: int = 400

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class EncodingError(ProtocolError):
    """A value that has no canonical form (a float, a non-string map key…)."""

    code = "encoding_unsupported"


class DecodeError(ProtocolError):
    """Bytes that are not well-formed canonical msgpack of the expected shape."""

    code = "decode_malformed"


class LimitExceeded(DecodeError):
    """Input over a size, length or nesting limit; refused before it is parsed further."""

    code = "decode_limit_exceeded"
    http_status = 413


class FieldError(ProtocolError):
    """One field of a record is wrong; ``details`` names it."""

    code = "field_invalid"


class ValidationFailed(ProtocolError):
    """A record fails validation; ``details`` lists every field-level problem found."""

    code = "validation_failed"


class ChainBroken(ProtocolError):
    """Records do not continue the per-agent hash chain (gap, reorder, or tampering)."""

    code = "chain_broken"
    http_status = 422


class BadSignature(ProtocolError):
    """A batch signature does not verify with the agent's registered key."""

    code = "signature_invalid"
    http_status = 422


class BatchRefused(ProtocolError):
    """A batch that is well-formed but cannot be accepted (unknown or revoked agent…)."""

    code = "batch_refused"
    http_status = 403


class CardDataInvalid(ProtocolError):
    """The card's files do not follow the social-security card layout (damaged or foreign card)."""

    code = "card_data_invalid"
    http_status = 422


class VoucherError(ProtocolError):
    """An e-voucher (QR) refused at the desk; the subclass says why, the message what the cashier does.

    Messages never contain the person number or anything else read from the voucher's claims,
    only the issuer key id and times, which are not personal data.
    """

    code = "evoucher_invalid"
    http_status = 422


class VoucherMalformed(VoucherError):
    """Scanned text that is not an e-voucher at all: garbage, bad base64, bad msgpack, wrong fields."""

    code = "evoucher_malformed"


class VoucherUnsupportedVersion(VoucherMalformed):
    """An e-voucher of a format version this software does not read (a newer issuer app?)."""

    code = "evoucher_unsupported_version"


class VoucherBadSignature(VoucherError):
    """The signature does not verify with the named issuer's key: altered or counterfeit."""

    code = "evoucher_bad_signature"


class VoucherUnknownIssuer(VoucherError):
    """Signed by an issuer key id this agent does not trust (or no issuer keys configured)."""

    code = "evoucher_unknown_issuer"


class VoucherExpired(VoucherError):
    """Past its expiry time (beyond the clock-skew allowance)."""

    code = "evoucher_expired"


class VoucherNotYetValid(VoucherError):
    """Issued later than now beyond the clock-skew allowance: one of the two clocks is wrong."""

    code = "evoucher_not_yet_valid"


class VoucherReplayed(VoucherError):
    """A voucher whose nonce has been used before: each shown code identifies a person once."""

    code = "evoucher_replayed"


class BundleInvalid(ProtocolError):
    """A policy bundle file or its metadata does not follow the bundle format."""

    code = "bundle_invalid"
    http_status = 422


def error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict:
    """The one shape of an error on the wire, for errors raised outside this package too."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return {"error": body}


class PolicyInvalid(ProtocolError):
    """A ``policy`` document (benefit parameters) that does not validate.

    ``details`` lists every problem as ``{"field": "benefits[2].segments[1].fund_ratio", "message": …}``;
    ``problems`` has them as ``"field: message"`` lines, the form the centre's ``DocumentInvalid`` takes.
    """

    code = "policy_invalid"
    http_status = 422

    @property
    def problems(self) -> list[str]:
        return [f"{d['field']}: {d['message']}" if d["field"] else d["message"] for d in self.details]


class BenefitNotFound(ProtocolError):
    """The policy has no benefit row for the bill's year, insurance type, person type, hospital level and
    medical type (nor a row for every medical type), so the fund share cannot be computed."""

    code = "benefit_not_found"
    http_status = 422


class RulesInvalid(ProtocolError):
    """A rules document (or a rule given in code) does not follow the rule format of docs/RULES.md.

    ``problems`` lists every problem as ``"path: message"`` (``rules[3].params.window_days: …``);
    ``details`` carries the same as ``{"field", "message"}`` maps.
    """

    code = "rules_invalid"
    http_status = 422

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        details = []
        for text in self.problems:
            field, sep, rest = text.partition(": ")
            details.append({"field": field, "message": rest} if sep else {"field": "", "message": text})
        super().__init__(message, details=details)


class KnowledgeInvalid(RulesInvalid):
    """A catalogue (knowledge base) document does not follow the import format of docs/RULES.md."""

    code = "knowledge_invalid"
