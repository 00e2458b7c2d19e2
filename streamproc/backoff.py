"""Exponential backoff with full jitter, capped, honouring a capped ``Retry-After``.

Durations are constructor parameters so that tests run with zero delays.
"""

from __future__ import annotations

import random

RETRY_AFTER_MAX_S = 300.0  # a peer's Retry-After is obeyed up to this, never forever


class Backoff:
    """Delays for consecutive failures: ``min(cap, base * 2**n)`` scaled by a random factor.

    ``next(retry_after)`` returns the delay before the next try: the server's
    ``Retry-After`` when it gave one (never less, but at most ``retry_after_max_s``), else
    the jittered exponential delay. ``reset()`` after a success.
    """

    def __init__(
        self,
        base_s: float = 0.5,
        cap_s: float = 60.0,
        rng: random.Random | None = None,
        *,
        retry_after_max_s: float = RETRY_AFTER_MAX_S,
    ):
        self.base_s = base_s
        self.cap_s = cap_s
        self.retry_after_max_s = retry_after_max_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self, retry_after: float | None = None) -> float:
        exponential = min(self.cap_s, self.base_s * (2**self.failures))
        self.failures += 1
        jittered = self._rng.uniform(exponential / 2, exponential)
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_max_s)
        return jittered

    def over_cap(self, retry_after: float | None) -> bool:
        """True when ``retry_after`` asks for more than this backoff will wait."""
        return retry_after is not None and retry_after > self.retry_after_max_s

    def reset(self) -> None:
        self.failures = 0
