"""Packing batches into bulk requests within mParticle's limits; offset bookkeeping."""

from __future__ import annotations

import orjson
import pytest
from aiokafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from streamproc.formats.mparticle import ACCEPTED_BATCH_BYTES
from streamproc.sinks.mparticle.batcher import (
    Batch,
    Batcher,
    PartitionBatchers,
    Record,
    reject_reason,
    request_body,
)
from streamproc.sinks.offsets import OffsetTracker

TP = TopicPartition("t", 0)


def batch(offset: int, size: int = 10) -> Batch:
    value = b'{"a":"' + b"x" * max(0, size - 8) + b'"}'
    return Record("t", 0, offset, None, value)


def add(batcher: Batcher, one: Batch) -> list[Batch] | None:
    """Add one batch, as the deliverer adds a fetch: the request it completes, if any."""
    done: list[list[Batch]] = []
    batcher.add_all([one], done)
    assert len(done) <= 1, "one batch completes at most one request"
    return done[0] if done else None


def fetch(tracker: OffsetTracker, tp: TopicPartition, *offsets: int) -> None:
    """Records of ``tp`` at ``offsets`` fetched, as the deliverer hands them over."""
    tracker.fetched_all(tp, [Record(tp.topic, tp.partition, o, None, b"{}") for o in offsets])


def test_request_is_full_at_100_batches() -> None:
    """The 100th batch completes a request; the 101st opens the next one."""
    batcher = Batcher()
    done = [add(batcher, batch(i)) for i in range(101)]
    assert all(d is None for d in done[:99])
    full = done[99]
    assert full is not None
    assert [b.offset for b in full] == list(range(100))
    assert done[100] is None
    assert len(batcher) == 1


def test_request_stays_within_256_kib() -> None:
    """A batch that would push the body past 256 KiB starts the next request."""
    batcher = Batcher()
    big = 100 * 1024
    assert add(batcher, batch(0, big)) is None
    assert add(batcher, batch(1, big)) is None
    done = add(batcher, batch(2, big))
    assert done is not None
    assert [b.offset for b in done] == [0, 1]
    assert len(request_body(done)) <= 256 * 1024
    assert [b.offset for b in batcher.flush() or []] == [2]


def test_body_is_the_record_bytes_joined() -> None:
    """The request body is the records' bytes as a JSON array, unchanged."""
    values = [b'{"a":1}', b'{"b": [2, 3]}']
    body = request_body([Record("t", 0, i, None, v) for i, v in enumerate(values)])
    assert body == b'[{"a":1},{"b": [2, 3]}]'
    assert orjson.loads(body) == [{"a": 1}, {"b": [2, 3]}]
    assert request_body([Record("t", 0, 0, None, b'{"a":1}')]) == b'[{"a":1}]'
    assert request_body([]) == b"[]"


def test_reject_reasons() -> None:
    """Empty, over 128 KiB, or not a JSON object: refused before sending."""
    assert reject_reason(None) == "empty_value"
    assert reject_reason(b"{" + b" " * ACCEPTED_BATCH_BYTES + b"}") == "batch_too_large"
    assert reject_reason(b"[1]") == "not_json_object"
    assert reject_reason(b'{"a":1}') is None


def test_age_and_flush() -> None:
    """age() counts from the first batch of the open request; flush() empties it."""
    now = [10.0]
    batcher = Batcher(clock=lambda: now[0])
    assert batcher.age() == 0.0
    add(batcher, batch(0))
    now[0] = 10.5
    assert batcher.age() == 0.5
    assert batcher.flush() is not None
    assert batcher.flush() is None
    assert batcher.age() == 0.0


@given(st.lists(st.integers(min_value=1, max_value=ACCEPTED_BATCH_BYTES), max_size=300))
def test_requests_keep_order_and_limits(sizes: list[int]) -> None:
    """Every batch lands in exactly one request, in order, each request within the limits."""
    batcher = Batcher()
    requests: list[list[Batch]] = []
    for i, size in enumerate(sizes):
        done = add(batcher, batch(i, size))
        if done:
            requests.append(done)
    rest = batcher.flush()
    if rest:
        requests.append(rest)
    assert [b.offset for r in requests for b in r] == list(range(len(sizes)))
    for request in requests:
        assert 1 <= len(request) <= 100
        assert len(request_body(request)) <= 256 * 1024


def test_commit_only_the_contiguous_finished_prefix() -> None:
    """A finished record is committed only when every earlier one in its partition is."""
    tracker = OffsetTracker()
    other = TopicPartition("t", 1)
    fetch(tracker, TP, 0, 1, 2, 4)  # 3 is a transaction marker: never fetched
    fetch(tracker, other, 7)
    tracker.finished(TP, 1)
    tracker.finished(other, 7)
    assert tracker.committable() == {other: 8}
    tracker.committed({other: 8})
    tracker.finished(TP, 0)
    tracker.finished(TP, 4)
    assert tracker.committable() == {TP: 2}
    tracker.committed({TP: 2})
    assert tracker.committable() == {}  # 4 is finished, 2 is not
    tracker.finished(TP, 2)
    assert tracker.committable() == {TP: 5}
    tracker.committed({TP: 5})
    assert tracker.committable() == {}


@given(st.permutations(list(range(30))))
def test_commit_position_never_passes_an_unfinished_record(order: list[int]) -> None:
    """Whatever order records finish in, the commit never skips an unfinished one."""
    tracker = OffsetTracker()
    fetch(tracker, TP, *range(30))
    finished: set[int] = set()
    for offset in order:
        tracker.finished(TP, offset)
        finished.add(offset)
        position = tracker.committable().get(TP)
        if position is not None:
            assert set(range(position)) <= finished
            tracker.committed({TP: position})
    assert tracker.committable() == {}
    assert tracker.held() == 0


@given(
    st.lists(st.integers(min_value=2, max_value=120), max_size=60),
    st.integers(min_value=1, max_value=7),
    st.integers(min_value=122, max_value=400),
)
def test_add_all_packs_exactly_as_add_one_by_one(
    sizes: list[int], max_batches: int, max_bytes: int
) -> None:
    """``add_all`` completes the same requests however a fetch is cut, and leaves the same open."""
    batches = [batch(i, size) for i, size in enumerate(sizes)]
    one, many = Batcher(max_batches, max_bytes), Batcher(max_batches, max_bytes)
    expected = [r for r in (add(one, b) for b in batches) if r is not None]
    got: list[list[Batch]] = []
    many.add_all(batches[: len(batches) // 2], got)
    many.add_all(batches[len(batches) // 2 :], got)
    assert got == expected
    assert many.flush() == one.flush()
    for request in got:
        assert len(request_body(request)) <= max_bytes


def test_add_all_refuses_a_batch_larger_than_a_request() -> None:
    """A batch that can never fit raises; what was added before it stays in the batcher."""
    batcher = Batcher(max_bytes=100)
    got: list[list[Batch]] = []
    with pytest.raises(ValueError, match="larger than a request"):
        batcher.add_all([batch(0, 20), batch(1, 99)], got)
    assert got == []
    assert len(batcher) == 1


def test_finished_all_marks_runs_of_several_partitions() -> None:
    """Records of interleaved partitions are each marked; untracked partitions are ignored."""
    tracker = OffsetTracker()
    other = TopicPartition("t", 1)
    fetch(tracker, TP, 0, 1, 2)
    fetch(tracker, other, 5, 6)
    tracker.finished_all(
        [Record("t", p, o, None, b"{}") for p, o in ((0, 0), (1, 5), (0, 1), (9, 3), (1, 6))]
    )
    assert tracker.committable() == {TP: 2, other: 7}
    assert tracker.held() == 4  # (9, 3) was never fetched: ignored


def test_held_counts_finished_records_until_their_commit_lands() -> None:
    """Finished but uncommitted records are held: behind an unfinished one, or not committed."""
    tracker = OffsetTracker()
    other = TopicPartition("t", 1)
    fetch(tracker, TP, *range(10))
    fetch(tracker, other, *range(10))
    for offset in range(1, 6):  # offset 0 is held back, by a 429 say
        tracker.finished(TP, offset)
    for offset in range(4):
        tracker.finished(other, offset)
    assert tracker.held() == 9
    offsets = tracker.committable()
    assert offsets == {other: 4}
    assert tracker.held() == 9  # nothing is off the hook until Kafka has the commit
    tracker.committed(offsets)
    assert tracker.held() == 5
    tracker.finished(TP, 0)
    tracker.committed(tracker.committable())
    assert tracker.held() == 0


def test_partition_batchers_never_mix_partitions() -> None:
    """Each request holds one partition's records in order; lingering ones flush oldest first."""
    now = [0.0]
    batchers = PartitionBatchers(max_batches=3, clock=lambda: now[0])
    full: list[list[Batch]] = []
    batchers.add_all(("t", 0), [Record("t", 0, i, None, b"{}") for i in range(4)], full)
    now[0] = 1.0
    batchers.add_all(("t", 1), [Record("t", 1, i, None, b"{}") for i in range(2)], full)
    assert [[(b.partition, b.offset) for b in r] for r in full] == [[(0, 0), (0, 1), (0, 2)]]
    assert len(batchers) == 3
    assert batchers.age() == 1.0
    assert batchers.flush_due(0.5, limit=5) == [[Record("t", 0, 3, None, b"{}")]]
    now[0] = 2.0
    (lingered,) = batchers.flush_due(0.5, limit=5)
    assert [(b.partition, b.offset) for b in lingered] == [(1, 0), (1, 1)]
    assert len(batchers) == 0
    assert batchers.flush_due(0.0, limit=5) == []
