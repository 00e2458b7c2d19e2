"""Signals and shutdown shared by every command.

SIGTERM and SIGINT set one event; a command stops taking work when it is set, finishes or
aborts what is in flight within its bound, commits, leaves its group and returns 0.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterable
from typing import Any, Self, TypeVar

F = TypeVar("F", bound="asyncio.Future[Any]")


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any] | None]) -> None:
    """Cancel ``tasks`` (None is skipped) and wait until each has ended, whatever it raised.

    Unlike ``suppress(CancelledError): await task``, a cancellation aimed at the caller
    while it waits is not swallowed: it propagates.
    """
    pending = [task for task in tasks if task is not None]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (installed on the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def until(stop: asyncio.Event, *tasks: F, seconds: float | None = None) -> set[F]:
    """Wait until ``stop`` is set, one of ``tasks`` ends or ``seconds`` pass.

    The one way every role waits. Returns the tasks that have ended (empty: stopped or
    timed out); their failures are the caller's to read. Cancelling the caller does not
    cancel the tasks.
    """
    waiter = asyncio.ensure_future(stop.wait())
    waiting: set[asyncio.Future[Any]] = {waiter, *tasks}
    try:
        done, _ = await asyncio.wait(waiting, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    return {task for task in tasks if task in done}


class Service:
    """``async with`` for a long-lived component with idempotent ``start()``/``stop()``.

    Entering starts it, leaving stops it, whatever ended the block (as aiokafka's clients
    do). Subclasses implement ``start`` and ``stop``; both must be safe to call twice.
    """

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
