"""``streamproc map``: map and dedupe both sources into mParticle batches, exactly once.

Joins the consumer group ``<prefix>streamproc-map`` (scale by adding processes, up to the
partition count) and serves ``/metrics``, ``/healthz`` and ``/readyz`` on
``metrics_host:metrics_port``; ``/readyz`` is 503, naming the partitions and the reason,
while an assigned partition is not set up yet. SIGTERM or SIGINT: stop polling, finish (or
after ``--shutdown-timeout`` abort) the transactions in flight, leave the group, exit 0.

Each partition is set up on its own (fence, restore its dedupe state, committed offset),
each try bounded by ``--restore-timeout``, and retried with backoff for as long as it
fails while the others are mapped (``streamproc_map_partition_waiting_seconds``, alert
MapPartitionNotSetUp). A partition whose transactions keep failing for
``--retry-timeout`` seconds ends the process with exit code 1, for the orchestrator to
restart it with fresh clients. No input record can: one it cannot handle is dead-lettered
with its reason (see :mod:`streamproc.mapper.transaction`).
"""

from __future__ import annotations

import argparse

from streamproc.config import Settings
from streamproc.health import Health
from streamproc.mapper.processor import MapProcessor
from streamproc.roles import serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-records", type=int, default=2000, help="records per poll and per transaction"
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=20.0,
        help="seconds to let transactions in flight finish on SIGTERM",
    )
    parser.add_argument(
        "--lag-interval", type=float, default=5.0, help="seconds between lag samples (default 5)"
    )
    parser.add_argument(
        "--retry-timeout",
        type=float,
        default=300.0,
        help="seconds a partition's transactions may keep failing before the process gives up",
    )
    parser.add_argument(
        "--restore-timeout",
        type=float,
        default=120.0,
        help="seconds one try at setting a partition up may take (default 120; retried)",
    )


async def command(settings: Settings, args: argparse.Namespace) -> int:
    health = Health()
    processor = MapProcessor(
        settings,
        health=health,
        max_records=args.max_records,
        txn_max_records=args.max_records,
        shutdown_timeout_s=args.shutdown_timeout,
        retry_timeout_s=args.retry_timeout,
        restore_timeout_s=args.restore_timeout,
    )
    return await serve(settings, health, [processor], lag_interval_s=args.lag_interval)
