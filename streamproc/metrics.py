"""Every Prometheus metric streamproc exports, in one place.

Names start with ``streamproc_``; labels take few values (never ids or URLs). The README's
metric reference, the Grafana dashboard and the alert rules in ``deploy/`` use exactly
these names.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric


class AgeSeries:
    """One label combination of a :class:`AgeHistogram`."""

    __slots__ = ("_counts", "_lock", "_upper", "sum")

    def __init__(self, upper: Sequence[float], lock: threading.Lock) -> None:
        self._upper = upper
        self._lock = lock
        self._counts = [0] * len(upper)
        self.sum = 0.0

    def observe_ages(self, now_ms: float, times_ms: Sequence[int]) -> None:
        """Record the age at ``now_ms`` of each of ``times_ms``, as one ``observe`` each would.

        ``times_ms`` are epoch milliseconds sorted ascending; an age is in seconds, and a
        time after ``now_ms`` is 0 s old. One bisection per bucket, then one C-level sum.
        """
        n = len(times_ms)
        if not n:
            return
        added: list[tuple[int, int]] = []
        counted = 0
        for index, le in enumerate(self._upper):
            # age <= le  <=>  time >= now - le: how many are that young, minus those counted.
            young = n - bisect_left(times_ms, now_ms - le * 1000)
            if young > counted:
                added.append((index, young - counted))
                counted = young
                if counted == n:
                    break
        past = bisect_left(times_ms, now_ms)  # the later ones add 0 s to the sum
        total = (past * now_ms - sum(times_ms[:past])) / 1000
        with self._lock:
            for index, count in added:
                self._counts[index] += count
            self.sum += total

    def cumulative(self) -> list[int]:
        total, out = 0, []
        for count in self._counts:
            total += count
            out.append(total)
        return out


class AgeHistogram:
    """A labelled histogram of ages, observed many at a time (``labels(...).observe_ages``).

    Exposed exactly as a prometheus_client ``Histogram`` (``_bucket``, ``_count``, ``_sum``).
    Delivery observes every batch it delivers: one call per source of a request instead of
    two locked increments per batch.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Iterable[str],
        buckets: Iterable[float],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        upper = sorted(float(b) for b in buckets)
        if not upper or upper[-1] != math.inf:
            upper.append(math.inf)
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._upper = tuple(upper)
        # As prometheus_client writes them: 0.05, 1.0, +Inf.
        self._le = [("+Inf" if le == math.inf else repr(le)) for le in upper]
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], AgeSeries] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> AgeSeries:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        series = self._series.get(values)
        if series is None:
            with self._lock:
                series = self._series.setdefault(values, AgeSeries(self._upper, self._lock))
        return series

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            snapshot = [(k, s.cumulative(), s.sum) for k, s in self._series.items()]
        for key, cumulative, total in snapshot:
            buckets = list(zip(self._le, cumulative, strict=True))
            family.add_metric(list(key), buckets, total)
        yield family


class BoundedLabel:
    """Label values a peer chooses, kept few: the first ``limit`` distinct ones as they are
    (cut to ``length`` characters), every later one as ``other``."""

    __slots__ = ("_length", "_limit", "_seen")

    def __init__(self, limit: int = 50, length: int = 64) -> None:
        self._limit = limit
        self._length = length
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        value = value[: self._length]
        if value in self._seen:
            return value
        if len(self._seen) < self._limit:
            self._seen.add(value)
            return value
        return "other"


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600)

# --- every source -----------------------------------------------------------------------
ITEMS_IN = Counter("streamproc_items_in_total", "Items written to a source topic.", ["source"])
REJECTED = Counter(
    "streamproc_items_rejected_total",
    "Items refused at the edge (never written), by reason.",
    ["source", "reason"],
)
DEAD_LETTERED = Counter(
    "streamproc_dead_lettered_total",
    "Records parked in the dead-letter topic, by stage, source and reason (counted once written).",
    ["stage", "source", "reason"],
)

# --- Ticketmatic poller -----------------------------------------------------------------
TM_POLLS = Counter(
    "streamproc_ticketmatic_polls_total",
    "Eventstream requests by outcome (ok, empty, rate_limited, server_error, "
    "transport_error, auth_error, client_error, malformed, error).",
    ["account", "outcome"],
)
TM_ITEMS = Counter(
    "streamproc_ticketmatic_items_total", "Eventstream items written to Kafka.", ["account"]
)
TM_LAG = Gauge(
    "streamproc_ticketmatic_lag_seconds",
    "Now minus the last good progress: the newest item fetched, or the last successful poll "
    "that found nothing more. Read at scrape time, so it grows during any outage.",
    ["account"],
)
TM_HEADROOM = Gauge(
    "streamproc_ticketmatic_retention_headroom_seconds",
    "Ticketmatic's 4 h retention minus the lag; at 0, items are lost for good.",
    ["account"],
)
TM_SINCE_SUCCESS = Gauge(
    "streamproc_ticketmatic_since_success_seconds",
    "Seconds since the account's last successful eventstream request (read at scrape time).",
    ["account"],
)
TM_MALFORMED = Counter(
    "streamproc_ticketmatic_malformed_pages_total",
    "Eventstream answers refused before anything of them was written, by reason (not_json, "
    "invalid, too_large, too_deep, ids_not_ascending, before_cursor, future_item, "
    "nextid_behind, nextid_ahead, nextid_future).",
    ["account", "reason"],
)
TM_DUPLICATES = Counter(
    "streamproc_ticketmatic_duplicates_total",
    "Items served again at or below the cursor (the id parameter is a minimum): dropped.",
    ["account"],
)
TM_GAPS = Counter(
    "streamproc_ticketmatic_retention_gaps_total",
    "Times the cursor was older than the retention: items were dropped by Ticketmatic.",
    ["account"],
)
TM_GAP_SECONDS = Counter(
    "streamproc_ticketmatic_retention_gap_seconds_total",
    "Seconds of eventstream lost to retention gaps.",
    ["account"],
)
TM_ACTIVE = Gauge("streamproc_ticketmatic_active_accounts", "Accounts this replica is polling now.")

# --- Ticketure receiver -----------------------------------------------------------------
RX_REQUESTS = Counter(
    "streamproc_receiver_requests_total",
    "Push requests by route and status (route other: no such route or method).",
    ["route", "status"],
)
RX_PRODUCE = Histogram(
    "streamproc_receiver_produce_seconds",
    "Time from a request's arrival to Kafka's acknowledgement of its records.",
    buckets=LATENCY_BUCKETS,
)
RX_CONNECTIONS = Gauge("streamproc_receiver_connections", "Open connections to the receiver.")
RX_DROPPED = Counter(
    "streamproc_receiver_connections_dropped_total",
    "Connections the receiver refused or ended, by reason (over_capacity: answered 503 past "
    "max_connections, all busy; idle_evicted, head_evicted: idle, or waiting for a request "
    "head, closed for a new one past max_connections; header_timeout; body_timeout: "
    "answered 408; accept_error: accept() failed, e.g. out of file descriptors).",
    ["reason"],
)
RX_UNKNOWN_ATTRIBUTES = Counter(
    "streamproc_receiver_unknown_attributes_total",
    "Accepted attributes that Ticketure records have no field for, forwarded as custom "
    "attributes, by name (the first 50 names a receiver sees, then other).",
    ["name"],
)

# --- map and dedupe ---------------------------------------------------------------------
MAP_ITEMS = Counter(
    "streamproc_map_items_total",
    "Source items by source, type and outcome (mapped, duplicate, unknown_type, "
    "forwarded, dead_lettered).",
    ["source", "type", "outcome"],
)
MAP_TRUNCATED = Counter(
    "streamproc_map_truncations_total",
    "Values cut to mParticle's limits (or left out as invalid), by what was cut.",
    ["what"],
)
DEDUPE_HITS = Counter("streamproc_dedupe_hits_total", "Items dropped as already seen.", ["source"])
DEDUPE_SIZE = Gauge(
    "streamproc_dedupe_state_size", "Item ids remembered by this process, by source.", ["source"]
)
MAP_PARTITION_WAITING = Gauge(
    "streamproc_map_partition_waiting_seconds",
    "How long an input partition assigned to this process has waited to be set up "
    "(fence, restore, committed offset); 0 while it is processed.",
    ["topic", "partition"],
)
DEDUPE_RESTORE = Histogram(
    "streamproc_dedupe_restore_seconds",
    "Time to restore dedupe state from its changelog after an assignment.",
    buckets=LATENCY_BUCKETS,
)

# --- delivery to mParticle --------------------------------------------------------------
DL_REQUESTS = Counter(
    "streamproc_deliver_requests_total",
    "Bulk requests to mParticle by status class (2xx, 4xx, 429, 5xx, error).",
    ["status_class"],
)
DL_BATCHES = Counter(
    "streamproc_deliver_batches_total",
    "Batches by outcome (delivered, dead_lettered).",
    ["outcome"],
)
DL_RETRIES = Counter(
    "streamproc_deliver_retries_total",
    "Requests retried, by reason (rate_limited, server_error, transport, auth, client_error, "
    "split).",
    ["reason"],
)
DL_IN_FLIGHT = Gauge("streamproc_deliver_in_flight", "Bulk requests in flight.")
DL_LATENCY = Histogram(
    "streamproc_deliver_request_seconds",
    "Latency of one bulk request.",
    buckets=LATENCY_BUCKETS,
)
DL_RATE = Gauge(
    "streamproc_deliver_rate_limit_batches_per_second",
    "This process's client-side rate limit now in force: its partitions' share of the feed's "
    "rate_limit_batches_per_s, lowered after 429s (the group's members add up to the feed's).",
)
DL_AUTH_FAILED = Gauge(
    "streamproc_deliver_auth_failed",
    "1 while mParticle refuses the credentials (401/403) and delivery is paused.",
)
END_TO_END = AgeHistogram(
    "streamproc_end_to_end_seconds",
    "From an item's own time to mParticle's 202.",
    ["source"],
    E2E_BUCKETS,
)

# --- consumer groups: lag against the retention window ----------------------------------
CONSUMER_LAG_RECORDS = Gauge(
    "streamproc_consumer_lag_records",
    "Records not yet processed, per consumer group and partition (0 once past the last "
    "readable record: transaction markers and aborted records are not counted).",
    ["group", "topic", "partition"],
)
CONSUMER_LAG_SECONDS = Gauge(
    "streamproc_consumer_lag_seconds",
    "Age of the oldest record not yet processed (0 when caught up).",
    ["group", "topic", "partition"],
)
CONSUMER_STUCK_TXN = Gauge(
    "streamproc_consumer_stuck_transaction_seconds",
    "How long the partition's last stable offset has stayed at one offset below its high "
    "watermark: an open transaction holding every read_committed reader back.",
    ["group", "topic", "partition"],
)
CONSUMER_HEADROOM = Gauge(
    "streamproc_consumer_retention_headroom_seconds",
    "The topic's retention.ms (re-read every minute) minus the lag in seconds; at 0, "
    "records expire unread.",
    ["group", "topic", "partition"],
)

# --- readiness: /readyz's components, for alerts --------------------------------------
READY = Gauge(
    "streamproc_ready",
    "1 while the component is ready, 0 while /readyz reports it not ready (the reason is "
    "in /readyz). Set at every scrape from the same checks /readyz runs.",
    ["component"],
)
