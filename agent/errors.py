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
