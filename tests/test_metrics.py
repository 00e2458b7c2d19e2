"""AgeHistogram: the same exposition as prometheus_client's Histogram, in fewer calls."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streamproc.metrics import E2E_BUCKETS, AgeHistogram


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """name and labels -> value, without the ``_created`` series only Histogram has."""
    out = {}
    for family in registry.collect():
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


NOW_MS = 1_700_000_000_000


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ticketmatic", "ticketure"]),
            # Item times from 6 h before now to 1 s after it (a clock ahead: 0 s old).
            st.lists(st.integers(NOW_MS - 6 * 3600 * 1000, NOW_MS + 1000), max_size=40),
        ),
        max_size=10,
    ),
    st.sampled_from([0.0, 0.25, 0.999]),  # now as time.time() gives it: between two ms
)
def test_observe_ages_equals_one_observe_call_per_age(
    observations: list[tuple[str, list[int]]], fraction: float
) -> None:
    now_ms = NOW_MS + fraction
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    ages = AgeHistogram("e2e_seconds", "help", ["source"], E2E_BUCKETS, registry=ours)
    plain = Histogram("e2e_seconds", "help", ["source"], buckets=E2E_BUCKETS, registry=theirs)
    for source, times in observations:
        series = plain.labels(source)  # a series exists once labelled, observed or not
        for time_ms in times:
            series.observe(max(0, now_ms - time_ms) / 1000)
        ages.labels(source).observe_ages(now_ms, sorted(times))
    got, want = samples(ours), samples(theirs)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


def test_bucket_bounds_are_inclusive_and_exposed_as_text() -> None:
    registry = CollectorRegistry()
    histogram = AgeHistogram("age_seconds", "Age.", ["source"], (1, 5), registry=registry)
    # Ages 7, 5, 1, 1, 0.5 and 0 s (a time ahead of now): 1 and 5 count in their own bound.
    histogram.labels("a").observe_ages(10_000, [3_000, 5_000, 9_000, 9_000, 9_500, 12_000])
    histogram.labels("b")  # labelled, never observed: zeros
    text = generate_latest(registry).decode()
    for line in (
        "# TYPE age_seconds histogram",
        'age_seconds_bucket{le="1.0",source="a"} 4.0',
        'age_seconds_bucket{le="5.0",source="a"} 5.0',
        'age_seconds_bucket{le="+Inf",source="a"} 6.0',
        'age_seconds_count{source="a"} 6.0',
        'age_seconds_sum{source="a"} 14.5',
        'age_seconds_count{source="b"} 0.0',
    ):
        assert line in text, line


def test_wrong_label_count_is_refused() -> None:
    histogram = AgeHistogram("x_seconds", "X.", ["source"], (1,), registry=None)
    with pytest.raises(ValueError, match="takes labels"):
        histogram.labels("a", "b")
