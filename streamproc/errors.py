"""One error hierarchy for streamproc.

Classes carry their data (``status``, ``retry_after``) and a class-level ``retriable``
flag, as ``aiokafka.errors`` does: retry loops read the flag instead of re-deciding from
status codes in many places.
"""

from __future__ import annotations


class StreamprocError(Exception):
    """Base of every error streamproc raises on purpose."""

    retriable: bool = False


class ConfigError(StreamprocError):
    """Invalid configuration; the message names the setting and the reason."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"invalid setting {setting}: {reason}")
        self.setting = setting
        self.reason = reason


class DecodeError(StreamprocError):
    """Input that cannot be decoded; ``field`` names where, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class HttpError(StreamprocError):
    """An HTTP answer from an outside API that is not a success."""

    def __init__(self, status: int, body: str = "", retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body
        self.retry_after = retry_after


class RateLimited(HttpError):
    """429: wait ``retry_after`` seconds (or back off) and slow down."""

    retriable = True


class ServerError(HttpError):
    """5xx: the service is unwell; back off and retry, drop nothing."""

    retriable = True


class AuthError(HttpError):
    """401/403: credentials are wrong; retrying soon will not help, a human must act."""


class BadRequest(HttpError):
    """400 and other 4xx: the request itself is wrong; retrying it unchanged will not help."""


class TransportError(StreamprocError):
    """Timeouts, refused or reset connections: retriable with backoff."""

    retriable = True


def http_error(status: int, body: str = "", retry_after: float | None = None) -> HttpError:
    """The error class that matches an HTTP status."""
    cls: type[HttpError]
    if status == 429:
        cls = RateLimited
    elif status >= 500:
        cls = ServerError
    elif status in (401, 403):
        cls = AuthError
    else:
        cls = BadRequest
    return cls(status, body, retry_after)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header in its delta-seconds form, else None."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
