"""Everything a chaos run starts: the broker, the simulators, the pusher and the roles.

The broker is the local Kafka of ``tests.localkafka`` on a free port with its data in
the run's folder; stopping it is a signal to its pid, starting it again the same ``up`` on
the same port and data. The roles are separate ``streamproc`` processes configured through
``STREAMPROC_*`` variables, as Kubernetes would run them, each with a metrics port of its
own; the topics come from ``streamproc topics ensure``. :meth:`Stack.close` stops all of
it by pid, in order, whatever state the run is in.
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

import aiohttp

from streamproc.config import KafkaSettings, Settings, TopicSettings
from tests import localkafka
from tests.chaos.children import MARKER, Child
from tests.chaos.options import Options
from tests.chaos.schedule import ROLES
from tests.procs import settings_env
from tests.test_end_to_end import pipeline_settings

PREFIX = "chaos."
# The accounts of pipeline_settings (acme signs with HMAC, opera uses basic auth).
ACCOUNTS = {"acme": ("ak", "sk"), "opera": ("ak2", "sk2")}
PUSH_KEY, PUSH_SECRET = "push", "push-secret"
SHARED_SCHEMA = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "reference"
    / "mparticle"
    / "mparticle-eventsapi-schema.json"
)


class Stack:
    def __init__(self, options: Options, workdir: Path, token: str) -> None:
        self.options = options
        self.token = token
        self.log_dir = workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.kafka_port = localkafka.free_port()
        self.kafka_data = workdir / "kafka"
        ports = {name: localkafka.free_port() for name in ("tm", "mp", "rx", *ROLES)}
        self.tm_url = f"http://127.0.0.1:{ports['tm']}"
        self.mp_url = f"http://127.0.0.1:{ports['mp']}"
        self.rx_url = f"http://127.0.0.1:{ports['rx']}"
        self.metrics = {role: f"http://127.0.0.1:{ports[role]}" for role in ROLES}

        def make(partitions: int = 0, **fields: object) -> Settings:
            del partitions  # the run's own count, whatever the helper asks for
            return Settings(
                topic_prefix=PREFIX,
                kafka=KafkaSettings(
                    bootstrap_servers=f"127.0.0.1:{self.kafka_port}", client_id="streamproc-chaos"
                ),
                topics=TopicSettings(partitions=options.partitions),
                **fields,  # type: ignore[arg-type]
            )

        self.settings = pipeline_settings(make, self.tm_url, self.mp_url, ports["rx"])
        self.env = settings_env(self.settings, **{MARKER: token})
        schema = ["--schema", str(SHARED_SCHEMA)] if SHARED_SCHEMA.exists() else []
        self.schema = str(SHARED_SCHEMA) if schema else "schemas/mparticle/batch.schema.json"
        tm_args = ["sim", "ticketmatic", "--port", str(ports["tm"]), "--page-size", "500"]
        for name, (access, secret) in ACCOUNTS.items():
            tm_args += ["--account", f"{name}:{access}:{secret}"]
        tm_args += ["--backlog", str(options.backlog_per_account), "--backlog-span", "600"]
        tm_args += ["--retention", "86400", "--seed", str(options.seed)]  # nothing expires
        mp_args = ["sim", "mparticle", "--port", str(ports["mp"]), "--max-stored", "10000000"]
        self.sims = {
            "sim-ticketmatic": self._child("sim-ticketmatic", tm_args),
            "sim-mparticle": self._child("sim-mparticle", mp_args + schema),
        }
        self.roles = {role: self._role(role, ports[role]) for role in ROLES}
        self.pusher: Child | None = None

    def _child(self, name: str, args: list[str], module: str = "streamproc.cli") -> Child:
        return Child(name, module, args, self.env, self.log_dir)

    def _role(self, role: str, metrics_port: int) -> Child:
        child = self._child(role, [role.split("-")[0]])
        child.env["STREAMPROC_METRICS_PORT"] = str(metrics_port)
        return child

    # --- the broker ---------------------------------------------------------------------

    async def start_broker(self) -> None:
        """Start the broker on its port and data (blocks a thread until it answers)."""
        await asyncio.to_thread(localkafka.up, self.kafka_port, self.kafka_data)

    def broker_pid(self) -> int | None:
        return localkafka.running_pid(self.kafka_port, self.kafka_data)

    def signal_broker(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the broker's pid (nothing if it is not running)."""
        pid = self.broker_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    async def broker_gone(self) -> None:
        """Wait until the broker's pid has ended (SIGKILL after 60 s) and collect it."""
        await asyncio.to_thread(localkafka.down, self.kafka_port, self.kafka_data, 60.0)

    # --- start and stop -----------------------------------------------------------------

    async def start(self) -> None:
        """Broker, topics, simulators, roles; returns once every role reports ready."""
        await self.start_broker()
        ensure = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "streamproc.cli", "topics", "ensure"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        output, _ = await ensure.communicate()
        (self.log_dir / "topics.log").write_bytes(output)
        if ensure.returncode != 0:
            raise RuntimeError(f"streamproc topics ensure failed: {output.decode()[-2000:]}")
        for child in self.sims.values():
            child.start()
        for role in self.roles.values():
            role.start()
        await self.wait_ready(timeout_s=180)

    async def wait_ready(self, timeout_s: float) -> None:
        """Until every role's /readyz answers 200; RuntimeError naming those that do not."""
        deadline = time.monotonic() + timeout_s
        waiting = set(self.roles)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while waiting and time.monotonic() < deadline:
                for role in sorted(waiting):
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with http.get(self.metrics[role] + "/readyz") as response:
                            if response.status == 200:
                                waiting.discard(role)
                await asyncio.sleep(0.5)
        if waiting:
            raise RuntimeError(f"not ready after {timeout_s:.0f} s: {', '.join(sorted(waiting))}")

    def start_pusher(self, count: int, rate: float, duration_s: float, drain_s: float) -> Path:
        """Start the Ticketure pusher; the prefix of its files of ids."""
        out = self.log_dir.parent / "pushes"
        args = ["--target", self.rx_url, "--count", str(count), "--rate", f"{rate:.3f}"]
        args += ["--duration", f"{duration_s:.1f}", "--drain-timeout", f"{drain_s:.0f}"]
        args += ["--seed", str(self.options.seed), "--key", PUSH_KEY, "--secret", PUSH_SECRET]
        self.pusher = self._child("pusher", [*args, "--out", str(out)], module="tests.chaos.pusher")
        self.pusher.start()
        return out

    def close(self) -> dict[str, int | None]:
        """Stop everything by pid: the pusher, the roles (SIGTERM: their exit codes are
        returned), the simulators, the broker. Safe to call in any state, and again."""
        codes: dict[str, int | None] = {}
        if self.pusher is not None:
            self.pusher.terminate()
        # The edge first, as `streamproc run` does: what is accepted is then carried on.
        for role in ("receive", "poll", "map-1", "map-2", "deliver-1", "deliver-2"):
            child = self.roles[role]
            was_running = child.alive()
            code = child.terminate()
            codes[role] = code if was_running else None
        for child in self.sims.values():
            child.terminate()
        localkafka.down(self.kafka_port, self.kafka_data)
        return codes
