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


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ticketmatic", "ticketure"]),
            st.lists(st.floats(min_value=0, max_value=20_000, allow_nan=False), max_size=40),
        ),
        max_size=10,
    )
)
def test_observe_all_equals_one_observe_call_per_value(
    observations: list[tuple[str, list[float]]],
) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    repeat = RepeatHistogram("e2e_seconds", "help", ["source"], E2E_BUCKETS, registry=ours)
    plain = Histogram("e2e_seconds", "help", ["source"], buckets=E2E_BUCKETS, registry=theirs)
    for source, values in observations:
        series = plain.labels(source)  # a series exists once labelled, observed or not
        for value in values:
            series.observe(value)
        repeat.labels(source).observe_all(list(values))
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
    histogram.labels("b").observe_all([5.0, 1.0, 0.5, 7.0, 1.0])
    text = generate_latest(registry).decode()
    assert 'age_seconds_bucket{le="1.0",source="b"} 3.0' in text
    assert 'age_seconds_bucket{le="5.0",source="b"} 4.0' in text
    assert 'age_seconds_bucket{le="+Inf",source="b"} 5.0' in text
    assert 'age_seconds_sum{source="b"} 14.5' in text
    assert "# TYPE age_seconds histogram" in text


def test_wrong_label_count_is_refused() -> None:
    histogram = RepeatHistogram("x_seconds", "X.", ["source"], (1,), registry=None)
    with pytest.raises(ValueError, match="takes labels"):
        histogram.labels("a", "b")
