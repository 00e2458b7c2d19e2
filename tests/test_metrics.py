"""RepeatHistogram: the same exposition as prometheus_client's Histogram, in fewer calls."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streamproc.metrics import E2E_BUCKETS, RepeatHistogram


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """name and labels -> value, without the ``_created`` series only Histogram has."""
    out = {}
    for family in registry.collect():
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ticketmatic", "ticketure"]),
            st.floats(min_value=0, max_value=20_000, allow_nan=False),
            st.integers(min_value=1, max_value=50),
        ),
        max_size=30,
    )
)
def test_one_call_for_many_equals_many_observe_calls(
    observations: list[tuple[str, float, int]],
) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    repeat = RepeatHistogram("e2e_seconds", "help", ["source"], E2E_BUCKETS, registry=ours)
    plain = Histogram("e2e_seconds", "help", ["source"], buckets=E2E_BUCKETS, registry=theirs)
    for source, value, times in observations:
        repeat.labels(source).observe(value, times)
        for _ in range(times):
            plain.labels(source).observe(value)
    got, want = samples(ours), samples(theirs)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


NOW_MS = 1_700_000_000_000


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ticketmatic", "ticketure"]),
            # Item times from 6 h before now to 1 s after it (a clock ahead: 0 s old).
            st.lists(st.integers(NOW_MS - 6 * 3600 * 1000, NOW_MS + 1000), max_size=40),
        ),
        max_size=10,
    )
)
def test_observe_ages_equals_one_observe_call_per_age(
    observations: list[tuple[str, list[int]]],
) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    repeat = RepeatHistogram("e2e_seconds", "help", ["source"], E2E_BUCKETS, registry=ours)
    plain = Histogram("e2e_seconds", "help", ["source"], buckets=E2E_BUCKETS, registry=theirs)
    for source, times in observations:
        series = plain.labels(source)  # a series exists once labelled, observed or not
        for time_ms in times:
            series.observe(max(0, NOW_MS - time_ms) / 1000)
        repeat.labels(source).observe_ages(NOW_MS, sorted(times))
    got, want = samples(ours), samples(theirs)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


def test_bucket_bounds_are_inclusive_and_exposed_as_text() -> None:
    registry = CollectorRegistry()
    histogram = RepeatHistogram("age_seconds", "Age.", ["source"], (1, 5), registry=registry)
    histogram.labels("a").observe(1.0, 3)  # on the bound: counts in le="1.0"
    histogram.labels("a").observe(5.5)
    text = generate_latest(registry).decode()
    assert 'age_seconds_bucket{le="1.0",source="a"} 3.0' in text
    assert 'age_seconds_bucket{le="5.0",source="a"} 3.0' in text
    assert 'age_seconds_bucket{le="+Inf",source="a"} 4.0' in text
    assert 'age_seconds_count{source="a"} 4.0' in text
    assert 'age_seconds_sum{source="a"} 8.5' in text
    # Ages 7, 5, 1, 1, 0.5 and 0 s (a time ahead of now).
    histogram.labels("b").observe_ages(10_000, [3_000, 5_000, 9_000, 9_000, 9_500, 12_000])
    text = generate_latest(registry).decode()
    assert 'age_seconds_bucket{le="1.0",source="b"} 4.0' in text
    assert 'age_seconds_bucket{le="5.0",source="b"} 5.0' in text
    assert 'age_seconds_bucket{le="+Inf",source="b"} 6.0' in text
    assert 'age_seconds_sum{source="b"} 14.5' in text
    assert "# TYPE age_seconds histogram" in text


def test_wrong_label_count_is_refused() -> None:
    histogram = RepeatHistogram("x_seconds", "X.", ["source"], (1,), registry=None)
    with pytest.raises(ValueError, match="takes labels"):
        histogram.labels("a", "b")
