"""``streamproc run``: every role in one process, one metrics port.

The roles are the same components the separate commands run: the Ticketmatic poller (when
accounts are configured), the Ticketure receiver (when senders are configured), the map
stage and delivery to mParticle, plus lag monitors for the two consumer groups. They
share one ``/metrics``, ``/healthz`` and ``/readyz``.

Shutdown (SIGTERM or Ctrl-C) goes from the edge inwards: the receiver stops accepting and
finishes its requests, the poller finishes its transactions, then the map stage and
delivery commit what they have done and leave their groups. A role that fails ends the
process (exit 1) after the others were stopped the same way, for the orchestrator to
restart it; nothing acknowledged is lost either way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from streamproc.config import Settings
from streamproc.errors import ConfigError
from streamproc.health import Health
from streamproc.lag import LagMonitor
from streamproc.lifecycle import stop_on_signals
from streamproc.mapper.processor import MapProcessor
from streamproc.sinks.mparticle.deliverer import Deliverer
from streamproc.sources.ticketmatic.command import check_accounts
from streamproc.sources.ticketmatic.ownership import group_id as poll_group
from streamproc.sources.ticketmatic.service import PollService
from streamproc.sources.ticketure.receiver import Receiver
from streamproc.startup import serving
from streamproc.topics import Topics

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lag-interval", type=float, default=5.0, help="seconds between lag samples (default 5)"
    )


def lag_monitors(
    settings: Settings, processor: MapProcessor, deliverer: Deliverer, interval_s: float
) -> list[LagMonitor]:
    """Monitors for the map and deliver groups, over the topics each of them reads (and the
    changelogs map and poll restore, for stuck transactions)."""
    names = Topics.for_prefix(settings.topic_prefix)
    sources = [names.ticketmatic, names.ticketure]
    return [
        LagMonitor(settings, processor.group_id, sources, interval_s, changelogs=[names.dedupe]),
        LagMonitor(settings, deliverer.group_id, [names.batches], interval_s),
        LagMonitor(settings, poll_group(settings), [], interval_s, changelogs=[names.cursors]),
    ]


async def command(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.mparticle.api_key or settings.mparticle.api_secret is None:
        raise ConfigError(
            "mparticle.api_key / api_secret (STREAMPROC_MPARTICLE_API_KEY, _API_SECRET)",
            "required to deliver",
        )
    check_accounts(settings, required=False)
    if not settings.ticketmatic.accounts and not settings.receiver.senders:
        raise ConfigError(
            "ticketmatic.accounts / receiver.senders",
            "neither a Ticketmatic account nor a push sender is configured: nothing to read",
        )
    stop = stop_on_signals()
    health = Health()
    edge_stop = asyncio.Event()
    core_stop = asyncio.Event()
    roles: dict[str, asyncio.Task[object]] = {}

    def spawn(name: str, run: Callable[[], Awaitable[object]]) -> None:
        roles[name] = asyncio.create_task(_named(name, run), name=name)

    async with serving(settings, health, stop) as up:
        if not up:
            return 0
        receiver = Receiver(settings, health) if settings.receiver.senders else None
        poller = PollService(settings, health=health) if settings.ticketmatic.accounts else None
        processor = MapProcessor(settings, health=health)
        deliverer = Deliverer(settings, health=health)
        monitors = lag_monitors(settings, processor, deliverer, args.lag_interval)
        async with contextlib.AsyncExitStack() as stack:
            for monitor in monitors:
                await stack.enter_async_context(monitor)
            await deliverer.start()
            stack.push_async_callback(deliverer.stop)
            await stack.enter_async_context(processor)
            spawn("map", lambda: processor.run(core_stop))
            if poller is not None:
                spawn("poll", lambda: poller.run(edge_stop))
            if receiver is not None:
                await receiver.start()
            log.info(
                "running: %s",
                ", ".join(
                    (["poll"] if poller else [])
                    + (["receive"] if receiver else [])
                    + ["map", "deliver"]
                ),
            )
            failed = await _wait(stop, [*roles.values(), deliverer.task])
            log.info("stopping: receiver and poller first, then map and deliver")
            if receiver is not None:
                await receiver.stop()
            edge_stop.set()
            if "poll" in roles:
                await _settle(roles["poll"])
            core_stop.set()
            await _settle(roles["map"])
    return 1 if failed else 0


async def _named(name: str, run: Callable[[], Awaitable[object]]) -> object:
    try:
        return await run()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("role %s failed", name)
        raise


async def _wait(stop: asyncio.Event, tasks: list[asyncio.Task[object]]) -> bool:
    """Wait for a stop signal or for a role to end; True if a role failed or ended early."""
    waiter = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({waiter, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    ended = [t for t in done if t is not waiter]
    for task in ended:
        log.error("role %s ended before shutdown", task.get_name())
    return bool(ended)


async def _settle(task: asyncio.Task[object]) -> None:
    with contextlib.suppress(Exception):
        await task
