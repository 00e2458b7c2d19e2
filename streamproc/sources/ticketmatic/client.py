"""One eventstream request: ``GET {base_url}/api/1/{account}/eventstream``.

The answer is decoded once, here, into :class:`EventstreamPage` with each item kept as raw
JSON so that one bad item can be isolated later. Everything that is not a decoded page
becomes an error of ``streamproc.errors`` whose ``retriable`` flag tells the poller what to
do: :class:`RateLimited` (429, with ``retry_after``), :class:`ServerError` (5xx),
:class:`AuthError` (401/403), :class:`BadRequest` (other 4xx), :class:`TransportError`
(timeouts, refused or reset connections) and :class:`DecodeError` (a 200 whose body is not
a page: not JSON, nested too deep, larger than ``max_bytes``, missing keys, wrong types).

Every read is bounded: the whole request by ``timeout_s`` (a peer that drips its answer
byte by byte times out), a page by ``max_bytes`` (refused from its Content-Length, or as
soon as more arrives), an error answer by :data:`MAX_ERROR_BYTES`.
"""

from __future__ import annotations

from urllib.parse import quote

import aiohttp
import msgspec

from streamproc.config import TicketmaticAccount
from streamproc.decoding import decode_json
from streamproc.errors import DecodeError, TransportError, http_error, parse_retry_after
from streamproc.formats.ticketmatic import EventstreamPage, position_key
from streamproc.lifecycle import Service
from streamproc.sources.ticketmatic import auth

_PAGE_DECODER = msgspec.json.Decoder(EventstreamPage)
USER_AGENT = "streamproc-poller"
# 1000 items of a few hundred bytes to a few KB each: 16 MiB leaves room for big orders.
MAX_PAGE_BYTES = 16 * 1024 * 1024
MAX_ERROR_BYTES = 64 * 1024  # enough for Ticketmatic's error JSON; only 300 chars are logged
_CHUNK = 256 * 1024


def decode_page(body: bytes) -> EventstreamPage:
    """A page from the body of a 200; DecodeError naming the field and the reason."""
    page = decode_json(_PAGE_DECODER, body, "page")
    try:
        # The cursor moves to nextid: one that is not a position would stall the poller
        # silently, asking for the same page forever.
        position_key(page.nextid)
    except ValueError as exc:
        raise DecodeError("nextid", str(exc)) from None
    return page


async def read_at_most(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the body, and whether there was more (then it is not read)."""
    body = bytearray()
    async for chunk in response.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit]), True
    return bytes(body), False


async def read_bounded(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The body of ``response``, or DecodeError (code ``too_large``) past ``max_bytes``.

    A Content-Length over the limit is refused before reading; otherwise the body is read
    in chunks and refused as soon as it passes the limit, so memory stays bounded.
    """
    declared = response.content_length
    if declared is None or declared <= max_bytes:
        body, more = await read_at_most(response, max_bytes)
        if not more:
            return body
    raise DecodeError("page", f"answer over the {max_bytes} byte limit", code="too_large")


class EventstreamClient(Service):
    """Fetches eventstream pages over one kept-alive aiohttp session.

    ``start()``/``stop()`` are idempotent; ``async with`` works too. Requests carry a
    freshly signed ``Authorization`` header; no header or secret is ever logged.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 30.0,
        max_bytes: int = MAX_PAGE_BYTES,
        user_agent: str = USER_AGENT,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={"User-Agent": self.user_agent, "Accept": "application/json"},
            )

    async def stop(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def url(self, account: str) -> str:
        return f"{self.base_url}/api/1/{quote(account, safe='')}/eventstream"

    async def fetch(self, account: TicketmaticAccount, params: dict[str, str]) -> EventstreamPage:
        """One page for ``account`` with query ``params`` (``id`` or ``ts``, ``eventtypes``).

        Raises the ``streamproc.errors`` class matching the failure (see the module doc).
        """
        if self._session is None:
            await self.start()
        assert self._session is not None  # noqa: S101 -- set by start() just above
        headers = {"Authorization": auth.authorization(account)}
        try:
            async with self._session.get(
                self.url(account.name), params=params, headers=headers
            ) as response:
                if response.status != 200:
                    text, _ = await read_at_most(response, MAX_ERROR_BYTES)
                    raise http_error(
                        response.status,
                        text.decode("utf-8", "replace"),
                        parse_retry_after(response.headers.get("Retry-After")),
                    )
                body = await read_bounded(response, self.max_bytes)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # aiohttp's messages name the host and port, never the request headers.
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        return decode_page(body)
