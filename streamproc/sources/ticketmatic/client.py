"""One eventstream request: ``GET {base_url}/api/1/{account}/eventstream``.

The answer is decoded once, here, into :class:`EventstreamPage` with each item kept as raw
JSON so that one bad item can be isolated later. Everything that is not a decoded page
becomes an error of ``streamproc.errors`` whose ``retriable`` flag tells the poller what to
do: :class:`RateLimited` (429, with ``retry_after``), :class:`ServerError` (5xx),
:class:`AuthError` (401/403), :class:`BadRequest` (other 4xx), :class:`TransportError`
(timeouts, refused or reset connections) and :class:`DecodeError` (a 200 whose body is not
a page: not JSON, missing keys, wrong types).
"""

from __future__ import annotations

from urllib.parse import quote

import aiohttp
import msgspec

from streamproc.config import TicketmaticAccount
from streamproc.errors import DecodeError, TransportError, http_error, parse_retry_after
from streamproc.lifecycle import Service
from streamproc.sources.ticketmatic import auth
from streamproc.sources.ticketmatic.cursor import position_key
from streamproc.sources.ticketmatic.items import EventstreamPage

_PAGE_DECODER = msgspec.json.Decoder(EventstreamPage)
USER_AGENT = "streamproc-poller"


def decode_page(body: bytes) -> EventstreamPage:
    """A page from the body of a 200; DecodeError naming the field and the reason."""
    try:
        page = _PAGE_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = message.rsplit("at `$.", 1)[-1].rstrip("`") if "at `$." in message else "page"
        raise DecodeError(field, message.split(" - at ")[0]) from None
    except msgspec.DecodeError as exc:
        raise DecodeError("page", f"not JSON: {exc}") from None
    try:
        # The cursor moves to nextid: one that is not a position would stall the poller
        # silently, asking for the same page forever.
        position_key(page.nextid)
    except ValueError as exc:
        raise DecodeError("nextid", str(exc)) from None
    return page


class EventstreamClient(Service):
    """Fetches eventstream pages over one kept-alive aiohttp session.

    ``start()``/``stop()`` are idempotent; ``async with`` works too. Requests carry a
    freshly signed ``Authorization`` header; no header or secret is ever logged.
    """

    def __init__(self, base_url: str, *, timeout_s: float = 30.0, user_agent: str = USER_AGENT):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
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
                body = await response.read()
                if response.status != 200:
                    raise http_error(
                        response.status,
                        body.decode("utf-8", "replace"),
                        parse_retry_after(response.headers.get("Retry-After")),
                    )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # aiohttp's messages name the host and port, never the request headers.
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        return decode_page(body)
