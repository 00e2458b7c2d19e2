"""When each of the map stage's partitions is set up (again), and how its waiting shows.

A partition waits to be set up from its assignment, or from a failed transaction, until
it is owned: :class:`SetUpSchedule` holds when each may be tried next (backoff per
partition), how long it has been failing (past ``retry_timeout_s`` a failing transaction
gives up; a set-up that cannot finish never does), and what it has been waiting for. That
shows in ``streamproc_map_partition_waiting_seconds`` (0 once owned) and in ``/readyz``'s
reason, which names the longest-waiting partitions.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterable

from aiokafka import TopicPartition

from streamproc import metrics
from streamproc.backoff import Backoff

log = logging.getLogger(__name__)

_NAMED = 4  # partitions named in the readiness reason


def name(tp: TopicPartition) -> str:
    return f"{tp.topic}[{tp.partition}]"


class SetUpSchedule:
    """Partitions to set up, when, and since when they wait (times are monotonic)."""

    def __init__(self, *, backoff_base_s: float, backoff_cap_s: float, retry_timeout_s: float):
        self._backoff = (backoff_base_s, backoff_cap_s)
        self.retry_timeout_s = retry_timeout_s
        self._due: dict[TopicPartition, float] = {}  # not to be tried before
        self._failing: dict[TopicPartition, tuple[float, Backoff]] = {}  # since, backoff
        self._waiting: dict[TopicPartition, tuple[float, str]] = {}  # since, last reason

    def assigned(self, tps: Iterable[TopicPartition], reason: str) -> None:
        """A new assignment: these are due now, and whatever was failing starts afresh."""
        self._failing.clear()
        now = time.monotonic()
        self._due = dict.fromkeys(tps, now)
        for tp in self._due:
            self._wait(tp, reason)

    def cancel(self) -> None:
        """Nothing is due any more (partitions revoked, or stopping)."""
        self._due.clear()

    def take_due(self, busy: set[int]) -> dict[int, list[TopicPartition]]:
        """The partitions due now by partition number, leaving out the numbers in ``busy``
        (being set up); those returned are no longer due."""
        now = time.monotonic()
        due: dict[int, list[TopicPartition]] = {}
        for tp, when in self._due.items():
            if when <= now and tp.partition not in busy:
                due.setdefault(tp.partition, []).append(tp)
        for tps in due.values():
            for tp in tps:
                del self._due[tp]
        return due

    def owned(self, tp: TopicPartition) -> None:
        """``tp`` is set up: it waits no longer (its gauge reads 0)."""
        self._due.pop(tp, None)
        self._failing.pop(tp, None)
        self._waiting.pop(tp, None)
        metrics.MAP_PARTITION_WAITING.labels(tp.topic, str(tp.partition)).set_function(_zero)

    def succeeded(self, tp: TopicPartition) -> None:
        """A transaction of ``tp`` committed: its failures so far are forgiven."""
        self._failing.pop(tp, None)

    def retry_later(
        self, tp: TopicPartition, exc: BaseException, delay: float | None = None, *, fatal: bool
    ) -> bool:
        """Set ``tp`` up again after ``delay`` (default: its backoff); False if ``fatal`` and
        it has been failing for longer than ``retry_timeout_s`` (then it is given up)."""
        now = time.monotonic()
        since, backoff = self._failing.setdefault(tp, (now, Backoff(*self._backoff)))
        if fatal and now - since > self.retry_timeout_s:
            log.error("map: %s failing for %.0f s, giving up: %r", name(tp), now - since, exc)
            return False
        wait = backoff.next() if delay is None else delay
        self._due[tp] = now + wait
        self._wait(tp, f"{exc!r}")
        if not fatal:
            reason = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("map: %s not set up (%s); again in %.1f s", name(tp), reason, wait)
        return True

    def forget(self, tps: Iterable[TopicPartition] | None = None) -> None:
        """``tps`` (default: every partition waiting) are no longer this process's."""
        for tp in list(self._waiting) if tps is None else tps:
            self._waiting.pop(tp, None)
            with contextlib.suppress(KeyError):  # never waited in this process
                metrics.MAP_PARTITION_WAITING.remove(tp.topic, str(tp.partition))

    def reason(self) -> str | None:
        """``/readyz``'s reason while a partition is not set up (None when all are): the
        longest-waiting partitions by name, how long, and the latest reason of the first."""
        if not self._waiting:
            return None
        now = time.monotonic()
        oldest = sorted(self._waiting.items(), key=lambda item: (item[1][0], name(item[0])))
        since, why = oldest[0][1]
        named = ", ".join(name(tp) for tp, _ in oldest[:_NAMED])
        more = f" and {len(oldest) - _NAMED} more" if len(oldest) > _NAMED else ""
        return f"{named}{more} not set up for {now - since:.0f} s: {why}"[:300]

    def _wait(self, tp: TopicPartition, reason: str) -> None:
        """Note that ``tp`` waits to be set up (since the first call, until owned)."""
        since = self._waiting.get(tp, (time.monotonic(), ""))[0]
        self._waiting[tp] = (since, reason)
        metrics.MAP_PARTITION_WAITING.labels(tp.topic, str(tp.partition)).set_function(
            functools.partial(_since, since)
        )


def _since(start: float) -> float:
    return time.monotonic() - start


def _zero() -> float:
    return 0.0
