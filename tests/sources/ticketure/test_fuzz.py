"""Generated bodies and headers against a running receiver: never a 500, always a clear answer.

The receiver runs in a thread with its own event loop (hypothesis drives plain functions),
writing to the session broker; requests go over real HTTP with ``http.client``.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from streamproc import topics
from streamproc.config import KafkaSettings, Settings
from streamproc.sources.ticketure.auth import basic_header, sign
from streamproc.sources.ticketure.mparticle_shape import encode_batch
from streamproc.sources.ticketure.receiver import Receiver
from tests.sources.ticketure.conftest import HMAC_SECRET, KEY, SECRET, receiver_settings
from tests.sources.ticketure.strategies import JSON, mutated, records

pytestmark = pytest.mark.kafka

ROUTES = ("/ticketure/events", "/v2/events", "/v2/bulkevents")
EXPECTED = {202, 400, 401, 403, 413, 415}


class ReceiverThread:
    """A receiver serving from a thread of its own until ``close()``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="receiver", daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(60), "the receiver did not start"
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 -- reported to the test thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await topics.ensure(self.settings)
        async with Receiver(self.settings, host="127.0.0.1", port=0) as rx:
            self.port = rx.port
            self._ready.set()
            await self._stop.wait()


@pytest.fixture(scope="module")
def served(kafka_bootstrap: str) -> Iterator[ReceiverThread]:
    """One receiver for the module, on its own topics, with a 16 KiB body limit."""
    settings = receiver_settings(
        Settings(
            topic_prefix=f"fz{uuid.uuid4().hex[:8]}.",
            kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap),
        ),
        max_body_bytes=16 * 1024,
    )
    server = ReceiverThread(settings)
    server.start()
    yield server
    server.close()


def header_text() -> st.SearchStrategy[str]:
    # What http.client can put on the wire: latin-1 without line breaks or NUL.
    return st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
        max_size=40,
    )


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """A route, a body near a valid one for it (or any bytes), and headers good or not."""
    route = draw(st.sampled_from(ROUTES))
    record = draw(records())
    doc: Any
    if route == "/ticketure/events":
        doc = msgspec.to_builtins(record)
    elif route == "/v2/events":
        doc = encode_batch(record)
    else:
        doc = [encode_batch(record)] * draw(st.integers(0, 3))
    choice = draw(st.sampled_from(["valid", "mutated", "json", "bytes"]))
    if choice == "bytes":
        body = draw(st.binary(max_size=300))
    elif choice == "json":
        body = orjson.dumps(draw(JSON))
    else:
        body = orjson.dumps(doc if choice == "valid" else draw(mutated(doc)))
    if draw(st.sampled_from([False] * 20 + [True])):
        body = body + b" " * 17_000  # past the body limit
    headers: dict[str, str] = {}
    auth = draw(st.sampled_from(["basic", "hmac"] * 3 + ["wrong", "none", "junk"]))
    if auth == "basic":
        headers["Authorization"] = basic_header(KEY, SECRET)
    elif auth == "hmac":
        headers["X-Signature-SHA256"] = sign(HMAC_SECRET, body)
    elif auth == "wrong":
        headers["Authorization"] = basic_header(KEY, draw(header_text()))
    elif auth == "junk":
        headers[draw(st.sampled_from(["Authorization", "X-Signature-SHA256"]))] = draw(
            header_text()
        )
    if draw(st.sampled_from([True] * 6 + [False])):
        headers["Content-Type"] = draw(
            st.sampled_from(["application/json", "application/json; charset=utf-8"])
        )
    else:
        headers["Content-Type"] = draw(st.just("text/plain") | header_text())
    for name in draw(st.lists(st.sampled_from(["X-Extra", "Accept", "User-Agent"]), max_size=2)):
        headers[name] = draw(header_text())
    return route, body, headers


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=requests())
def test_generated_requests_never_get_a_500(
    served: ReceiverThread, request: tuple[str, bytes, dict[str, str]]
) -> None:
    """Every generated request is answered 202 or a 4xx with an error body naming why."""
    route, body, headers = request
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    try:
        conn.request("POST", route, body=body, headers=headers)
        response = conn.getresponse()
        status, answer = response.status, response.read()
    finally:
        conn.close()
    event(f"answered {status}")
    assert status in EXPECTED, (status, answer[:300])
    if status != 202:
        errors = orjson.loads(answer)["errors"]
        assert errors[0]["message"]
