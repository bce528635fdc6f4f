"""The desk pages' own refusals: part of the agent's ``AgentError`` family, codes stable like the API's."""

from __future__ import annotations

from agent.errors import AgentError

__all__ = [
    "BillNotFound",
    "CsrfRefused",
    "OriginRefused",
    "OverrideInvalid",
    "PatientMismatch",
    "SignInRefused",
]


class CsrfRefused(AgentError):
    """A desk form was posted without this session's CSRF token (a forged or stale form)."""

    code = "csrf_invalid"
    http_status = 403


class OriginRefused(AgentError):
    """A desk form was posted from a page of another origin than the agent's own."""

    code = "origin_forbidden"
    http_status = 403


class SignInRefused(AgentError):
    """The desk sign-in needs a person's own token: the HIS system token names no one."""

    code = "desk_sign_in_refused"
    http_status = 401


class BillNotFound(AgentError):
    """No pending bill with this id (never posted, settled long ago, or the agent restarted)."""

    code = "desk_bill_not_found"
    http_status = 404


class PatientMismatch(AgentError):
    """The card or voucher read belongs to another person than the one the HIS's bill names."""

    code = "desk_patient_mismatch"
    http_status = 409


class OverrideInvalid(AgentError):
    """An override without a reason, or of a prompt that was not shown or allows none."""

    code = "desk_override_invalid"
    http_status = 400
