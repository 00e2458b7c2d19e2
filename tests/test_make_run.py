"""`make run`, as a new user runs it: progress shows deliveries; Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests import localkafka

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def processes_with(marker: bytes) -> list[int]:
    """Pids of live processes whose environment or command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if marker in blob and state != "Z":
            found.append(int(entry.name))
    return found


def test_make_run_shows_deliveries_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    """Progress lines count delivered items; SIGINT stops the roles, sims and the broker."""
    port = localkafka.free_port()
    log_path = tmp_path / "make-run.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    env.update(KAFKA_PORT=str(port), RUN_SECONDS="150")
    with log_path.open("wb") as log:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, as a terminal would give it
        )
        delivered = 0
        deadline = time.monotonic() + 150
        try:
            while time.monotonic() < deadline and make.poll() is None:
                counts = re.findall(rb"delivered (\d+)", log_path.read_bytes())
                delivered = int(counts[-1]) if counts else 0
                if delivered >= 20:
                    break
                time.sleep(1)
            assert delivered >= 20, log_path.read_text(errors="replace")[-3000:]
            os.killpg(make.pid, signal.SIGINT)  # Ctrl-C
            code = make.wait(timeout=120)
        finally:
            if make.poll() is None:
                os.killpg(make.pid, signal.SIGKILL)
                make.wait(timeout=30)
    output = log_path.read_text(errors="replace")
    # make itself dies of the interrupt (or reports it); what matters is what it started.
    assert code in (0, 2, -signal.SIGINT), output[-3000:]
    for name in ("sim-ticketure", "run", "sim-ticketmatic", "sim-mparticle"):
        assert f"stopped {name} (exit 0)" in output, output[-3000:]
    assert f"Kafka on port {port} stopped" in output
    assert "metrics" in output
    served = re.findall(r"sim served (\d+)", output)
    assert served, output[-3000:]
    assert int(served[-1]) > 0, "the progress line reads the simulator's stats"
    assert "/_sim/stats" in output
    time.sleep(1)
    strays = processes_with(f"127.0.0.1:{port}".encode()) + processes_with(
        f"kafka-data/{port}/".encode()
    )
    assert not strays, f"still running after make run stopped: {strays}"
    assert not localkafka.port_open(port)
