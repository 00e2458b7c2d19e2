"""``streamproc deliver``: the batches topic to mParticle's Events API, until SIGTERM.

Serves ``/metrics``, ``/healthz`` and ``/readyz`` (not ready while mParticle refuses the
credentials) and samples the group's lag and retention headroom (:class:`LagMonitor`).
SIGTERM: stop fetching, finish or abandon in-flight requests within the shutdown bound,
commit, leave the group, exit 0.
"""

from __future__ import annotations

import argparse

from streamproc.config import Settings
from streamproc.errors import ConfigError
from streamproc.health import Health
from streamproc.lag import LagMonitor
from streamproc.lifecycle import stop_on_signals, wait_any
from streamproc.sinks.mparticle.deliverer import Deliverer
from streamproc.startup import serving


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--group-id",
        metavar="ID",
        help="consumer group (default: {topic_prefix}streamproc-deliver)",
    )
    parser.add_argument(
        "--lag-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between samples of the group's lag and retention headroom",
    )


async def command(settings: Settings, args: argparse.Namespace) -> int:
    mp = settings.mparticle
    if not mp.api_key:
        raise ConfigError("mparticle.api_key (STREAMPROC_MPARTICLE_API_KEY)", "required to deliver")
    if mp.api_secret is None:
        raise ConfigError(
            "mparticle.api_secret (STREAMPROC_MPARTICLE_API_SECRET)", "required to deliver"
        )
    health = Health()
    stop = stop_on_signals()
    deliverer = Deliverer(
        settings,
        health=health,
        group_id=args.group_id,
    )
    monitor = LagMonitor(
        settings, deliverer.group_id, [deliverer.topics.batches], interval_s=args.lag_interval
    )
    async with serving(settings, health, stop) as up:
        if not up:
            return 0
        async with monitor:
            await deliverer.start()
            try:
                await wait_any(stop, deliverer.task)
            finally:
                await deliverer.stop()
    return 0
