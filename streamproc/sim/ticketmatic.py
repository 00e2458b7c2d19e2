"""``streamproc sim ticketmatic``: Ticketmatic's eventstream, for any number of accounts.

Faithful to the documented API (../shared/reference/ticketmatic/README.md):
``GET /api/1/{account}/eventstream`` with ``id`` (a minimum: inclusive) or ``ts`` (mutually
exclusive) and ``eventtypes``; answers ``{"results", "nextid", "moreresults"}`` with pages
of up to ``page_size`` items whose ids ``<ms>-<seq>`` ascend; both authentications are
checked (a missing header, a wrong key or signature, or a signature time more than 30
minutes off get 401; another account's valid key gets 403); errors carry Ticketmatic's
JSON shape. Items older than the retention (4 h divided by ``time_scale``) are dropped.
Faults can be injected at random (``p429``, ``p5xx``) or scripted (``fail_next``).

``nextid`` is, as documented, the id to start the next call at: the id just after the
last item looked at (``nextid="after"``, the default), so following it serves no item
twice. ``nextid="last"`` gives the id of that last item instead, so the next page starts
with it again and a consumer must drop what it already has (``id`` is a minimum): a
server that misbehaves within the letter of the API. An empty answer repeats the
requested ``id`` (``"0"`` without one), as the API reference shows.

Use it in-process (``async with TicketmaticSim(...) as sim``, then ``sim.url``,
``sim.generate``, ``sim.add_items``, ``sim.fail_next``, ``sim.stats()``) or as the CLI
command (:mod:`streamproc.sim.ticketmatic_command`). ``GET /_sim/stats`` reports per
account what was generated, kept, dropped and served; ``POST /_sim/generate?account=A&n=N``
and ``POST /_sim/fail?status=S&count=N`` drive it from outside.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiohttp import web

from streamproc.config import RETENTION_4H_S
from streamproc.lifecycle import Service, cancel_and_wait
from streamproc.sim.eventstream import (
    Fault,
    NextId,
    SimAccount,
    Stream,
    check_authorization,
    page_body,
    parse_query,
)
from streamproc.sim.webshop import WebshopSessions

__all__ = ["SimAccount", "TicketmaticSim"]

log = logging.getLogger(__name__)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"code": status, "message": message, "applicationcode": 0, "applicationdata": None}
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


class TicketmaticSim(Service):
    """The simulator as an aiohttp server; ``start``/``stop`` are idempotent.

    ``port=0`` picks a free port (see ``url`` after ``start``). ``rate`` items per second
    per account are generated while it runs; ``latency_s`` delays every answer.
    """

    def __init__(
        self,
        accounts: Iterable[SimAccount],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        page_size: int = 1000,
        rate: float = 0.0,
        seed: int = 0,
        retention_s: float = RETENTION_4H_S,
        time_scale: float = 1.0,
        p429: float = 0.0,
        p5xx: float = 0.0,
        retry_after_s: float = 1.0,
        latency_s: float = 0.0,
        nextid: NextId = "after",
        unknown_fraction: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if page_size < (2 if nextid == "last" else 1):
            # Each page would start with the previous page's only item: no progress.
            raise ValueError('page_size: must be at least 2 with nextid="last"')
        self.host = host
        self.port = port
        self.page_size = page_size
        self.rate = rate
        self.retention_s = retention_s / time_scale
        self.p429 = p429
        self.p5xx = p5xx
        self.retry_after_s = retry_after_s
        self.latency_s = latency_s
        self.nextid: NextId = nextid
        self.clock = clock
        self._rng = random.Random(seed)
        self.streams = {
            a.name: Stream(a, WebshopSessions(seed + i, unknown_fraction=unknown_fraction))
            for i, a in enumerate(accounts)
        }
        self._by_key = {s.account.access_key: s.account for s in self.streams.values()}
        self._runner: web.AppRunner | None = None
        self._generator: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to configure as ``ticketmatic.base_url``."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/api/1/{account}/eventstream", self._eventstream)
        app.router.add_get("/_sim/stats", self._stats)
        app.router.add_post("/_sim/generate", self._generate)
        app.router.add_post("/_sim/fail", self._fail)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]
        if self.rate > 0:
            self._generator = asyncio.create_task(self._generate_forever())
        log.info("Ticketmatic simulator on %s (%d accounts)", self.url, len(self.streams))

    async def stop(self) -> None:
        generator, self._generator = self._generator, None
        await cancel_and_wait([generator])
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # --- data and faults ------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _expire(self, stream: Stream) -> None:
        stream.drop_older(self._now_ms() - int(self.retention_s * 1000))

    def generate(self, account: str, n: int, *, span_s: float = 0.0) -> list[str]:
        """Add ``n`` items of webshop sessions, spread evenly over the last ``span_s``."""
        stream = self.streams[account]
        self._expire(stream)
        now = self._now_ms()
        start = now - int(span_s * 1000)
        ids = []
        for i in range(n):
            item_type, data = stream.sessions.next()
            ms = start + (int(span_s * 1000 * i / n) if n else 0)
            ids.append(stream.append(ms, item_type, data))
        return ids

    def add_items(self, account: str, items: Iterable[dict[str, Any] | bytes]) -> list[str]:
        """Add items as given: a dict gets a fresh ``id`` and ``ts``; bytes are kept as they
        are (to serve broken items) at the next position. Returns the positions' ids."""
        stream = self.streams[account]
        self._expire(stream)
        ids = []
        for item in items:
            now = self._now_ms()
            if isinstance(item, bytes):
                ids.append(stream.append_raw(now, item))
            else:
                ids.append(stream.append(now, str(item.get("type", "")), item.get("data", {})))
        return ids

    def fail_next(
        self,
        count: int,
        status: int = 503,
        *,
        account: str | None = None,
        retry_after: float | None = None,
        body: bytes | None = None,
    ) -> None:
        """Answer the next ``count`` requests (of ``account``, or of each account) with
        ``status``; a ``body`` replaces the error JSON (a 200 with a bad body is a
        malformed answer)."""
        for name in [account] if account else list(self.streams):
            self.streams[name].faults.extend(Fault(status, retry_after, body) for _ in range(count))

    def items(self, account: str) -> list[tuple[str, bytes]]:
        """(id, raw JSON) of every item still kept for ``account``."""
        stream = self.streams[account]
        self._expire(stream)
        return [(i.id, i.raw) for i in stream.items[stream.first :]]

    def stats(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, stream in self.streams.items():
            self._expire(stream)
            live = stream.items[stream.first :]
            out[name] = {
                **{k: stream.stats.get(k, 0) for k in ("generated", "dropped", "served")},
                "kept": len(live),
                "requests": stream.stats.get("requests", 0),
                "status": {k[7:]: v for k, v in stream.stats.items() if k.startswith("status_")},
                "oldest_id": live[0].id if live else None,
                "newest_id": live[-1].id if live else None,
            }
        return out

    async def _generate_forever(self) -> None:
        owed = 0.0
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            owed += self.rate * (now - last)
            last = now
            whole = int(owed)
            if whole:
                owed -= whole
                for name in self.streams:
                    self.generate(name, whole)

    # --- HTTP -----------------------------------------------------------------------------

    async def _eventstream(self, request: web.Request) -> web.Response:
        name = request.match_info["account"]
        problem = check_authorization(
            request.headers.get("Authorization"), name, self._by_key, self.clock()
        )
        refused = _error(*problem) if problem else None
        stream = self.streams.get(name)
        if stream is not None:
            stream.stats["requests"] += 1
        response = refused or await self._answer(request, stream)
        if stream is not None:
            stream.stats[f"status_{response.status}"] += 1
        return response

    async def _answer(self, request: web.Request, stream: Stream | None) -> web.Response:
        if stream is None:  # a key is per account, so authentication already refused it
            return _error(403, "Forbidden")
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        fault = stream.faults.popleft() if stream.faults else self._random_fault()
        if fault is not None:
            headers = {}
            if fault.retry_after is not None or fault.status == 429:
                wait = self.retry_after_s if fault.retry_after is None else fault.retry_after
                headers["Retry-After"] = f"{wait:g}"
            if fault.body is not None:
                return web.Response(body=fault.body, status=fault.status, headers=headers)
            return _error(fault.status, "Injected failure", headers)
        try:
            start, types = parse_query(request.query)
        except ValueError as exc:
            return _error(400, f"Bad request: {exc}")
        self._expire(stream)
        items, last, more = stream.page(start, types, self.page_size, self.nextid)
        stream.stats["served"] += len(items)
        body = page_body(items, last or request.query.get("id") or "0", more)
        return web.Response(body=body, content_type="application/json")

    def _random_fault(self) -> Fault | None:
        if self.p429 and self._rng.random() < self.p429:
            return Fault(429, self.retry_after_s)
        if self.p5xx and self._rng.random() < self.p5xx:
            return Fault(self._rng.choice([500, 502, 503]))
        return None

    async def _stats(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps({"accounts": self.stats()}), content_type="application/json"
        )

    async def _generate(self, request: web.Request) -> web.Response:
        name = request.query.get("account") or next(iter(self.streams))
        if name not in self.streams:
            return _error(404, f"no account {name}")
        ids = self.generate(name, int(request.query.get("n", "1")))
        return web.json_response(
            {"account": name, "generated": len(ids), "last_id": ids[-1] if ids else None}
        )

    async def _fail(self, request: web.Request) -> web.Response:
        q = request.query
        retry_after = float(q["retry_after"]) if "retry_after" in q else None
        self.fail_next(
            int(q.get("count", "1")),
            int(q.get("status", "503")),
            account=q.get("account"),
            retry_after=retry_after,
        )
        return web.json_response({"queued": int(q.get("count", "1"))})
