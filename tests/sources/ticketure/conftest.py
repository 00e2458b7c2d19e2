"""Fixtures for the Ticketure receiver: settings with senders, a running receiver, readers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio
from jsonschema import Draft7Validator, Draft202012Validator

from streamproc import topics
from streamproc.config import PushSender, ReceiverSettings, Secret, Settings
from streamproc.schemas import load_schema
from streamproc.sources.ticketure.receiver import Receiver

KEY, SECRET, HMAC_SECRET = "feed-key", "feed-secret", "hmac-secret"
SENDERS = [
    PushSender(name="ticketure", auth="basic", key=KEY, secret=Secret(SECRET)),
    PushSender(name="signed", auth="hmac", secret=Secret(HMAC_SECRET)),
]


def receiver_settings(settings: Settings, **fields: Any) -> Settings:
    """``settings`` with the test senders (and any receiver ``fields``)."""
    return msgspec.structs.replace(settings, receiver=ReceiverSettings(senders=SENDERS, **fields))


@pytest_asyncio.fixture(loop_scope="function")
async def rx_settings(kafka_settings: Settings) -> Settings:
    """Settings on the session broker (topics ensured) with a basic and an hmac sender."""
    return receiver_settings(kafka_settings, max_body_bytes=64 * 1024)


@pytest_asyncio.fixture(loop_scope="function")
async def receiver(rx_settings: Settings) -> AsyncIterator[Receiver]:
    """A started receiver on a free port, Kafka connected."""
    async with Receiver(rx_settings, host="127.0.0.1", port=0, probe_interval_s=0.2) as rx:
        assert rx.writer.up, "the receiver did not reach the session broker"
        yield rx


@pytest_asyncio.fixture(loop_scope="function")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for requests to the receiver."""
    async with aiohttp.ClientSession() as session:
        yield session


def topic_names(settings: Settings) -> topics.Topics:
    return topics.Topics.for_prefix(settings.topic_prefix)


@pytest.fixture(scope="session")
def events_schema() -> Draft202012Validator:
    """schemas/ticketure/events.schema.json with format checking on."""
    schema = load_schema("ticketure/events.schema.json")
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


@pytest.fixture(scope="session")
def mparticle_schema(shared_reference: Path) -> Callable[[Any, bool], None]:
    """Validate a batch (or with ``bulk`` an array of them) against mParticle's schema."""
    schema = json.loads(
        (shared_reference / "mparticle/mparticle-eventsapi-schema.json").read_text()
    )
    validator = Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)

    def check(doc: Any, bulk: bool = False) -> None:
        for batch in doc if bulk else [doc]:
            validator.validate(batch)

    return check
