"""The one role contract: every role process starts, stops and fails the same way.

These roles are small stand-ins for poll, receive, map and deliver (each keeps the
contract's promise: work until ``stop``, then return); the real roles are run against
Kafka by their own tests and by tests/test_startup.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from streamproc import roles
from streamproc.errors import ConfigError
from streamproc.lag import Watch
from streamproc.lifecycle import until


class Recorded:
    """A role that logs when it starts and stops, and can fail on cue."""

    def __init__(
        self,
        name: str,
        log: list[str],
        *,
        fail: BaseException | None = None,
        shutdown_s: float = 0.01,
    ) -> None:
        self.name = name
        self.shutdown_s = shutdown_s
        self.log = log
        self.fail = fail
        self.started = asyncio.Event()

    def watches(self) -> Sequence[Watch]:
        return []

    async def run(self, stop: asyncio.Event) -> None:
        self.log.append(f"{self.name} started")
        self.started.set()
        if self.fail is not None:
            raise self.fail
        await stop.wait()
        await asyncio.sleep(self.shutdown_s)  # the next role must wait for this one
        self.log.append(f"{self.name} stopped")


async def test_roles_stop_in_the_order_given_each_after_the_one_before() -> None:
    log: list[str] = []
    # The edge takes longest to stop: stopped all at once, delivery would end first.
    names = ("receive", "poll", "map", "deliver")
    group = [Recorded(name, log, shutdown_s=0.04 - 0.01 * i) for i, name in enumerate(names)]
    stop = asyncio.Event()
    task = asyncio.create_task(roles.run(group, stop))
    await asyncio.wait_for(asyncio.gather(*(r.started.wait() for r in group)), 5)
    stop.set()
    assert await asyncio.wait_for(task, 5) == 0
    assert log[4:] == ["receive stopped", "poll stopped", "map stopped", "deliver stopped"]


async def test_a_failing_role_stops_the_others_and_the_process_exits_1(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    group = [
        Recorded("receive", log),
        Recorded("map", log, fail=RuntimeError("partition gave up")),
        Recorded("deliver", log),
    ]
    code = await asyncio.wait_for(roles.run(group, asyncio.Event()), 5)
    assert code == 1
    assert log.count("receive stopped") == 1
    assert log.count("deliver stopped") == 1
    assert "role map failed" in caplog.text
    assert "partition gave up" in caplog.text


async def test_a_role_that_returns_before_shutdown_is_an_exit_1(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Quitter(Recorded):
        async def run(self, stop: asyncio.Event) -> None:
            self.log.append("quit")

    log: list[str] = []
    group = [Quitter("poll", log), Recorded("map", log)]
    assert await asyncio.wait_for(roles.run(group, asyncio.Event()), 5) == 1
    assert "role poll ended before shutdown" in caplog.text
    assert "map stopped" in log


async def test_a_role_configuration_error_reaches_the_command_after_the_others_stop() -> None:
    log: list[str] = []
    error = ConfigError("topic x.ticketmatic.cursors", "is missing")
    group = [Recorded("poll", log, fail=error), Recorded("map", log)]
    with pytest.raises(ConfigError) as caught:
        await asyncio.wait_for(roles.run(group, asyncio.Event()), 5)
    assert caught.value is error
    assert "map stopped" in log


async def test_until_returns_the_ended_tasks_and_leaves_the_others_running() -> None:
    stop = asyncio.Event()
    quick = asyncio.create_task(asyncio.sleep(0))
    slow = asyncio.create_task(asyncio.sleep(10))
    assert await until(stop, quick, slow) == {quick}
    assert not slow.done()
    assert await until(stop, slow, seconds=0.01) == set()  # timed out
    stop.set()
    assert await until(stop, slow) == set()  # stopped
    assert not slow.cancelled()
    slow.cancel()
