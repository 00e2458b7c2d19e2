"""Exponential backoff with full jitter, capped, honouring ``Retry-After``.

Durations are constructor parameters so that tests run with zero delays.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays for consecutive failures: ``min(cap, base * 2**n)`` scaled by a random factor.

    ``next(retry_after)`` returns the delay before the next try: the server's
    ``Retry-After`` when it gave one (never less), else the jittered exponential delay.
    ``reset()`` after a success.
    """

    def __init__(self, base_s: float = 0.5, cap_s: float = 60.0, rng: random.Random | None = None):
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self, retry_after: float | None = None) -> float:
        exponential = min(self.cap_s, self.base_s * (2**self.failures))
        self.failures += 1
        jittered = self._rng.uniform(exponential / 2, exponential)
        if retry_after is not None:
            return max(retry_after, 0.0)
        return jittered

    def reset(self) -> None:
        self.failures = 0
