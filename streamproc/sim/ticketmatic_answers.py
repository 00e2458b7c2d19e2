"""The Ticketmatic simulator's answers other than a plain page, over HTTP.

Errors in Ticketmatic's JSON shape, scripted faults (:class:`~streamproc.sim.faults.Fault`),
and the answers of the fault modes (:class:`~streamproc.sim.faults.Misbehaviour`): pages
reshaped, bodies streamed chunk by chunk or dripped, connections dropped. The bodies
themselves are built in :mod:`streamproc.sim.faults` and :mod:`streamproc.sim.eventstream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Iterable

import orjson
from aiohttp import web

from streamproc.sim.faults import Fault, Misbehaviour, deep_body, oversized_chunks

log = logging.getLogger(__name__)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"code": status, "message": message, "applicationcode": 0, "applicationdata": None}
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def drop(request: web.Request) -> None:
    """Close the connection with a TCP reset, answering nothing."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:  # linger 0: closing sends RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()


def fault(scripted: Fault, retry_after_s: float) -> web.Response:
    """A scripted fault's answer; a 429 without its own Retry-After gets ``retry_after_s``."""
    headers = {}
    if scripted.retry_after is not None or scripted.status == 429:
        wait = retry_after_s if scripted.retry_after is None else scripted.retry_after
        headers["Retry-After"] = wait if isinstance(wait, str) else f"{wait:g}"
    if scripted.body is not None:
        return web.Response(body=scripted.body, status=scripted.status, headers=headers)
    return error(scripted.status, "Injected failure", headers)


async def misbehaving(
    request: web.Request, how: Misbehaviour, page: bytes, now_ms: int, stopping: asyncio.Event
) -> web.StreamResponse | None:
    """The answer of fault mode ``how``, None if the connection was dropped.

    ``page``: the body of a page-shaped mode (see ``eventstream.misshapen_page``), also
    the page a drip sends. ``stopping``: once set, streamed answers end with a drop.
    """
    if how.mode == "reset":
        drop(request)
        return None
    if how.mode == "retry_after":
        return error(429, "Rate limited", {"Retry-After": how.value or ""})
    if how.mode == "oversized":
        chunks = oversized_chunks(how.size, now_ms)
        return await _send(request, chunks, how.size if how.content_length else None, stopping)
    if how.mode == "deep":
        length, chunks = deep_body(how.depth, now_ms)
        return await _send(request, chunks, length, stopping)
    if how.mode == "drip":
        drops = (page[i : i + how.chunk] for i in range(0, len(page), how.chunk))
        return await _send(request, drops, len(page), stopping, how.interval)
    return web.Response(body=page, content_type="application/json")


async def _send(
    request: web.Request,
    chunks: Iterable[bytes],
    length: int | None,
    stopping: asyncio.Event,
    interval_s: float = 0.0,
) -> web.StreamResponse | None:
    """A 200 written chunk by chunk, each write awaited (so no more than the transport's
    buffer is held), ``interval_s`` apart; ``length`` None: chunked encoding."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    if length is not None:
        response.content_length = length
    await response.prepare(request)
    try:
        for n, chunk in enumerate(chunks):
            if n and interval_s:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), interval_s)
            if stopping.is_set():
                drop(request)
                return None
            await response.write(chunk)
        await response.write_eof()
    except ConnectionResetError:
        log.debug("the client left during a streamed answer")
    return response
