"""``streamproc deliver``'s role: the batches topic to mParticle's Events API.

The sink engine (:mod:`streamproc.sinks.engine`: consumer group, read-ahead, slots,
pause/resume, commits, rebalances) with the mParticle sink (:mod:`.sink`: packing,
sending, refusals, the rate share), paced by the ``mparticle.*`` settings.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from streamproc.config import Settings
from streamproc.health import Health
from streamproc.lag import Watch
from streamproc.lifecycle import until
from streamproc.redact import mask_url
from streamproc.sinks.engine import Pacing, SinkEngine
from streamproc.sinks.mparticle.client import MParticleClient
from streamproc.sinks.mparticle.ratelimit import AdaptiveRateLimiter
from streamproc.sinks.mparticle.sender import Sender
from streamproc.sinks.mparticle.sink import MParticleSink, Request
from streamproc.topics import Topics

log = logging.getLogger(__name__)

COMPONENT = "deliver"


class Deliverer(SinkEngine[Request]):
    """``streamproc deliver``: ``await run(stop)``, or ``async with`` it (``start``/``stop``
    idempotent). Everything mParticle's comes from ``settings.mparticle``; the engine's
    pacing durations are parameters so tests run without sleeping."""

    name = "deliver"

    def __init__(
        self,
        settings: Settings,
        *,
        health: Health | None = None,
        group_id: str | None = None,
        commit_interval_s: float = 0.2,
        revoke_timeout_s: float = 10.0,
        blocked_poll_s: float = 1.0,
        idle_poll_s: float = 0.5,
        max_poll_records: int = 250,
        read_ahead: int = 16,
        consumer_options: dict[str, Any] | None = None,
    ) -> None:
        mp = settings.mparticle
        health = health or Health()
        self.topics = Topics.for_prefix(settings.topic_prefix)
        sink = MParticleSink(
            settings.kafka,
            mp,
            health=health,
            origin_topic=self.topics.batches,
            dlq_topic=self.topics.dlq,
        )
        pacing = Pacing(
            max_in_flight=mp.max_in_flight,
            read_ahead=read_ahead,
            linger_s=mp.linger_ms / 1000,
            commit_interval_s=commit_interval_s,
            shutdown_timeout_s=mp.shutdown_timeout_s,
            revoke_timeout_s=revoke_timeout_s,
            blocked_poll_s=blocked_poll_s,
            idle_poll_s=idle_poll_s,
            max_poll_records=max_poll_records,
        )
        super().__init__(
            settings.kafka,
            sink,
            topic=self.topics.batches,
            group_id=group_id or f"{settings.topic_prefix}streamproc-deliver",
            health=health,
            component=COMPONENT,
            pacing=pacing,
            default_partitions=settings.topics.partitions,
            consumer_options=consumer_options,
        )
        self._mparticle = sink

    @property
    def client(self) -> MParticleClient:
        return self._mparticle.client

    @property
    def limiter(self) -> AdaptiveRateLimiter:
        return self._mparticle.limiter

    @property
    def sender(self) -> Sender:
        return self._mparticle.sender

    def watches(self) -> list[Watch]:
        return [Watch(self.group_id, [self.topic])]

    async def run(self, stop: asyncio.Event) -> None:
        """The role: start, deliver until ``stop`` is set, stop within the bound; raise what
        ended delivery for good."""
        async with self:
            for task in await until(stop, self.task):
                task.result()

    async def start(self) -> None:
        if self._main is not None:
            return
        await super().start()
        log.info(
            "delivering %s to %s (group %s)", self.topic, mask_url(self.client.url), self.group_id
        )
