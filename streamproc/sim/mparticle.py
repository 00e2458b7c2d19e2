"""``streamproc sim mparticle``: mParticle's Events API, faithful where streamproc relies on it.

``POST /v2/events`` (one batch) and ``POST /v2/bulkevents`` (a JSON array of batches;
``/v2/bulkevents/historical`` is the same here). Every request goes through, in order:

1. injected latency (after the body is read), then injected faults: an outage (``503``
   answers, or ``drop``: the connection is closed without an answer), queued answers
   (``fail_next``), a random share of 503s (``error_rate``);
2. HTTP basic auth: 401 when the header is missing or not Basic, 403 when wrong;
3. size and count limits: a body over 256 KiB (``/v2/events``: 128 KiB) is answered 413,
   as a proxy in front of an API does; more than 100 batches, or one batch over 128 KiB,
   400. Malformed JSON or a wrong shape: 400;
4. JSON Schema validation of every batch (draft-07 unless the schema says otherwise,
   formats checked): 400 ``{"errors": [{"code", "message"}]}`` naming the batch index and
   the field. One bad batch refuses the whole request (the real API may take the rest
   with a 202; refusing is the stricter reading and lets a client find the bad batch);
5. the rate limit, in batches per second (a token bucket holding one second's worth; a
   request larger than the bucket passes when the bucket is full): 429 with
   ``Retry-After`` (when configured) and ``X-mp-rate-limit-exceeded: batches_per_second``;
6. 202, with ``X-mp-rate-limit-percentage-used``. A batch whose ``source_request_id`` was
   seen before under the same API key is counted as a duplicate and not stored again
   (``duplicates_differing`` counts repeats whose content differs from the first).

Inspection and control, for tests and ``make run`` (no auth): ``GET /_sim/stats`` (with
batches per second of arrival), ``GET /_sim/batches?offset=&limit=``,
``GET /_sim/requests?offset=&limit=`` (each request's arrival and answer times, status and
``source_request_id`` list, the last ``max_requests`` kept), ``POST /_sim/control`` (JSON,
see :class:`Control`), ``POST /_sim/reset`` (forget batches, counts and faults).
In-process, the same through :class:`MParticleSim` methods; ``stop()`` closes the port but
keeps what was received, so ``start()`` again models refused connections followed by
recovery.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import logging
import math
import random
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
import orjson
from aiohttp import web

from streamproc.config import Settings
from streamproc.formats.mparticle import (
    ACCEPTED_BATCH_BYTES,
    ACCEPTED_REQUEST_BYTES,
    MAX_BULK_BATCHES,
)
from streamproc.lifecycle import Service, stop_on_signals
from streamproc.sim.mparticle_control import (
    Arrival,
    Control,
    FailNext,
    RateBucket,
    SimStats,
)
from streamproc.sim.mparticle_schema import (
    DEFAULT_SCHEMA,
    batch_error,
    describe_error,
    load_batch_schema,
    make_validator,
)

log = logging.getLogger(__name__)

H_PERCENT_USED = "X-mp-rate-limit-percentage-used"
H_LIMIT_EXCEEDED = "X-mp-rate-limit-exceeded"
MAX_ERRORS = 20


def seconds_text(seconds: float) -> str:
    """A Retry-After value as delta-seconds: ``3``, ``0.05``, ``99999999`` (never ``1e+08``)."""
    return f"{seconds:.6f}".rstrip("0").rstrip(".")


def _page(request: web.Request, name: str, items: Sequence[Any]) -> web.Response:
    """``{"total", "offset", name: items[offset:offset + limit]}`` from the query."""
    try:
        offset = int(request.query.get("offset", "0"))
        limit = int(request.query.get("limit", "1000"))
    except ValueError:
        return _error(400, "BAD_REQUEST", "offset and limit are integers")
    page = items[offset : offset + limit]
    body = msgspec.json.encode({"total": len(items), "offset": offset, name: page})
    return web.Response(body=body, content_type="application/json")


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    body = orjson.dumps({"errors": [{"code": code, "message": message}]})
    return web.Response(
        status=status, body=body, content_type="application/json", headers=headers or None
    )


class MParticleSim(Service):
    """The simulator as an object: ``async with MParticleSim(...) as sim: sim.url``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "sim-key",
        api_secret: str = "sim-secret",  # noqa: S107 -- the simulator's made-up default
        schema: dict[str, Any] | None = None,
        rate_limit_batches_per_s: float | None = 270.0,
        retry_after_s: float | None = 1.0,
        max_request_bytes: int = ACCEPTED_REQUEST_BYTES,
        max_batch_bytes: int = ACCEPTED_BATCH_BYTES,
        max_batches: int = MAX_BULK_BATCHES,
        max_stored: int = 100_000,
        max_requests: int = 100_000,
        latency_s: float = 0.0,
        error_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.validator = make_validator(schema) if schema is not None else None
        self.max_request_bytes = max_request_bytes
        self.max_batch_bytes = max_batch_bytes
        self.max_batches = max_batches
        self.max_stored = max_stored
        self.latency_s = latency_s
        self.error_rate = error_rate
        self.retry_after_s = retry_after_s
        self.outage: Literal["503", "drop"] | None = None
        self._credentials = {api_key: api_secret}
        self._bucket = RateBucket(rate_limit_batches_per_s) if rate_limit_batches_per_s else None
        self._rng = random.Random(seed)
        self._fail: deque[FailNext] = deque()
        self._seen: dict[str, dict[str, int]] = {}
        self._stored: list[dict[str, Any]] = []
        self._arrivals: deque[Arrival] = deque(maxlen=max_requests)
        self.stats = SimStats()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The base URL (without /v2), as ``mparticle.base_url`` takes it."""
        return f"http://{self.host}:{self.port}"

    # --- control (in-process) -----------------------------------------------------------

    def fail_next(self, status: int, count: int = 1, retry_after_s: float | None = None) -> None:
        self._fail.append(FailNext(status=status, count=count, retry_after_s=retry_after_s))

    def set_credentials(self, api_key: str, api_secret: str) -> None:
        """Accept only these credentials from now on."""
        self._credentials = {api_key: api_secret}

    def set_rate_limit(self, batches_per_s: float | None, retry_after_s: float | None) -> None:
        self._bucket = RateBucket(batches_per_s) if batches_per_s else None
        self.retry_after_s = retry_after_s

    def control(self, change: Control) -> None:
        """Apply a :class:`Control` (what ``POST /_sim/control`` does)."""
        if not isinstance(change.fail_next, msgspec.UnsetType):
            self._fail.append(change.fail_next)
        if not isinstance(change.outage, msgspec.UnsetType):
            self.outage = change.outage
        if not isinstance(change.latency_s, msgspec.UnsetType):
            self.latency_s = change.latency_s
        if not isinstance(change.error_rate, msgspec.UnsetType):
            self.error_rate = change.error_rate
        if not isinstance(change.rate_limit_batches_per_s, msgspec.UnsetType):
            retry = change.retry_after_s
            self.set_rate_limit(
                change.rate_limit_batches_per_s,
                self.retry_after_s if isinstance(retry, msgspec.UnsetType) else retry,
            )
        elif not isinstance(change.retry_after_s, msgspec.UnsetType):
            self.retry_after_s = change.retry_after_s
        if not isinstance(change.credentials, msgspec.UnsetType):
            self.set_credentials(change.credentials.api_key, change.credentials.api_secret)

    def reset(self) -> None:
        """Forget batches, counts and injected faults (credentials and limits stay)."""
        self._fail.clear()
        self._seen.clear()
        self._stored.clear()
        self._arrivals.clear()
        self.outage = None
        self.latency_s = 0.0
        self.error_rate = 0.0
        self.stats = SimStats(in_flight=self.stats.in_flight)

    def batches(self) -> list[dict[str, Any]]:
        """The stored batches (each ``source_request_id`` once), in arrival order."""
        return list(self._stored)

    def requests(self) -> list[Arrival]:
        """The last ``max_requests`` requests, in the order they were answered."""
        return list(self._arrivals)

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (again) on ``host:port``; the port chosen first is kept for restarts."""
        if self._runner is not None:
            return
        app = web.Application(client_max_size=8 * self.max_request_bytes)
        app.router.add_post("/v2/events", self._events)
        app.router.add_post("/v2/bulkevents", self._bulk)
        app.router.add_post("/v2/bulkevents/historical", self._bulk)
        app.router.add_get("/_sim/stats", self._get_stats)
        app.router.add_get("/_sim/batches", self._get_batches)
        app.router.add_get("/_sim/requests", self._get_requests)
        app.router.add_post("/_sim/control", self._post_control)
        app.router.add_post("/_sim/reset", self._post_reset)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = int(runner.addresses[0][1])
        self._runner = runner
        log.info("mParticle simulator on %s", self.url)

    async def stop(self) -> None:
        """Close the port (clients get refused connections); keep what was received."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        await runner.cleanup()

    # --- the API ------------------------------------------------------------------------

    async def _events(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, bulk=False)

    async def _bulk(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, bulk=True)

    async def _handle(self, request: web.Request, *, bulk: bool) -> web.StreamResponse:
        # self.stats each time, not a local: reset() may replace it while this waits.
        self.stats.requests += 1
        self.stats.in_flight += 1
        try:
            # The body is read first: a request whose client gave up waiting has still
            # landed, as with the real API (the retry is then a duplicate).
            body = await request.read()
            arrived_at = time.time()
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s)
            batches: list[Any] = []
            if self.outage == "drop" and request.transport is not None:
                request.transport.abort()
                response = web.Response(status=503)
                key = "dropped"
            else:
                response = self._answer(request, body, bulk, batches)
                key = str(response.status)
        finally:
            self.stats.in_flight -= 1
        self.stats.answers[key] = self.stats.answers.get(key, 0) + 1
        self._arrived(arrived_at, key, batches)
        return response

    def _arrived(self, arrived_at: float, status: str, batches: list[Any]) -> None:
        second = int(arrived_at)
        by_second = self.stats.arrived_by_second
        by_second[second] = by_second.get(second, 0) + len(batches)
        ids = [b.get("source_request_id", "") if isinstance(b, dict) else "" for b in batches]
        self._arrivals.append(
            Arrival(
                arrived_at=arrived_at,
                answered_at=time.time(),
                status=status,
                batches=len(batches),
                ids=[i if isinstance(i, str) else "" for i in ids],
            )
        )

    def _answer(
        self, request: web.Request, body: bytes, bulk: bool, batches: list[Any]
    ) -> web.Response:
        """Everything after the latency, with no await: counts stay consistent.

        ``batches`` receives the request's batches once its body is read as such.
        """
        fault = self._fault()
        if fault is not None:
            self._read_batches(body, bulk, batches)
            return fault
        api_key = self._authenticate(request.headers.get("Authorization"))
        if isinstance(api_key, web.Response):
            return api_key
        limit = self.max_request_bytes if bulk else self.max_batch_bytes
        if len(body) > limit:
            return _error(413, "PAYLOAD_TOO_LARGE", f"{len(body)} bytes; at most {limit}")
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _error(400, "MALFORMED_JSON", str(exc))
        if bulk and not isinstance(parsed, list):
            return _error(400, "BAD_REQUEST", "the body must be a JSON array of batches")
        batches += parsed if bulk else [parsed]
        if len(batches) > self.max_batches:
            return _error(
                400, "TOO_MANY_BATCHES", f"{len(batches)} batches; at most {self.max_batches}"
            )
        errors = self._check(batches, len(body))
        if errors:
            self.stats.batches_refused += len({e["batch"] for e in errors})
            messages = [{"code": e["code"], "message": e["message"]} for e in errors]
            return web.Response(
                status=400,
                body=orjson.dumps({"errors": messages[:MAX_ERRORS]}),
                content_type="application/json",
            )
        headers: dict[str, str] = {}
        if self._bucket is not None:
            if not self._bucket.take(len(batches)):
                return self._rate_limited(len(batches))
            headers[H_PERCENT_USED] = str(self._bucket.percent_used())
        self._store(api_key, batches)
        return web.Response(status=202, headers=headers)

    @staticmethod
    def _read_batches(body: bytes, bulk: bool, out: list[Any]) -> None:
        """``out`` gets the batches of ``body`` if it reads as such (for the request log)."""
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if bulk and isinstance(parsed, list):
            out += parsed
        elif not bulk:
            out.append(parsed)

    def _fault(self) -> web.Response | None:
        if self.outage == "503":
            return _error(503, "SERVICE_UNAVAILABLE", "simulated outage")
        if self._fail:
            head = self._fail[0]
            head.count -= 1
            if head.count <= 0:
                self._fail.popleft()
            extra: dict[str, str] = {}
            if head.retry_after_s is not None:
                extra["Retry-After"] = seconds_text(head.retry_after_s)
            if head.status == 429:
                extra[H_LIMIT_EXCEEDED] = "batches_per_second"
            return _error(head.status, "INJECTED", f"simulated HTTP {head.status}", **extra)
        if self.error_rate > 0 and self._rng.random() < self.error_rate:
            return _error(503, "SERVICE_UNAVAILABLE", "simulated random failure")
        return None

    def _authenticate(self, authorization: str | None) -> str | web.Response:
        """The API key, or the 401/403 answer."""
        if not authorization or not authorization.startswith("Basic "):
            return _error(401, "UNAUTHORIZED", "HTTP basic auth with the feed key is required")
        try:
            key, _, secret = (
                base64.b64decode(authorization[6:], validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return _error(401, "UNAUTHORIZED", "malformed basic auth header")
        if key not in self._credentials or self._credentials[key] != secret:
            return _error(403, "FORBIDDEN", "invalid API key or secret")
        return key

    def _check(self, batches: list[Any], body_size: int) -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = []
        for index, batch in enumerate(batches):
            if not isinstance(batch, dict):
                errors.append(batch_error(index, "BAD_REQUEST", "a batch must be a JSON object"))
                continue
            # Only a body larger than the batch limit can hold a batch that is too large.
            if body_size > self.max_batch_bytes:
                size = len(orjson.dumps(batch))
                if size > self.max_batch_bytes:
                    errors.append(
                        batch_error(
                            index,
                            "BATCH_TOO_LARGE",
                            f"{size} bytes; at most {self.max_batch_bytes}",
                        )
                    )
                    continue
            if self.validator is not None:
                found = list(self.validator.iter_errors(batch))
                errors += [
                    batch_error(index, "VALIDATION_ERROR", describe_error(e)) for e in found[:5]
                ]
        return errors

    def _rate_limited(self, n: int) -> web.Response:
        assert self._bucket is not None  # noqa: S101 -- only called with a bucket
        headers = {H_LIMIT_EXCEEDED: "batches_per_second"}
        if self.retry_after_s is not None:
            headers["Retry-After"] = seconds_text(self.retry_after_s)
        wait = self._bucket.wait_s(n)
        return _error(
            429,
            "RATE_LIMITED",
            f"over {self._bucket.rate:g} batches per second; room in {math.ceil(wait * 10) / 10} s",
            **headers,
        )

    def _store(self, api_key: str, batches: list[dict[str, Any]]) -> None:
        stats = self.stats
        seen = self._seen.setdefault(api_key, {})
        now = time.time()
        if stats.first_batch_at is None:
            stats.first_batch_at = now
        stats.last_batch_at = now
        for batch in batches:
            events = batch.get("events") or ()
            stats.batches_received += 1
            stats.events_received += len(events)
            sid = batch.get("source_request_id")
            if isinstance(sid, str):
                digest = hash(orjson.dumps(batch, option=orjson.OPT_SORT_KEYS))
                first = seen.get(sid)
                if first is not None:
                    stats.duplicates += 1
                    stats.duplicates_differing += first != digest
                    continue
                seen[sid] = digest
            stats.batches_stored += 1
            stats.events_stored += len(events)
            if len(self._stored) < self.max_stored:
                self._stored.append(batch)

    # --- inspection and control over HTTP -----------------------------------------------

    async def _get_stats(self, _request: web.Request) -> web.Response:
        return web.Response(body=msgspec.json.encode(self.stats), content_type="application/json")

    async def _get_batches(self, request: web.Request) -> web.Response:
        return _page(request, "batches", self._stored)

    async def _get_requests(self, request: web.Request) -> web.Response:
        return _page(request, "requests", list(self._arrivals))

    async def _post_control(self, request: web.Request) -> web.Response:
        try:
            change = msgspec.json.decode(await request.read(), type=Control)
        except msgspec.ValidationError as exc:
            return _error(400, "BAD_REQUEST", str(exc))
        except msgspec.DecodeError as exc:
            return _error(400, "MALFORMED_JSON", str(exc))
        self.control(change)
        return web.json_response({"ok": True})

    async def _post_reset(self, _request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8083, help="0 picks a free port")
    parser.add_argument(
        "--api-key", help="accepted feed key (default: mparticle.api_key or sim-key)"
    )
    parser.add_argument(
        "--api-secret", help="accepted secret (default: mparticle.api_secret or sim-secret)"
    )
    parser.add_argument(
        "--schema", metavar="PATH", help=f"batch JSON Schema (default: schemas/{DEFAULT_SCHEMA})"
    )
    parser.add_argument("--no-validate", action="store_true", help="skip schema validation")
    parser.add_argument(
        "--rate-limit", type=float, default=270.0, help="batches per second; 0: no limit"
    )
    parser.add_argument(
        "--retry-after", type=float, default=1.0, help="Retry-After seconds on 429; <0: none"
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every answer")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of random 503s")
    parser.add_argument(
        "--max-stored", type=int, default=100_000, help="batches kept for /_sim/batches"
    )


async def command(settings: Settings, args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; prints the base URL on stdout once listening."""
    mp = settings.mparticle
    secret = args.api_secret or (mp.api_secret.reveal() if mp.api_secret else "sim-secret")
    sim = MParticleSim(
        host=args.host,
        port=args.port,
        api_key=args.api_key or mp.api_key or "sim-key",
        api_secret=secret,
        schema=None if args.no_validate else load_batch_schema(args.schema),
        rate_limit_batches_per_s=args.rate_limit or None,
        retry_after_s=args.retry_after if args.retry_after >= 0 else None,
        max_stored=args.max_stored,
        latency_s=args.latency_ms / 1000,
        error_rate=args.error_rate,
    )
    stop = stop_on_signals()
    async with sim:
        print(f"mparticle simulator listening on {sim.url}", flush=True, file=sys.stdout)
        await stop.wait()
    return 0
