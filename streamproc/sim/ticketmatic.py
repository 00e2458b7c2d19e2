"""``streamproc sim ticketmatic``: Ticketmatic's eventstream, for any number of accounts.

Faithful to the documented API (../shared/reference/ticketmatic/README.md):
``GET /api/1/{account}/eventstream`` with ``id`` (a minimum: inclusive) or ``ts`` (mutually
exclusive) and ``eventtypes``; answers ``{"results", "nextid", "moreresults"}`` with pages
of up to ``page_size`` items whose ids ``<ms>-<seq>`` ascend; both authentications are
checked (a missing header, a wrong key or signature, or a signature time more than 30
minutes off get 401; another account's valid key gets 403); errors carry Ticketmatic's
JSON shape. Items older than the retention (4 h divided by ``time_scale``) are dropped.

It misbehaves on request, to show how a client answers each fault: at random (``p429``,
``p5xx``); scripted for the next requests (``fail_next``: a status or a body); in a fault
mode for the next requests (``misbehave``: pages descending, with an id 100 years ahead,
a runaway nextid or a creeping one; bodies oversized, deep or dripped; a 429 with any
Retry-After text; a dropped connection, see :mod:`streamproc.sim.faults`); or for a time
(``outage``: every request answered a status, or dropped). Each for one account or all.
Misbehaving answers are counted by mode in ``stats()``, their items never as served.

``nextid`` is, as documented, the id to start the next call at: the id just after the
last item looked at (``nextid="after"``, the default), so following it serves no item
twice. ``nextid="last"`` gives the id of that last item instead, so the next page starts
with it again and a consumer must drop what it already has (``id`` is a minimum): a
server that misbehaves within the letter of the API. An empty answer repeats the
requested ``id`` (``"0"`` without one), as the API reference shows.

Use it in-process (``async with TicketmaticSim(...) as sim``, then ``sim.url``,
``sim.generate``, ``sim.add_items``, ``sim.fail_next``, ``sim.misbehave``, ``sim.outage``,
``sim.stats()``), as the CLI command (:mod:`streamproc.sim.ticketmatic_command`), or from
outside through ``/_sim/...`` (:mod:`streamproc.sim.ticketmatic_control`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from streamproc.config import RETENTION_4H_S
from streamproc.lifecycle import Service, cancel_and_wait
from streamproc.sim.eventstream import (
    NextId,
    SimAccount,
    Stream,
    check_authorization,
    misshapen_page,
    page_body,
    parse_query,
)
from streamproc.sim.faults import PAGELESS, Fault, Outage, header_safe, misbehaviour
from streamproc.sim.ticketmatic_answers import drop, error, fault, misbehaving
from streamproc.sim.ticketmatic_control import routes
from streamproc.sim.webshop import WebshopSessions

__all__ = ["SimAccount", "TicketmaticSim"]

log = logging.getLogger(__name__)


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
        self._stopping = asyncio.Event()  # ends streamed answers in flight at stop()

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to configure as ``ticketmatic.base_url``."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._stopping.clear()
        app = web.Application()
        app.router.add_get("/api/1/{account}/eventstream", self._eventstream)
        app.add_routes(routes(self))
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
        self._stopping.set()
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

    def _scope(self, account: str | None) -> list[Stream]:
        """``account``'s stream (KeyError if there is none), or every stream."""
        return [self.streams[account]] if account else list(self.streams.values())

    def fail_next(
        self,
        count: int,
        status: int = 503,
        *,
        account: str | None = None,
        retry_after: float | str | None = None,
        body: bytes | None = None,
    ) -> None:
        """Answer the next ``count`` requests (of ``account``, or of each account) with
        ``status``; a ``body`` replaces the error JSON (a 200 with a bad body is a
        malformed answer). ``retry_after``: seconds, or any text, sent as Retry-After
        (a 429 gets ``retry_after_s`` without it)."""
        if isinstance(retry_after, str):
            header_safe(retry_after)
        for stream in self._scope(account):
            stream.script.add(Fault(status, retry_after, body), count)

    def misbehave(
        self, mode: str, *, count: int = 1, account: str | None = None, **params: object
    ) -> None:
        """Answer the next ``count`` requests (of ``account``, or of each account) in fault
        ``mode`` (see :mod:`streamproc.sim.faults`), after those already queued.

        ``params`` are the mode's: ``size`` (bytes) and ``content_length`` (bool) of
        ``oversized``, ``depth`` of ``deep``, ``chunk`` (bytes) and ``interval`` (seconds)
        of ``drip``, ``value`` (the Retry-After text) of ``retry_after``; Python values or
        their text. ValueError for an unknown mode, parameter or value, KeyError for an
        unknown account. These answers are counted in ``stats()[account]["faults"]`` by
        mode, their items never as served. A page-shaped mode waits for a request whose
        parameters are readable (an unreadable one gets its 400). ``reset`` drops one
        connection per count: a client that retries a GET once on a dropped connection,
        as aiohttp does, sees one only with ``count=2``.
        """
        answer = misbehaviour(mode, params)
        for stream in self._scope(account):
            stream.script.add(answer, count)

    def outage(
        self,
        seconds: float,
        status: int = 503,
        *,
        reset: bool = False,
        account: str | None = None,
    ) -> None:
        """For ``seconds`` from now (the simulator's clock), answer every request of
        ``account`` (or of each account) ``status`` with Ticketmatic's error JSON, before
        credentials are checked, or with ``reset`` drop the connection without an answer
        (a TCP reset: a transport error). ``seconds=0`` ends an outage; a new one replaces
        the old. Scripted answers wait until it is over."""
        if seconds < 0 or not 100 <= status <= 599:
            raise ValueError("seconds: not negative; status: 100 to 599")
        until = self.clock() + seconds
        for stream in self._scope(account):
            stream.outage = Outage(until, None if reset else status)

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
                "faults": {k[6:]: v for k, v in stream.stats.items() if k.startswith("fault_")},
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

    async def _eventstream(self, request: web.Request) -> web.StreamResponse:
        stream = self.streams.get(request.match_info["account"])
        if stream is not None:
            stream.stats["requests"] += 1
        response = await self._answer(request, stream)
        if response is None:  # dropped: nothing of this one is sent
            return web.Response()
        if stream is not None:
            stream.stats[f"status_{response.status}"] += 1
        return response

    async def _answer(
        self, request: web.Request, stream: Stream | None
    ) -> web.StreamResponse | None:
        outage = stream.outage if stream is not None else None
        if stream is not None and outage is not None and self.clock() < outage.until:
            stream.stats["fault_outage"] += 1
            if outage.status is None:
                drop(request)
                return None
            return error(outage.status, "Service unavailable (simulated outage)")
        name = request.match_info["account"]
        problem = check_authorization(
            request.headers.get("Authorization"), name, self._by_key, self.clock()
        )
        if problem:
            return error(*problem)
        if stream is None:  # a key is per account, so authentication already refused it
            return error(403, "Forbidden")
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        queued = stream.script.peek() or self._random_fault()
        if isinstance(queued, Fault):
            stream.script.take()  # a random fault was never queued: nothing is taken
            return fault(queued, self.retry_after_s)
        if queued is not None and queued.mode in PAGELESS:
            stream.script.take()
            stream.stats[f"fault_{queued.mode}"] += 1
            return await misbehaving(request, queued, b"", self._now_ms(), self._stopping)
        try:
            start, types = parse_query(request.query)
        except ValueError as exc:  # a misbehaviour queued waits for a readable request
            return error(400, f"Bad request: {exc}")
        self._expire(stream)
        items, last, more = stream.page(start, types, self.page_size, self.nextid)
        nextid = last or request.query.get("id") or "0"
        if queued is None:
            stream.stats["served"] += len(items)
            return web.Response(
                body=page_body(items, nextid, more), content_type="application/json"
            )
        stream.script.take()
        stream.stats[f"fault_{queued.mode}"] += 1
        page = misshapen_page(queued.mode, items, nextid, more, start, self._now_ms())
        return await misbehaving(request, queued, page, self._now_ms(), self._stopping)

    def _random_fault(self) -> Fault | None:
        if self.p429 and self._rng.random() < self.p429:
            return Fault(429, self.retry_after_s)
        if self.p5xx and self._rng.random() < self.p5xx:
            return Fault(self._rng.choice([500, 502, 503]))
        return None
