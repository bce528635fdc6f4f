"""The agent's exception hierarchy.

Every error the HIS or an operator can see has a stable ``code`` (HIS software branches on
it), an HTTP status, and a message that says what to do next. Messages never carry
personal data: no ID numbers, no names, not even the ``psn_no``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AgentError",
    "BodyTooLarge",
    "CentralUnreachable",
    "ConfigError",
    "DiskNearlyFull",
    "EnrolFailed",
    "HisSetlNoConflict",
    "NotFound",
    "OutboxFull",
    "StoreError",
    "Unauthorized",
    "VoucherLedgerFailed",
    "VoucherRejected",
]


class AgentError(Exception):
    code = "agent_error"
    http_status = 500

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.extra = extra

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        body.update(self.extra)
        return {"error": body}


class ConfigError(AgentError):
    code = "config_invalid"


class Unauthorized(AgentError):
    code = "unauthorized"
    http_status = 401


class BodyTooLarge(AgentError):
    code = "body_too_large"
    http_status = 413


class NotFound(AgentError):
    code = "not_found"
    http_status = 404


class HisSetlNoConflict(AgentError):
    """The same ``his_setl_no`` came back with different content: a HIS bug, never a 2nd settlement."""

    code = "his_setl_no_conflict"
    http_status = 409


class StoreError(AgentError):
    code = "store_failed"
    http_status = 503


class OutboxFull(StoreError):
    code = "outbox_full"


class DiskNearlyFull(StoreError):
    code = "disk_nearly_full"


class EnrolFailed(AgentError):
    code = "enrol_failed"


class CentralUnreachable(AgentError):
    code = "central_unreachable"
    http_status = 502


# ---- at the desk: the card reader --------------------------------------------------------
# Each says what the cashier does next; none carries the card's contents.


class CardError(AgentError):
    """Identifying a person by social-security card failed."""

    code = "card_error"
    http_status = 422


class CardServiceDown(CardError):
    code = "card_service_down"
    http_status = 503


class NoReader(CardError):
    code = "no_reader"
    http_status = 503


class NoCard(CardError):
    code = "no_card"
    http_status = 404


class CardRemoved(CardError):
    code = "card_removed"
    http_status = 409


class NotSocialSecurityCard(CardError):
    code = "not_social_security_card"


class CardExpired(CardError):
    code = "card_expired"


class CardCounterfeit(CardError):
    code = "card_auth_failed"


class CardUnreadable(CardError):
    code = "card_unreadable"


class ReaderBusy(CardError):
    code = "reader_busy"
    http_status = 409


class PsamMissing(CardError):
    code = "psam_missing"
    http_status = 503


# ---- at the desk: the e-voucher (QR) --------------------------------------------------------


class VoucherRejected(AgentError):
    """An e-voucher refused; ``code`` is the protocol's (``evoucher_expired``, ``evoucher_replayed``…).

    The protocol error says why and what the cashier does; this carries it to the HIS unchanged
    so HIS software branches on the same codes whichever side refused.
    """

    code = "evoucher_invalid"
    http_status = 422

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message, **extra)
        if code is not None:
            self.code = code

    @classmethod
    def from_protocol(cls, exc: Exception) -> VoucherRejected:
        """Wrap a ``protocol.errors.VoucherError``, keeping its code, message and details."""
        return cls(
            getattr(exc, "message", str(exc)),
            code=getattr(exc, "code", cls.code),
            details=getattr(exc, "details", None),
        )


class VoucherLedgerFailed(StoreError):
    """The local ledger of used e-voucher nonces cannot be read or written (disk full or failing)."""

    code = "evoucher_ledger_failed"
