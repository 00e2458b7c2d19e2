"""Start-up waits for Kafka and for the topics instead of crash-looping while they are away.

Every role, once its ``/healthz`` and ``/readyz`` are served, waits first for the cluster
(:func:`wait_for_kafka`: it asks for the cluster's metadata until it answers), then for the
topics `streamproc topics ensure` makes (:func:`wait_for_topics`: on a first install the
roles start beside the topics Job). Each wait retries with backoff until it is over,
``stop`` is set or ``kafka.startup_timeout_s`` passes. Meanwhile ``/readyz`` says 503 with
the reason (component ``kafka`` or ``topics``), the first failure is logged at WARNING and
then one line a minute, and the process stays up: on Kubernetes a broker restart or a
topics Job still running is a not-ready pod, not CrashLoopBackOff with growing delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiokafka.errors import KafkaConnectionError, KafkaError

from streamproc import kafka, topics
from streamproc.backoff import Backoff
from streamproc.config import KafkaSettings, Settings
from streamproc.errors import ConfigError, Unavailable
from streamproc.health import Health, HealthServer
from streamproc.lifecycle import until

log = logging.getLogger(__name__)

COMPONENT = "kafka"
TOPICS_COMPONENT = "topics"
LOG_REPEAT_S = 60.0

# One look: None once what is waited for is there, else why not (for /readyz and the log).
Probe = Callable[[], Awaitable[str | None]]


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

    async def answers() -> str | None:
        admin = kafka.admin(settings)
        try:
            await asyncio.wait_for(admin.start(), settings.request_timeout_ms / 1000)
        except (KafkaError, OSError, TimeoutError) as exc:
            # "Unable to bootstrap" says nothing: name what fails (authentication, TLS...).
            why = await kafka.diagnose(settings) if isinstance(exc, KafkaConnectionError) else ""
            return f"waiting for Kafka at {settings.bootstrap_servers}: {why or type(exc).__name__}"
        finally:
            with contextlib.suppress(KafkaError, OSError):
                await admin.close()
        return None

    def gave_up(limit: float, _reason: str) -> Exception:
        return Unavailable(
            f"Kafka at {settings.bootstrap_servers} did not answer within {limit:.0f} s "
            "(kafka.startup_timeout_s)"
        )

    limit = settings.startup_timeout_s if timeout_s is None else timeout_s
    return await _wait(answers, COMPONENT, health, stop, limit, backoff, gave_up)


async def wait_for_topics(
    settings: Settings,
    health: Health,
    stop: asyncio.Event,
    *,
    timeout_s: float | None = None,
    backoff: Backoff | None = None,
) -> bool:
    """True once every topic of :func:`streamproc.topics.specs` exists; False if ``stop``
    came first. :class:`ConfigError` (exit 2) naming them after ``timeout_s``."""
    wanted = [spec.name for spec in topics.specs(settings)]

    async def exist() -> str | None:
        admin = kafka.admin(settings.kafka)
        try:
            await asyncio.wait_for(admin.start(), settings.kafka.request_timeout_ms / 1000)
            found = {tp.topic for tp in await kafka.partitions(admin, wanted)}
        except (KafkaError, OSError, TimeoutError) as exc:
            return f"waiting for the topics: {type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(KafkaError, OSError):
                await admin.close()
        missing = [name for name in wanted if name not in found]
        if not missing:
            return None
        return (
            f"waiting for topic(s) {', '.join(missing)}: run `streamproc topics ensure` "
            "(the topics Job)"
        )

    def gave_up(limit: float, reason: str) -> Exception:
        return ConfigError(
            "topics", f"still {reason.removeprefix('waiting for ')} after {limit:.0f} s"
        )

    limit = settings.kafka.startup_timeout_s if timeout_s is None else timeout_s
    return await _wait(exist, TOPICS_COMPONENT, health, stop, limit, backoff, gave_up)


async def _wait(
    probe: Probe,
    component: str,
    health: Health,
    stop: asyncio.Event,
    limit_s: float,
    backoff: Backoff | None,
    gave_up: Callable[[float, str], Exception],
) -> bool:
    """Probe with backoff until it says nothing is missing (True), ``stop`` is set (False)
    or ``limit_s`` passes (``gave_up``'s error)."""
    backoff = backoff or Backoff(0.5, 10.0)
    deadline = time.monotonic() + limit_s
    logged_at: float | None = None
    while not stop.is_set():
        reason = await probe()
        if reason is None:
            if logged_at is not None:
                log.info("%s: no longer waiting", component)
            health.forget(component)
            return True
        health.set(component, False, reason)
        now = time.monotonic()
        if logged_at is None or now - logged_at >= LOG_REPEAT_S:
            log.warning("%s; retrying until it is there", reason)
            logged_at = now
        if now > deadline:
            raise gave_up(limit_s, reason)
        await until(stop, seconds=backoff.next())
    return False


@contextlib.asynccontextmanager
async def serving(settings: Settings, health: Health, stop: asyncio.Event) -> AsyncIterator[bool]:
    """``/metrics``, ``/healthz`` and ``/readyz`` served for the block, and Kafka and the
    topics waited for: the block gets True once both are there, False if ``stop`` came
    first (then exit 0). :class:`Unavailable` (exit 1) or :class:`ConfigError` (exit 2)
    after ``kafka.startup_timeout_s``."""
    async with HealthServer(health, settings.metrics_host, settings.metrics_port):
        up = await wait_for_kafka(settings.kafka, health, stop)
        yield up and await wait_for_topics(settings, health, stop)
