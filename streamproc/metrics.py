"""Every Prometheus metric streamproc exports, in one place.

Names start with ``streamproc_``; labels take few values (never ids or URLs). The README's
metric reference, the Grafana dashboard and the alert rules in ``deploy/`` use exactly
these names.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
    "Records parked in the dead-letter topic, by stage and reason.",
    ["stage", "reason"],
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
    "Now minus the time of the newest item fetched (0 when moreresults is false).",
    ["account"],
)
TM_HEADROOM = Gauge(
    "streamproc_ticketmatic_retention_headroom_seconds",
    "Ticketmatic's 4 h retention minus the lag; at 0, items are lost for good.",
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
    "streamproc_receiver_requests_total", "Push requests by route and status.", ["route", "status"]
)
RX_PRODUCE = Histogram(
    "streamproc_receiver_produce_seconds",
    "Time from a request's arrival to Kafka's acknowledgement of its records.",
    buckets=LATENCY_BUCKETS,
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
DEDUPE_SIZE = Gauge("streamproc_dedupe_state_size", "Item ids remembered by this process.")
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
DL_RETRIES = Counter("streamproc_deliver_retries_total", "Requests retried, by reason.", ["reason"])
DL_IN_FLIGHT = Gauge("streamproc_deliver_in_flight", "Bulk requests in flight.")
DL_LATENCY = Histogram(
    "streamproc_deliver_request_seconds",
    "Latency of one bulk request.",
    buckets=LATENCY_BUCKETS,
)
DL_RATE = Gauge(
    "streamproc_deliver_rate_limit_batches_per_second",
    "The client-side rate limit now in force (lowered after 429s).",
)
DL_AUTH_FAILED = Gauge(
    "streamproc_deliver_auth_failed",
    "1 while mParticle refuses the credentials (401/403) and delivery is paused.",
)
END_TO_END = Histogram(
    "streamproc_end_to_end_seconds",
    "From an item's own time to mParticle's 202.",
    ["source"],
    buckets=E2E_BUCKETS,
)

# --- consumer groups: lag against the retention window ----------------------------------
CONSUMER_LAG_RECORDS = Gauge(
    "streamproc_consumer_lag_records",
    "Records not yet processed, per consumer group and partition.",
    ["group", "topic", "partition"],
)
CONSUMER_LAG_SECONDS = Gauge(
    "streamproc_consumer_lag_seconds",
    "Age of the oldest record not yet processed (0 when caught up).",
    ["group", "topic", "partition"],
)
CONSUMER_HEADROOM = Gauge(
    "streamproc_consumer_retention_headroom_seconds",
    "The topic's retention.ms minus the lag in seconds; at 0, records expire unread.",
    ["group", "topic", "partition"],
)
