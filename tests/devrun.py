"""``make run``: the whole pipeline on this machine, with live progress.

Starts the local Kafka broker (unless one already answers on ``KAFKA_PORT``), ensures
the topics under the prefix ``local.``, starts the three simulators and ``streamproc run``
against them as child processes, and prints progress every few seconds: items polled,
pushed, mapped, deduplicated, delivered and dead-lettered; lag and headroom per stage;
errors. Ctrl-C (or SIGTERM) stops everything it started, in order, the broker included.

Ports (each moves to a free one if taken): Ticketmatic simulator 8765, receiver 8080,
mParticle simulator 8083, metrics 9100, Prometheus 9090. ``RUN_SECONDS`` stops it by
itself after that many seconds (used by the test of ``make run``).

``PROMETHEUS=/path/to/prometheus`` (``make observe``) also runs a real Prometheus that
scrapes the pipeline every 5 s with deploy/'s alert rules loaded (:func:`prometheus_config`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from streamproc import topics
from streamproc.config import load_settings
from tests import localkafka

PREFIX = "local."
ACCOUNT = ("demo", "demo-access-key", "demo-secret-key")
SENDER = ("ticketure", "push-key", "push-secret")
MP_KEY, MP_SECRET = "sim-key", "sim-secret"


def _port(preferred: int) -> int:
    return preferred if not localkafka.port_open(preferred) else localkafka.free_port()


class Child:
    """A child process in a session of its own, so only we decide when it stops."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log_dir: Path,
        program: list[str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [*(program or [sys.executable, "-m", "streamproc.cli"]), *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._log.close()


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _sum(m: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str) -> float:
    return sum(
        v for labels, v in m.get(name, []) if all(labels.get(k) == val for k, val in match.items())
    )


def _extreme(
    m: dict[str, list[tuple[dict[str, str], float]]], name: str, pick: Any, **match: str
) -> float | None:
    values = [
        v for labels, v in m.get(name, []) if all(labels.get(k) == val for k, val in match.items())
    ]
    return pick(values) if values else None


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "inf"
    if abs(value) >= 3600:
        return f"{value / 3600:.1f}h"
    return f"{value:.0f}s"


async def _get_json(http: aiohttp.ClientSession, url: str) -> Any:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
            return orjson.loads(await response.read())
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
        return None


async def progress(metrics_url: str, tm_url: str, mp_url: str) -> str:
    """One progress line from the pipeline's metrics and the simulators' statistics."""
    async with aiohttp.ClientSession() as http:
        try:
            async with http.get(metrics_url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                m = _samples(await r.text())
        except (aiohttp.ClientError, TimeoutError):
            return "waiting for streamproc run to answer on " + metrics_url
        tm = await _get_json(http, tm_url + "/_sim/stats") or {}
        mp = await _get_json(http, mp_url + "/_sim/stats") or {}
    accounts = tm.get("accounts") if isinstance(tm, dict) else None
    served = sum(a.get("served", 0) for a in accounts.values()) if accounts else 0
    polled = _sum(m, "streamproc_ticketmatic_items_total")
    pushed = _sum(m, "streamproc_items_in_total", source="ticketure")
    mapped = _sum(m, "streamproc_map_items_total", outcome="mapped") + _sum(
        m, "streamproc_map_items_total", outcome="forwarded"
    )
    dupes = _sum(m, "streamproc_map_items_total", outcome="duplicate")
    unknown = _sum(m, "streamproc_map_items_total", outcome="unknown_type")
    delivered = _sum(m, "streamproc_deliver_batches_total", outcome="delivered")
    dlq = _sum(m, "streamproc_dead_lettered_total")
    poll_errors = sum(
        v
        for labels, v in m.get("streamproc_ticketmatic_polls_total", [])
        if labels.get("outcome") not in ("ok", "empty")
    )
    deliver_errors = sum(
        v
        for labels, v in m.get("streamproc_deliver_requests_total", [])
        if labels.get("status_class") != "2xx"
    )
    tm_headroom = _extreme(m, "streamproc_ticketmatic_retention_headroom_seconds", min)
    map_lag = _extreme(m, "streamproc_consumer_lag_seconds", max, group=PREFIX + "streamproc-map")
    dl_lag = _extreme(
        m, "streamproc_consumer_lag_seconds", max, group=PREFIX + "streamproc-deliver"
    )
    headroom = _extreme(m, "streamproc_consumer_retention_headroom_seconds", min)
    return (
        f"polled {polled:.0f} (sim served {served}) | pushed {pushed:.0f} | mapped {mapped:.0f}"
        f" | dedup {dupes:.0f} | unknown {unknown:.0f} | delivered {delivered:.0f}"
        f" (mParticle sim: {mp.get('batches_stored', 0)} stored,"
        f" {mp.get('duplicates', 0)} dup) | dead-lettered {dlq:.0f}"
        f" || lag: map {_fmt_s(map_lag)}, deliver {_fmt_s(dl_lag)}"
        f" | headroom: ticketmatic {_fmt_s(tm_headroom)}, topics {_fmt_s(headroom)}"
        f" || errors: poll {poll_errors:.0f}, deliver {deliver_errors:.0f}"
    )


ALERTS = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "alerts.yaml"
ROLES = ("poll", "receive", "map", "deliver")


def prometheus_config(metrics_port: int, rules: Path = ALERTS, namespace: str = "local") -> str:
    """A prometheus.yml for ``streamproc run`` on ``metrics_port`` with deploy/'s rules.

    The alerts know the roles by the pods' ``app.kubernetes.io/component`` label on ``up``.
    Here one process runs them all, so it is scraped once for its metrics (component
    ``run``) and once more per role for nothing but ``up`` (every sample dropped): the
    role alerts see each role up while it answers, and no series is counted twice.
    """
    target = f"127.0.0.1:{metrics_port}"
    jobs = []
    for component in ("run", *ROLES):
        labels = {
            "namespace": namespace,
            "app_kubernetes_io_name": "streamproc",
            "app_kubernetes_io_component": component,
        }
        job: dict[str, Any] = {
            "job_name": f"streamproc-{component}",
            "scrape_interval": "5s",
            "static_configs": [{"targets": [target], "labels": labels}],
        }
        if component != "run":
            job["metric_relabel_configs"] = [{"source_labels": ["__name__"], "action": "drop"}]
        jobs.append(job)
    config = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": [str(rules)],
        "scrape_configs": jobs,
    }
    # JSON is YAML: no YAML writer is needed for a file Prometheus reads.
    return orjson.dumps(config, option=orjson.OPT_INDENT_2).decode()


def _start_prometheus(binary: str, metrics_port: int, log_dir: Path, env: dict[str, str]) -> Child:
    port = _port(9090)
    folder = localkafka.cache_dir() / "prometheus-run"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(prometheus_config(metrics_port), encoding="utf-8")
    args = [
        f"--config.file={config}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    child = Child("prometheus", args, env, log_dir, program=[binary])
    print(f"  Prometheus        http://127.0.0.1:{port}/alerts  (and /graph)", flush=True)
    return child


def main() -> int:
    kafka_port = int(os.environ.get("KAFKA_PORT", "9092"))
    run_seconds = float(os.environ.get("RUN_SECONDS", "0"))
    started_broker = localkafka.running_pid(kafka_port) is None or not localkafka.port_open(
        kafka_port
    )
    localkafka.up(kafka_port)
    tm_port, rx_port, mp_port, metrics_port = (_port(p) for p in (8765, 8080, 8083, 9100))
    tm_url, mp_url = f"http://127.0.0.1:{tm_port}", f"http://127.0.0.1:{mp_port}"
    name, access, secret = ACCOUNT
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    env.update(
        STREAMPROC_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{kafka_port}",
        STREAMPROC_TOPIC_PREFIX=PREFIX,
        STREAMPROC_METRICS_HOST="127.0.0.1",
        STREAMPROC_METRICS_PORT=str(metrics_port),
        STREAMPROC_TICKETMATIC_BASE_URL=tm_url,
        STREAMPROC_TICKETMATIC_POLL_INTERVAL_S="2",
        STREAMPROC_TICKETMATIC_ACCOUNTS=orjson.dumps(
            [{"name": name, "access_key": access, "secret_key": secret, "currency": "EUR"}]
        ).decode(),
        STREAMPROC_RECEIVER_HOST="127.0.0.1",
        STREAMPROC_RECEIVER_PORT=str(rx_port),
        STREAMPROC_RECEIVER_SENDERS=orjson.dumps(
            [{"name": SENDER[0], "auth": "basic", "key": SENDER[1], "secret": SENDER[2]}]
        ).decode(),
        STREAMPROC_MPARTICLE_BASE_URL=mp_url,
        STREAMPROC_MPARTICLE_API_KEY=MP_KEY,
        STREAMPROC_MPARTICLE_API_SECRET=MP_SECRET,
    )
    settings = load_settings(env=env)
    for line in asyncio.run(topics.ensure(settings)):
        print(line)
    log_dir = localkafka.cache_dir() / "run-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        children.append(
            Child(
                "sim-ticketmatic",
                [
                    "sim",
                    "ticketmatic",
                    "--port",
                    str(tm_port),
                    "--rate",
                    "20",
                    "--backlog",
                    "500",
                    "--backlog-span",
                    "600",
                ],
                env,
                log_dir,
            )
        )
        children.append(
            Child("sim-mparticle", ["sim", "mparticle", "--port", str(mp_port)], env, log_dir)
        )
        children.append(Child("run", ["run"], env, log_dir))
        prometheus = os.environ.get("PROMETHEUS")
        if prometheus:
            children.append(_start_prometheus(prometheus, metrics_port, log_dir, env))
        time.sleep(2)
        children.append(
            Child(
                "sim-ticketure",
                ["sim", "ticketure", "--rate", "20", "--duplicates", "0.05"],
                env,
                log_dir,
            )
        )
        print(
            f"\nstreamproc is running (logs in {log_dir}):\n"
            f"  metrics           http://127.0.0.1:{metrics_port}/metrics  (/readyz, /healthz)\n"
            f"  mParticle sim     {mp_url}/_sim/stats  and  {mp_url}/_sim/batches\n"
            f"  Ticketmatic sim   {tm_url}/_sim/stats\n"
            f"  Ticketure pushes  http://127.0.0.1:{rx_port}/ticketure/events\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        started = time.monotonic()
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        while not stopping:
            for child in children:
                if child.popen.poll() is not None:
                    print(
                        f"{child.name} exited with {child.popen.returncode}; see {child.log_path}"
                    )
                    stopping = True
            if stopping:
                break
            print(
                time.strftime("%H:%M:%S"),
                asyncio.run(progress(metrics_url, tm_url, mp_url)),
                flush=True,
            )
            deadline = time.monotonic() + 3
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.2)
            if run_seconds and time.monotonic() - started > run_seconds:
                stopping = True
    finally:
        print("stopping...", flush=True)
        # The pusher first, then the pipeline (it finishes and commits), then the services.
        for child in sorted(
            children,
            key=lambda c: (
                ["sim-ticketure", "run"].index(c.name) if c.name in ("sim-ticketure", "run") else 2
            ),
        ):
            child.stop()
            print(f"  stopped {child.name} (exit {child.popen.returncode})", flush=True)
        if started_broker:
            with contextlib.suppress(Exception):
                localkafka.down(kafka_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
