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
from streamproc.roles import serve
from streamproc.sinks.mparticle.deliverer import Deliverer


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


def check_credentials(settings: Settings) -> None:
    """ConfigError unless mParticle's key and secret are set (``deliver`` and ``run``)."""
    mp = settings.mparticle
    if not mp.api_key:
        raise ConfigError("mparticle.api_key (STREAMPROC_MPARTICLE_API_KEY)", "required to deliver")
    if mp.api_secret is None:
        raise ConfigError(
            "mparticle.api_secret (STREAMPROC_MPARTICLE_API_SECRET)", "required to deliver"
        )


async def command(settings: Settings, args: argparse.Namespace) -> int:
    check_credentials(settings)
    health = Health()
    deliverer = Deliverer(settings, health=health, group_id=args.group_id)
    return await serve(settings, health, [deliverer], lag_interval_s=args.lag_interval)
