"""The mParticle simulator's control and inspection shapes, and its rate-limit bucket.

``POST /_sim/control`` takes a :class:`Control`; ``GET /_sim/stats`` answers
:class:`SimStats`, ``GET /_sim/requests`` a page of :class:`Arrival`. Tests use them
in-process through :class:`~streamproc.sim.mparticle.MParticleSim`.
"""

from __future__ import annotations

import time
from typing import Literal

import msgspec


class FailNext(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Answer the next ``count`` requests with ``status`` (before auth and validation)."""

    status: int
    count: int = 1
    retry_after_s: float | None = None


class Credentials(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    api_key: str
    api_secret: str


class Control(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /_sim/control`` body; absent fields are left as they are."""

    fail_next: FailNext | msgspec.UnsetType = msgspec.UNSET
    outage: Literal["503", "drop"] | msgspec.UnsetType | None = msgspec.UNSET
    latency_s: float | msgspec.UnsetType = msgspec.UNSET
    error_rate: float | msgspec.UnsetType = msgspec.UNSET
    rate_limit_batches_per_s: float | msgspec.UnsetType | None = msgspec.UNSET
    retry_after_s: float | msgspec.UnsetType | None = msgspec.UNSET
    credentials: Credentials | msgspec.UnsetType = msgspec.UNSET


class SimStats(msgspec.Struct, kw_only=True):
    """What the simulator saw; ``batches_received`` counts repeats, ``batches_stored`` not."""

    requests: int = 0
    in_flight: int = 0
    answers: dict[str, int] = msgspec.field(default_factory=dict)
    batches_received: int = 0
    batches_stored: int = 0
    duplicates: int = 0
    duplicates_differing: int = 0
    batches_refused: int = 0
    events_received: int = 0
    events_stored: int = 0
    first_batch_at: float | None = None
    last_batch_at: float | None = None
    # Epoch second -> batches in the requests that arrived in it, whatever the answer.
    arrived_by_second: dict[int, int] = msgspec.field(default_factory=dict)


class Arrival(msgspec.Struct, kw_only=True):
    """One request to the events endpoints, as the simulator saw it (``GET /_sim/requests``).

    ``arrived_at`` is when its body was read, ``answered_at`` when the answer was ready
    (after the injected latency), both in epoch seconds; ``ids`` are the batches'
    ``source_request_id`` in order (empty when the body could not be read as batches).
    """

    arrived_at: float
    answered_at: float
    status: str  # the answer's code, or "dropped"
    batches: int
    ids: list[str]


class RateBucket:
    """Batches per second, with one second's worth of burst."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.at = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def take(self, n: int) -> bool:
        self._refill()
        if self.tokens >= n or self.tokens >= self.rate:
            self.tokens -= n
            return True
        return False

    def percent_used(self) -> int:
        return min(100, max(0, round((self.rate - self.tokens) / self.rate * 100)))

    def wait_s(self, n: int) -> float:
        return max(0.0, (min(n, self.rate) - self.tokens) / self.rate)
