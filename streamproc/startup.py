"""Start-up waits for Kafka instead of crash-looping while the broker is away.

Every role calls :func:`wait_for_kafka` once its ``/healthz`` and ``/readyz`` are served:
it asks the cluster for its metadata, with backoff, until the cluster answers, ``stop`` is
set or ``kafka.startup_timeout_s`` passes. Meanwhile ``/readyz`` says 503 with the reason
(component ``kafka``), the first failure is logged at WARNING and then one line a minute,
and the process stays up: on Kubernetes a broker restart is a not-ready pod, not
CrashLoopBackOff with growing delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiokafka.errors import KafkaConnectionError, KafkaError

from streamproc import kafka
from streamproc.backoff import Backoff
from streamproc.config import KafkaSettings, Settings
from streamproc.errors import Unavailable
from streamproc.health import Health, HealthServer
from streamproc.lifecycle import until

log = logging.getLogger(__name__)

COMPONENT = "kafka"
LOG_REPEAT_S = 60.0


async def wait_for_kafka(
    settings: KafkaSettings,
    health: Health,
    stop: asyncio.Event,
    *,
    timeout_s: float | None = None,
    backoff: Backoff | None = None,
) -> bool:
    """True once the cluster answers; False if ``stop`` came first.

    Raises :class:`Unavailable` after ``timeout_s`` (default ``settings.startup_timeout_s``),
    for the orchestrator to restart the process. Each attempt is bounded by the client's
    ``request_timeout_ms``.
    """
    limit = settings.startup_timeout_s if timeout_s is None else timeout_s
    backoff = backoff or Backoff(0.5, 10.0)
    deadline = time.monotonic() + limit
    attempt_s = settings.request_timeout_ms / 1000
    logged_at: float | None = None
    while not stop.is_set():
        admin = kafka.admin(settings)
        try:
            await asyncio.wait_for(admin.start(), attempt_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            # "Unable to bootstrap" says nothing: name what fails (authentication, TLS...).
            why = await kafka.diagnose(settings) if isinstance(exc, KafkaConnectionError) else ""
            reason = (
                f"waiting for Kafka at {settings.bootstrap_servers}: {why or type(exc).__name__}"
            )
            health.set(COMPONENT, False, reason)
            now = time.monotonic()
            if logged_at is None or now - logged_at >= LOG_REPEAT_S:
                log.warning("%s (%s); retrying until it answers", reason, exc)
                logged_at = now
        else:
            if logged_at is not None:
                log.info("Kafka at %s answers", settings.bootstrap_servers)
            health.forget(COMPONENT)
            return True
        finally:
            with contextlib.suppress(KafkaError, OSError):
                await admin.close()
        if time.monotonic() > deadline:
            raise Unavailable(
                f"Kafka at {settings.bootstrap_servers} did not answer within {limit:.0f} s "
                "(kafka.startup_timeout_s)"
            )
        await until(stop, seconds=backoff.next())
    return False


@contextlib.asynccontextmanager
async def serving(settings: Settings, health: Health, stop: asyncio.Event) -> AsyncIterator[bool]:
    """``/metrics``, ``/healthz`` and ``/readyz`` served for the block, and Kafka waited for:
    the block gets True once Kafka answers, False if ``stop`` came first (then exit 0).
    :class:`Unavailable` after ``kafka.startup_timeout_s`` (the CLI exits 1)."""
    async with HealthServer(health, settings.metrics_host, settings.metrics_port):
        yield await wait_for_kafka(settings.kafka, health, stop)
