"""The collector's one exception family.

Every refusal ``central`` raises is a ``CentralError`` with a stable ``code`` (agents and
operators' scripts branch on it) and the ``http_status`` the API answers with. Messages
say what the operator or agent should do next and never carry personal data.

Protocol errors (``protocol.errors``) are translated at the edge of ``central.intake.ingest`` by
``from_protocol`` so callers only ever catch ``CentralError``.
"""

from __future__ import annotations

from protocol.errors import BadSignature, ChainBroken, LimitExceeded, ProtocolError

__all__ = [
    "AgentMismatch",
    "AgentRevoked",
    "AgentUnknown",
    "AreaForbidden",
    "AreaRequired",
    "BlacklistEntryUnknown",
    "CardEntryUnknown",
    "CaseAreaMismatch",
    "CentralError",
    "CertificateInvalid",
    "ChainConflict",
    "ChainInvalid",
    "ChangeBaseMoved",
    "ChangeDigestMismatch",
    "ChangeState",
    "ClientCertRequired",
    "ConfigInvalid",
    "DeclarationInvalid",
    "DocumentInvalid",
    "HomeNotInitialised",
    "ImportInvalid",
    "InternalError",
    "LimitExceededError",
    "MalformedRequest",
    "MonitorInputInvalid",
    "NotFound",
    "OperatorDisabled",
    "OperatorExists",
    "OperatorTokenInvalid",
    "OperatorTokenRequired",
    "OperatorUnknown",
    "ProtocolUnsupported",
    "RequestStale",
    "RequestUnsigned",
    "RoleForbidden",
    "RootRotationRefused",
    "SchemaTooNew",
    "SelfApproval",
    "SignatureInvalid",
    "SigningRefused",
    "TokenExpired",
    "TokenInvalid",
    "TokenUsed",
    "UnsupportedMediaType",
    "WorkflowState",
    "from_protocol",
]


class CentralError(Exception):
    """Root of every error the collector raises on purpose."""

    code: str = "central_error"
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class InternalError(CentralError):
    """A fault of the centre itself (a bug or a damaged database), never of the request."""

    code = "internal_error"


class ConfigInvalid(CentralError):
    code = "config_invalid"


class HomeNotInitialised(CentralError):
    code = "home_not_initialised"


class SchemaTooNew(CentralError):
    code = "schema_too_new"


class MalformedRequest(CentralError):
    code = "decode_malformed"
    http_status = 400


class LimitExceededError(CentralError):
    code = "decode_limit_exceeded"
    http_status = 413


class UnsupportedMediaType(CentralError):
    code = "content_type_unsupported"
    http_status = 415


class ProtocolUnsupported(CentralError):
    code = "protocol_unsupported"
    http_status = 400


class TokenInvalid(CentralError):
    code = "token_invalid"
    http_status = 401


class TokenExpired(CentralError):
    code = "token_expired"
    http_status = 401


class TokenUsed(CentralError):
    code = "token_used"
    http_status = 401


class AgentUnknown(CentralError):
    code = "agent_unknown"
    http_status = 403


class AgentRevoked(CentralError):
    code = "agent_revoked"
    http_status = 403


class ClientCertRequired(CentralError):
    """An agent route reached without a client certificate from the centre's CA (mutual TLS)."""

    code = "client_cert_required"
    http_status = 401


class AgentMismatch(CentralError):
    """A signed message names another agent than the client certificate it came with."""

    code = "agent_mismatch"
    http_status = 403


class CertificateInvalid(CentralError):
    """A CSR, certificate or key an operator or agent handed in that cannot be used."""

    code = "certificate_invalid"
    http_status = 400


class SignatureInvalid(CentralError):
    code = "signature_invalid"
    http_status = 422


class ChainInvalid(CentralError):
    code = "chain_broken"
    http_status = 422


class ChainConflict(CentralError):
    """The agent signed a different record for a seq the centre already holds (a forked chain)."""

    code = "chain_conflict"
    http_status = 409


class RequestUnsigned(CentralError):
    """A read of personal data without the agent's signed headers (``protocol.wire.sign_request``)."""

    code = "request_unsigned"
    http_status = 401


class RequestStale(CentralError):
    """A signed request whose time is further from the centre's clock than ``REQUEST_SKEW_S``."""

    code = "request_stale"
    http_status = 401


class NotFound(CentralError):
    code = "not_found"
    http_status = 404


class SigningRefused(CentralError):
    """The operator keys given cannot sign what was asked (unknown key, too few for the threshold)."""

    code = "signing_refused"


class RootRotationRefused(CentralError):
    """A new root that would not verify: fewer than the threshold of old or new keys signed it."""

    code = "root_rotation_refused"


class AreaRequired(CentralError):
    code = "area_required"


class BlacklistEntryUnknown(CentralError):
    code = "blacklist_entry_unknown"


class CardEntryUnknown(CentralError):
    """A withdrawal of a card correction or notice the area does not hold; nothing was published."""

    code = "card_entry_unknown"
    http_status = 404


class DocumentInvalid(CentralError):
    """An operator's input file (JSON document or CSV) that does not validate; nothing was published.

    ``problems`` names every problem found, each with its place (``benefits[2].fund_ratio``,
    ``line 14, column effective_at``).
    """

    code = "document_invalid"
    http_status = 400
    MAX_SHOWN = 50

    def __init__(self, what: str, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[: self.MAX_SHOWN]
        more = len(problems) - len(shown)
        lines = [f"{what} is not valid ({len(problems)} problem{'s' if len(problems) != 1 else ''}); "
                 "nothing was published:"]  # fmt: skip
        lines += [f"  - {p}" for p in shown]
        if more:
            lines.append(f"  … and {more} more")
        super().__init__("\n".join(lines))


# -- monitoring: operators and the review workflow (central.operators, central.monitoring.review)
# ----------------


class OperatorUnknown(CentralError):
    """An operator name (an assignee, `operators areas NAME`) names no registered operator."""

    code = "operator_unknown"
    http_status = 403


class OperatorDisabled(CentralError):
    code = "operator_disabled"
    http_status = 403


class OperatorExists(CentralError):
    code = "operator_exists"
    http_status = 409


class OperatorTokenInvalid(CentralError):
    """No ``Authorization: Bearer`` token, or one that is unknown or belongs to a disabled operator."""

    code = "operator_token_invalid"
    http_status = 401


class AreaForbidden(CentralError):
    """An operator named a pooling area (a filter, an assignee, a decision's target) outside their own.

    Ids of another area's suspicions, cases and decisions are answered as ``NotFound``, exactly like
    ids that do not exist, so the answer never tells an operator what other areas hold.
    """

    code = "area_forbidden"
    http_status = 403


class RoleForbidden(CentralError):
    """The operator's roles do not allow the verb (a reviewer's decision, a policy change by an admin…)."""

    code = "role_forbidden"
    http_status = 403


class WorkflowState(CentralError):
    """The suspicion or case is not in a state that allows the action (reviewed twice, closed case…)."""

    code = "workflow_state"
    http_status = 409


class CaseAreaMismatch(CentralError):
    """A case gathers the suspicions of one pooling area; these span several."""

    code = "case_area_mismatch"
    http_status = 409


class MonitorInputInvalid(CentralError):
    """A review, case or decision input that does not validate (no reason, an amount with 3 decimals…)."""

    code = "input_invalid"
    http_status = 400


class DeclarationInvalid(CentralError):
    """A hospital's declaration that does not validate (a field named) or names an unknown hospital."""

    code = "declaration_invalid"
    http_status = 400


class ImportInvalid(CentralError):
    """A bulk import that cannot start or go on (an unreadable file, an unknown column, --strict)."""

    code = "import_invalid"
    http_status = 400


class OperatorTokenRequired(CentralError):
    """A CLI verb that changes policy or monitoring state, run without an operator's token."""

    code = "operator_token_required"
    http_status = 401


# -- maker-checker: policy change requests (central.policy.changes) -----------------------------------------


class ChangeState(CentralError):
    """The change request is no longer pending (published or rejected), or this operator approved it."""

    code = "change_state"
    http_status = 409


class SelfApproval(CentralError):
    """The operator who proposed a change may not approve it: a second operator has to."""

    code = "self_approval_forbidden"
    http_status = 403


class ChangeBaseMoved(CentralError):
    """What the change was proposed against changed since (the entry was replaced or removed, a newer
    document of the same kind was published); approving it would publish something nobody reviewed."""

    code = "change_base_moved"
    http_status = 409


class ChangeDigestMismatch(CentralError):
    """``changes approve --digest`` names another content than the change request holds."""

    code = "change_digest_mismatch"
    http_status = 409


def from_protocol(exc: ProtocolError) -> CentralError:
    """The central error that stands for a protocol refusal, keeping its wire code."""
    if isinstance(exc, BadSignature):
        return SignatureInvalid(exc.message)
    if isinstance(exc, ChainBroken):
        return ChainInvalid(exc.message)
    if isinstance(exc, LimitExceeded):
        return LimitExceededError(exc.message)
    return MalformedRequest(exc.message)
