"""The receiver's answers other than 202, each with the metric reason it is counted under,
and the checks that give them before a body is decoded: credentials, content type, and
the body read itself (within its size and time).

An error answer is mParticle's: ``{"errors": [{"code", "field", "message"}]}``.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

import orjson
from aiohttp import web

from streamproc.sources.ticketure import connections
from streamproc.sources.ticketure.auth import Verdict

T = TypeVar("T")


class Rejected(Exception):
    """An answer other than 202, with the metric reason it is counted under.

    ``close`` ends the connection after the answer (the rest of the request is unread).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        reason: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.reason = reason
        self.field = field
        self.headers = headers or {}
        self.close = close

    def response(self) -> web.Response:
        error: dict[str, str] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        response = web.Response(
            status=self.status,
            body=orjson.dumps({"errors": [error]}),
            content_type="application/json",
            headers=self.headers,
        )
        if self.close:
            response.force_close()
        return response


async def read_body(request: web.BaseRequest, limit: int, timeout_s: float) -> bytes:
    """The body, refused with 413 as soon as it is known to pass ``limit`` bytes, with
    408 (closing the connection) if it takes longer than ``timeout_s``, 400 if its framing
    is broken."""
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    try:
        # The request's client_max_size is the limit: aiohttp stops reading a streamed
        # (chunked) body as soon as it passes it.
        if request.content.is_eof():
            return await request.read()  # all of it came with the head: nothing to wait for
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    except TimeoutError:
        connections.dropped("body_timeout")
        raise Rejected(
            408,
            "REQUEST_TIMEOUT",
            f"the body did not arrive within {timeout_s:g} s",
            "body_timeout",
            field="body",
            close=True,
        ) from None
    except web.RequestPayloadError as exc:  # broken chunked framing, cut compression
        raise Rejected(
            400, "VALIDATION_ERROR", f"body: cannot be read ({exc})", "unreadable", field="body"
        ) from None


def _too_large(limit: int) -> Rejected:
    return Rejected(
        413,
        "PAYLOAD_TOO_LARGE",
        f"the body is larger than {limit} bytes",
        "too_large",
        field="body",
    )


def check_content_type(request: web.BaseRequest) -> None:
    """415 unless the request says its body is JSON."""
    content_type = request.content_type
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise Rejected(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "Content-Type must be application/json",
            "content_type",
            field="Content-Type",
        )


def verdict(found: T | Verdict) -> T:
    """What the check found (a sender, a method, candidates); 401/403 that tell nothing more."""
    if found is Verdict.MISSING:
        raise Rejected(
            401,
            "UNAUTHORIZED",
            "authentication required",
            "unauthenticated",
            headers={"WWW-Authenticate": 'Basic realm="streamproc"'},
        )
    if found is Verdict.INVALID:
        raise Rejected(403, "FORBIDDEN", "credentials not accepted", "forbidden")
    return found
