"""The receiver's listening socket: the bounds that aiohttp's server does not set itself.

aiohttp's low-level server is the protocol factory here, as its ``TCPSite`` would use it,
and it already closes a connection that has not completed a request head within
``keepalive_timeout`` of connecting or of its last response, bounds request lines and
headers, and cancels the handler of a client that went away. :class:`Listener` adds what
it lacks:

- at most ``max_connections`` open at once: one more takes the place of the connection
  that has waited the longest for a request head if that is over ``HEAD_GRACE_S`` (a
  real client sends its head within milliseconds: this is a silent or slowloris one;
  ``head_evicted``), else of the one idle the longest between requests (closed,
  ``idle_evicted``), else of the longest waiting for a head, else, every connection being
  busy with a request, it is answered 503 with ``Retry-After`` at once and closed
  (``over_capacity``) instead of waiting in the backlog. So clients that hold
  connections without sending requests, which anyone can, never keep a new one out: a
  request whose head comes at once is only lost to ``max_connections`` newer arrivals
  within those milliseconds;
- a request head must be complete within ``header_timeout_s`` of the connection's start,
  or of the first byte of a later request on a kept-alive connection, else the connection
  is closed (``header_timeout``): silent and slowloris clients go in seconds, not at the
  keep-alive timeout. One sweep every ``header_timeout_s / SWEEPS`` (at most
  ``MAX_SWEEP_S``) closes those past it, oldest first, instead of a timer per request: a
  connection goes within one sweep interval after its timeout;
- accept() failures (out of file descriptors...) are counted (``accept_error``) and logged
  once per burst, where asyncio logs each one with a traceback, hundreds a second;
- :func:`fd_usage` gives /readyz the open files against RLIMIT_NOFILE.

Each reason is counted in ``streamproc_receiver_connections_dropped_total``. The receiver
tells a connection when one of its requests starts and ends (:func:`request_started`,
:func:`request_ended`): no header timeout runs in between.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import resource
import time
from collections.abc import Callable
from typing import Any, Literal

import orjson
from aiohttp import web

from streamproc import metrics

log = logging.getLogger(__name__)

LINGER_S = 1.0  # a refused connection drops what it is sent for this long, then closes
BURST_QUIET_S = 5.0  # accept() failures closer than this are one burst, logged once
FD_RESERVE = 64  # files kept for Kafka, the metrics server, logs: not for connections
BACKLOG = 128
# A connection waiting this long for its request head goes before any idle one when room
# is needed: evicting idle kept-alive connections first would make the normal clients that
# hold them reconnect, each reconnect evicting another of them, while slow ones stay.
HEAD_GRACE_S = 1.0
SWEEPS = 10  # header-timeout sweeps per header_timeout_s
MAX_SWEEP_S = 0.5
_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_DROPPED = {
    reason: metrics.RX_DROPPED.labels(reason)
    for reason in (
        "over_capacity",
        "idle_evicted",
        "head_evicted",
        "header_timeout",
        "body_timeout",
        "accept_error",
    )
}


def dropped(reason: str) -> None:
    """Count a connection ended for ``reason`` (one of the metric's documented reasons)."""
    _DROPPED[reason].inc()


def fd_usage() -> tuple[int, int] | None:
    """(open file descriptors, RLIMIT_NOFILE's soft limit) of this process, if known.

    Counting them takes a descriptor: when none is left, every one is in use.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        count = len(os.listdir("/proc/self/fd")) - 1  # not the one listdir opened
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return soft, soft
        return None  # no /proc (not Linux)
    return count, soft


def request_started(request: web.BaseRequest) -> None:
    """A request's head is in: its connection's header timer stops."""
    guard = _guard_of(request)
    if guard is not None:
        guard.become("busy")


def request_ended(request: web.BaseRequest) -> None:
    """A request is answered: the next one's first byte starts the header timer."""
    guard = _guard_of(request)
    if guard is not None:
        guard.become("idle")


def _guard_of(request: web.BaseRequest) -> _Guarded | None:
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, _Guarded) else None


State = Literal["head", "busy", "idle"]


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the header timer around it.

    ``state``: ``head`` while a request head is awaited (the timer runs), ``busy`` while a
    request is handled, ``idle`` between requests (aiohttp's keep-alive timeout runs).
    """

    def __init__(self, inner: asyncio.Protocol, listener: Listener) -> None:
        self._inner = inner
        self._listener = listener
        self._transport: asyncio.BaseTransport | None = None
        self.state: State = "head"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._listener.moved(self)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.state == "idle":
            self.become("head")  # the first byte of a request on a kept-alive connection
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.released(self)
        self._inner.connection_lost(exc)

    def become(self, state: State) -> None:
        if state == self.state:
            return
        self.state = state
        self._listener.moved(self)

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def expire(self) -> None:
        """Its head took too long: closed, counted."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            dropped("header_timeout")
            transport.close()


class _Refused(asyncio.Protocol):
    """A connection past the cap: the 503 at once, what comes dropped, closed soon."""

    def __init__(self, answer: bytes, lingering: set[_Refused]) -> None:
        self._answer = answer
        self._lingering = lingering  # the listener's, to close them when it closes
        self._closer: asyncio.TimerHandle | None = None
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._lingering.add(self)
        if not isinstance(transport, asyncio.Transport):  # a TCP server's always is
            transport.close()
            return
        transport.write(self._answer)
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:  # the client is gone already (a connect it gave up on)
                transport.close()
                return
        # Reading on for a moment lets the client see the answer instead of a reset.
        self._closer = asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # both sides are done: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._lingering.discard(self)
        if self._closer is not None:
            self._closer.cancel()


def _refusal(retry_after: str) -> bytes:
    body = orjson.dumps(
        {
            "errors": [
                {"code": "SERVICE_UNAVAILABLE", "message": "too many connections; retry later"}
            ]
        }
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Retry-After: {retry_after}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class Listener:
    """Listens on ``host:port`` for ``factory`` (aiohttp's server) within the bounds above.

    ``start()`` binds and takes over the loop's exception handler for accept() failures
    (anything else goes to the handler that was there); ``close()`` stops listening, closes
    the refused connections still lingering and gives the handler back. Connections taken
    are the server's to close.
    """

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        *,
        max_connections: int,
        header_timeout_s: float,
        retry_after: str,
    ) -> None:
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self._factory = factory
        self._refusal = _refusal(retry_after)
        self._open = 0
        # The connections that may make room for a new one past the cap, by state, each in
        # the order it entered that state, with the (monotonic) time it did: see the module
        # doc for which goes first. Busy ones are not in either.
        self._evictable: dict[State, collections.OrderedDict[_Guarded, float]] = {
            "idle": collections.OrderedDict(),
            "head": collections.OrderedDict(),
        }
        self._lingering: set[_Refused] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None
        self._burst_failures = 0
        self._burst_started = self._last_failure = 0.0
        self._burst_check: asyncio.TimerHandle | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_s = min(MAX_SWEEP_S, header_timeout_s / SWEEPS)

    @property
    def open(self) -> int:
        """Connections open now (refused ones not counted)."""
        return self._open

    @property
    def port(self) -> int | None:
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        usage = fd_usage()
        if usage is not None and self.max_connections > usage[1] - FD_RESERVE:
            capped = max(1, usage[1] - FD_RESERVE)
            log.warning(
                "receiver.max_connections is %d but RLIMIT_NOFILE is %d: taking at most %d "
                "connections (raise the limit, e.g. ulimit -n, to take more)",
                self.max_connections,
                usage[1],
                capped,
            )
            self.max_connections = capped
        loop = self._loop = asyncio.get_running_loop()
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self._exception)
        try:
            self._server = await loop.create_server(self._protocol, host, port, backlog=BACKLOG)
        except BaseException:
            self._restore_handler()
            raise
        self._sweeper = loop.call_later(self._sweep_s, self._sweep)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for refused in list(self._lingering):
            if refused.transport is not None:
                refused.transport.close()
        if self._burst_check is not None:
            self._burst_check.cancel()
            self._burst_check = None
        self._restore_handler()

    @property
    def accept_failing(self) -> bool:
        """accept() has failed within the last ``BURST_QUIET_S``: new connections wait in
        the backlog, so the receiver is not ready (``/readyz`` says why)."""
        return self._burst_failures > 0

    def released(self, guard: _Guarded) -> None:
        for waiting in self._evictable.values():
            waiting.pop(guard, None)
        self._open -= 1
        metrics.RX_CONNECTIONS.dec()

    def moved(self, guard: _Guarded) -> None:
        """``guard`` entered its state: it goes last in that state's order."""
        for state, waiting in self._evictable.items():
            if state == guard.state:
                waiting[guard] = time.monotonic()
            else:
                waiting.pop(guard, None)

    def _sweep(self) -> None:
        """Close the connections whose head has taken longer than ``header_timeout_s``:
        the head waiters are in the order they started waiting, so the sweep stops at the
        first one still within it."""
        heads = self._evictable["head"]
        too_old = time.monotonic() - self.header_timeout_s
        while heads:
            guard, since = next(iter(heads.items()))
            if since > too_old:
                break
            del heads[guard]
            guard.expire()
        if self._loop is not None:
            self._sweeper = self._loop.call_later(self._sweep_s, self._sweep)

    def _protocol(self) -> asyncio.Protocol:
        if self._open >= self.max_connections:
            # Closing a connection that sends no request costs its client a reconnect;
            # a refusal costs a push.
            heads = self._evictable["head"]
            slow = bool(heads) and time.monotonic() - next(iter(heads.values())) >= HEAD_GRACE_S
            state: State = "idle" if self._evictable["idle"] and not slow else "head"
            if not self._evictable[state]:
                dropped("over_capacity")
                return _Refused(self._refusal, self._lingering)
            victim, _ = self._evictable[state].popitem(last=False)
            dropped(f"{state}_evicted")
            victim.close()
        # Counted here, not at connection_made: a burst of accepts in one loop tick
        # creates every protocol before any connection is made.
        self._open += 1
        metrics.RX_CONNECTIONS.inc()
        return _Guarded(self._factory(), self)

    def _restore_handler(self) -> None:
        loop = self._loop
        if loop is not None and loop.get_exception_handler() == self._exception:
            loop.set_exception_handler(self._previous)

    def _exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message", ""))
        if (
            isinstance(exc, OSError)
            and exc.errno in _ACCEPT_ERRNOS
            and message.startswith("socket.accept()")
        ):
            self._accept_failed(loop, exc)
        elif self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def _accept_failed(self, loop: asyncio.AbstractEventLoop, exc: OSError) -> None:
        dropped("accept_error")
        now = self._last_failure = loop.time()
        self._burst_failures += 1
        if self._burst_failures > 1:
            return
        self._burst_started = now
        usage = fd_usage()
        log.warning(
            "accept() fails: %s%s; new connections wait in the backlog until it recovers "
            "(each failure is counted, this burst is logged once)",
            exc.strerror,
            f" ({usage[0]} of {usage[1]} file descriptors open)" if usage else "",
        )
        self._burst_check = loop.call_later(BURST_QUIET_S, self._end_of_burst, loop)

    def _end_of_burst(self, loop: asyncio.AbstractEventLoop) -> None:
        quiet_from = self._last_failure + BURST_QUIET_S
        if loop.time() < quiet_from:
            self._burst_check = loop.call_at(quiet_from, self._end_of_burst, loop)
            return
        self._burst_check = None
        log.warning(
            "accept() works again after %d failures in %.1f s",
            self._burst_failures,
            self._last_failure - self._burst_started,
        )
        self._burst_failures = 0
