"""``make fuzz``: generated requests against ``streamproc receive`` on the local broker,
then generated records through ``streamproc map`` (:mod:`tests.fuzz.mapping`).

Starts the receiver as a process of its own (topics of a fresh prefix, a 16 KiB body
limit, the fuzz senders), draws ``--cases`` requests with :mod:`tests.fuzz.requests`
(hypothesis; ``--batch`` requests share the records drawn for them) and sends them from
``--workers`` kept-alive connections, checking each answer with :class:`~tests.fuzz.
ledger.Ledger`. At the end it stops the receiver with SIGTERM, reads both topics, prints
cases, status counts, 5xx, exceptions that escaped into the receiver's log, acknowledged
records missing from Kafka, refused bodies missing from the dead-letter topic and one
example of each problem, deletes the topics and exits 1 if anything was wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import hypothesis
from hypothesis import HealthCheck, Phase, given, seed

from streamproc import topics
from streamproc.config import KafkaSettings, ReceiverSettings, Settings
from streamproc.formats import envelope
from tests import localkafka
from tests.bench.__main__ import drop_topics
from tests.fuzz import mapping
from tests.fuzz.client import Client
from tests.fuzz.ledger import Ledger
from tests.fuzz.requests import SENDERS, Request, request_batches
from tests.procs import Proc, settings_env
from tests.topics import read_topic

MAX_BODY = 16 * 1024
PROGRESS_EVERY = 10_000


def fuzz_settings(bootstrap: str) -> Settings:
    return Settings(
        topic_prefix=f"fuzz{uuid.uuid4().hex[:8]}.",
        metrics_host="127.0.0.1",
        metrics_port=localkafka.free_port(),
        kafka=KafkaSettings(bootstrap_servers=bootstrap, client_id="streamproc-fuzz"),
        receiver=ReceiverSettings(
            host="127.0.0.1",
            port=localkafka.free_port(),
            senders=SENDERS,
            max_body_bytes=MAX_BODY,
        ),
    )


def wait_ready(metrics_port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{metrics_port}/readyz"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the receiver did not become ready")


def send_all(
    port: int, ledger: Ledger, cases: int, workers: int, batch: int, at: int | None
) -> None:
    """Draw ``cases`` requests and send them from ``workers`` threads, checking each."""
    work: queue.Queue[Request | None] = queue.Queue(maxsize=workers * 16)
    started = time.monotonic()

    def worker() -> None:
        client = Client(port)
        while (request := work.get()) is not None:
            try:
                status, answer = client.post(request)
            except OSError as exc:  # the receiver is gone or hangs: a problem of its own
                client.close()
                ledger.note(f"client error: {exc!r}", request)
                continue
            ledger.check(request, status, answer)
            done = ledger.cases
            if done % PROGRESS_EVERY == 0:
                rate = done / (time.monotonic() - started)
                print(f"  {done:,} cases, {rate:,.0f}/s", file=sys.stderr, flush=True)
        client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    drawn = 0

    @hypothesis.settings(
        max_examples=-(-cases // batch),
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(requests=request_batches(batch, max_body=MAX_BODY))
    def generate(requests: list[Request]) -> None:
        nonlocal drawn
        for request in requests[: cases - drawn]:
            work.put(request)
            drawn += 1

    (seed(at)(generate) if at is not None else generate)()
    for _ in threads:
        work.put(None)
    for thread in threads:
        thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=8, help="connections sending at once")
    parser.add_argument("--batch", type=int, default=8, help="requests per drawn set of records")
    parser.add_argument("--seed", type=int, help="hypothesis seed, to run the same cases again")
    parser.add_argument(
        "--only", choices=["receiver", "mapping"], help="run one half (default: both)"
    )
    port = os.environ.get("KAFKA_PORT", "9092")
    parser.add_argument("--bootstrap", default=f"127.0.0.1:{port}")
    args = parser.parse_args(argv)
    failed = 0
    if args.only != "mapping":
        failed |= fuzz_receiver(args)
    if args.only != "receiver":
        log_dir = Path(tempfile.mkdtemp(prefix="streamproc-fuzz-"))
        failed |= mapping.run(args.bootstrap, args.cases, args.seed, log_dir)
    return failed


def fuzz_receiver(args: argparse.Namespace) -> int:
    config = fuzz_settings(args.bootstrap)
    asyncio.run(topics.ensure(config))
    log_path = Path(tempfile.mkdtemp(prefix="streamproc-fuzz-")) / "receive.log"
    print(f"receiver log: {log_path}, topics {config.topic_prefix}*", file=sys.stderr)
    proc = Proc(["receive"], settings_env(config), log_path)
    ledger = Ledger()
    started = time.monotonic()
    try:
        wait_ready(config.metrics_port)
        send_all(config.receiver.port, ledger, args.cases, args.workers, args.batch, args.seed)
        elapsed = time.monotonic() - started
        exit_code = proc.terminate()
    finally:
        proc.kill()
    try:
        missing, unparked = asyncio.run(_missing(config, ledger))
    finally:
        asyncio.run(drop_topics(config))
    log = log_path.read_text(errors="replace")
    escaped = log.count("Traceback")
    server_errors = sum(n for status, n in ledger.statuses.items() if status >= 500)
    print(f"cases:                        {ledger.cases:,} in {elapsed:,.0f} s")
    by_status = ", ".join(f"{s}: {n:,}" for s, n in sorted(ledger.statuses.items()))
    print(f"statuses:                     {by_status}")
    print(f"5xx:                          {server_errors:,}")
    print(f"escaped exceptions:           {escaped:,} (tracebacks in the receiver's log)")
    print(f"acknowledged, not in Kafka:   {missing:,} records")
    print(f"refused, not dead-lettered:   {unparked:,} bodies")
    print(f"receiver exit code:           {exit_code} (SIGTERM)")
    for kind, count in sorted(ledger.problems.items()):
        print(f"problem {kind}: {count:,}, e.g. {ledger.examples[kind][:400]}")
    failed = server_errors or escaped or missing or unparked or ledger.problems or exit_code
    return 1 if failed else 0


async def _missing(config: Settings, ledger: Ledger) -> tuple[int, int]:
    names = topics.Topics.for_prefix(config.topic_prefix)
    records = await read_topic(config, names.ticketure, timeout_s=600)
    letters = await read_topic(config, names.dlq, timeout_s=600)
    ids = [envelope.header(r.headers, envelope.H_ITEM_ID) for r in records]
    return ledger.missing(ids, [r.value for r in letters])


if __name__ == "__main__":
    sys.exit(main())
