"""``streamproc receive``: the Ticketure push receiver as a process.

Serves the push routes on ``receiver.host:receiver.port`` and ``/metrics``, ``/healthz``,
``/readyz`` on ``metrics_host:metrics_port``. Without any configured sender every push
would be refused, so that is a configuration error. SIGTERM or SIGINT: stop accepting,
finish the requests in flight, flush, exit 0.
"""

from __future__ import annotations

import argparse

from streamproc.config import Settings, env_name
from streamproc.errors import ConfigError
from streamproc.health import Health
from streamproc.roles import serve
from streamproc.sources.ticketure.receiver import Receiver


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen on this address (default: receiver.host)")
    parser.add_argument("--port", type=int, help="listen on this port (default: receiver.port)")


async def command(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.receiver.senders:
        setting = env_name(("receiver", "senders"))
        raise ConfigError(
            f"receiver.senders ({setting})",
            "no sender is configured, so every push would be refused; add one, e.g. "
            f'{setting}=\'[{{"name": "ticketure", "auth": "basic", "key": "...", '
            '"secret": "..."}]\'',
        )
    health = Health()
    receiver = Receiver(settings, health, host=args.host, port=args.port)
    return await serve(settings, health, [receiver])
