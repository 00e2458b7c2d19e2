"""The one contract every role keeps, and the one place that runs roles as a process.

A role (poll, receive, map, deliver) has a ``name``, the lag it wants watched
(:meth:`Role.watches`) and ``async run(stop)``: it sets itself up, works until ``stop`` is
set, then finishes or aborts what is in flight within its own bound and releases what it
holds. It raises only what it cannot recover from: the process then exits 1, for the
orchestrator to restart it (2 for a :class:`ConfigError`).

:func:`serve` is the whole life of a role process, the same for every command:
SIGTERM/SIGINT, ``/metrics``, ``/healthz`` and ``/readyz`` from the first second, waiting
for Kafka, a lag monitor per watch, then the roles. Several roles in one process
(``streamproc run``) stop in the order given, each once the one before has ended: the
edge (receiver, poller) first, so that what it wrote is still mapped and delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from streamproc.config import Settings
from streamproc.errors import ConfigError
from streamproc.health import Health
from streamproc.lag import LagMonitor, Watch
from streamproc.lifecycle import stop_on_signals, until
from streamproc.startup import serving

log = logging.getLogger(__name__)


class Role(Protocol):
    @property
    def name(self) -> str:
        """The command's name: ``poll``, ``receive``, ``map``, ``deliver``."""
        ...

    def watches(self) -> Sequence[Watch]:
        """The consumer groups and changelogs whose lag and stuck transactions to sample."""
        ...

    async def run(self, stop: asyncio.Event) -> None:
        """Set up, work until ``stop`` is set, shut down within the role's bound."""
        ...


async def serve(
    settings: Settings, health: Health, roles: Sequence[Role], *, lag_interval_s: float = 5.0
) -> int:
    """Run ``roles`` as this process until SIGTERM or SIGINT; the exit code."""
    stop = stop_on_signals()
    async with serving(settings, health, stop) as up:
        if not up:
            return 0
        async with contextlib.AsyncExitStack() as stack:
            for role in roles:
                for watch in role.watches():
                    monitor = LagMonitor.of(settings, watch, lag_interval_s)
                    await stack.enter_async_context(monitor)
            return await run(roles, stop)


async def run(roles: Sequence[Role], stop: asyncio.Event) -> int:
    """Run ``roles`` until ``stop`` is set or one of them ends, then stop them in order.

    0, or 1 if a role failed or ended before ``stop``; a role's ConfigError is raised.
    """
    stops = [asyncio.Event() for _ in roles]
    tasks = [
        asyncio.create_task(_run(role, role_stop), name=role.name)
        for role, role_stop in zip(roles, stops, strict=True)
    ]
    log.info("running: %s", ", ".join(role.name for role in roles))
    ended = await until(stop, *tasks)
    for task in ended:
        if task.cancelled() or task.exception() is None:
            log.error("role %s ended before shutdown", task.get_name())
    if len(roles) > 1:
        log.info("stopping, in this order: %s", ", ".join(role.name for role in roles))
    for role_stop, task in zip(stops, tasks, strict=True):
        role_stop.set()
        await asyncio.wait({task})
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if isinstance(error, ConfigError):
            raise error
    return 1 if ended else 0


async def _run(role: Role, stop: asyncio.Event) -> None:
    try:
        await role.run(stop)
    except (asyncio.CancelledError, ConfigError):
        raise
    except Exception:
        log.exception("role %s failed", role.name)
        raise
