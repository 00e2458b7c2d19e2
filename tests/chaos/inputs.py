"""The sources' side of a chaos run: feeding them, and reading back what they hold.

Ticketmatic items are added at a steady pace through the simulator's ``/_sim/generate``,
so input stops exactly when the faults do. What the simulator holds is read back the way
any client reads it, through the eventstream API with an account's credentials, page by
page from where the last read ended: with a retention longer than the run, that is every
item it ever served. Ticketure's side is the pusher's files of ids.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import aiohttp
import orjson

from tests.chaos.stack import ACCOUNTS


async def feed_ticketmatic(
    http: aiohttp.ClientSession, tm_url: str, per_account: int, seconds: float
) -> int:
    """Add ``per_account`` items to each account, evenly over ``seconds``; the count added."""
    started = time.monotonic()
    added = dict.fromkeys(ACCOUNTS, 0)
    while any(n < per_account for n in added.values()):
        share = min(1.0, (time.monotonic() - started) / seconds)
        for name in ACCOUNTS:
            due = round(per_account * share) - added[name]
            if due <= 0:
                continue
            try:
                async with http.post(
                    f"{tm_url}/_sim/generate", params={"account": name, "n": str(due)}
                ) as response:
                    if response.status == 200:
                        added[name] += int((await response.json())["generated"])
            except (aiohttp.ClientError, TimeoutError):
                pass  # the simulator is never a target of the faults; try again shortly
        await asyncio.sleep(0.25)
    return sum(added.values())


class StreamReader:
    """Reads each account's eventstream onward from where it last stopped."""

    def __init__(self, tm_url: str) -> None:
        self.tm_url = tm_url
        self.next_id = dict.fromkeys(ACCOUNTS, "0")

    async def read_new(self, http: aiohttp.ClientSession) -> dict[str, list[str]]:
        """Page through what is new: the new ids per account (fewer while it refuses)."""
        new: dict[str, list[str]] = {name: [] for name in ACCOUNTS}
        for name, (access, secret) in ACCOUNTS.items():
            token = base64.b64encode(f"{access}:{secret}".encode()).decode()
            more = True
            while more:
                url = f"{self.tm_url}/api/1/{name}/eventstream"
                try:
                    async with http.get(
                        url,
                        params={"id": self.next_id[name]},
                        headers={"Authorization": f"Basic {token}"},
                    ) as response:
                        if response.status != 200:
                            break  # an outage of the simulator: read on next time
                        page = orjson.loads(await response.read())
                except (aiohttp.ClientError, TimeoutError):
                    break
                results = page.get("results") or []
                new[name] += [str(item["id"]) for item in results]
                self.next_id[name] = str(page.get("nextid") or self.next_id[name])
                more = bool(page.get("moreresults")) and bool(results)
        return new


def read_ids(path: Path) -> list[str]:
    """The ids in a file of the pusher (one a line; a last line cut short is left out)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    return [line for line in lines[:-1] if line]
