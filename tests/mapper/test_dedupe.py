"""The dedupe state: remembering ids by event time, its changelog format, its memory."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.mapper import dedupe
from streamproc.mapper.dedupe import (
    DedupeState,
    changelog_key,
    decode_ids,
    encode_ids,
    parse_changelog_key,
)
from streamproc.mapping.identity import item_hash

HOUR = 3_600_000
WINDOW = 4 * HOUR
T0 = 1_700_000_000_000
NOW = T0 + 1000 * HOUR  # the wall clock, far ahead of every item here


def commit(state: DedupeState, items: list[tuple[str, int]], offset: int = 0) -> list[bool]:
    """Stage ``(item id, item time)`` pairs in one transaction, commit; say which were new."""
    txn = state.begin()
    new = []
    for item_id, t in items:
        h = item_hash("ticketmatic", item_id)
        new.append(not txn.seen(h))
        if new[-1]:
            txn.add(h, t)
    state.apply(txn.changes(NOW), offset)
    return new


def measured(build: Callable[[], DedupeState]) -> tuple[DedupeState, int]:
    """The state ``build`` makes, and the bytes still allocated by the dedupe module's own
    code once it is built (tracemalloc: the table, the bucket bookkeeping, everything)."""
    tracemalloc.start()
    try:
        state = build()
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    own = snapshot.filter_traces([tracemalloc.Filter(True, dedupe.__file__)])
    return state, sum(stat.size for stat in own.statistics("filename"))


def test_second_sighting_is_a_duplicate() -> None:
    """An id is new once; again in the same or a later transaction it is a duplicate."""
    state = DedupeState(WINDOW)
    assert commit(state, [("a", T0), ("b", T0), ("a", T0)]) == [True, True, False]
    assert commit(state, [("b", T0 + 1), ("c", T0 + 2)], offset=3) == [False, True]
    assert state.size == 3


def test_nothing_changes_until_applied() -> None:
    """A transaction that never commits (aborted) leaves the state as it was."""
    state = DedupeState(WINDOW)
    txn = state.begin()
    h = item_hash("ticketure", "x")
    txn.add(h, T0)
    assert txn.seen(h)
    assert h not in state
    assert state.size == 0


def test_kept_for_the_window_in_event_time() -> None:
    """An id is remembered while newer items are less than one window younger."""
    state = DedupeState(WINDOW, buckets=4)
    commit(state, [("old", T0)])
    commit(state, [("later", T0 + WINDOW - 1)], offset=1)
    assert commit(state, [("old", T0 + WINDOW - 1)], offset=2) == [False]


def test_forgotten_after_window_and_one_bucket() -> None:
    """Once the newest item time is a window plus a bucket ahead, old ids are forgotten."""
    state = DedupeState(WINDOW, buckets=4)
    commit(state, [(f"old-{i}", T0 + i) for i in range(100)])
    assert state.size == 100
    commit(state, [("new", T0 + WINDOW + state.bucket_ms + 1)], offset=100)
    assert state.size == 1
    assert commit(state, [("old-5", T0 + WINDOW + state.bucket_ms + 2)], offset=101) == [True]


def test_wall_clock_does_not_expire_anything() -> None:
    """Expiry follows item times only: an idle state keeps its ids however late it is."""
    state = DedupeState(WINDOW)
    commit(state, [("a", T0)])
    txn = state.begin()
    changes = txn.changes(NOW + 100 * WINDOW)
    assert changes.expired == []
    assert commit(state, [("a", T0)], offset=1) == [False]


def test_item_from_the_future_cannot_expire_the_state() -> None:
    """An item time far past the clock moves the watermark only to now + max skew."""
    state = DedupeState(WINDOW, max_skew_ms=HOUR)
    now = T0 + HOUR
    txn = state.begin()
    txn.add(item_hash("ticketmatic", "a"), T0)
    state.apply(txn.changes(now), 0)
    txn = state.begin()
    txn.add(item_hash("ticketmatic", "bogus"), T0 + 1000 * WINDOW)
    changes = txn.changes(now)
    assert changes.watermark_ms == now + HOUR
    state.apply(changes, 1)
    assert item_hash("ticketmatic", "a") in state


def test_late_item_is_not_remembered() -> None:
    """An item older than the window is passed on but not remembered (nothing to catch)."""
    state = DedupeState(WINDOW, buckets=4)
    commit(state, [("new", T0 + 10 * WINDOW)])
    txn = state.begin()
    txn.add(item_hash("ticketmatic", "ancient"), T0)
    changes = txn.changes(NOW)
    assert changes.records == {}
    state.apply(changes, 1)
    assert state.size == 1


def test_expiry_names_the_changelog_records_to_tombstone() -> None:
    """An expiring bucket lists the first offsets of every record that wrote to it."""
    state = DedupeState(WINDOW, buckets=4)
    commit(state, [("a", T0)], offset=10)
    commit(state, [("b", T0 + 1)], offset=20)
    txn = state.begin()
    txn.add(item_hash("ticketmatic", "c"), T0 + 2 * WINDOW)
    changes = txn.changes(NOW)
    assert [(b, list(offsets)) for b, offsets in changes.expired] == [
        (T0 // state.bucket_ms, [10, 20])
    ]


def test_state_stays_bounded_over_many_windows() -> None:
    """Ten windows of steady traffic leave about one window of ids, in a table that fits."""
    per_hour = 500

    def build() -> DedupeState:
        state = DedupeState(WINDOW, buckets=8)
        for hour in range(40):
            items = [(f"{hour}-{i}", T0 + hour * HOUR + i) for i in range(per_hour)]
            commit(state, items, offset=hour * per_hour)
        return state

    state, held = measured(build)
    window_ids = per_hour * WINDOW // HOUR
    assert window_ids <= state.size <= window_ids + per_hour
    assert held / state.size <= 64


def test_growth_keeps_every_id_and_the_memory_bound() -> None:
    """Across table rebuilds every id stays findable, at most 64 bytes each."""
    ids = [f"id-{i}" for i in range(50_000)]

    def build() -> DedupeState:
        state = DedupeState(24 * HOUR, min_capacity=8)
        for start in range(0, len(ids), 1000):
            commit(state, [(i, T0 + start) for i in ids[start : start + 1000]], offset=start)
        return state

    state, held = measured(build)
    assert state.size == len(ids)
    assert all(item_hash("ticketmatic", i) in state for i in ids)
    assert item_hash("ticketmatic", "never") not in state
    assert held / state.size <= 64


def test_changelog_round_trip() -> None:
    """Keys and values decode to what was encoded; foreign ones decode to None."""
    key = changelog_key("ticketure", 123, 456)
    assert parse_changelog_key(key) == ("ticketure", 123, 456)
    assert parse_changelog_key(b"nonsense") is None
    assert parse_changelog_key(None) is None
    hashes = [1, 2**64 - 1, item_hash("ticketmatic", "x")]
    decoded = decode_ids(encode_ids(T0, hashes))
    assert decoded is not None
    assert decoded[0] == T0
    assert list(decoded[1]) == hashes
    assert decode_ids(b"short") is None
    assert decode_ids(encode_ids(T0, hashes) + b"x") is None


def test_loading_records_rebuilds_the_state() -> None:
    """A state loaded from its changelog records holds what the original held."""
    original = DedupeState(WINDOW)
    written: list[tuple[int, int, int, list[int]]] = []
    for offset in range(0, 30, 10):
        txn = original.begin()
        for i in range(10):
            txn.add(item_hash("ticketmatic", f"{offset + i}"), T0 + offset + i)
        changes = txn.changes(NOW)
        written += [(b, offset, newest, hs) for b, (newest, hs) in changes.records.items()]
        original.apply(changes, offset)
    restored = DedupeState(WINDOW)
    for bucket, offset, newest, hashes in written:
        restored.load(bucket, offset, newest, hashes)
    assert restored.size == original.size == 30
    assert restored.watermark_ms == original.watermark_ms
    assert all(item_hash("ticketmatic", f"{i}") in restored for i in range(30))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 60), st.integers(0, 30 * HOUR)), max_size=30),
        max_size=25,
    )
)
def test_matches_a_plain_model(batches: list[list[tuple[int, int]]]) -> None:
    """Against a dict of id -> bucket with the same rules, answers and sizes always agree."""
    state = DedupeState(WINDOW, buckets=4, min_capacity=8)
    model: dict[str, int] = {}
    watermark: int | None = None
    for n, batch in enumerate(batches):
        items = [(str(i), T0 + t) for i, t in batch]
        staged: dict[str, int] = {}
        expected = []
        for item_id, t in items:
            new = item_id not in model and item_id not in staged
            expected.append(new)
            if new:
                staged[item_id] = t
        assert commit(state, items, offset=n) == expected
        for t in staged.values():
            watermark = t if watermark is None else max(watermark, t)
        if watermark is not None:
            top = watermark // state.bucket_ms
            for item_id, t in staged.items():
                model[item_id] = min(t // state.bucket_ms, top)
            model = {i: b for i, b in model.items() if not state.is_expired(b, watermark)}
        assert state.size == len(model)
