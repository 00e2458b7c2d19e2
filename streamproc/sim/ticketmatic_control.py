"""The Ticketmatic simulator's control API, ``/_sim/...``, to drive it from outside.

- ``GET /_sim/stats``: per account what was generated, kept, dropped, served (items in
  well-formed pages), requests, answers by status and misbehaving answers by fault mode.
- ``POST /_sim/generate?account=A&n=N``: add N items (account: the first by default).
- ``POST /_sim/fail?status=S&count=N&account=A&retry_after=TEXT``: ``fail_next``.
- ``POST /_sim/misbehave?mode=M&count=N&account=A&PARAM=VALUE...``: ``misbehave``, the
  mode's parameters (``size``, ``content_length``, ``depth``, ``chunk``, ``interval``,
  ``value``) as text.
- ``POST /_sim/outage?seconds=S&status=503&reset=false&account=A``: ``outage``.

Without ``account`` a fault applies to every account. An unknown account is a 404, a
parameter that does not fit a 400 naming it, both in Ticketmatic's error JSON.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import msgspec
import orjson
from aiohttp import web

from streamproc.sim.ticketmatic_answers import error

if TYPE_CHECKING:
    from streamproc.sim.ticketmatic import TicketmaticSim

Apply = Callable[[dict[str, str]], Awaitable[dict[str, object]]]
T = TypeVar("T")


def routes(sim: TicketmaticSim) -> list[web.RouteDef]:
    async def stats(_request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps({"accounts": sim.stats()}), content_type="application/json"
        )

    async def generate(request: web.Request) -> web.Response:
        name = request.query.get("account") or next(iter(sim.streams))
        if name not in sim.streams:
            return error(404, f"no account {name}")
        ids = sim.generate(name, int(request.query.get("n", "1")))
        return web.json_response(
            {"account": name, "generated": len(ids), "last_id": ids[-1] if ids else None}
        )

    async def fail(q: dict[str, str]) -> dict[str, object]:
        count = _param(q, "count", int, 1)
        sim.fail_next(
            count,
            _param(q, "status", int, 503),
            account=q.get("account"),
            retry_after=q.get("retry_after"),  # the header's text, as given
        )
        return {"queued": count}

    async def misbehave(q: dict[str, str]) -> dict[str, object]:
        mode, account = q.pop("mode", ""), q.pop("account", None)
        count = _param(q, "count", int, 1)
        q.pop("count", None)
        sim.misbehave(mode, count=count, account=account, **q)
        return {"mode": mode, "count": count, "account": account}

    async def outage(q: dict[str, str]) -> dict[str, object]:
        seconds, status = _param(q, "seconds", float), _param(q, "status", int, 503)
        reset = _param(q, "reset", bool, False)
        sim.outage(seconds, status, reset=reset, account=q.get("account"))
        answer = "reset" if reset else status
        return {"seconds": seconds, "answer": answer, "account": q.get("account")}

    def checked(apply: Apply) -> Callable[[web.Request], Awaitable[web.Response]]:
        """A handler calling ``apply`` with the query: its JSON, or a 404 for an unknown
        account, or a 400 naming the parameter that does not fit."""

        async def handler(request: web.Request) -> web.Response:
            account = request.query.get("account")
            if account is not None and account not in sim.streams:
                return error(404, f"no account {account}")
            try:
                return web.json_response(await apply(dict(request.query)))
            except ValueError as exc:
                return error(400, str(exc))

        return handler

    return [
        web.get("/_sim/stats", stats),
        web.post("/_sim/generate", generate),
        web.post("/_sim/fail", checked(fail)),
        web.post("/_sim/misbehave", checked(misbehave)),
        web.post("/_sim/outage", checked(outage)),
    ]


def _param(query: dict[str, str], name: str, kind: type[T], default: T | None = None) -> T:
    """``query[name]`` read as ``kind``; ValueError naming it if absent without a default
    or unreadable."""
    text = query.get(name)
    if text is None:
        if default is None:
            raise ValueError(f"{name}: required")
        return default
    try:
        return msgspec.convert(text, kind, strict=False)
    except msgspec.ValidationError:
        raise ValueError(f"{name}: {text!r} is not a {kind.__name__}") from None
