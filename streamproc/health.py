"""``/metrics``, ``/healthz`` and ``/readyz`` for every process.

Components report readiness under a name; ``/readyz`` answers 200 only while every
registered component is ready, else 503 with the reasons. ``/healthz`` answers 200 while
the event loop runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from streamproc import metrics
from streamproc.lifecycle import Service

log = logging.getLogger(__name__)


class Health:
    """Readiness of named components, as ``/readyz`` reports it.

    A component is set when something happens (``set``), or watched (``watch``): its
    check runs at every report, so a condition that grows with time (no successful poll
    for too long) shows the moment it holds, not at the next event.
    """

    def __init__(self) -> None:
        self._state: dict[str, tuple[bool, str]] = {}
        self._checks: dict[str, Callable[[], str | None]] = {}
        self._published: set[str] = set()

    def set(self, component: str, ready: bool, reason: str = "") -> None:
        previous = self._state.get(component)
        self._state[component] = (ready, reason)
        if previous is not None and previous[0] != ready:
            log.info("%s is %s %s", component, "ready" if ready else "NOT ready", reason)

    def watch(self, component: str, check: Callable[[], str | None]) -> None:
        """Report ``component`` not ready whenever ``check()`` returns a reason."""
        self._checks[component] = check

    def forget(self, component: str) -> None:
        """Stop reporting ``component`` (set or watched) at all."""
        self._state.pop(component, None)
        self._checks.pop(component, None)

    def _current(self) -> dict[str, tuple[bool, str]]:
        current = dict(self._state)
        for name, check in self._checks.items():
            reason = check()
            if reason is not None:
                current[name] = (False, reason)
            elif name not in current:
                current[name] = (True, "")
        return current

    def ready(self) -> bool:
        return all(ok for ok, _ in self._current().values())

    def report(self) -> dict[str, dict[str, object]]:
        return {name: {"ready": ok, "reason": why} for name, (ok, why) in self._current().items()}

    def publish(self) -> None:
        """``streamproc_ready{component}`` as ``/readyz`` would answer now; a component no
        longer reported loses its series."""
        current = self._current()
        for name in self._published - current.keys():
            metrics.READY.remove(name)
        for name, (ok, _) in current.items():
            metrics.READY.labels(name).set(1 if ok else 0)
        self._published = set(current)


class HealthServer(Service):
    """An aiohttp server for the three endpoints; ``start``/``stop`` are idempotent.

    Given port 0, it listens on a free port the system picks; ``port`` is that one once
    ``start`` has returned.
    """

    def __init__(self, health: Health, host: str, port: int) -> None:
        self.health = health
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        self.health.publish()
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def _readyz(self, _request: web.Request) -> web.Response:
        status = 200 if self.health.ready() else 503
        body = orjson.dumps({"ready": status == 200, "components": self.health.report()})
        return web.Response(body=body, status=status, content_type="application/json")

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]
        log.info("metrics and health on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        await runner.cleanup()
