"""What an upstream exchange can end in besides a usable answer.

Messages carry the route template, never filled-in ids.
"""

from __future__ import annotations


class UpstreamError(Exception):
    """A request that did not produce a usable answer (after retries, where retrying made sense).

    ``route`` is the route template; messages never contain filled-in ids.
    """

    def __init__(self, message: str, *, route: str, status: str, code: int | None = None):
        super().__init__(message)
        self.route = route
        self.status = status
        self.code = code


class UpstreamStatusError(UpstreamError):
    """The upstream answered with a non-success HTTP status.

    ``code`` is the error code of the body (Finicity ``{code, message}``), ``message`` the
    message of either provider's error shape (MX ``{error: …}``), both None when absent.
    """

    def __init__(self, route: str, http_status: int, code: int | None, message: str | None):
        detail = f" (code {code}: {message})" if code is not None else ""
        super().__init__(f"{route} answered HTTP {http_status}{detail}",
                         route=route, status=str(http_status), code=code)
        self.http_status = http_status
        self.message = message


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached or did not answer in time."""


class MalformedResponse(UpstreamError):
    """The upstream answered 2xx with a body that is not the JSON we expect."""
