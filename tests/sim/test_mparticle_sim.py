"""The mParticle simulator: auth, validation, limits, rate limit, faults, dedupe, inspection."""

from __future__ import annotations

import asyncio
import base64
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio

from streamproc.errors import ConfigError
from streamproc.sim.mparticle import MParticleSim
from streamproc.sim.mparticle_control import Control, FailNext
from streamproc.sim.mparticle_schema import load_batch_schema

KEY, SECRET = "k", "s"


def auth(key: str = KEY, secret: str = SECRET) -> dict[str, str]:
    token = base64.b64encode(f"{key}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


def batch(i: int, **over: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "source_request_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"b{i}")),
        "environment": "development",
        "user_identities": {"customer_id": f"c{i}"},
        "events": [
            {
                "event_type": "custom_event",
                "data": {
                    "event_name": "e",
                    "custom_event_type": "other",
                    "timestamp_unixtime_ms": 1_700_000_000_000,
                    "source_message_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"m{i}")),
                },
            }
        ],
    }
    value.update(over)
    return value


@pytest.fixture
def schema(shared_reference: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(
        (shared_reference / "mparticle" / "mparticle-eventsapi-schema.json").read_bytes()
    )
    return data


@pytest_asyncio.fixture(loop_scope="function")
async def sim(schema: dict[str, Any]) -> AsyncIterator[MParticleSim]:
    async with MParticleSim(api_key=KEY, api_secret=SECRET, schema=schema) as s:
        yield s


@pytest_asyncio.fixture(loop_scope="function")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession,
    sim: MParticleSim,
    body: Any,
    *,
    path: str = "/v2/bulkevents",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(sim.url + path, data=data, headers=headers or auth()) as r:
        return r.status, dict(r.headers), await r.read()


async def test_valid_bulk_is_accepted_and_stored(
    sim: MParticleSim, http: aiohttp.ClientSession
) -> None:
    """A valid bulk request gets 202 with the percentage header; its batches are stored."""
    status, headers, _ = await post(http, sim, [batch(1), batch(2)])
    assert status == 202
    assert headers["X-mp-rate-limit-percentage-used"].isdigit()
    assert [b["source_request_id"] for b in sim.batches()] == [
        batch(1)["source_request_id"],
        batch(2)["source_request_id"],
    ]
    assert sim.stats.batches_stored == 2
    assert sim.stats.events_stored == 2
    assert sim.stats.answers == {"202": 1}


async def test_single_event_endpoint_takes_one_batch(
    sim: MParticleSim, http: aiohttp.ClientSession
) -> None:
    """/v2/events takes one batch object, and refuses an array."""
    assert (await post(http, sim, batch(1), path="/v2/events"))[0] == 202
    assert (await post(http, sim, [batch(2)], path="/v2/events"))[0] == 400


async def test_published_sample_validates(
    sim: MParticleSim, http: aiohttp.ClientSession, shared_reference: Path
) -> None:
    """mParticle's own sample batch passes the published schema with format checking."""
    sample = (shared_reference / "mparticle" / "mparticle-eventsapi-sample.json").read_bytes()
    status, _, body = await post(http, sim, sample, path="/v2/events")
    assert status == 202, body


async def test_missing_auth_is_401_wrong_is_403(
    sim: MParticleSim, http: aiohttp.ClientSession
) -> None:
    """No (or non-basic) Authorization: 401; a wrong key or secret: 403; nothing stored."""
    assert (await post(http, sim, [batch(1)], headers={"X": "y"}))[0] == 401
    assert (await post(http, sim, [batch(1)], headers={"Authorization": "Bearer t"}))[0] == 401
    assert (await post(http, sim, [batch(1)], headers=auth(secret="bad")))[0] == 403
    assert (await post(http, sim, [batch(1)], headers=auth(key="other")))[0] == 403
    assert sim.stats.batches_stored == 0
    assert sim.stats.answers == {"401": 2, "403": 2}


async def test_schema_violation_is_400_naming_batch_and_field(
    sim: MParticleSim, http: aiohttp.ClientSession
) -> None:
    """An invalid batch refuses the request with errors naming the batch and the field."""
    bad = batch(2)
    bad["events"][0]["data"]["custom_event_type"] = "bogus"
    status, _, body = await post(http, sim, [batch(1), bad, batch(3, environment="staging")])
    assert status == 400
    messages = [e["message"] for e in orjson.loads(body)["errors"]]
    assert any(m.startswith("batch 1: ") and "custom_event_type" in m for m in messages)
    assert any(m.startswith("batch 2: environment") for m in messages)
    assert sim.stats.batches_stored == 0
    assert sim.stats.batches_refused == 2


async def test_unknown_identity_key_is_refused(
    sim: MParticleSim, http: aiohttp.ClientSession
) -> None:
    """The schema forbids unknown user_identities keys."""
    status, _, body = await post(http, sim, [batch(1, user_identities={"ref": "x"})])
    assert status == 400
    assert b"user_identities" in body


async def test_malformed_json_is_400(sim: MParticleSim, http: aiohttp.ClientSession) -> None:
    """A body that is not JSON gets 400 MALFORMED_JSON."""
    status, _, body = await post(http, sim, b"[{]")
    assert status == 400
    assert orjson.loads(body)["errors"][0]["code"] == "MALFORMED_JSON"


async def test_size_and_count_limits(http: aiohttp.ClientSession) -> None:
    """Over 256 KiB: 413; over 100 batches: 400; one batch over 128 KiB: 400."""
    async with MParticleSim(api_key=KEY, api_secret=SECRET, rate_limit_batches_per_s=None) as sim:
        big = [batch(i, user_attributes={"p": "x" * 3000}) for i in range(90)]
        assert (await post(http, sim, big))[0] == 413
        status, _, body = await post(http, sim, [batch(i) for i in range(101)])
        assert (status, orjson.loads(body)["errors"][0]["code"]) == (400, "TOO_MANY_BATCHES")
        huge = batch(1, user_attributes={"p": "x" * (130 * 1024)})
        status, _, body = await post(http, sim, [batch(0), huge])
        assert (status, orjson.loads(body)["errors"][0]["code"]) == (400, "BATCH_TOO_LARGE")
        assert (await post(http, sim, huge, path="/v2/events"))[0] == 413
        assert (await post(http, sim, [batch(i) for i in range(100)]))[0] == 202


async def test_rate_limit_answers_429_with_headers(http: aiohttp.ClientSession) -> None:
    """Past the rate: 429 with Retry-After and X-mp-rate-limit-exceeded; nothing stored."""
    async with MParticleSim(
        api_key=KEY, api_secret=SECRET, rate_limit_batches_per_s=10, retry_after_s=2
    ) as sim:
        status, headers, _ = await post(http, sim, [batch(i) for i in range(8)])
        assert status == 202
        assert int(headers["X-mp-rate-limit-percentage-used"]) >= 70
        status, headers, _ = await post(http, sim, [batch(i) for i in range(10, 18)])
        assert status == 429
        assert headers["Retry-After"] == "2"
        assert headers["X-mp-rate-limit-exceeded"] == "batches_per_second"
        assert sim.stats.batches_stored == 8
        sim.set_rate_limit(10, retry_after_s=None)
        await post(http, sim, [batch(i) for i in range(20, 30)])
        status, headers, _ = await post(http, sim, [batch(i) for i in range(30, 40)])
        assert status == 429
        assert "Retry-After" not in headers


async def test_request_larger_than_the_bucket_passes_when_full(
    http: aiohttp.ClientSession,
) -> None:
    """A limit below 100/s still lets a full request through once the bucket is full."""
    async with MParticleSim(api_key=KEY, api_secret=SECRET, rate_limit_batches_per_s=5) as sim:
        assert (await post(http, sim, [batch(i) for i in range(50)]))[0] == 202
        assert (await post(http, sim, [batch(i) for i in range(50, 60)]))[0] == 429


async def test_duplicates_are_counted_not_stored(
    sim: MParticleSim, http: aiohttp.ClientSession
) -> None:
    """A repeated source_request_id is counted as a duplicate and stored once."""
    await post(http, sim, [batch(1), batch(2)])
    await post(http, sim, [batch(2), batch(3)])
    changed = batch(3)
    changed["events"][0]["data"]["event_name"] = "other"
    await post(http, sim, [changed])
    stats = sim.stats
    assert (stats.batches_received, stats.batches_stored) == (5, 3)
    assert (stats.duplicates, stats.duplicates_differing) == (2, 1)
    assert len(sim.batches()) == 3


async def test_fail_next_then_normal_answers(
    sim: MParticleSim, http: aiohttp.ClientSession
) -> None:
    """Injected answers come first, in order, then normal service resumes."""
    sim.fail_next(503, count=2)
    sim.fail_next(429, retry_after_s=0.5)
    answers = [(await post(http, sim, [batch(i)]))[:2] for i in range(4)]
    assert [s for s, _ in answers] == [503, 503, 429, 202]
    assert answers[2][1]["Retry-After"] == "0.5"
    assert sim.stats.batches_stored == 1


async def test_outages_answer_503_or_drop_the_connection(
    sim: MParticleSim, http: aiohttp.ClientSession
) -> None:
    """Outage '503' answers 503; 'drop' closes the connection; clearing it restores 202."""
    sim.control(Control(outage="503"))
    assert (await post(http, sim, [batch(1)]))[0] == 503
    sim.control(Control(outage="drop"))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(http, sim, [batch(1)])
    sim.control(Control(outage=None))
    assert (await post(http, sim, [batch(1)]))[0] == 202
    assert sim.stats.answers == {"503": 1, "dropped": 1, "202": 1}


async def test_latency_makes_a_short_client_time_out(sim: MParticleSim) -> None:
    """Injected latency holds the answer back (here past a client's timeout)."""
    sim.control(Control(latency_s=2.0))
    timeout = aiohttp.ClientTimeout(total=0.2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with pytest.raises(TimeoutError):
            await post(session, sim, [batch(1)])
    sim.control(Control(latency_s=0.0))


async def test_stop_refuses_connections_and_restart_keeps_data(sim: MParticleSim) -> None:
    """stop() refuses connections, start() listens on the same port with the data kept."""
    # No keep-alive: a pooled connection from before stop() would fail differently.
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    await post(http, sim, [batch(1)])
    port = sim.port
    await sim.stop()
    with pytest.raises(aiohttp.ClientConnectorError):
        await post(http, sim, [batch(2)])
    await sim.start()
    assert sim.port == port
    assert (await post(http, sim, [batch(2)]))[0] == 202
    assert sim.stats.batches_stored == 2
    await http.close()


async def test_http_control_stats_batches_and_reset(
    sim: MParticleSim, http: aiohttp.ClientSession
) -> None:
    """The /_sim endpoints inject faults, change credentials, report and reset."""
    await post(http, sim, [batch(1), batch(2)])
    async with http.get(sim.url + "/_sim/stats") as r:
        assert (await r.json())["batches_stored"] == 2
    async with http.get(sim.url + "/_sim/batches?offset=1&limit=5") as r:
        page = await r.json()
    assert page["total"] == 2
    assert [b["source_request_id"] for b in page["batches"]] == [batch(2)["source_request_id"]]
    control = {
        "fail_next": {"status": 500, "count": 1},
        "credentials": {"api_key": "new", "api_secret": "pw"},
    }
    async with http.post(sim.url + "/_sim/control", json=control) as r:
        assert r.status == 200
    assert (await post(http, sim, [batch(3)], headers=auth("new", "pw")))[0] == 500
    assert (await post(http, sim, [batch(3)]))[0] == 403
    assert (await post(http, sim, [batch(3)], headers=auth("new", "pw")))[0] == 202
    async with http.post(sim.url + "/_sim/control", json={"outage": "sometimes"}) as r:
        assert r.status == 400
    async with http.post(sim.url + "/_sim/reset") as r:
        assert r.status == 200
    assert sim.stats.batches_stored == 0
    assert sim.batches() == []


async def test_requests_are_logged_with_times_ids_and_counted_per_second(
    sim: MParticleSim, http: aiohttp.ClientSession
) -> None:
    """Each request's arrival, answer, status and ids are kept; batches counted per second."""
    sim.fail_next(429, retry_after_s=99999999)
    sim.control(Control(latency_s=0.1))
    before = time.time()
    status, headers, _ = await post(http, sim, [batch(1), batch(2)])
    assert (status, headers["Retry-After"]) == (429, "99999999")  # delta-seconds, not 1e+08
    sim.control(Control(latency_s=0.0))
    await post(http, sim, [batch(3)])
    refused, accepted = sim.requests()
    ids = [batch(i)["source_request_id"] for i in (1, 2, 3)]
    assert (refused.status, refused.batches, refused.ids) == ("429", 2, ids[:2])
    assert (accepted.status, accepted.ids) == ("202", ids[2:])
    assert before <= refused.arrived_at <= refused.answered_at - 0.1 <= accepted.arrived_at
    assert sum(sim.stats.arrived_by_second.values()) == 3
    assert int(refused.arrived_at) in sim.stats.arrived_by_second
    async with http.get(sim.url + "/_sim/requests?offset=1") as r:
        page = await r.json()
    assert page["total"] == 2
    assert [a["ids"] for a in page["requests"]] == [ids[2:]]
    async with http.get(sim.url + "/_sim/stats") as r:
        assert sum((await r.json())["arrived_by_second"].values()) == 3
    sim.reset()
    assert sim.requests() == []


def test_control_struct_leaves_absent_fields() -> None:
    """A Control without a field leaves that setting alone."""
    sim = MParticleSim(latency_s=0.5)
    sim.control(Control(fail_next=FailNext(status=503)))
    assert sim.latency_s == 0.5


async def test_default_schema_is_the_projects_own(http: aiohttp.ClientSession) -> None:
    """Without --schema the simulator validates against schemas/mparticle/batch.schema.json."""
    schema = load_batch_schema(None)
    async with MParticleSim(api_key=KEY, api_secret=SECRET, schema=schema) as sim:
        assert (await post(http, sim, [batch(1)]))[0] == 202
        assert (await post(http, sim, [batch(2, environment="staging")]))[0] == 400


def test_schema_file_errors_name_the_option(tmp_path: Path, shared_reference: Path) -> None:
    """A missing schema file, or the bulk schema instead of the batch schema, is refused."""
    with pytest.raises(ConfigError, match="--schema"):
        load_batch_schema(str(tmp_path / "nope.json"))
    bulk = load_batch_schema(
        str(shared_reference / "mparticle" / "mparticle-eventsapi-bulk-schema.json")
    )
    with pytest.raises(ConfigError, match="bulk"):
        MParticleSim(schema=bulk)


async def test_cli_serves_until_sigterm(shared_reference: Path) -> None:
    """`streamproc sim mparticle` prints its URL, serves, and exits 0 on SIGTERM."""
    schema = shared_reference / "mparticle" / "mparticle-eventsapi-schema.json"
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "streamproc.cli", "sim", "mparticle", "--port", "0"],
        *["--api-key", KEY, "--api-secret", SECRET, "--schema", str(schema)],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        url = line.decode().strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/v2/bulkevents", data=b"[]", headers=auth()) as r:
                assert r.status == 202
            async with http.post(url + "/v2/bulkevents", json=[batch(1)]) as r:
                assert r.status == 401
    finally:
        if proc.returncode is None:
            proc.terminate()
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0
