"""Which offsets may be committed: per partition, the contiguous prefix of finished records.

Requests finish out of order (retries, splits, several in flight), so a finished record
is committed only once every record before it in its partition has finished too. After a
crash everything past the committed offset is read and sent again, with the same bytes and
the same ``source_request_id``; :meth:`OffsetTracker.held` counts the finished records
among them, so that the deliverer can bound what a crash sends again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from itertools import groupby, islice, takewhile
from operator import attrgetter
from typing import Any, Protocol

from aiokafka import TopicPartition


class Positioned(Protocol):
    """Anything that knows its topic, partition and offset (a fetched record)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


_TOPIC_PARTITION: Callable[[Any], tuple[str, int]] = attrgetter("topic", "partition")
_OFFSET: Callable[[Any], int] = attrgetter("offset")


class PartitionProgress:
    """Offsets of one partition in the order they were fetched, and which are finished."""

    __slots__ = ("_committed_passed", "_done", "_marks", "_order", "_passed", "position")

    def __init__(self) -> None:
        self._order: deque[int] = deque()
        self._done: set[int] = set()
        # The offset to commit: one past the last record of the finished prefix.
        self.position: int | None = None
        # Records moved past so far, and at which positions: what a commit covers.
        self._passed = 0
        self._marks: deque[tuple[int, int]] = deque()
        self._committed_passed = 0

    def fetched_all(self, items: Iterable[Positioned]) -> None:
        self._order.extend(map(_OFFSET, items))

    def finished(self, offset: int) -> None:
        self._done.add(offset)

    def advance(self) -> int | None:
        """Move past the finished prefix; return the commit position (None if none yet)."""
        order, done = self._order, self._done
        # C-level scans: each record passes here once. Offsets are fetched in increasing
        # order, each once (the tracker is cleared on every rebalance).
        prefix = list(takewhile(done.__contains__, order))
        if prefix:
            self._order = deque(islice(order, len(prefix), None))
            done.difference_update(prefix)
            # Offsets are not contiguous under read_committed (transaction markers), so the
            # position is the last finished record + 1, not a count.
            self.position = prefix[-1] + 1
            self._passed += len(prefix)
            self._marks.append((self.position, self._passed))
        return self.position

    def committed(self, position: int) -> None:
        """Kafka has ``position`` (one that :meth:`advance` returned)."""
        marks = self._marks
        while marks and marks[0][0] <= position:
            self._committed_passed = marks.popleft()[1]

    def held(self) -> int:
        """Finished records beyond the committed position: what a crash now sends again."""
        return len(self._done) + self._passed - self._committed_passed


class OffsetTracker:
    """Progress of every assigned partition and what has been committed already."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, PartitionProgress] = {}
        self._committed: dict[TopicPartition, int] = {}

    def _part(self, tp: TopicPartition) -> PartitionProgress:
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = PartitionProgress()
        return part

    def fetched_all(self, tp: TopicPartition, items: Iterable[Positioned]) -> None:
        """Records of partition ``tp``, in fetch order."""
        self._part(tp).fetched_all(items)

    def finished(self, tp: TopicPartition, offset: int) -> None:
        part = self._parts.get(tp)
        if part is not None:
            part.finished(offset)

    def finished_all(self, items: Iterable[Positioned]) -> None:
        """Items of any partitions; those of partitions no longer tracked are ignored."""
        parts = self._parts
        # A request holds runs of records of one partition (the batcher keeps fetch order):
        # one lookup and one C-level set update per run rather than per record.
        # TopicPartition is a named tuple: the plain (topic, partition) key finds it.
        for key, run in groupby(items, _TOPIC_PARTITION):
            part = parts.get(key)
            if part is not None:
                part._done.update(map(_OFFSET, run))

    def committable(self) -> dict[TopicPartition, int]:
        """Positions that moved since the last :meth:`committed` call."""
        out: dict[TopicPartition, int] = {}
        for tp, part in self._parts.items():
            position = part.advance()
            if position is not None and position > self._committed.get(tp, -1):
                out[tp] = position
        return out

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Kafka has ``offsets`` (positions that :meth:`committable` returned)."""
        self._committed.update(offsets)
        for tp, position in offsets.items():
            part = self._parts.get(tp)
            if part is not None:
                part.committed(position)

    def held(self) -> int:
        """Finished records not committed yet, over every partition (see ``held``)."""
        return sum(p.held() for p in self._parts.values())

    def clear(self) -> None:
        """Forget everything (after a rebalance positions restart from the commits)."""
        self._parts.clear()
        self._committed.clear()
