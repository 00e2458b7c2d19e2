"""``streamproc sim ticketmatic``: :class:`~streamproc.sim.ticketmatic.TicketmaticSim` as a
command, serving until SIGTERM or SIGINT (then exit 0).

Accounts come from ``--account NAME:ACCESSKEY:SECRETKEY`` or else the settings'
``ticketmatic.accounts``; without any it exits 2, as with fault options that do not fit
(a ConfigError naming the option).
The fault options (``--misbehave MODE[:COUNT]``, ``--outage SECONDS`` and their
parameters) do at the start what ``TicketmaticSim.misbehave`` and ``outage`` do.
"""

from __future__ import annotations

import argparse
import logging

from streamproc.config import RETENTION_4H_S, Settings
from streamproc.errors import ConfigError
from streamproc.lifecycle import stop_on_signals
from streamproc.sim.eventstream import SimAccount
from streamproc.sim.faults import DEFAULT_DEPTH, DEFAULT_SIZE, MODES, PARAMS, Mode, parse_spec
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
    _add_fault_arguments(parser)


def _add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "fault modes, for one account (--fault-account) or each; see streamproc.sim.faults"
    )
    group.add_argument(
        "--misbehave",
        action="append",
        default=[],
        type=_spec,
        metavar="MODE[:COUNT]",
        help="answer the next COUNT (default 1) requests in fault MODE (repeatable, in turn):"
        f" {', '.join(MODES)}",
    )
    group.add_argument(
        "--fault-account", metavar="NAME", help="the account faults apply to (default: each)"
    )
    group.add_argument(
        "--oversized-size",
        type=int,
        metavar="BYTES",
        help=f"oversized: the body's size (default {DEFAULT_SIZE}: 64 MiB)",
    )
    group.add_argument(
        "--oversized-no-length",
        action="store_true",
        help="oversized: without a Content-Length header (chunked)",
    )
    group.add_argument(
        "--deep-depth",
        type=int,
        metavar="N",
        help=f"deep: how deep the body is nested (default {DEFAULT_DEPTH})",
    )
    group.add_argument(
        "--drip-chunk", type=int, metavar="BYTES", help="drip: bytes per write (default 1)"
    )
    group.add_argument(
        "--drip-interval",
        type=float,
        metavar="SECONDS",
        help="drip: seconds between writes (default 1)",
    )
    group.add_argument(
        "--retry-after-text",
        metavar="TEXT",
        help="retry_after: the Retry-After header as given (99999999, 1e999, inf, -5, soon,"
        " an HTTP date...)",
    )
    group.add_argument(
        "--outage",
        type=float,
        metavar="SECONDS",
        help="for SECONDS from the start, answer every request --outage-status",
    )
    group.add_argument(
        "--outage-status",
        type=int,
        default=503,
        metavar="STATUS",
        help="the outage's status, with Ticketmatic's error JSON (default 503)",
    )
    group.add_argument(
        "--outage-reset",
        action="store_true",
        help="during the outage, drop each connection without an answer instead",
    )


def _spec(text: str) -> tuple[Mode, int]:
    try:
        return parse_spec(text)
    except ValueError as exc:  # argparse would only say "invalid _spec value"
        raise argparse.ArgumentTypeError(str(exc)) from None


def schedule_faults(sim: TicketmaticSim, args: argparse.Namespace) -> None:
    """Queue on ``sim`` the faults the options ask for: each ``--misbehave`` with the
    parameters of its mode, and the outage, from now. ValueError if one does not fit,
    KeyError for an unknown ``--fault-account``."""
    given = {
        "size": args.oversized_size,
        "content_length": False if args.oversized_no_length else None,
        "depth": args.deep_depth,
        "chunk": args.drip_chunk,
        "interval": args.drip_interval,
        "value": args.retry_after_text,
    }
    for mode, count in args.misbehave:
        params = {k: v for k, v in given.items() if v is not None and k in PARAMS[mode]}
        sim.misbehave(mode, count=count, account=args.fault_account, **params)
    if args.outage is not None:
        sim.outage(
            args.outage, args.outage_status, reset=args.outage_reset, account=args.fault_account
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
    try:
        schedule_faults(sim, args)
    except KeyError:
        raise ConfigError("--fault-account", f"no account {args.fault_account}") from None
    except ValueError as exc:
        raise ConfigError("--misbehave/--outage", str(exc)) from None
    stop = stop_on_signals()
    async with sim:
        print(f"Ticketmatic simulator listening on {sim.url}", flush=True)
        await stop.wait()
    return 0
