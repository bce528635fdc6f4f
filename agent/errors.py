"""The agent's exception hierarchy.

Every error the HIS or an operator can see has a stable ``code`` (HIS software branches on
it), an HTTP status, and a message that says what to do next. Messages never carry
personal data: no ID numbers, no names, not even the ``psn_no``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AgentError",
    "Blacklisted",
    "BodyTooLarge",
    "BundleBaseMismatch",
    "BundleHeaderMismatch",
    "BundleInvalid",
    "BundleNotNewer",
    "BundleUnavailable",
    "BundleWrongArea",
    "BundleWrongKind",
    "CardReplaced",
    "CentralUnreachable",
    "ChainDiverged",
    "ConfigError",
    "DiskNearlyFull",
    "EnrolFailed",
    "HisSetlNoConflict",
    "NotFound",
    "OutboxFull",
    "OverrideDoctorMismatch",
    "OverrideNeedsDoctor",
    "PolicyError",
    "PolicyNotConfigured",
    "PolicyRefused",
    "PolicyStoreFailed",
    "PolicyUnreachable",
    "ResyncPending",
    "RoleForbidden",
    "StoreError",
    "TokenDisabled",
    "TufExpired",
    "TufRepositoryInvalid",
    "TufRollback",
    "TufRootRotationRefused",
    "TufSignatureInvalid",
    "TufTargetMismatch",
    "Unauthorized",
    "UserInvalid",
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


class TokenDisabled(Unauthorized):
    """A user's token that was valid and has been disabled (``yibao-agent users disable``)."""

    code = "token_disabled"


class RoleForbidden(AgentError):
    """A signed-in user asking for what their role does not do (a cashier reading medication history)."""

    code = "role_forbidden"
    http_status = 403


class UserInvalid(AgentError):
    """``yibao-agent users …`` input that cannot be used: nothing was changed."""

    code = "user_invalid"
    http_status = 400


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


class ResyncPending(StoreError):
    """The agent was restored from a backup and first takes back from the centre what it made after
    the backup; settling before that would fork its chain. Retry in a moment (``agent.resync``)."""

    code = "resync_pending"


class ChainDiverged(StoreError):
    """What the centre sent back does not continue this agent's chain: the outbox was changed by hand
    or the centre holds another agent's records under this id."""

    code = "chain_diverged"


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
    #: The refused card's identification code when the read got that far (``agent.cardlog`` chains an
    #: ``auth_failed`` log with it); never part of the message or the answer.
    card_sn: str | None = None


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


# ---- policy bundles (blacklists, rules, policy, catalogue, keys) ----------------------------
# Operator-facing: shown in ``GET /v1/status`` → ``policy.problems``, in ``yibao-agent policy status``,
# in the log and (codes only) in the signed report to the centre. Messages name roles, versions,
# kinds and sequences, never an entry of a list.


class PolicyError(AgentError):
    """Updating the policy bundles failed; the agent keeps enforcing the last verified bundles."""

    code = "policy_error"
    http_status = 502

    def __init__(self, message: str, *, kind: str | None = None, **extra: Any) -> None:
        super().__init__(message, **extra)
        #: The bundle kind concerned, when one is (``blacklist``, ``rules``…).
        self.kind = kind


class PolicyNotConfigured(PolicyError):
    """No pinned TUF root (an agent enrolled before policy bundles existed) or no pooling area."""

    code = "policy_not_configured"
    http_status = 503


class PolicyUnreachable(PolicyError):
    """The repository could not be read (network down, centre down, a file missing from an export)."""

    code = "policy_unreachable"


class PolicyStoreFailed(PolicyError, StoreError):
    """``policy.db`` cannot be read or written (disk full or failing)."""

    code = "policy_store_failed"
    http_status = 503


class PolicyRefused(PolicyError):
    """Metadata or a bundle that failed a check: refused, the last good state is kept.

    Subclasses are the refusals TUF makes (signatures, versions, expiry, hashes) and the ones the
    agent adds on top (kind, area, sequence, base of a delta).
    """

    code = "policy_refused"
    http_status = 422


class TufSignatureInvalid(PolicyRefused):
    """Metadata not signed by a threshold of the keys the trusted root names (bad or unknown key)."""

    code = "tuf_signature_invalid"


class TufRootRotationRefused(TufSignatureInvalid):
    """A new root not signed by a threshold of the old root's keys and of its own."""

    code = "tuf_root_rotation_refused"


class TufRollback(PolicyRefused):
    """A metadata version older than one already trusted, or versions that do not match (mix-and-match)."""

    code = "tuf_rollback"


class TufExpired(PolicyRefused):
    """Metadata past its expiry (a freeze: someone replays old metadata, or the centre stopped signing)."""

    code = "tuf_expired"


class TufTargetMismatch(PolicyRefused):
    """A bundle file whose length or hash is not what the signed metadata says."""

    code = "tuf_target_mismatch"


class TufRepositoryInvalid(PolicyRefused):
    """Metadata that does not parse or verify in another way."""

    code = "tuf_repository_invalid"


class BundleInvalid(PolicyRefused):
    """A bundle file or its target metadata that does not follow the bundle format."""

    code = "bundle_invalid"


class BundleHeaderMismatch(PolicyRefused):
    """The header inside the file is not what the signed target metadata says (seq, created, name)."""

    code = "bundle_header_mismatch"


class BundleWrongKind(BundleHeaderMismatch):
    code = "bundle_wrong_kind"


class BundleWrongArea(BundleHeaderMismatch):
    code = "bundle_wrong_area"


class BundleBaseMismatch(PolicyRefused):
    """A delta whose base is not the sequence this agent holds."""

    code = "bundle_base_mismatch"


class BundleNotNewer(PolicyRefused):
    """A bundle whose sequence is not newer than the one this agent holds (a rollback of the list)."""

    code = "bundle_not_newer"


class BundleUnavailable(PolicyRefused):
    """The metadata lists no way from the held sequence to the newest (no delta chain, no newer full)."""

    code = "bundle_unavailable"


# ---- at the desk: blacklists ------------------------------------------------------------------


class Blacklisted(AgentError):
    """A card, person or employer on the blacklist: refused before anything is written.

    ``extra`` carries ``list_type``, ``reason``, ``list_version`` and ``action`` (what the cashier
    does); never the number that matched.
    """

    code = "blacklisted"
    http_status = 403


class CardReplaced(AgentError):
    """A card the card office replaced (the held ``cards`` bundle names its successor): refused before
    anything is written, since the old card may be in the wrong hands and its data is no longer kept.

    ``extra`` carries ``new_card_sn`` (what the cashier asks the patient for), ``reason``, ``bundle_seq``
    and ``action``; never the person's name or ID number.
    """

    code = "card_replaced"
    http_status = 403


# ---- at the desk: doctors' overrides -----------------------------------------------------------


class OverrideNeedsDoctor(AgentError):
    """Overrides on a request not made with a doctor's own token (the HIS token, a cashier's, a file).

    An override is the doctor's decision, reviewed per doctor at the centre: only the doctor's own
    sign-in proves who made it. Refused before anything is checked or written.
    """

    code = "override_needs_doctor"
    http_status = 403


class OverrideDoctorMismatch(AgentError):
    """An override whose ``dr_codg`` is not the signed-in doctor's: nobody overrides in another's name."""

    code = "override_doctor_mismatch"
    http_status = 403
