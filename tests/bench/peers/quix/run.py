"""The Quix Streams peer of the map stage benchmark, driven from the project's venv.

:func:`quix_map` makes the peer's venv (``setup.sh``), starts ``app.py`` in it on the map
stage's input with a fresh consumer group, state directory and output topic, waits for its
one JSON line, then checks the output against streamproc's own plan of the same input
(:func:`check`): a peer that maps, dedupes or commits less cannot look fast.

    .venv/bin/python -m tests.bench.peers.quix.run --bootstrap localhost:19092 --items 40000

fills a fresh pair of input topics (6 partitions) with ``tests.bench.mapper``'s items,
runs the peer (``--runs`` times, each on its own group and output), optionally streamproc's
MapProcessor on the same input (``--streamproc``), prints the figures and deletes the
topics.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import orjson
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic

from streamproc import changelog, kafka, topics
from streamproc.config import KafkaSettings, Settings, TopicSettings
from streamproc.formats.envelope import Source
from streamproc.mapping.record import plan
from streamproc.mapping.router import Mapped, MappingContext, map_record
from streamproc.topics import Topics
from tests.bench import mapper as bench_mapper

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
VENV = ROOT / ".cache" / "peers" / "quix-venv"
WORK = ROOT / ".cache" / "peers" / "quix-runs"  # state directories and logs, per run
SETUP_TIMEOUT_S = 900.0


class PeerError(RuntimeError):
    """The peer failed, timed out, or produced something other than streamproc would."""


async def setup(timeout_s: float = SETUP_TIMEOUT_S) -> Path:
    """Run ``setup.sh`` (idempotent); return the peer venv's python."""
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(HERE / "setup.sh"),
        env={**os.environ, "QUIX_VENV": str(VENV)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise PeerError(f"setup.sh took more than {timeout_s:.0f} s") from None
    sys.stderr.write(out.decode(errors="replace"))
    if proc.returncode != 0:
        raise PeerError(f"setup.sh exited {proc.returncode}")
    return VENV / "bin" / "python"


def _settings(settings_or_bootstrap: Settings | str) -> Settings:
    if isinstance(settings_or_bootstrap, Settings):
        return settings_or_bootstrap
    return Settings(kafka=KafkaSettings(bootstrap_servers=settings_or_bootstrap))


def _inputs(settings: Settings, input_topic: str | Sequence[str] | None) -> list[str]:
    """The input topics: as given, else the map stage's two sources under the prefix."""
    if input_topic is None:
        names = Topics.for_prefix(settings.topic_prefix)
        return [names.ticketmatic, names.ticketure]
    return [input_topic] if isinstance(input_topic, str) else list(input_topic)


def source_of(topic: str) -> str:
    """As app.py: the source of a topic's records that carry no ``source`` header."""
    return Source.TICKETURE if topic.endswith("ticketure.audit") else Source.TICKETMATIC


async def fill(settings: Settings, items: int, duplicate_every: int = 0) -> int:
    """``items`` records of ``tests.bench.mapper``'s input into the prefix's two sources
    (one in five a Ticketure record), as its ``_produce`` writes them (topics ensured).

    ``duplicate_every`` > 0 sends every such item a second time, right after itself (a
    poller's redelivery: same key, headers and value), to exercise the dedupe. Returns the
    number of records written.
    """
    await topics.ensure(settings)
    names = Topics.for_prefix(settings.topic_prefix)
    producer = kafka.producer(settings.kafka, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        futures = []
        for i in range(items):
            ticketure = i % bench_mapper.TICKETURE_SHARE == 0
            make = bench_mapper._ticketure if ticketure else bench_mapper._ticketmatic
            value, key, headers = make(i)
            topic = names.ticketure if ticketure else names.ticketmatic
            futures.append(await producer.send(topic, value, key=key, headers=headers))
            if duplicate_every and i % duplicate_every == 0:
                futures.append(await producer.send(topic, value, key=key, headers=headers))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(futures)


async def _partitions(settings: Settings, names: Sequence[str]) -> list[TopicPartition]:
    client = kafka.admin(settings.kafka)
    await client.start()
    try:
        return await kafka.partitions(client, names)
    finally:
        await client.close()


async def _create(settings: Settings, name: str, partitions: int) -> None:
    client = kafka.admin(settings.kafka)
    await client.start()
    try:
        rf = settings.topics.replication_factor
        await client.create_topics([NewTopic(name, partitions, rf)])
    finally:
        await client.close()


async def _delete(settings: Settings, *, names: Sequence[str] = (), prefix: str = "") -> None:
    client = kafka.admin(settings.kafka)
    await client.start()
    try:
        existing = await client.list_topics()
        doomed = [t for t in existing if t in names or (prefix and t.startswith(prefix))]
        if doomed:
            await client.delete_topics(doomed)
    finally:
        await client.close()


async def _read(settings: Settings, tps: list[TopicPartition]) -> list[Any]:
    """Every committed record of ``tps`` (read_committed), in order per partition."""
    reader = kafka.consumer(settings.kafka, group_id=None)
    await reader.start()
    got: list[Any] = []
    try:
        await changelog.read_to_end(reader, tps, lambda tp, r: got.append(r), timeout_s=120)
    finally:
        await reader.stop()
    return got


def _digest(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, Any]]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in (key or b"", value or b"", repr(list(headers)).encode()):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


async def check(
    settings: Settings, inputs: Sequence[str], output: str, ctx: MappingContext
) -> dict[str, Any]:
    """The output topic against what streamproc's map stage would write for the inputs.

    Expected: for every input record, in order per partition, ``plan`` with
    ``map_record`` (the map stage's own path), a batch for each mapped item whose dedupe
    hash its partition has not seen. Read back (read_committed): every output record must
    match one expected batch in key, value and headers, sit in the partition streamproc's
    partitioner gives its key, and none may be missing or extra.
    """
    mapper = functools.partial(map_record, ctx=ctx)
    in_records = await _read(settings, await _partitions(settings, inputs))
    seen: dict[tuple[str, int], set[int]] = {}
    expected: Counter[str] = Counter()
    events = duplicates = 0
    for r in in_records:
        p = plan(source_of(r.topic), r.headers, r.value, mapper)
        if type(p.outcome) is not Mapped:
            continue
        ids = seen.setdefault((r.topic, r.partition), set())
        if p.dedupe in ids:
            duplicates += 1
            continue
        ids.add(p.dedupe)
        expected[_digest(p.key, p.outcome.batch, p.headers)] += 1
        events += len(orjson.loads(p.outcome.batch).get("events", ()))

    out_tps = await _partitions(settings, [output])
    out_records = await _read(settings, out_tps)
    order = sorted(tp.partition for tp in out_tps)
    keys = kafka.KeyPartitions()
    got: Counter[str] = Counter()
    got_events = misplaced = 0
    for r in out_records:
        got[_digest(r.key, r.value, r.headers)] += 1
        got_events += len(orjson.loads(r.value).get("events", ()))
        if keys.of(output, order, r.key) != r.partition:
            misplaced += 1
    missing = sum((expected - got).values())
    extra = sum((got - expected).values())
    return {
        "ok": not (missing or extra or misplaced) and got_events == events,
        "input_records": len(in_records),
        "expected_batches": sum(expected.values()),
        "expected_events": events,
        "expected_duplicates": duplicates,
        "output_batches": len(out_records),
        "output_events": got_events,
        "missing": missing,
        "extra": extra,
        "misplaced": misplaced,
    }


async def quix_map(
    settings_or_bootstrap: Settings | str,
    input_topic: str | Sequence[str] | None,
    items: int,
    *,
    timeout_s: float = 900.0,
    commit_interval: float | None = None,
    commit_every: int | None = None,
    verify: bool = True,
    keep_output: bool = False,
) -> dict[str, Any]:
    """Run the peer on ``input_topic`` (default: the prefix's two map stage sources) until
    ``items`` input records are processed and committed; return app.py's figures, with
    ``items_per_s``, ``cpu_us_per_item`` and (``verify``) the :func:`check` under
    ``"check"``. Raises PeerError if the peer fails, takes more than ``timeout_s``, or its
    output is not streamproc's.
    """
    settings = _settings(settings_or_bootstrap)
    inputs = _inputs(settings, input_topic)
    python = await setup()
    run = uuid.uuid4().hex[:8]
    group = f"{settings.topic_prefix}quix-peer-{run}"
    output = f"{settings.topic_prefix}quix-peer-{run}.batches"
    # Quix names its state's changelog topics changelog__<group>--<topic>--<store>.
    changelogs = f"changelog__{group}--"
    work = WORK / run
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "app.log"
    tps = await _partitions(settings, inputs)
    if not tps:
        raise PeerError(f"none of {inputs} exists")
    ctx = MappingContext.from_settings(settings)
    await _create(settings, output, max(tp.partition for tp in tps) + 1)
    cmd = [
        str(python),
        str(HERE / "app.py"),
        "--bootstrap",
        settings.kafka.bootstrap_servers,
        "--input",
        *inputs,
        "--output",
        output,
        "--group",
        group,
        "--items",
        str(items),
        "--state-dir",
        str(work / "state"),
        "--dedupe-ttl-s",
        str(settings.mapping.dedupe_window_s),
        "--mapping-context",
        msgspec.json.encode(ctx).decode(),
    ]
    if commit_interval is not None:
        cmd += ["--commit-interval", str(commit_interval)]
    if commit_every is not None:
        cmd += ["--commit-every", str(commit_every)]
    try:
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=asyncio.subprocess.PIPE, stderr=log_file, cwd=str(work)
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
            except TimeoutError:
                proc.kill()  # our own child, by its pid
                await proc.wait()
                raise PeerError(f"app.py ran over {timeout_s:.0f} s; see {log_path}") from None
        lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise PeerError(f"app.py exited {proc.returncode}; see {log_path}")
        result: dict[str, Any] = json.loads(lines[-1])
        result["items_per_s"] = result["items"] / result["seconds"]
        result["cpu_us_per_item"] = result["cpu_seconds"] / result["items"] * 1e6
        if verify:
            result["check"] = found = await check(settings, inputs, output, ctx)
            if not found["ok"] or result["mapped"] != found["expected_batches"]:
                raise PeerError(f"the peer's output is not streamproc's: {result}")
        return result
    finally:
        shutil.rmtree(work / "state", ignore_errors=True)
        await _delete(settings, names=[] if keep_output else [output], prefix=changelogs)


async def _streamproc(settings: Settings, items: int) -> dict[str, float]:
    """streamproc's MapProcessor on the same input, timed as tests.bench.mapper does."""
    bench_mapper.ITEMS = items  # read by _map_stage at call time
    run = await bench_mapper._map_stage(settings)
    return {"items_per_s": run.items_per_s, "cpu_us_per_item": run.cpu_us_per_item}


async def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the Quix Streams peer of the map stage")
    parser.add_argument("--bootstrap", default="localhost:19092")
    parser.add_argument("--items", type=int, default=bench_mapper.ITEMS)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--commit-interval", type=float, default=None)
    parser.add_argument("--commit-every", type=int, default=None)
    parser.add_argument("--streamproc", action="store_true", help="also run MapProcessor")
    parser.add_argument(
        "--duplicate-every", type=int, default=0, help="send every K-th item twice (dedupe)"
    )
    args = parser.parse_args(argv)
    settings = Settings(
        topic_prefix=f"benchquix{uuid.uuid4().hex[:6]}.",
        kafka=KafkaSettings(bootstrap_servers=args.bootstrap, client_id="streamproc-bench"),
        topics=TopicSettings(partitions=args.partitions),
    )
    try:
        started = time.perf_counter()
        records = await fill(settings, args.items, args.duplicate_every)
        print(f"filled {records} records in {time.perf_counter() - started:.1f} s", flush=True)
        for _ in range(args.runs):
            result = await quix_map(
                settings,
                None,
                records,
                commit_interval=args.commit_interval,
                commit_every=args.commit_every,
            )
            print(json.dumps(result), flush=True)
            print(
                f"quix peer: {result['items_per_s']:.0f} items/s, "
                f"{result['cpu_us_per_item']:.0f} us CPU/item, check ok",
                flush=True,
            )
        if args.streamproc:
            mine = await _streamproc(settings, records)
            print(
                f"streamproc map: {mine['items_per_s']:.0f} items/s, "
                f"{mine['cpu_us_per_item']:.0f} us CPU/item",
                flush=True,
            )
    finally:
        await _delete(settings, prefix=settings.topic_prefix)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
