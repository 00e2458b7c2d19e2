"""``streamproc sim ticketmatic``: :class:`~streamproc.sim.ticketmatic.TicketmaticSim` as a
command, serving until SIGTERM or SIGINT (then exit 0).

Accounts come from ``--account NAME:ACCESSKEY:SECRETKEY`` or else the settings'
``ticketmatic.accounts``; without any it exits 2.
"""

from __future__ import annotations

import argparse
import logging

from streamproc.config import RETENTION_4H_S, Settings
from streamproc.lifecycle import stop_on_signals
from streamproc.sim.eventstream import SimAccount
from streamproc.sim.ticketmatic import TicketmaticSim

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="NAME:ACCESSKEY:SECRETKEY",
        help="an account to serve (repeatable; default: ticketmatic.accounts from the settings)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="listen port (default 8765)")
    parser.add_argument(
        "--page-size", type=int, default=1000, help="items per page at most (default 1000)"
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="items generated per second per account (default 0)"
    )
    parser.add_argument(
        "--backlog", type=int, default=0, help="items per account at the start (default 0)"
    )
    parser.add_argument(
        "--backlog-span",
        type=float,
        default=3600.0,
        help="seconds the backlog is spread over (default 3600)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of sessions and random faults (default 0)"
    )
    parser.add_argument(
        "--retention",
        type=float,
        default=RETENTION_4H_S,
        help="seconds items are kept (default 14400: 4 h)",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="divide the retention by this (3600: 4 h pass in 4 s)",
    )
    parser.add_argument(
        "--p429", type=float, default=0.0, help="share of requests answered 429 (default 0)"
    )
    parser.add_argument(
        "--p5xx", type=float, default=0.0, help="share of requests answered 5xx (default 0)"
    )
    parser.add_argument(
        "--retry-after", type=float, default=1.0, help="Retry-After of a 429, seconds (default 1)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds before each answer (default 0)"
    )
    parser.add_argument(
        "--nextid",
        choices=["after", "last"],
        default="after",
        help="nextid = the id after the last item, as documented (default), or the last"
        " item itself, which the next page then serves again",
    )
    parser.add_argument(
        "--unknown-types",
        type=float,
        default=0.0,
        help="share of items with undocumented types (default 0)",
    )


async def command(settings: Settings, args: argparse.Namespace) -> int:
    accounts = [SimAccount.parse(a) for a in args.account] or [
        SimAccount(a.name, a.access_key, a.secret_key.reveal())
        for a in settings.ticketmatic.accounts
    ]
    if not accounts:
        log.error("no account: pass --account NAME:ACCESSKEY:SECRETKEY or configure some")
        return 2
    sim = TicketmaticSim(
        accounts,
        host=args.host,
        port=args.port,
        page_size=args.page_size,
        rate=args.rate,
        seed=args.seed,
        retention_s=args.retention,
        time_scale=args.time_scale,
        p429=args.p429,
        p5xx=args.p5xx,
        retry_after_s=args.retry_after,
        latency_s=args.latency,
        nextid=args.nextid,
        unknown_fraction=args.unknown_types,
    )
    for account in accounts:
        if args.backlog:
            sim.generate(
                account.name, args.backlog, span_s=min(args.backlog_span, sim.retention_s / 2)
            )
    stop = stop_on_signals()
    async with sim:
        print(f"Ticketmatic simulator listening on {sim.url}", flush=True)
        await stop.wait()
    return 0
