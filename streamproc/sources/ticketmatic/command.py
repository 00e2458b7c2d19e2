"""``streamproc poll``: Ticketmatic's eventstream into Kafka, exactly once, per account.

Serves ``/metrics``, ``/healthz`` and ``/readyz``; SIGTERM (or SIGINT) lets every account
finish its transaction in flight, leaves the poller group so that a standby replica takes
over at once, and exits 0.
"""

from __future__ import annotations

import argparse

from streamproc.config import Settings
from streamproc.errors import ConfigError, DecodeError
from streamproc.formats.ticketmatic import ts_ms
from streamproc.health import Health
from streamproc.roles import serve
from streamproc.sources.ticketmatic.service import PollService


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="poller group session timeout: a dead replica's accounts move after this "
        "(default 10; the broker's minimum is usually 6)",
    )
    parser.add_argument(
        "--backoff-base",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="first retry delay after a 5xx, timeout or malformed answer (default 0.5)",
    )
    parser.add_argument(
        "--lag-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between samples of the cursors topic for stuck transactions (default 5)",
    )


def check_accounts(settings: Settings, *, required: bool = True) -> None:
    """ConfigError for what would only fail later: no account (if ``required``), a bad
    start_ts, a name given twice. ``streamproc poll`` and ``streamproc run`` both check."""
    setting = "ticketmatic.accounts (STREAMPROC_TICKETMATIC_ACCOUNTS)"
    accounts = settings.ticketmatic.accounts
    if not accounts and required:
        raise ConfigError(setting, "no account to poll")
    names = [a.name for a in accounts]
    if len(set(names)) != len(names):
        raise ConfigError(setting, "an account name appears twice")
    for account in accounts:
        if account.start_ts:
            try:
                ts_ms(account.start_ts)
            except DecodeError as exc:
                raise ConfigError(f"{setting}: {account.name}.start_ts", exc.reason) from None


async def command(settings: Settings, args: argparse.Namespace) -> int:
    check_accounts(settings)
    health = Health()
    session_ms = int(args.session_timeout * 1000)
    service = PollService(
        settings,
        health=health,
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=max(500, session_ms // 4),
        backoff_base_s=args.backoff_base,
    )
    return await serve(settings, health, [service], lag_interval_s=args.lag_interval)
