"""``python -m tests.bench.peers [--pairs N] [STAGE...]``: each stage against the tool a user
would pick instead, in interleaved pairs on this machine and broker, output checked on
both sides; prints the ratios (min / median / max of the pairs).

- receive: ``streamproc receive`` against Redpanda Connect's http_server -> Kafka, rebuilt
  from its open engine (tests/bench/peers/connect), under the same wrk load (receive.py);
  receive-bulk: the same with pushes of 20 records (the peer splits the array);
- map: streamproc's map stage against Quix Streams 3.28.1 exactly-once with RocksDB
  dedupe calling streamproc's own mapping (tests/bench/peers/quix), and against the bare
  aiokafka consume -> transactional produce loop (the ceiling), on the same 40,000 items;
  both outputs are compared record for record with what the mapping gives;
- deliver: ``streamproc deliver`` against the peer's Kafka -> http_client (JSON arrays of
  100) into the same mParticle simulator, 100,000 batches; repeats counted on both.

``make bench-peers`` builds what it needs (wrk from Debian, the peer from the Go module
proxy, Quix Streams into a venv of its own) and runs this against the local broker.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence

import aiohttp
import msgspec

from streamproc import topics
from streamproc.config import KafkaSettings, Settings, TopicSettings
from streamproc.mapping.router import MappingContext
from streamproc.topics import Topics
from tests.bench import deliver as bench_deliver
from tests.bench import mapper as bench_mapper
from tests.bench.__main__ import machine
from tests.bench.peers import receive
from tests.bench.peers.quix import run as quix
from tests.localkafka import free_port

TARGETS = {
    "receive": 1.0,
    "receive/bulk": 1.0,
    "map/quix": 1.5,
    "map/ceiling": 0.8,
    "deliver": 2.0,
}


class Pair(msgspec.Struct):
    ours: float
    peer: float
    ours_cpu_us: float = 0.0
    peer_cpu_us: float = 0.0


def fresh(bootstrap: str) -> Settings:
    return Settings(
        topic_prefix=f"peers{uuid.uuid4().hex[:6]}.",
        kafka=KafkaSettings(bootstrap_servers=bootstrap, client_id="streamproc-bench-peers"),
        topics=TopicSettings(partitions=6),
    )


async def receive_pair(bootstrap: str, n: int, per_push: int = 1) -> dict[str, Pair]:
    # Interleaved, alternating who goes first, so a drift of the machine weighs on both.
    sides = (receive.streamproc_receive, receive.connect_receive)[:: 1 if n % 2 else -1]
    a = await sides[0](fresh(bootstrap), per_push)
    b = await sides[1](fresh(bootstrap), per_push)
    ours, peer = (a, b) if n % 2 else (b, a)
    stage = "receive" if per_push == 1 else "receive/bulk"
    return {
        stage: Pair(
            ours.events_per_s, peer.events_per_s, ours.cpu_us_per_event, peer.cpu_us_per_event
        )
    }


async def receive_bulk_pair(bootstrap: str, n: int) -> dict[str, Pair]:
    return await receive_pair(bootstrap, n, receive.BULK)


async def map_pair(bootstrap: str, n: int) -> dict[str, Pair]:
    settings = fresh(bootstrap)
    await topics.ensure(settings)
    await bench_mapper._produce(settings)
    names = Topics.for_prefix(settings.topic_prefix)
    inputs = [names.ticketmatic, names.ticketure]
    ours = await bench_mapper._map_stage(settings)
    found = await quix.check(
        settings, inputs, names.batches, MappingContext.from_settings(settings)
    )
    if not found["ok"]:
        raise RuntimeError(f"streamproc map's output is not what its mapping gives: {found}")
    peer = await quix.quix_map(settings, inputs, bench_mapper.ITEMS)  # checks its own output
    ceiling = await bench_mapper._ceiling(settings)  # writes after the check above
    return {
        "map/quix": Pair(
            ours.items_per_s, peer["items_per_s"], ours.cpu_us_per_item, peer["cpu_us_per_item"]
        ),
        "map/ceiling": Pair(
            ours.items_per_s, ceiling.items_per_s, ours.cpu_us_per_item, ceiling.cpu_us_per_item
        ),
    }


async def deliver_pair(bootstrap: str, n: int) -> dict[str, Pair]:
    settings = fresh(bootstrap)
    await topics.ensure(settings)
    batches = bench_deliver.BATCHES
    await bench_deliver._produce(settings, [bench_deliver._batch(i) for i in range(batches)])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key, secret = bench_deliver.API_KEY, bench_deliver.API_SECRET
    sim = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "streamproc.cli", "sim", "mparticle", "--port", str(port)],
        *["--api-key", key, "--api-secret", secret, "--no-validate"],
        *["--rate-limit", "0", "--max-stored", "0"],
        env=bench_deliver._env(settings),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert sim.stdout is not None
        await asyncio.wait_for(sim.stdout.readline(), 30)
        async with aiohttp.ClientSession() as http:
            in_flight = settings.mparticle.max_in_flight
            await bench_deliver._reset(http, url)
            group = f"{settings.topic_prefix}bench-deliver"
            ours = await bench_deliver._deliver_once(settings, http, sim.pid, url, group, in_flight)
            await bench_deliver._reset(http, url)
            peer_rate, peer_cpu, peer_repeats = await _connect_deliver(
                settings, http, url, key, secret, batches
            )
    finally:
        sim.terminate()
        await sim.wait()
    if ours.repeats or peer_repeats:
        print(f"deliver repeats: streamproc {ours.repeats}, peer {peer_repeats}", file=sys.stderr)
    return {"deliver": Pair(ours.rate, peer_rate, ours.deliver_us, peer_cpu)}


async def _connect_deliver(
    settings: Settings, http: aiohttp.ClientSession, url: str, key: str, secret: str, n: int
) -> tuple[float, float, int]:
    """The peer over the whole topic: (events/s by the simulator's clock, CPU us per batch,
    repeats the simulator saw)."""
    env = {
        **os.environ,
        "PEER_KAFKA_BROKERS": settings.kafka.bootstrap_servers,
        "PEER_TOPIC": Topics.for_prefix(settings.topic_prefix).batches,
        "PEER_GROUP": f"{settings.topic_prefix}peer-deliver",
        "PEER_DELIVER_URL": f"{url}/v2/bulkevents",
        "PEER_API_KEY": key,
        "PEER_API_SECRET": secret,
        "PEER_MAX_IN_FLIGHT": str(settings.mparticle.max_in_flight),
    }
    proc = await asyncio.create_subprocess_exec(
        str(receive.PEER), "-c", str(receive.CONFIGS / "deliver.yaml"), env=env
    )
    try:
        first = await bench_deliver._wait_started(http, url, 120)
        cpu = bench_deliver._cpu_s(proc.pid)
        rate = await bench_deliver._wait_stored(http, url, n, 600)
        cpu_us = (bench_deliver._cpu_s(proc.pid) - cpu) * 1e6 / max(1, n - first)
        repeats = int((await bench_deliver._stats(http, url))["duplicates"])
    finally:
        proc.terminate()  # our own child, by its pid
        await proc.wait()
    return rate, cpu_us, repeats


STAGES: dict[str, Callable[[str, int], object]] = {
    "receive": receive_pair,
    "receive-bulk": receive_bulk_pair,
    "map": map_pair,
    "deliver": deliver_pair,
}


def report(pairs: dict[str, list[Pair]], seconds: float, load: float) -> str:
    lines = [
        f"machine: {machine()}; load average at the start: {load:.2f}, at the end: "
        f"{os.getloadavg()[0]:.2f}",
        f"{'stage':<12} {'streamproc':>11} {'peer':>11} {'ratio min/median/max':>24}"
        f" {'target':>7} {'CPU us ours/peer':>17}",
    ]
    unit = {"receive": "events/s, 1 a push", "receive/bulk": "events/s, 20 a push"}
    for stage, got in pairs.items():
        ratios = [p.ours / p.peer for p in got]
        median = statistics.median
        ours, peer = median(p.ours for p in got), median(p.peer for p in got)
        lines.append(
            f"{stage:<12} {ours:>11,.0f} {peer:>11,.0f}"
            f" {min(ratios):>8.2f}/{median(ratios):.2f}/{max(ratios):.2f}x"
            f" {'>= ' + str(TARGETS[stage]) + 'x':>7}"
            f" {median(p.ours_cpu_us for p in got):>8.1f}/{median(p.peer_cpu_us for p in got):.1f}"
            f"  ({unit.get(stage, 'items/s' if stage.startswith('map') else 'events/s')},"
            f" {len(got)} pairs)"
        )
    lines.append(f"took {seconds:.0f} s")
    return "\n".join(lines)


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stages", nargs="*", help=f"of {', '.join(STAGES)} (default: all)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--bootstrap", default=f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}")
    args = parser.parse_args(argv)
    args.stages = args.stages or list(STAGES)
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        parser.error(f"no stage {unknown}: choose from {', '.join(STAGES)}")
    for tool in (receive.WRK, receive.PEER):
        if not tool.is_file():
            print(f"{tool} is missing: `make bench-peers` builds it", file=sys.stderr)
            return 2
    started, load = time.monotonic(), os.getloadavg()[0]
    pairs: dict[str, list[Pair]] = {}
    for stage in args.stages:
        for n in range(args.pairs):
            print(f"{stage}: pair {n + 1} of {args.pairs}...", file=sys.stderr, flush=True)
            got = await STAGES[stage](args.bootstrap, n)  # type: ignore[misc]
            for name, pair in got.items():
                pairs.setdefault(name, []).append(pair)
    print(report(pairs, time.monotonic() - started, load))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
