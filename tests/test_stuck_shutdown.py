"""A role whose start-up restore is held by a hanging transaction: seen, and SIGTERM bounded.

A separate producer keeps a transaction open on the changelog a role restores at start-up
(the dedupe state for map, the cursors for poll), so the restore cannot reach the end it
waits for, as after a broker stopped mid-transaction. The real process must show that in
``/metrics`` (the stuck-transaction gauge of that changelog) and ``/readyz``, and a SIGTERM
while it waits must end it, exit 0, within its shutdown bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streamproc.config import Settings
from streamproc.sources.ticketmatic.ownership import group_id as poll_group
from streamproc.topics import Topics, ensure
from tests.localkafka import free_port
from tests.mapper.test_processor import produce_tm, tm_item
from tests.procs import Proc, scraped, settings_env, wait_for
from tests.test_startup import readyz, role_env
from tests.transactions import open_transaction

pytestmark = pytest.mark.kafka

STUCK_METRIC = "streamproc_consumer_stuck_transaction_seconds"
MAP_SHUTDOWN_S = 3.0
POLL_STOP_S = 20.0  # PollService's stop_timeout_s: each account's transaction in flight
SLACK_S = 7.0  # interpreter exit, client closes


async def stuck_s(port: int, group: str, topic: str, partition: int) -> float:
    labels = {"group": group, "topic": topic, "partition": str(partition)}
    return await scraped(port, STUCK_METRIC, **labels) or 0.0


def stopped_within(proc: Proc, bound_s: float) -> tuple[int, float]:
    began = time.monotonic()
    code = proc.terminate(timeout_s=bound_s + 30)
    return code, time.monotonic() - began


async def test_map_held_in_set_up_is_seen_and_stops_within_its_bound(
    make_settings: Callable[..., Settings], unique: Callable[[str], str], tmp_path: Path
) -> None:
    settings = make_settings(partitions=3, metrics_host="127.0.0.1", metrics_port=free_port())
    await ensure(settings)
    names = Topics.for_prefix(settings.topic_prefix)
    now = int(time.time() * 1000)
    await produce_tm(settings, [tm_item(i, f"visitor-{i}", now + i) for i in range(30)])
    async with open_transaction(settings.kafka, unique("hold"), names.dedupe, 1, key=b"held"):
        args = ["map", "--shutdown-timeout", str(MAP_SHUTDOWN_S), "--restore-timeout", "60"]
        proc = Proc([*args, "--lag-interval", "1"], settings_env(settings), tmp_path / "map.log")
        try:
            group = f"{settings.topic_prefix}streamproc-map"

            async def seen() -> bool:
                body = await readyz(settings.metrics_port)
                reason = str(body["components"].get("map partitions", {}).get("reason"))
                held = await stuck_s(settings.metrics_port, group, names.dedupe, 1)
                return body["status"] == 503 and "not set up for" in reason and held > 2

            await wait_for(seen, timeout_s=60, what="readyz and the dedupe gauge name it")
            assert await stuck_s(settings.metrics_port, group, names.dedupe, 0) == 0
            code, took = await asyncio.to_thread(stopped_within, proc, MAP_SHUTDOWN_S)
        finally:
            with contextlib.suppress(Exception):
                proc.kill()
    assert code == 0, proc.output()[-3000:]
    assert took < MAP_SHUTDOWN_S + SLACK_S, f"SIGTERM took {took:.1f} s"
    assert "Traceback" not in proc.output()


async def test_poll_held_in_cursor_restore_is_seen_and_stops_within_its_bound(
    make_settings: Callable[..., Settings], unique: Callable[[str], str], tmp_path: Path
) -> None:
    settings = make_settings(partitions=3, metrics_host="127.0.0.1", metrics_port=free_port())
    await ensure(settings)
    names = Topics.for_prefix(settings.topic_prefix)
    async with contextlib.AsyncExitStack() as holds:
        for partition in range(3):  # whichever partition the account's cursor is on
            await holds.enter_async_context(
                open_transaction(
                    settings.kafka, unique(f"hold{partition}"), names.cursors, partition, key=b"h"
                )
            )
        env = settings_env(settings, **role_env()["poll"])
        proc = Proc(["poll", "--lag-interval", "1"], env, tmp_path / "poll.log")
        try:
            group = poll_group(settings)

            async def seen() -> bool:
                body = await readyz(settings.metrics_port)
                account = body["components"].get("ticketmatic:acme", {})
                held = await stuck_s(settings.metrics_port, group, names.cursors, 0)
                in_restore = account.get("ready") is False and account.get("reason") == "starting"
                return body["status"] == 503 and in_restore and held > 2

            await wait_for(seen, timeout_s=60, what="readyz and the cursors gauge name it")
            code, took = await asyncio.to_thread(stopped_within, proc, POLL_STOP_S)
        finally:
            with contextlib.suppress(Exception):
                proc.kill()
    assert code == 0, proc.output()[-3000:]
    assert took < POLL_STOP_S + SLACK_S, f"SIGTERM took {took:.1f} s"
    assert "Traceback" not in proc.output()
