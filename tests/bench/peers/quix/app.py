"""streamproc's map stage done with Quix Streams 3.28.1: the peer of ``tests.bench.mapper``.

Runs in the peer's own venv (``setup.sh``), started by ``run.py``::

    python app.py --bootstrap HOST:PORT --input TOPIC [TOPIC...] --output TOPIC \\
        --group G --items N --state-dir DIR

One ``StreamingDataFrame`` per input topic (the map stage reads ``ticketmatic.eventstream``
and ``ticketure.audit``), each doing what one record costs streamproc's map stage:

- ``streamproc.mapping.record.plan`` with ``streamproc.mapping.router.map_record`` and a
  ``MappingContext``, exactly as ``streamproc.mapper.transaction`` calls it: the source,
  item id and account from the poller's/receiver's headers, the mapping, the output key
  (the mapped user), the batch's headers and the 64-bit dedupe hash of ``(source, id)``;
- dedupe in Quix's RocksDB state (``apply(stateful=True)``, changelog-backed): a mapped
  item whose hash the state holds is dropped, else its hash is stored (with an event-time
  TTL of the dedupe window, streamproc's ``mapping.dedupe_window_s``);
- the batch to ``--output`` keyed by the mapped user, with the plan's headers
  (``set_headers`` + ``to_topic(key=...)``; Quix's producer partitions by murmur2, as
  streamproc's ``KeyPartitions`` does).

Exactly-once: ``Application(processing_guarantee="exactly-once")``: one transactional
producer; each checkpoint (``commit_interval`` / ``commit_every``) commits the outputs, the
state changelog records and the consumed offsets in one Kafka transaction, and flushes the
state to RocksDB after it. Reads are ``read_committed`` (librdkafka's default).

Stopping: the stateful step counts input records; at the N-th it calls ``app.stop()``;
that record still runs to ``to_topic``, the poll loop ends and ``Application.run``
force-commits the checkpoint before it returns. (``app.run(count=N)`` counts OUTPUTS, so
duplicates or unmapped items would keep it waiting: it is not used.)

Output, one JSON line on stdout: items, seconds (first record to the end of the last
commit), cpu_seconds (this process, same span), mapped (batches produced), duplicates,
and what else was counted.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from datetime import timedelta
from typing import Any

import msgspec
from quixstreams import Application  # type: ignore[import-not-found,unused-ignore]
from quixstreams.checkpointing import (  # type: ignore[import-not-found,unused-ignore]
    Checkpoint,
)
from quixstreams.models.serializers import (  # type: ignore[import-not-found,unused-ignore]
    Serializer,
)

from streamproc.config import Settings
from streamproc.formats.envelope import Source
from streamproc.mapping.record import Plan, plan
from streamproc.mapping.router import Mapped, MappingContext, Unknown, map_record


class _Stats:
    def __init__(self) -> None:
        self.items = 0
        self.mapped = 0
        self.duplicates = 0
        self.unknown = 0
        self.unmappable = 0
        self.commits = 0
        self.first = 0.0  # perf_counter at the first record
        self.first_cpu = 0.0
        self.last_commit = 0.0  # perf_counter at the end of the last checkpoint commit
        self.last_commit_cpu = 0.0


STATS = _Stats()


def _timed_commits() -> None:
    """Note when each checkpoint commit ends (instrumentation only: the commit is Quix's)."""
    commit = Checkpoint.commit

    @functools.wraps(commit)
    def timed(self: Checkpoint, *args: Any, **kwargs: Any) -> Any:
        result = commit(self, *args, **kwargs)
        STATS.commits += 1
        STATS.last_commit, STATS.last_commit_cpu = time.perf_counter(), time.process_time()
        return result

    Checkpoint.commit = timed  # type: ignore[method-assign,unused-ignore]


class _BatchValue(Serializer):  # type: ignore[misc,unused-ignore]
    """The output value: the plan's encoded mParticle batch, as it is."""

    def __call__(self, value: Plan, ctx: Any) -> bytes:
        assert isinstance(value.outcome, Mapped)
        return value.outcome.batch


def _source_of(topic: str) -> str:
    """The source an input topic's items come from when a record has no ``source`` header
    (streamproc's map stage knows it from the topic, as here)."""
    return Source.TICKETURE if topic.endswith("ticketure.audit") else Source.TICKETMATIC


def build(args: argparse.Namespace) -> Application:
    ctx = (
        msgspec.json.decode(args.mapping_context, type=MappingContext)
        if args.mapping_context
        else MappingContext.from_settings(Settings())
    )
    mapper = functools.partial(map_record, ctx=ctx)
    ttl = timedelta(seconds=args.dedupe_ttl_s) if args.dedupe_ttl_s > 0 else None
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        state_dir=args.state_dir,
        commit_interval=args.commit_interval,
        commit_every=args.commit_every,
        loglevel=args.loglevel,
        auto_create_topics=True,  # the changelog topics; run.py creates the output
    )
    output = app.topic(args.output, key_serializer="bytes", value_serializer=_BatchValue())
    stats, limit = STATS, args.items

    def step(
        source: str, value: bytes, key: Any, timestamp: int, headers: Any, state: Any
    ) -> tuple[Plan, ...]:
        if not stats.items:
            stats.first, stats.first_cpu = time.perf_counter(), time.process_time()
        stats.items += 1
        if stats.items >= limit:
            app.stop()  # this record still goes on to the output; then the final commit
        p = plan(source, headers or (), value, mapper)
        outcome = p.outcome
        if type(outcome) is Mapped:
            if state.exists(p.dedupe):
                stats.duplicates += 1
                return ()
            state.set(p.dedupe, 1, ttl=ttl)
            stats.mapped += 1
            return (p,)
        if type(outcome) is Unknown:
            stats.unknown += 1
        else:  # Unmappable: streamproc dead-letters it; the peer only counts it
            stats.unmappable += 1
        return ()

    for name in args.input:
        topic = app.topic(name, key_deserializer="bytes", value_deserializer="bytes")
        sdf = app.dataframe(topic)
        sdf = sdf.apply(
            functools.partial(step, _source_of(name)), stateful=True, metadata=True, expand=True
        )
        sdf = sdf.set_headers(lambda p, key, timestamp, headers: p.headers)
        sdf.to_topic(output, key=lambda p: p.key)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True, help="HOST:PORT")
    parser.add_argument("--input", required=True, nargs="+", help="input topic(s)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--items", required=True, type=int, help="stop after N input records")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--commit-interval", type=float, default=5.0, help="Quix default 5 s")
    parser.add_argument("--commit-every", type=int, default=0, help="Quix default 0 (off)")
    parser.add_argument(
        "--dedupe-ttl-s",
        type=float,
        default=Settings().mapping.dedupe_window_s,
        help="event-time TTL of a remembered id (0: forever); streamproc's dedupe window",
    )
    parser.add_argument("--mapping-context", default="", help="a MappingContext as JSON")
    parser.add_argument("--loglevel", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.loglevel)

    _timed_commits()
    app = build(args)
    app.run()
    exited = time.perf_counter()
    s = STATS
    end, end_cpu = (s.last_commit, s.last_commit_cpu) if s.commits else (exited, 0.0)
    print(
        json.dumps(
            {
                "items": s.items,
                "seconds": end - s.first,
                "cpu_seconds": end_cpu - s.first_cpu,
                "mapped": s.mapped,
                "duplicates": s.duplicates,
                "unknown": s.unknown,
                "unmappable": s.unmappable,
                "commits": s.commits,
                "seconds_to_exit": exited - s.first,
                "commit_interval": args.commit_interval,
                "commit_every": args.commit_every,
            }
        ),
        flush=True,
    )
    return 0 if s.items >= args.items else 1


if __name__ == "__main__":
    sys.exit(main())
