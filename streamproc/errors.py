"""One error hierarchy for streamproc.

Classes carry their data (``status``, ``retry_after``) and a class-level ``retriable``
flag, as ``aiokafka.errors`` does: retry loops read the flag instead of re-deciding from
status codes in many places.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


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
    """Input that cannot be decoded; ``field`` names where, ``reason`` says why.

    ``code`` is a short, fixed word for metrics labels (``invalid``, ``not_json``,
    ``too_deep``, ``too_large``, or a check's own name); never peer text.
    """

    def __init__(self, field: str, reason: str, *, code: str = "invalid") -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.code = code


class HttpError(StreamprocError):
    """An HTTP answer from an outside API that is not a success."""

    def __init__(self, status: int, body: str = "", retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {peer_text(body)}")
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


class Unavailable(StreamprocError):
    """A service the process needs (Kafka at start-up) did not answer within its bound:
    the process exits 1 for its orchestrator to restart it."""


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


_DELTA_SECONDS = re.compile(r"^\d{1,10}(?:\.\d{1,6})?$")


def parse_retry_after(value: str | None, *, now_s: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110), else None.

    Strict: delta-seconds (digits, a fraction tolerated) or an HTTP date (seconds from
    ``now_s``, 0 if past). Anything else (negative, ``inf``, ``1e999``, words) is None, so
    the caller backs off as if no header came. The caller caps the value it gets.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.match(text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = datetime.now(UTC).timestamp() if now_s is None else now_s
    seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


def peer_text(text: str, limit: int = 300) -> str:
    """Text a peer sent, fit for one log line: cut to ``limit`` characters, then escaped.

    Line breaks, control and non-ASCII characters come out as Python escapes, so a peer
    cannot forge log lines or hide text in terminal controls.
    """
    escaped = text[:limit].encode("unicode_escape").decode("ascii")
    return escaped + ("..." if len(text) > limit else "")
