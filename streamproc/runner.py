"""``streamproc run``: every role in one process, one metrics port.

The roles are the same components the separate commands run (:mod:`streamproc.roles`):
the Ticketure receiver (when senders are configured), the Ticketmatic poller (when
accounts are configured), the map stage and delivery to mParticle, each with the lag
monitors it asks for. They share one ``/metrics``, ``/healthz`` and ``/readyz``.

Shutdown (SIGTERM or Ctrl-C) goes from the edge inwards: the receiver stops accepting and
finishes its requests, the poller finishes its transactions, then the map stage and
delivery commit what they have done and leave their groups. A role that fails ends the
process (exit 1) after the others were stopped the same way, for the orchestrator to
restart it; nothing acknowledged is lost either way.
"""

from __future__ import annotations

import argparse

from streamproc.config import Settings
from streamproc.errors import ConfigError
from streamproc.health import Health
from streamproc.mapper.processor import MapProcessor
from streamproc.roles import Role, serve
from streamproc.sinks.mparticle.command import check_credentials
from streamproc.sinks.mparticle.deliverer import Deliverer
from streamproc.sources.ticketmatic.command import check_accounts
from streamproc.sources.ticketmatic.service import PollService
from streamproc.sources.ticketure.receiver import Receiver


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lag-interval", type=float, default=5.0, help="seconds between lag samples (default 5)"
    )


def roles(settings: Settings, health: Health) -> list[Role]:
    """The roles configured, in the order they stop: the edge first, delivery last."""
    edge: list[Role] = []
    if settings.receiver.senders:
        edge.append(Receiver(settings, health))
    if settings.ticketmatic.accounts:
        edge.append(PollService(settings, health=health))
    return [*edge, MapProcessor(settings, health=health), Deliverer(settings, health=health)]


async def command(settings: Settings, args: argparse.Namespace) -> int:
    check_credentials(settings)
    check_accounts(settings, required=False)
    if not settings.ticketmatic.accounts and not settings.receiver.senders:
        raise ConfigError(
            "ticketmatic.accounts / receiver.senders",
            "neither a Ticketmatic account nor a push sender is configured: nothing to read",
        )
    health = Health()
    return await serve(settings, health, roles(settings, health), lag_interval_s=args.lag_interval)
