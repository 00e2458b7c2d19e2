"""HTTP client for mParticle's bulk endpoint: one POST, its answer as a value or an error.

Connections are kept alive and shared by the requests in flight. Every answer other than
a 2xx is raised as the matching class of :mod:`streamproc.errors` (RateLimited,
ServerError, AuthError, BadRequest), timeouts and connection failures as TransportError;
the caller decides about retries from the error's ``retriable`` flag and type.
"""

from __future__ import annotations

import base64
import time

import aiohttp
import msgspec

from streamproc import metrics
from streamproc.errors import TransportError, http_error, parse_retry_after
from streamproc.lifecycle import Service
from streamproc.redact import mask_url

BULK_PATH = "/v2/bulkevents"
H_PERCENT_USED = "X-mp-rate-limit-percentage-used"


class Accepted(msgspec.Struct, frozen=True):
    """A 2xx answer; ``percent_used`` is mParticle's rate-limit header, if it sent one."""

    status: int
    percent_used: float | None


def status_class(status: int) -> str:
    """The ``status_class`` label of DL_REQUESTS."""
    if status == 429:
        return "429"
    return f"{status // 100}xx"


class MParticleClient(Service):
    """POSTs bulk request bodies to ``{base_url}/v2/bulkevents`` with HTTP basic auth.

    ``start``/``stop`` are idempotent. The credentials live only in the prepared
    Authorization header; neither they nor the header appear in errors or logs.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        api_secret: str,
        *,
        timeout_s: float = 30.0,
        max_connections: int = 8,
        keepalive_s: float = 60.0,
    ) -> None:
        self.url = base_url.rstrip("/") + BULK_PATH
        token = base64.b64encode(f"{api_key}:{api_secret}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"MParticleClient({mask_url(self.url)!r})"

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self.max_connections, keepalive_timeout=self.keepalive_s
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers=self._headers,
        )

    async def stop(self) -> None:
        if self._session is None:
            return
        session, self._session = self._session, None
        await session.close()

    async def post_bulk(self, body: bytes) -> Accepted:
        """POST one bulk request; return the 2xx answer or raise the matching error."""
        if self._session is None:
            raise RuntimeError("MParticleClient.post_bulk before start()")
        started = time.perf_counter()
        try:
            async with self._session.post(self.url, data=body) as response:
                text = await response.text(errors="replace")
                status = response.status
                headers = response.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            metrics.DL_REQUESTS.labels("error").inc()
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        finally:
            metrics.DL_LATENCY.observe(time.perf_counter() - started)
        metrics.DL_REQUESTS.labels(status_class(status)).inc()
        if 200 <= status < 300:
            return Accepted(status, _percent(headers.get(H_PERCENT_USED)))
        raise http_error(status, text, parse_retry_after(headers.get("Retry-After")))


def _percent(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value.strip().rstrip("%"))
    except ValueError:
        return None
