"""The chaos run's Ticketure: the Ticketure simulator's flows pushed to the receiver.

``python -m tests.chaos.pusher --target URL --count N --rate R --out PREFIX`` pushes like
Ticketure's Push API (:class:`~streamproc.sim.ticketure.TicketureSim`: 408, 429, 5xx and
transport errors retried with the same body and backoff, here for as long as the run
lasts rather than 8 times) and records, as it goes, the item id of every record it sent
(``PREFIX.sent``) and of every record in a push answered 2xx (``PREFIX.acked``): what the
receiver acknowledged, which the verdict holds the pipeline to. ``PREFIX.summary.json``
holds the counts once it ends (after ``--count`` pushes or ``--duration`` seconds, and the
pushes still retrying; or on SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from streamproc.lifecycle import stop_on_signals, until
from streamproc.sim.ticketure import SimStats, TicketureSim
from streamproc.sim.ticketure_flows import Step


class RecordingPusher(TicketureSim):
    """A :class:`TicketureSim` that also keeps the ids of every record it starts to push."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, keep_ids=True, **kwargs)
        self.sent: list[str] = []

    async def _push(self, http: aiohttp.ClientSession, step: Step) -> None:
        self.sent += [r.event_id or "" for r in step]
        await super()._push(http, step)


class IdFiles:
    """``PREFIX.sent`` and ``PREFIX.acked``, appended to as pushes go (read live)."""

    def __init__(self, out: str) -> None:
        # Open for the pusher's whole life, appended to twice a second; close() closes them.
        self._files = {
            kind: Path(f"{out}.{kind}").open("a")  # noqa: SIM115
            for kind in ("sent", "acked")
        }
        self._written = dict.fromkeys(self._files, 0)

    def flush(self, pusher: RecordingPusher) -> None:
        for kind, ids in (("sent", pusher.sent), ("acked", pusher.stats.acknowledged)):
            new = ids[self._written[kind] :]
            if new:
                self._files[kind].write("".join(i + "\n" for i in new))
                self._files[kind].flush()
                self._written[kind] += len(new)

    def close(self, pusher: RecordingPusher) -> None:
        self.flush(pusher)
        for file in self._files.values():
            file.close()


async def _flush_every(pusher: RecordingPusher, files: IdFiles, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        files.flush(pusher)


def _write_summary(out: str, stats: SimStats) -> None:
    summary = {k: v for k, v in vars(stats).items() if k != "acknowledged"}
    Path(out + ".summary.json").write_bytes(orjson.dumps(summary))


async def main(args: argparse.Namespace) -> int:
    pusher = RecordingPusher(
        args.target,
        rate=args.rate,
        seed=args.seed,
        auth="basic",
        key=args.key,
        secret=args.secret,
        count=args.count,
        duration_s=args.duration,
        concurrency=512,  # pushes waiting out an outage must not hold up new ones
        max_retries=100_000,  # as long as the run: Ticketure keeps trying
        backoff_base_s=0.2,
        backoff_cap_s=5.0,
        request_timeout_s=15.0,
        drain_timeout_s=args.drain_timeout,
        duplicate_ratio=0.05,
    )
    stop = stop_on_signals()
    files = IdFiles(args.out)
    flusher = asyncio.create_task(_flush_every(pusher, files, 0.5))
    runner = asyncio.create_task(pusher.run())
    await until(stop, runner)
    pusher.stop()
    stats = await runner
    flusher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flusher
    files.close(pusher)
    _write_summary(args.out, stats)
    print(f"pusher: {stats.summary()}", flush=True)
    return 0


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.pusher", description=__doc__)
    parser.add_argument("--target", required=True, help="the receiver's base URL")
    parser.add_argument("--count", type=int, required=True, help="pushes in all")
    parser.add_argument("--rate", type=float, required=True, help="pushes per second")
    parser.add_argument("--duration", type=float, help="stop starting pushes after this")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--key", default="push")
    parser.add_argument("--secret", default="push-secret")
    parser.add_argument("--out", required=True, help="prefix of the files of ids")
    raise SystemExit(asyncio.run(main(parser.parse_args())))


if __name__ == "__main__":
    cli()
