"""``python -m tests.bench [NAME...]``: run the benchmarks, print one table."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import platform
import sys
import uuid
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError

from streamproc import cli, kafka, topics
from streamproc.config import KafkaSettings, Settings, TopicSettings
from tests.bench import Row

# name -> module exporting `async def bench(settings) -> list[Row]`
BENCHMARKS = {
    "kafka": "tests.bench.kafka_baseline",
    "ticketmatic": "tests.bench.ticketmatic",
    "receiver": "tests.bench.receiver",
    "mapper": "tests.bench.mapper",
    "dedupe_memory": "tests.bench.dedupe_memory",
    "deliver": "tests.bench.deliver",
    "pipeline": "tests.bench.pipeline",
}


def machine() -> str:
    cpus = os.cpu_count() or 0
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), ""
            )
    except OSError:
        pass
    return f"{cpus} cores {model}, {mem_gib:.0f} GiB, Python {platform.python_version()}"


async def run(names: list[str], bootstrap: str) -> list[tuple[str, Row]]:
    rows: list[tuple[str, Row]] = []
    for name in names:
        settings = Settings(
            topic_prefix=f"bench{uuid.uuid4().hex[:6]}.",
            kafka=KafkaSettings(bootstrap_servers=bootstrap, client_id="streamproc-bench"),
            topics=TopicSettings(partitions=6),
        )
        module = importlib.import_module(BENCHMARKS[name])
        bench: Callable[[Settings], Awaitable[list[Row]]] = module.bench
        print(f"running {name}...", file=sys.stderr, flush=True)
        try:
            await topics.ensure(settings)
            rows += [(name, row) for row in await bench(settings)]
        finally:
            try:
                await drop_topics(settings)
            except KafkaError as exc:  # a failing benchmark's own error matters more
                print(f"could not delete {name}'s topics: {exc!r}", file=sys.stderr)
    return rows


async def drop_topics(settings: Settings) -> None:
    """Delete a benchmark's topics: a broker that ran ``make bench`` a hundred times would
    otherwise hold gigabytes and thousands of partitions, and take minutes to start."""
    client = kafka.admin(settings.kafka)
    await client.start()
    try:
        names = [t for t in await client.list_topics() if t.startswith(settings.topic_prefix)]
        if names:
            await client.delete_topics(names)
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(BENCHMARKS)}")
    port = os.environ.get("KAFKA_PORT", "9092")
    parser.add_argument("--bootstrap", default=f"127.0.0.1:{port}")
    args = parser.parse_args()
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark {', '.join(sorted(unknown))}")
    cli.tune_gc()  # what runs in this process (the map stage, the ceilings) runs as in ours
    rows = asyncio.run(run(args.names or list(BENCHMARKS), args.bootstrap))
    where = machine()
    print(f"\nmachine: {where}\n")
    print(f"| {'figure':<58} | {'value':>12} | {'unit':<10} | {'target':<22} |")
    print(f"|{'-' * 60}|{'-' * 14}|{'-' * 12}|{'-' * 24}|")
    for _name, row in rows:
        print(f"| {row.figure:<58} | {row.value:>12,.1f} | {row.unit:<10} | {row.target:<22} |")


if __name__ == "__main__":
    main()
