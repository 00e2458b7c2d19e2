"""Batches from Kafka packed into bulk requests within mParticle's limits.

mParticle takes at most 100 batches and 256 KB per bulk request, and at most 128 KB per
batch. A batch is posted as the record's bytes, never re-encoded: a retry sends exactly
what the first attempt sent, so mParticle's dedupe on ``source_request_id`` holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Protocol

from streamproc.formats.mparticle import (
    ACCEPTED_BATCH_BYTES,
    ACCEPTED_REQUEST_BYTES,
    MAX_BULK_BATCHES,
)
from streamproc.sinks.offsets import Positioned

_VALUE: Callable[[Any], bytes] = attrgetter("value")


class Batch(Positioned, Protocol):
    """One record of the batches topic; an aiokafka ``ConsumerRecord`` is one as it is.

    The deliverer passes the consumer's records through untouched rather than copying
    each into an object of its own: this runs for every batch.
    """

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class Record:
    """A :class:`Batch` built by hand (tests, tools)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]] = ()


def where(batch: Batch) -> str:
    """``topic/partition@offset``, for logs (never the content)."""
    return f"{batch.topic}/{batch.partition}@{batch.offset}"


def reject_reason(value: bytes | None, max_batch_bytes: int = ACCEPTED_BATCH_BYTES) -> str | None:
    """Why a record cannot be posted at all (a DLQ reason code), or None if it can.

    Only cheap checks: a value that is not a JSON object would break the array it is
    joined into; anything subtler is left to mParticle's 400 and the split that follows.
    """
    if not value:
        return "empty_value"
    if len(value) > max_batch_bytes:
        return "batch_too_large"
    if value[:1] != b"{" or value[-1:] != b"}":
        return "not_json_object"
    return None


def request_body(batches: Sequence[Batch]) -> bytes:
    """The bulk request body: the batches' bytes as a JSON array, unchanged."""
    values = list(map(_VALUE, batches))
    if not values:
        return b"[]"
    # The brackets go on the first and last values, so that the body is copied once.
    values[0] = b"[" + values[0]
    values[-1] += b"]"
    return b",".join(values)


class Batcher:
    """Fills one request at a time; ``add`` hands back a request once it is full.

    A request is full at ``max_batches`` batches, or when the next batch would push the
    body past ``max_bytes``. ``age()`` tells the caller how long the open request has
    been filling, so it can ``flush()`` after its linger.
    """

    def __init__(
        self,
        max_batches: int = MAX_BULK_BATCHES,
        max_bytes: int = ACCEPTED_REQUEST_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batches < 1:
            raise ValueError("max_batches must be at least 1")
        self.max_batches = max_batches
        self.max_bytes = max_bytes
        self._clock = clock
        self._open: list[Batch] = []
        self._size = 2  # the brackets
        self._opened_at = 0.0

    def __len__(self) -> int:
        return len(self._open)

    def add_all(self, batches: Iterable[Batch], out: list[list[Batch]]) -> None:
        """Add ``batches`` in order, appending the requests they complete to ``out``.

        A request is complete at ``max_batches`` batches, or when the next batch would take
        its body past ``max_bytes`` (that batch opens the next request); the same requests
        however the batches are cut into calls. One loop with the state in locals: this
        runs for every batch fetched. The caller must have checked each batch with
        :func:`reject_reason`: one larger than ``max_bytes - 2`` raises ValueError.
        """
        open_, size = self._open, self._size
        max_batches, max_bytes = self.max_batches, self.max_bytes
        for batch in batches:
            length = len(batch.value)
            if length + 2 > max_bytes:
                self._open, self._size = open_, size
                raise ValueError(f"{where(batch)} is larger than a request may be")
            if not open_:
                self._opened_at = self._clock()
                size += length
            elif size + length + 1 > max_bytes:
                out.append(open_)
                open_, size = [], 2 + length
                self._opened_at = self._clock()
            else:
                size += length + 1
            open_.append(batch)
            if len(open_) >= max_batches:
                out.append(open_)
                open_, size = [], 2
        self._open, self._size = open_, size

    def age(self) -> float:
        """Seconds since the open request got its first batch (0 when empty)."""
        return self._clock() - self._opened_at if self._open else 0.0

    def flush(self) -> list[Batch] | None:
        """The open request (None if empty); the batcher is empty afterwards."""
        if not self._open:
            return None
        done, self._open, self._size = self._open, [], 2
        return done

    def clear(self) -> None:
        """Forget the open request (its batches were not sent and will be read again)."""
        self._open, self._size = [], 2


class PartitionBatchers:
    """One :class:`Batcher` per partition: a request holds the records of one partition.

    A request that mParticle holds back (a 429, a 5xx retried) then holds back the commits
    of its own partition only, not of every partition that a shared request would touch.
    ``max_batches`` may change between :meth:`clear` calls (the deliverer sizes requests
    to its share of the rate).
    """

    def __init__(
        self,
        max_batches: int = MAX_BULK_BATCHES,
        max_bytes: int = ACCEPTED_REQUEST_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_batches = max_batches
        self.max_bytes = max_bytes
        self._clock = clock
        self._open: dict[tuple[str, int], Batcher] = {}
        self._count = 0

    def __len__(self) -> int:
        """Batches in open requests, over every partition."""
        return self._count

    def add_all(
        self, partition: tuple[str, int], batches: Sequence[Batch], out: list[list[Batch]]
    ) -> None:
        """Add ``batches`` of one partition in order; append the requests they complete."""
        batcher = self._open.get(partition)
        if batcher is None:
            batcher = self._open[partition] = Batcher(self.max_batches, self.max_bytes, self._clock)
        self._count -= len(batcher)
        batcher.add_all(batches, out)
        self._count += len(batcher)

    def age(self) -> float:
        """Seconds since the oldest open request got its first batch (0 when none is open)."""
        return max((b.age() for b in self._open.values()), default=0.0)

    def flush_due(self, linger_s: float, limit: int) -> list[list[Batch]]:
        """Up to ``limit`` open requests filling for ``linger_s`` or longer, oldest first."""
        due = sorted(
            (b for b in self._open.values() if len(b) and b.age() >= linger_s),
            key=Batcher.age,
            reverse=True,
        )
        out: list[list[Batch]] = []
        for batcher in due[:limit]:
            request = batcher.flush()
            if request:
                self._count -= len(request)
                out.append(request)
        return out

    def clear(self) -> None:
        """Forget every open request (their batches were not sent and will be read again)."""
        self._open.clear()
        self._count = 0
