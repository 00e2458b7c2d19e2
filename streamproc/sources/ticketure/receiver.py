"""The Ticketure push receiver: HTTP pushes into ``ticketure.audit``, nothing lost.

Routes (all ``POST``, ``Content-Type: application/json``):

- ``/ticketure/events``: one audit record or an array (``schemas/ticketure/``);
- ``/v2/events`` and ``/v2/bulkevents``: mParticle's Events API (one batch, an array of
  at most 100), so Ticketure's Push API can point here instead of at mParticle.

Answers, as mParticle gives them: 202 once Kafka has acknowledged every record of the
request; 400 ``{"errors": [{"code", "field", "message"}]}`` naming the field and the
reason, whatever made the body fail (not JSON, invalid UTF-8, nested too deep, a wrong
type, an event too large for a Kafka record); 401 without credentials and 403 with wrong
ones (both say nothing more); 408 for a body slower than ``receiver.body_timeout_s``; 413
past ``receiver.max_body_bytes``; 415 for another content type; 429 with ``Retry-After``
while ``receiver.max_unauthenticated_reads`` hmac bodies are being read; 503 with
``Retry-After`` while Kafka is unreachable or the receiver stops (and, from
:mod:`.connections`, past ``receiver.max_connections``); 404 for any other path and 405
(``Allow: POST``) for another method. A request is all or nothing: one bad record refuses
the whole body.

Credentials are checked from the headers before the body is read: basic credentials
whole, an hmac signature's form and timestamp (the signature itself needs the body, so
such reads are capped). Unauthenticated requests never reach Kafka; authenticated bodies
that cannot be decoded are copied to the dead-letter topic with the reason before the 400
(503 instead if Kafka cannot keep the copy, so the sender retries rather than drops it).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import Counter

from streamproc import metrics
from streamproc.config import Settings
from streamproc.dlq import DeadLetter
from streamproc.errors import DecodeError, TransportError
from streamproc.formats import envelope
from streamproc.formats.envelope import Source
from streamproc.health import Health
from streamproc.lag import Watch
from streamproc.lifecycle import Service
from streamproc.sources.ticketure import audit_shape, connections, mparticle_shape
from streamproc.sources.ticketure.audit_shape import Decoded
from streamproc.sources.ticketure.auth import Authenticator
from streamproc.sources.ticketure.refusals import Rejected, check_content_type, read_body, verdict
from streamproc.sources.ticketure.writer import KafkaWriter, RecordTooLarge

log = logging.getLogger(__name__)

ROUTE_EVENTS = "/ticketure/events"
ROUTE_MP_EVENTS = "/v2/events"
ROUTE_MP_BULK = "/v2/bulkevents"
COMPONENT = "receiver"
FILES_COMPONENT = "receiver.files"
# aiohttp's bounds on a request head; a line or header past them is answered 400.
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 64
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,256}")  # visible ASCII, as a Kafka header takes it

_ITEMS_IN = metrics.ITEMS_IN.labels(Source.TICKETURE)

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
Decode = Callable[[bytes, str | None], Decoded]


def _decode_one(body: bytes, request_id: str | None) -> Decoded:
    return mparticle_shape.decode(body, bulk=False, request_id=request_id)


def _decode_bulk(body: bytes, request_id: str | None) -> Decoded:
    return mparticle_shape.decode(body, bulk=True, request_id=request_id)


# What each route's body decodes to (the records, each with its item id): the fuzz tests
# use it to know which item ids a 202 acknowledged.
DECODERS: Mapping[str, Decode] = {
    ROUTE_EVENTS: audit_shape.decode,
    ROUTE_MP_EVENTS: _decode_one,
    ROUTE_MP_BULK: _decode_bulk,
}


class Receiver(Service):
    """The HTTP server and its Kafka writer; ``start``/``stop`` idempotent, ``async with``.

    ``port=0`` binds a free port (see :attr:`port`). ``stop()`` stops accepting, lets the
    requests in flight finish (within ``receiver.shutdown_timeout_s``), then flushes.
    """

    def __init__(
        self,
        settings: Settings,
        health: Health | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        produce_timeout_s: float = 5.0,
        probe_interval_s: float = 1.0,
        retry_after_s: int = 1,
    ) -> None:
        rx = self._settings = settings.receiver
        self.health = health or Health()
        self.host = rx.host if host is None else host
        self._port = rx.port if port is None else port
        self._auth = Authenticator(rx.senders, rx.signature_header, rx.timestamp_header)
        self._retry_after = str(retry_after_s)
        self._unauthenticated_reads = 0
        self._unknown_names = metrics.BoundedLabel(limit=50)  # attribute names as labels
        self.writer = KafkaWriter(
            settings,
            self.health,
            produce_timeout_s=produce_timeout_s,
            probe_interval_s=probe_interval_s,
            stop_timeout_s=rx.shutdown_timeout_s,
        )
        self._runner: web.ServerRunner | None = None
        self.listener: connections.Listener | None = None
        self._stopping = False
        # aiohttp's low-level server with the three routes looked up by path: its
        # Application (router, middleware chain, per-request match info) costs about a
        # tenth of a push's CPU and does nothing these routes need.
        self._routes = {route: self._route(route, decode) for route, decode in DECODERS.items()}
        self._other = {status: _not_routed(status) for status in (404, 405)}

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one picked for ``port=0``)."""
        bound = self.listener.port if self.listener is not None else None
        return self._port if bound is None else bound

    name = "receive"

    def watches(self) -> list[Watch]:
        return []  # no consumer group: its lag is the pushes' own (receiver metrics)

    async def run(self, stop: asyncio.Event) -> None:
        """The role: listen until ``stop`` is set, then finish the requests in flight."""
        async with self:
            # Everything alive now lives as long as the process: keep it out of the garbage
            # collector's full passes, which otherwise stall every request for tens of ms.
            gc.freeze()
            await stop.wait()

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._stopping = False
        rx = self._settings
        await self.writer.start()
        loop = asyncio.get_running_loop()
        max_body = rx.max_body_bytes

        def make_request(
            message: Any, payload: Any, protocol: Any, writer: Any, task: Any
        ) -> web.BaseRequest:
            # client_max_size: aiohttp stops reading a streamed body as soon as it passes it.
            return web.BaseRequest(
                message, payload, protocol, writer, task, loop, client_max_size=max_body
            )

        server = web.Server(
            self._dispatch,
            request_factory=make_request,
            handler_cancellation=True,  # a client gone: its request stops at once
            access_log=None,
            keepalive_timeout=rx.keepalive_timeout_s,
            max_line_size=MAX_LINE_SIZE,
            max_field_size=MAX_FIELD_SIZE,
            max_headers=MAX_HEADERS,
            lingering_time=connections.LINGER_S,  # reading what is left after a refusal
        )
        runner = web.ServerRunner(
            server, handle_signals=False, shutdown_timeout=rx.shutdown_timeout_s
        )
        await runner.setup()
        listener = connections.Listener(
            server,
            max_connections=rx.max_connections,
            header_timeout_s=rx.header_timeout_s,
            retry_after=self._retry_after,
        )
        try:
            await listener.start(self.host, self._port)
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self.listener = runner, listener
        self.health.watch(FILES_COMPONENT, self._files)
        self.health.set(COMPONENT, True)
        log.info("receiving Ticketure pushes on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        self._stopping = True
        self.health.set(COMPONENT, False, "stopping")
        self.health.forget(FILES_COMPONENT)
        if self.listener is not None:
            self.listener.close()
        # Closes idle connections, then waits for the handlers in flight (bounded).
        await runner.cleanup()
        await self.writer.stop()
        log.info("receiver stopped")

    def _files(self) -> str | None:
        """Why /readyz should say no: accept() failing, or open files close to RLIMIT_NOFILE
        (None: fine)."""
        if self.listener is not None and self.listener.accept_failing:
            return (
                "accept() fails (out of file descriptors, RLIMIT_NOFILE): new connections "
                "wait in the backlog"
            )
        usage = connections.fd_usage()
        if usage is None or usage[0] <= self._settings.max_fd_ratio * usage[1]:
            return None
        return (
            f"{usage[0]} of {usage[1]} file descriptors open (RLIMIT_NOFILE): "
            "new connections are about to fail"
        )

    # --- one request ----------------------------------------------------------------

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        """The route's handler, 405 for another method on it, 404 for another path; the
        connection knows a request is being handled meanwhile (no header timer)."""
        connections.request_started(request)
        try:
            handler = self._routes.get(request.path)
            if handler is None:
                handler = self._other[404]
            elif request.method != "POST":
                handler = self._other[405]
            return await handler(request)
        finally:
            connections.request_ended(request)

    def _route(self, route: str, decode: Decode) -> Handler:
        # Metric children bound once per status: labels() costs a lock and a lookup.
        requests: dict[int, Counter] = {}

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            arrived = time.perf_counter()
            try:
                response = await self._handle(request, route, decode, arrived)
            except Rejected as rejected:
                metrics.REJECTED.labels(Source.TICKETURE, rejected.reason).inc()
                response = rejected.response()
            except Exception:
                log.exception("receiver failed on a %s request", route)
                response = web.Response(status=500)
            counter = requests.get(response.status)
            if counter is None:
                counter = requests[response.status] = metrics.RX_REQUESTS.labels(
                    route, str(response.status)
                )
            counter.inc()
            return response

        return handle

    async def _handle(
        self,
        request: web.BaseRequest,
        route: str,
        decode: Decode,
        arrived: float,
    ) -> web.Response:
        if self._stopping:
            raise self._unavailable("the receiver is stopping", "stopping")
        headers = request.headers
        # Whatever the headers can tell is checked before a byte of the body is read. Until
        # its signature is checked, an hmac request is told nothing but 401/403, or that
        # its body is too large, too slow or one too many (413, 408, 429): not even 415.
        method = verdict(self._auth.method(headers))
        if method == "basic":
            sender = verdict(self._auth.basic(headers))
            check_content_type(request)
            body = await self._read_body(request)
        else:
            candidates = verdict(self._auth.hmac_candidates(headers, time.time()))
            body = await self._read_unauthenticated(request)
            sender = verdict(self._auth.signed(headers, body, candidates))
            check_content_type(request)
        sender_b = sender.encode()
        received_ms = int(time.time() * 1000)
        try:
            accepted, skipped = decode(body, self._request_id(headers))
        except DecodeError as exc:
            raise await self._refused(route, sender_b, body, received_ms, exc) from None
        if accepted:
            try:
                await self.writer.write(sender_b, accepted, received_ms)
            except TransportError:
                # The cause is logged by the writer; the sender only needs to retry.
                raise self._unavailable(
                    "Kafka is unavailable; retry later", "unavailable"
                ) from None
            except RecordTooLarge as exc:
                where = accepted[exc.index].where if exc.index is not None else ""
                error = DecodeError(where or "body", str(exc), code="too_large")
                raise await self._refused(route, sender_b, body, received_ms, error) from None
        _ITEMS_IN.inc(len(accepted))
        # Events that are not Ticketure's, and attributes new to us, are counted once the
        # request is taken, so a request answered 503 and retried does not count twice.
        for reason, count in skipped.items():
            metrics.REJECTED.labels(Source.TICKETURE, reason).inc(count)
        for item in accepted:
            for name in item.record.unknown_attributes or ():
                metrics.RX_UNKNOWN_ATTRIBUTES.labels(self._unknown_names(name)).inc()
        metrics.RX_PRODUCE.observe(time.perf_counter() - arrived)
        if route != ROUTE_EVENTS:
            return web.Response(status=202)
        return web.Response(
            status=202,
            body=orjson.dumps(
                {
                    "accepted": len(accepted),
                    "item_ids": [a.record.event_id for a in accepted],
                }
            ),
            content_type="application/json",
        )

    def _unavailable(self, message: str, reason: str) -> Rejected:
        return Rejected(
            503, "SERVICE_UNAVAILABLE", message, reason, headers={"Retry-After": self._retry_after}
        )

    def _request_id(self, headers: Mapping[str, str]) -> str | None:
        """The request's idempotency key, if it sends one; DecodeError if it is unusable."""
        name = self._settings.idempotency_header
        value = headers.get(name, "").strip() if name else ""
        if not value:
            return None
        if not _REQUEST_ID.fullmatch(value):
            raise DecodeError(name, "must be 1 to 256 visible ASCII characters")
        return value

    async def _read_unauthenticated(self, request: web.BaseRequest) -> bytes:
        """The body of a request whose signature needs it: a bounded number at a time."""
        if self._unauthenticated_reads >= self._settings.max_unauthenticated_reads:
            raise Rejected(
                429,
                "TOO_MANY_REQUESTS",
                "too many signed bodies are being read; retry later",
                "busy",
                headers={"Retry-After": self._retry_after},
                close=True,
            )
        self._unauthenticated_reads += 1
        try:
            return await self._read_body(request)
        finally:
            self._unauthenticated_reads -= 1

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        rx = self._settings
        return await read_body(request, rx.max_body_bytes, rx.body_timeout_s)

    async def _refused(
        self, route: str, sender: bytes, body: bytes, received_ms: int, exc: DecodeError
    ) -> Rejected:
        """The 400 for a body that cannot be taken, once its dead letter is in Kafka; if
        Kafka does not take the letter, a 503: answered 400, the sender would never send
        the body again."""
        letter = DeadLetter(
            stage="receive",
            source=Source.TICKETURE,
            reason_code=exc.code,
            reason=str(exc),
            origin_topic=self.writer.topics.ticketure,
            key=None,
            value=body,
            headers=[
                (envelope.H_SOURCE, Source.TICKETURE.header),
                (envelope.H_SENDER, sender),
                (envelope.H_RECEIVED, str(received_ms).encode()),
                ("route", route.encode()),
            ],
        )
        if not await self.writer.dead_letter(letter):
            return self._unavailable(
                "Kafka is unavailable to keep this refused push; retry later", "unavailable"
            )
        letter.count()
        return Rejected(400, "VALIDATION_ERROR", str(exc), exc.code, field=exc.field)


def _not_routed(status: int) -> Handler:
    """The answer to a path without a route (404) or a method other than POST (405),
    in mParticle's error shape, counted under route ``other``."""
    if status == 404:
        rejected = Rejected(404, "NOT_FOUND", "no such route", "not_found")
    else:
        rejected = Rejected(
            405,
            "METHOD_NOT_ALLOWED",
            "only POST is allowed",
            "method",
            headers={"Allow": "POST"},
        )
    counter = metrics.RX_REQUESTS.labels("other", str(status))

    async def handle(_request: web.BaseRequest) -> web.StreamResponse:
        counter.inc()
        return rejected.response()

    return handle
