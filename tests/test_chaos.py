"""`make chaos`, quick: roles killed, the broker restarted, mParticle down; nothing lost.

The harness runs as `make chaos` runs it, a process of its own with a broker of its own,
on about 2,000 items and 60 s of faults (one broker restart with a transaction open, one
mParticle outage, a 429 storm, a SIGKILL every few seconds). Its verdict line is the
assertion; its table and the processes' logs are in the failure message. CHAOS_SEED picks
another plan (the default one is fixed, so a failure can be replayed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.chaos.verdict import JSON_MARK

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--items", "2000", "--seconds", "60", "--broker-restarts", "1", "--outage", "15"]


def verdict_of(output: str) -> dict[str, Any]:
    lines = [line for line in output.splitlines() if line.startswith(JSON_MARK)]
    assert lines, output[-5000:]
    verdict: dict[str, Any] = orjson.loads(lines[-1][len(JSON_MARK) :])
    return verdict


@pytest.mark.timeout(420)
def test_quick_chaos_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Under kills, a broker restart and an mParticle outage every item arrives once, valid."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMPROC_", "CHAOS_"))}
    seed = os.environ.get("CHAOS_SEED") or "20261202"
    args = [*QUICK, "--seed", seed, "--drain-limit", "120", "--log-dir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "tests.chaos", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    output = done.stdout + done.stderr
    verdict = verdict_of(output)
    table = output[output.find("chaos verdict:") :]
    assert verdict["lost"] == 0, table
    assert verdict["duplicated"] == 0, table
    assert verdict["invalid"] == 0, table
    assert verdict["unknown_batches"] == 0, table
    assert verdict["drained"], output[-5000:]
    assert verdict["stored"] == verdict["stored_read"] == verdict["expected"], table
    # The faults happened: the verdict means something only if they did.
    assert verdict["expected"] >= 2000, table
    assert len(verdict["broker_restarts"]) == 1, table
    assert verdict["broker_restarts"][0]["open_transaction_records"] > 0, table  # stopped mid-txn
    assert sum(verdict["kills"].values()) >= 5, table
    assert verdict["mparticle_answers"].get("429", 0) > 0, table
    assert verdict["mparticle_answers"].get("503", 0) > 0, table
    assert not verdict["strays"], table
    assert all(code == 0 for code in verdict["exit_codes"].values()), table
    assert done.returncode == 0, table
