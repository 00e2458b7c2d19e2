"""Benchmarks run by ``make bench``: each module adds rows to one table.

A benchmark is an async function taking the settings of a broker (topics ensured under a
prefix of its own) and returning :class:`Row` s. Figures are measured here, on this
machine, never asserted by tests.
"""

from __future__ import annotations

import msgspec


class Row(msgspec.Struct):
    figure: str
    value: float
    unit: str
    target: str = ""
