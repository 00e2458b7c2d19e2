"""Dedupe state: the item ids the map stage has already turned into batches.

One :class:`DedupeState` per input partition remembers a 64-bit hash of ``(source, item
id)`` for every item it produced a batch for, for at least the dedupe window, measured in
EVENT time: ``watermark`` is the newest item time seen (never more than ``max_skew_ms``
ahead of the wall clock, so one item from the future cannot expire everything), and ids
whose item time is older than ``watermark - window`` are forgotten, so memory is bounded
by the traffic of one window, not by uptime.

Memory: no Python object per id. Hashes live in an open-addressing table (linear probing)
in an ``array('Q')`` (8 bytes a slot) with a 1-byte tag per slot (a ``bytearray``) naming
the time bucket (window / ``buckets``) of the item. A bucket expires as a whole: its tag
is marked dead, and dead slots are reclaimed when the table is rebuilt (when it is 60 %
full, or when more than half of its slots are dead). After a rebuild the table is at most
45 % full, so a remembered id costs 9 bytes a slot times 1.7 to 4.4 slots: 15 to 40 bytes
(see ``python -m tests.bench dedupe_memory``). Lookups and inserts are O(1).

False positives: two different ids with the same 64-bit hash make the second one look
like a duplicate (it would be dropped). Hashes are blake2b, so with ``n`` ids remembered
by one partition the chance that a new id collides is ``n / 2**64`` (5e-14 at a million),
and the chance of any collision among them at all is about ``n**2 / 2**65`` (3e-8 at a
million). Ids are never compared across partitions.

Persistence: the state is restored from a compacted changelog topic, co-partitioned with
the inputs (changelog partition ``p`` holds the state of input partition ``p`` of both
sources). Each transaction writes, per time bucket it touched, one record keyed
``<source>|<bucket>|<first input offset>`` whose value is the newest item time (8 bytes)
followed by the new hashes (8 bytes each, little-endian); an expired bucket's records get
tombstones (``None``) so compaction removes them. :func:`restore` reads it back.
"""

from __future__ import annotations

import logging
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streamproc.changelog import read_to_end

log = logging.getLogger(__name__)

_MAX_LOAD = 0.6  # rebuild once this share of slots is used (linear probing slows beyond)
_REBUILT_LOAD = 0.45  # a rebuilt table is at most this full
_TIME = struct.Struct("<q")
_BIG_ENDIAN = sys.byteorder == "big"


@dataclass
class _Bucket:
    count: int = 0  # live ids in the bucket
    # First input offsets of the changelog records holding this bucket's ids: the keys to
    # tombstone when it expires (8 bytes a transaction, not a Python object).
    offsets: array[int] = field(default_factory=lambda: array("q"))


@dataclass
class Changes:
    """What one transaction adds and expires, computed before it commits.

    ``records`` maps a bucket to (newest item time, new hashes): one changelog record each.
    ``expired`` lists the buckets to forget, with the changelog offsets to tombstone.
    """

    watermark_ms: int | None
    records: dict[int, tuple[int, list[int]]]
    expired: list[tuple[int, array[int]]]


class DedupeState:
    """The remembered ids of one input partition; changes only through :meth:`apply`.

    ``window_ms`` is the dedupe window; ``buckets`` the number of expiry buckets it is cut
    into (an id is kept between one window and one window plus one bucket);
    ``max_skew_ms`` how far past ``now`` the watermark may go.
    """

    def __init__(
        self,
        window_ms: int,
        *,
        buckets: int = 16,
        max_skew_ms: int = 3_600_000,
        min_capacity: int = 1024,
    ) -> None:
        if not 1 <= buckets <= 200:
            raise ValueError("buckets: must be between 1 and 200 (tags are one byte)")
        self.window_ms = window_ms
        self.bucket_ms = -(-window_ms // buckets)
        self.max_skew_ms = max_skew_ms
        self.watermark_ms: int | None = None
        self._min_capacity = _pow2(min_capacity)
        self._buckets: dict[int, _Bucket] = {}
        self._live = bytearray(256)  # tag -> 1 while its bucket is remembered
        self._stale_tags: set[int] = set()  # tags of expired buckets still in the table
        self._size = 0
        self._alloc(self._min_capacity)

    def _alloc(self, capacity: int) -> None:
        self._keys = array("Q", [0]) * capacity
        self._tags = bytearray(capacity)
        self._mask = capacity - 1
        self._used = 0  # slots holding a hash, live or expired

    @property
    def size(self) -> int:
        """Ids remembered now."""
        return self._size

    @property
    def capacity(self) -> int:
        return self._mask + 1

    def __contains__(self, h: int) -> bool:
        keys, mask = self._keys, self._mask
        i = h & mask
        while True:
            k = keys[i]
            if k == h:
                return self._live[self._tags[i]] == 1
            if k == 0:
                return False
            i = (i + 1) & mask

    def begin(self) -> Txn:
        """Start staging the ids of one transaction."""
        return Txn(self)

    def is_expired(self, bucket: int, watermark_ms: int) -> bool:
        """True if every item time of ``bucket`` is older than ``watermark - window``."""
        return (bucket + 1) * self.bucket_ms <= watermark_ms - self.window_ms

    def expired(self, watermark_ms: int) -> list[tuple[int, array[int]]]:
        """The buckets to forget at ``watermark_ms``, with their changelog offsets."""
        return [
            (b, entry.offsets)
            for b, entry in self._buckets.items()
            if self.is_expired(b, watermark_ms)
        ]

    def apply(self, changes: Changes, offset: int) -> None:
        """Make a committed transaction's changes (first input offset ``offset``) real."""
        for bucket, _offsets in changes.expired:
            self._expire(bucket)
        for bucket, (_newest, hashes) in changes.records.items():
            self._add(bucket, hashes).offsets.append(offset)
        if changes.watermark_ms is not None:
            self.watermark_ms = changes.watermark_ms
        self._maybe_shrink()

    def load(self, bucket: int, offset: int, newest_ms: int, hashes: Iterable[int]) -> None:
        """Add one changelog record while restoring."""
        self._add(bucket, hashes).offsets.append(offset)
        if self.watermark_ms is None or newest_ms > self.watermark_ms:
            self.watermark_ms = newest_ms

    def _add(self, bucket: int, hashes: Iterable[int]) -> _Bucket:
        tag = bucket & 0xFF
        entry = self._buckets.get(bucket)
        if entry is None:
            # A tag names one live bucket: buckets span at most `buckets + 1` tags, and an
            # expired bucket's slots are purged before its tag is used again.
            for other in [b for b in self._buckets if b & 0xFF == tag]:
                self._expire(other)
            if tag in self._stale_tags:
                self._rebuild(self._size)
            entry = self._buckets[bucket] = _Bucket()
            self._live[tag] = 1
        hashes = list(hashes)
        if self._used + len(hashes) > _MAX_LOAD * self.capacity:
            self._rebuild(self._size + len(hashes))
        keys, tags, mask, live = self._keys, self._tags, self._mask, self._live
        added = used = 0
        for h in hashes:  # linear probing, inlined: this is the hot loop of a commit
            i = h & mask
            while True:
                k = keys[i]
                if k == 0:
                    keys[i] = h
                    tags[i] = tag
                    added += 1
                    used += 1
                    break
                if k == h:
                    if not live[tags[i]]:
                        tags[i] = tag  # an expired copy of the same id: reuse its slot
                        added += 1
                    break
                i = (i + 1) & mask
        self._used += used
        entry.count += added
        self._size += added
        return entry

    def _expire(self, bucket: int) -> None:
        entry = self._buckets.pop(bucket, None)
        if entry is None:
            return
        tag = bucket & 0xFF
        self._live[tag] = 0
        self._stale_tags.add(tag)
        self._size -= entry.count

    def _maybe_shrink(self) -> None:
        dead = self._used - self._size
        if dead > self._used // 2 or (
            self.capacity > self._min_capacity and self._size < 0.1 * self.capacity
        ):
            self._rebuild(self._size)

    def _rebuild(self, needed: int) -> None:
        """Re-insert the live ids into a table sized for ``needed`` ids."""
        capacity = max(self._min_capacity, _pow2(int(needed / _REBUILT_LOAD) + 1))
        old_keys, old_tags, live = self._keys, self._tags, self._live
        self._alloc(capacity)
        keys, tags, mask = self._keys, self._tags, self._mask
        used = 0
        for k, tag in zip(old_keys, old_tags, strict=True):
            if k and live[tag]:
                i = k & mask
                while keys[i]:
                    i = (i + 1) & mask
                keys[i] = k
                tags[i] = tag
                used += 1
        self._used = used
        self._stale_tags.clear()


class Txn:
    """The new ids of one transaction, staged: the state changes only on ``apply``."""

    def __init__(self, state: DedupeState) -> None:
        self.state = state
        self.new: dict[int, int] = {}  # hash -> item time

    def seen(self, h: int) -> bool:
        """True if the id was produced before, or earlier in this transaction."""
        return h in self.new or h in self.state

    def add(self, h: int, item_time_ms: int) -> None:
        self.new[h] = item_time_ms

    def changes(self, now_ms: int) -> Changes:
        """The records to write and the buckets to expire, with the new watermark.

        An id whose bucket is already beyond the window is not remembered: it is older
        than anything dedupe promises to catch. Each record carries the new watermark, so a
        restore finds the watermark the state had.
        """
        state = self.state
        if not self.new:
            return Changes(state.watermark_ms, {}, [])
        # min() is monotonic: the newest clamped time is the clamped newest time.
        watermark = min(max(self.new.values()), now_ms + state.max_skew_ms)
        if state.watermark_ms is not None and state.watermark_ms > watermark:
            watermark = state.watermark_ms
        width = state.bucket_ms
        top = watermark // width
        first_live = (watermark - state.window_ms) // width  # older buckets are expired
        groups: dict[int, list[int]] = {}
        for h, t in self.new.items():
            bucket = t // width
            if bucket > top:
                bucket = top
            elif bucket < first_live:
                continue
            hashes = groups.get(bucket)
            if hashes is None:
                groups[bucket] = [h]
            else:
                hashes.append(h)
        records = {bucket: (watermark, hashes) for bucket, hashes in groups.items()}
        return Changes(watermark, records, state.expired(watermark))


# --- the changelog ----------------------------------------------------------------------


def changelog_key(source: str, bucket: int, offset: int) -> bytes:
    return f"{source}|{bucket}|{offset}".encode()


def parse_changelog_key(key: bytes | None) -> tuple[str, int, int] | None:
    """``(source, bucket, offset)``, or None for a key this format does not produce."""
    try:
        source, bucket, offset = (key or b"").decode().split("|")
        return source, int(bucket), int(offset)
    except ValueError:
        return None


def encode_ids(newest_ms: int, hashes: list[int]) -> bytes:
    packed = array("Q", hashes)
    if _BIG_ENDIAN:
        packed.byteswap()
    return _TIME.pack(newest_ms) + packed.tobytes()


def decode_ids(value: bytes) -> tuple[int, array[int]] | None:
    """``(newest item time, hashes)``, or None if ``value`` is not in this format."""
    if len(value) < _TIME.size or (len(value) - _TIME.size) % 8:
        return None
    (newest,) = _TIME.unpack_from(value)
    hashes = array("Q")
    hashes.frombytes(value[_TIME.size :])
    if _BIG_ENDIAN:
        hashes.byteswap()
    return newest, hashes


async def restore(
    consumer: AIOKafkaConsumer,
    topic: str,
    wanted: Mapping[int, Iterable[str]],
    make_state: Callable[[], DedupeState],
    timeout_s: float = 120.0,
) -> dict[tuple[str, int], DedupeState]:
    """The states of ``{partition: sources}`` read from the changelog ``topic``.

    ``consumer`` is a ``read_committed`` consumer outside any group; it is assigned the
    changelog partitions, read from the beginning to the high watermark seen on its first
    fetch (past any open transaction of the other source, whose end it waits for). The
    caller owns the reader and stops it afterwards (not ``unsubscribe()`` then ``stop()``:
    aiokafka's stop then waits a whole request timeout for the fetch left behind).
    Callers must have initialised the transactional producers of these partitions first,
    so that every earlier owner's transaction is complete. Raises KafkaTimeoutError
    (retriable) if the end is not reached within ``timeout_s``.
    """
    tps = [TopicPartition(topic, p) for p in sorted(wanted)]
    kept: dict[tuple[str, int], dict[tuple[int, int], bytes]] = {
        (source, p): {} for p, sources in wanted.items() for source in sources
    }

    def take(tp: TopicPartition, record: Any) -> None:
        parsed = parse_changelog_key(record.key)
        store = kept.get((parsed[0], tp.partition)) if parsed else None
        if parsed is None or store is None:
            return  # the other source's, or not ours
        if record.value is None:
            store.pop((parsed[1], parsed[2]), None)
        else:
            store[(parsed[1], parsed[2])] = record.value

    # Never given up on: a state read short would forget ids, and deliver them twice.
    await read_to_end(consumer, tps, take, timeout_s=timeout_s)
    states: dict[tuple[str, int], DedupeState] = {}
    for (source, partition), store in kept.items():
        state = states[(source, partition)] = make_state()
        for (bucket, offset), value in store.items():
            decoded = decode_ids(value)
            if decoded is None:
                log.warning("dedupe: skipping a malformed changelog record in %s", topic)
                continue
            state.load(bucket, offset, decoded[0], decoded[1])
    return states


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()
