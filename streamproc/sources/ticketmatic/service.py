"""The poller role: group ownership plus one task per owned account.

Each owned account runs its own :class:`AccountPoller` task with its own transactional
producer, so one failing account (refused credentials, a broken page, a slow answer) never
holds up another. Accounts come and go with the group's assignment; a poller fenced by
another replica is retried after ``fenced_retry_s`` while this replica still owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterable
from typing import Any

from streamproc import metrics
from streamproc.config import Settings
from streamproc.health import Health
from streamproc.lag import Watch
from streamproc.lifecycle import cancel_and_wait, until
from streamproc.sources.ticketmatic.client import EventstreamClient
from streamproc.sources.ticketmatic.ownership import Ownership, group_id
from streamproc.sources.ticketmatic.poller import AccountPoller, Fenced
from streamproc.topics import Topics

log = logging.getLogger(__name__)


def poller_identity() -> str:
    """``host:pid``, written in every record's ``poller`` header."""
    return f"{socket.gethostname()}:{os.getpid()}"


class _Running:
    __slots__ = ("poller", "stop", "task")

    def __init__(self, poller: AccountPoller, stop: asyncio.Event, task: asyncio.Task[None]):
        self.poller = poller
        self.stop = stop
        self.task = task


class PollService:
    """Polls the accounts this replica owns until ``run``'s ``stop`` is set.

    On stop, every account finishes its transaction in flight (within ``stop_timeout_s``,
    else it is cancelled and Kafka aborts it), then the replica leaves the group so that a
    standby takes over at once. ``poller_options`` go to every :class:`AccountPoller`
    (durations for tests).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        health: Health | None = None,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        stop_timeout_s: float = 20.0,
        fenced_retry_s: float = 30.0,
        **poller_options: Any,
    ) -> None:
        self.settings = settings
        self.health = health or Health()
        self.accounts = {a.name: a for a in settings.ticketmatic.accounts}
        self.client = EventstreamClient(
            settings.ticketmatic.base_url,
            timeout_s=settings.ticketmatic.request_timeout_s,
            max_bytes=settings.ticketmatic.max_response_bytes,
        )
        self.ownership = Ownership(
            settings,
            list(self.accounts),
            acquire=self.acquire,
            release=self.release,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
        )
        self.identity = poller_identity()
        self.stop_timeout_s = stop_timeout_s
        self.fenced_retry_s = fenced_retry_s
        self.poller_options = poller_options
        self.running: dict[str, _Running] = {}
        self._cursors = Topics.for_prefix(settings.topic_prefix).cursors

    name = "poll"

    def watches(self) -> list[Watch]:
        """Stuck transactions on the cursors topic, which every account restores from."""
        return [Watch(group_id(self.settings), [], changelogs=[self._cursors])]

    async def run(self, stop: asyncio.Event) -> None:
        """Join the group and poll owned accounts until ``stop``; then shut down cleanly.

        The cursors topic exists by then: every role waits for the topics at start-up
        (:func:`streamproc.startup.wait_for_topics`).
        """
        log.info(
            "polling %d Ticketmatic account(s) at %s",
            len(self.accounts),
            self.settings.ticketmatic.base_url,
        )
        self.health.set("poll-group", False, "joining")
        await self.client.start()
        try:
            await self.ownership.run(stop)
        finally:
            await self.release(set(self.running), handed_over=False)
            await self.ownership.stop()
            await self.client.stop()
            self.health.set("poll-group", False, "stopped")

    async def acquire(self, names: set[str]) -> None:
        """Start a poller task for each account not yet running here (after an assignment)."""
        self.health.set(
            "poll-group", True, f"polling {len(names)} account(s)" if names else "standing by"
        )
        for name in sorted(names - set(self.running)):
            account = self.accounts[name]
            stop = asyncio.Event()
            poller = AccountPoller(
                self.settings,
                account,
                self.client,
                poller_id=self.identity,
                health=self.health,
                **self.poller_options,
            )
            task = asyncio.create_task(self._run_account(poller, stop), name=f"poll-{name}")
            self.running[name] = _Running(poller, stop, task)
        metrics.TM_ACTIVE.set(len(self.running))

    async def release(self, names: Iterable[str], *, handed_over: bool = True) -> None:
        """Stop the named accounts' pollers; each finishes its transaction first.

        ``handed_over``: another replica takes them, so their lag series go from here.
        """
        stopping = [self.running.pop(n) for n in sorted(names) if n in self.running]
        for run in stopping:
            run.stop.set()
        if stopping:
            _done, late = await asyncio.wait(
                [r.task for r in stopping], timeout=self.stop_timeout_s
            )
            for task in late:
                log.warning(
                    "%s did not stop within %.0f s; cancelled", task.get_name(), self.stop_timeout_s
                )
            await cancel_and_wait(late)
        for run in stopping if handed_over else ():
            # The new owner reports this account's lag; a stale value here would mislead
            # the alerts that take the minimum headroom per account.
            for gauge in (metrics.TM_LAG, metrics.TM_HEADROOM, metrics.TM_SINCE_SUCCESS):
                with contextlib.suppress(KeyError):
                    gauge.remove(run.poller.account.name)
        metrics.TM_ACTIVE.set(len(self.running))

    async def _run_account(self, poller: AccountPoller, stop: asyncio.Event) -> None:
        name = poller.account.name
        while not stop.is_set():
            try:
                await poller.run(stop)
            except Fenced:
                log.warning(
                    "ticketmatic %s: another poller took this account over; retrying in %.0f s "
                    "if it is still assigned here",
                    name,
                    self.fenced_retry_s,
                )
                delay = self.fenced_retry_s
            except Exception:
                # A bug for one account must not stop the others: log it loudly, retry.
                log.exception("ticketmatic %s: poller failed; restarting", name)
                delay = poller.backoff.next()
            else:
                return
            await until(stop, seconds=delay)
