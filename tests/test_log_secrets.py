"""Logs cannot leak: every role at DEBUG, through failures, never writes a secret or a payload.

`streamproc run` (poll, receive, map, deliver in one process) runs at ``log_level=DEBUG``
with distinctive secrets: a Ticketmatic account whose credentials the simulator refuses
and one it takes over HTTP Basic, a push sender whose pushes are refused, malformed (an
Authorization header with a byte HTTP forbids) and accepted, and an mParticle that refuses
the credentials before it takes them. Then every line the process wrote is searched for
each secret as it is, base64-encoded, and in the ``Basic`` form a client sends, and for
the e-mail addresses and phone numbers the pushes carried.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from streamproc import topics
from streamproc.config import (
    MParticleSettings,
    PushSender,
    ReceiverSettings,
    Secret,
    Settings,
    TicketmaticAccount,
    TicketmaticSettings,
)
from streamproc.sim.mparticle import MParticleSim
from streamproc.sim.ticketmatic import SimAccount, TicketmaticSim
from tests import localkafka
from tests.procs import Proc, settings_env, wait_for
from tests.sources.ticketure.rawhttp import Conn, head
from tests.sources.ticketure.test_shapes import ticket

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TM_REFUSED = "tm-refused-Qx71vR"  # the account whose secret the simulator does not take
TM_BASIC = "tm-basic-Lp92Zs"  # sent in every request, as HTTP Basic
PUSH_SECRET = "push-secret-Hw38Nd"
PUSH_WRONG = "push-wrong-Kc55Tj"
MP_SECRET = "mp-secret-Ve64Gm"
MP_KEY = "mp-key-Rb17Yq"
EMAIL = "leak-probe-4242@example.com"
PHONE = "+32470424242"


def forms(secret: str, user: str = "") -> set[str]:
    """``secret`` as it is, base64-encoded alone and as HTTP Basic with ``user``."""
    b64 = base64.b64encode
    return {
        secret,
        b64(secret.encode()).decode(),
        b64(f"{user}:{secret}".encode()).decode(),
    }


def push(email: str) -> bytes:
    return orjson.dumps(ticket(email=email, mobile_number=PHONE))


async def test_every_role_at_debug_logs_no_secret_and_no_payload(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    tm = TicketmaticSim(
        [SimAccount("acme", "ak-acme", "the-real-one"), SimAccount("opera", "ak-opera", TM_BASIC)],
        page_size=50,
        seed=5,
    )
    mp = MParticleSim(
        api_key="another-key", api_secret="another-secret", rate_limit_batches_per_s=None
    )
    async with tm, mp:
        tm.generate("acme", 20, span_s=60)
        tm.generate("opera", 20, span_s=60)
        rx_port = localkafka.free_port()
        settings = make_settings(
            log_level="DEBUG",
            metrics_host="127.0.0.1",
            metrics_port=localkafka.free_port(),
            ticketmatic=TicketmaticSettings(
                base_url=tm.url,
                poll_interval_s=0.5,
                auth_retry_s=0.5,
                accounts=[
                    TicketmaticAccount(
                        name="acme", access_key="ak-acme", secret_key=Secret(TM_REFUSED)
                    ),
                    TicketmaticAccount(
                        name="opera",
                        access_key="ak-opera",
                        secret_key=Secret(TM_BASIC),
                        auth="basic",
                    ),
                ],
            ),
            receiver=ReceiverSettings(
                host="127.0.0.1",
                port=rx_port,
                senders=[PushSender(name="ticketure", key="push", secret=Secret(PUSH_SECRET))],
            ),
            mparticle=MParticleSettings(
                base_url=mp.url, api_key=MP_KEY, api_secret=Secret(MP_SECRET), auth_retry_s=0.5
            ),
        )
        await topics.ensure(settings)
        run = Proc(["run"], settings_env(settings), tmp_path / "run.log")
        try:
            await wait_for(lambda: localkafka.port_open(rx_port), 60, what="the receiver")
            basic = "Basic " + base64.b64encode(f"push:{PUSH_SECRET}".encode()).decode()
            wrong = "Basic " + base64.b64encode(f"push:{PUSH_WRONG}".encode()).decode()
            answers = []
            for authorization, body in (
                (basic, push(EMAIL)),  # taken
                (wrong, push(EMAIL)),  # refused: 403 (known sender, wrong secret)
                (basic, b'{"not json' + EMAIL.encode()),  # refused: 400, dead-lettered
            ):
                conn = await Conn.open(rx_port)
                headers = {"Authorization": authorization, "Content-Type": "application/json"}
                await conn.send(head("/ticketure/events", headers, len(body)) + body)
                answers.append((await conn.answer())[0])
                conn.close()
            # An Authorization header holding a byte HTTP forbids: aiohttp refuses the head.
            conn = await Conn.open(rx_port)
            await conn.send(
                b"POST /ticketure/events HTTP/1.1\r\nHost: x\r\nAuthorization: "
                + basic.encode()
                + b"\x01\r\nContent-Length: 2\r\n\r\n{}"
            )
            answers.append((await conn.answer())[0])
            conn.close()
            assert answers == [202, 403, 400, 400]
            await wait_for(lambda: mp.stats.answers.get("403", 0) >= 2, 60, what="mParticle 403s")
            mp.set_credentials(MP_KEY, MP_SECRET)
            await wait_for(lambda: mp.stats.batches_stored >= 21, 90, what="delivery")
            await asyncio.sleep(1.0)
        finally:
            code = run.terminate()
        log = run.output()
        assert code == 0, log[-3000:]
        assert " DEBUG " in log  # the level was on: the search below means something
        assert "401" in log or "credentials" in log  # the failures were logged
        leaked = {
            secret: [line[:200] for line in log.splitlines() if secret in line][:3]
            for secret in (
                forms(TM_REFUSED, "ak-acme")
                | forms(TM_BASIC, "ak-opera")
                | forms(PUSH_SECRET, "push")
                | forms(PUSH_WRONG, "push")
                | forms(MP_SECRET, MP_KEY)
                | {EMAIL, PHONE}
            )
            if secret in log
        }
        assert leaked == {}
        emails = set(re.findall(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+\.[A-Za-z]{2,}", log))
        assert emails == set(), sorted(emails)[:5]
