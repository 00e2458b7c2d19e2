"""What a chaos run does, from ``CHAOS_*`` variables or the command line.

Every option has a variable (the Makefile passes them through) and a flag of the same
name: ``CHAOS_SEED`` / ``--seed``. Without a seed one is drawn and printed, so any run can
be repeated: the seed fixes the fault plan and the simulated data, not the machine's
timing.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Options:
    seed: int
    items: int  # at least this many source items in all
    fault_seconds: float  # faults and new input stop this long after the roles are up
    drain_limit_s: float  # fail if not drained this long after the last fault
    broker_restarts: int
    outage_seconds: float  # the mParticle outage
    kill_every_s: tuple[float, float]  # a role SIGKILLed every so many seconds (range)
    partitions: int
    log_dir: Path | None  # None: a temporary folder, kept if the run fails

    @property
    def backlog_per_account(self) -> int:
        """Items each Ticketmatic account holds when the run starts (40 % of the total)."""
        return math.ceil(self.items * 0.2)

    @property
    def live_per_account(self) -> int:
        """Items each Ticketmatic account gains while faults run (30 % of the total)."""
        return math.ceil(self.items * 0.15)

    @property
    def pushes(self) -> int:
        """Ticketure pushes (30 %; a push holds one record, or two for a transfer)."""
        return max(1, self.items - 2 * (self.backlog_per_account + self.live_per_account))


# flag, variable, type, default, help: every option can come from its variable (make chaos).
FLAGS: tuple[tuple[str, str, type, float, str], ...] = (
    (
        "--items",
        "CHAOS_ITEMS",
        int,
        12_000,
        "source items in all: 70 %% Ticketmatic, 30 %% Ticketure",
    ),
    ("--seconds", "CHAOS_SECONDS", float, 150, "seconds of faults and of live input"),
    (
        "--drain-limit",
        "CHAOS_DRAIN_LIMIT",
        float,
        240,
        "fail if not drained this long after the last fault",
    ),
    (
        "--broker-restarts",
        "CHAOS_BROKER_RESTARTS",
        int,
        2,
        "broker stops and starts, SIGTERM and SIGKILL in turn",
    ),
    ("--outage", "CHAOS_OUTAGE_SECONDS", float, 30, "seconds mParticle answers 503"),
    (
        "--kill-every",
        "CHAOS_KILL_EVERY",
        float,
        5,
        "mean seconds between SIGKILLs of a random role",
    ),
    ("--partitions", "CHAOS_PARTITIONS", int, 4, "partitions of every topic"),
)


def parse(argv: list[str] | None, env: Mapping[str, str]) -> Options:
    """Options from ``argv``, defaults from ``env`` (``CHAOS_*``); SystemExit if they do not fit."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos",
        description="The pipeline under faults: every role killed, the broker restarted, "
        "mParticle down; then a verdict on what was lost or duplicated.",
    )
    seed_text = env.get("CHAOS_SEED", "").strip()
    parser.add_argument(
        "--seed",
        type=int,
        default=int(seed_text) if seed_text else random.SystemRandom().randrange(1, 10**6),
        help="seed of the fault plan and the data (CHAOS_SEED; default: drawn and printed)",
    )
    for flag, variable, kind, default, text in FLAGS:
        given = env.get(variable, "").strip()
        parser.add_argument(
            flag,
            type=kind,
            default=kind(given) if given else kind(default),
            help=f"{text} ({variable}, {default:g})",
        )
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=Path(env["CHAOS_LOG_DIR"]) if env.get("CHAOS_LOG_DIR") else None,
        help="where the run's folder goes (CHAOS_LOG_DIR; default: the temporary folder)",
    )
    args = parser.parse_args(argv)
    if args.items < 10 or args.seconds < 20 or args.kill_every <= 0.5:
        parser.error("--items at least 10, --seconds at least 20, --kill-every over 0.5")
    # The 429 storm takes up to a fifth of the window in its first 55 %, the outage follows.
    if args.outage > 0.45 * args.seconds - 5 or args.broker_restarts < 0 or args.partitions < 2:
        parser.error("--outage at most 45 % of --seconds less 5 s; --partitions at least 2")
    return Options(
        seed=args.seed,
        items=args.items,
        fault_seconds=args.seconds,
        drain_limit_s=args.drain_limit,
        broker_restarts=args.broker_restarts,
        outage_seconds=args.outage,
        kill_every_s=(args.kill_every * 0.5, args.kill_every * 1.5),
        partitions=args.partitions,
        log_dir=args.log_dir,
    )
