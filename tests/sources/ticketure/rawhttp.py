"""HTTP/1.1 by hand over loopback, for clients no HTTP library plays: silent, slow, lying."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping


def head(path: str, headers: Mapping[str, str], content_length: int | None = None) -> bytes:
    """A POST request's head; ``content_length`` announced whatever body follows."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Conn:
    """One client connection: send what a test says, read the answer's status."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, timeout_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        """The next answer (status, headers, body), failing after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            status_line = await self.reader.readline()
            if not status_line:
                raise ConnectionResetError("closed without an answer")
            status = int(status_line.split()[1])
            headers: dict[str, str] = {}
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await self.reader.readexactly(length) if length else b""
        return status, headers, body

    async def closed_within(self, timeout_s: float) -> bool:
        """Whether the server closes the connection within ``timeout_s`` (data is dropped)."""
        try:
            async with asyncio.timeout(timeout_s):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except OSError:  # reset: closed as well
            return True
        return True

    def close(self) -> None:
        self.writer.close()
