"""A blocking HTTP/1.1 client for generated requests (hypothesis drives plain functions)."""

from __future__ import annotations

import http.client

from tests.fuzz.requests import Request

_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class Client:
    """One kept-alive connection to ``127.0.0.1:port``, opened again when the server
    closed it (a kept-alive connection found closed is tried once more, fresh)."""

    def __init__(self, port: int, timeout_s: float = 60.0) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def post(self, request: Request) -> tuple[int, bytes]:
        """The status and body of the answer to ``request``."""
        reused = self._conn is not None
        conn = self._conn or http.client.HTTPConnection("127.0.0.1", self.port, self.timeout_s)
        self._conn = None
        try:
            conn.request("POST", request.route, body=request.body, headers=request.headers)
            response = conn.getresponse()
            answer = response.read()
        except _STALE:
            conn.close()
            if not reused:
                raise
            return self.post(request)
        if response.will_close:
            conn.close()
        else:
            self._conn = conn
        return response.status, answer

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
