"""The console's own refusals (the library's ``CentralError`` family; codes stable like the API's)."""

from __future__ import annotations

from central.errors import CentralError

__all__ = ["CsrfRefused", "OriginRefused"]


class CsrfRefused(CentralError):
    """A console form was posted without this session's CSRF token (a forged or stale form)."""

    code = "csrf_invalid"
    http_status = 403


class OriginRefused(CentralError):
    """A console form was posted from a page of another site (its ``Origin`` is not this server)."""

    code = "origin_forbidden"
    http_status = 403
