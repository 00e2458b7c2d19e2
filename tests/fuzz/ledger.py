"""What the receiver must answer a generated request, and what Kafka must then hold.

Each answer is checked as it comes (:meth:`Ledger.check`): its status fits the request's
credentials (a sender's request is 202, 400, 413 or 415; anyone else's 401, 403, or 413
and 429 before a signature can be checked), a 5xx only while Kafka is down, every refusal
a JSON error body, every 400 naming a field. A 202 acknowledges the item ids the
receiver's own decoders give the body (and on ``/ticketure/events`` the answer lists
them); a sender's 400 promises the body in the dead-letter topic. :meth:`Ledger.missing`
compares those promises with what the topics hold at the end.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from collections.abc import Iterable

import orjson

from streamproc.errors import DecodeError
from streamproc.sources.ticketure.receiver import DECODERS, ROUTE_EVENTS
from tests.fuzz.requests import IDEMPOTENCY, Request

SENDER_STATUSES = frozenset({202, 400, 413, 415})
STRANGER_STATUSES = frozenset({401, 403, 413, 429})
KAFKA_DOWN_STATUSES = frozenset({401, 403, 413, 415, 429, 503})


def digest(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


class Ledger:
    """Counts and promises of a run; thread-safe (workers check answers concurrently)."""

    def __init__(self, *, kafka_down: bool = False) -> None:
        self.kafka_down = kafka_down
        self.cases = 0
        self.statuses: collections.Counter[int] = collections.Counter()
        self.acknowledged: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[bytes] = collections.Counter()
        self.problems: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}
        self._lock = threading.Lock()

    def check(self, request: Request, status: int, answer: bytes) -> list[str]:
        """Record one answer; the problems it shows (empty if it is as it must be)."""
        problems = self._problems(request, status, answer)
        acknowledged = self._item_ids(request, answer, problems) if status == 202 else []
        with self._lock:
            self.cases += 1
            self.statuses[status] += 1
            self.acknowledged.update(acknowledged)
            if status == 400 and request.sender is not None:
                self.refused[digest(request.body)] += 1
        for problem in problems:
            self.note(problem, request)
        return problems

    def note(self, problem: str, request: Request) -> None:
        """Count ``problem`` ("kind: detail") by kind, keeping the first example of each."""
        kind = problem.split(":", 1)[0]
        with self._lock:
            self.problems[kind] += 1
            self.examples.setdefault(kind, f"{problem} ({_describe(request)})")

    def missing(self, item_ids: Iterable[str | None], letters: Iterable[bytes]) -> tuple[int, int]:
        """(acknowledged records not in Kafka, refused bodies not dead-lettered), counted
        with repeats: a body acknowledged twice must be there twice."""
        in_kafka = collections.Counter(i for i in item_ids if i is not None)
        parked = collections.Counter(digest(v) for v in letters)
        return (
            sum((self.acknowledged - in_kafka).values()),
            sum((self.refused - parked).values()),
        )

    def _problems(self, request: Request, status: int, answer: bytes) -> list[str]:
        if self.kafka_down:
            # A body with no record writes nothing, so a 202 for it acknowledges nothing.
            allowed = KAFKA_DOWN_STATUSES | ({202} if _writes_nothing(request) else set())
        else:
            allowed = SENDER_STATUSES if request.sender is not None else STRANGER_STATUSES
        problems = []
        if status >= 500 and not self.kafka_down:
            problems.append(f"5xx: {status} {answer[:200]!r}")
        elif status not in allowed:
            problems.append(f"status: {status} for sender {request.sender}: {answer[:200]!r}")
        if status == 202:
            return problems
        try:
            (error,) = orjson.loads(answer)["errors"]
            message, field = error["message"], error.get("field")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return [*problems, f"error body: {status} {answer[:200]!r}"]
        if not message:
            problems.append(f"error body: {status} without a message")
        if status == 400 and not field:
            problems.append(f"400 without field: {message[:200]}")
        return problems

    def _item_ids(self, request: Request, answer: bytes, problems: list[str]) -> list[str]:
        """The item ids a 202 acknowledged, by the receiver's own decoder for the route."""
        key = request.headers.get(IDEMPOTENCY, "").strip() or None
        try:
            decoded = DECODERS[request.route](request.body, key)
        except DecodeError as exc:
            problems.append(f"202 for a body the decoder refuses: {exc}"[:300])
            return []
        ids = [a.record.event_id or "" for a in decoded.accepted]
        if request.route == ROUTE_EVENTS and orjson.loads(answer).get("item_ids") != ids:
            problems.append("item ids: the 202 lists others than the decoder gives")
        return ids


def _describe(request: Request) -> str:
    headers = ", ".join(sorted(request.headers))
    return f"{request.route}, {len(request.body)} bytes {request.body[:120]!r}, headers {headers}"


def _writes_nothing(request: Request) -> bool:
    """True for a body the receiver's decoder takes whole with no record in it (a batch
    without events, or only events that are not Ticketure's): a 202 for it keeps nothing."""
    if request.sender is None:
        return False
    key = request.headers.get(IDEMPOTENCY, "").strip() or None
    try:
        return not DECODERS[request.route](request.body, key).accepted
    except DecodeError:
        return False
