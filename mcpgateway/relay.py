"""A lean, pooled HTTP/1.1 client for relaying MCP traffic to bridges.

The gateway's hot path is one request in, one request out to a bridge over a unix socket (or
TCP on Fly), with the answer streamed back as it arrives. General-purpose clients spend more
CPU per request on features this hop never uses (cookies, redirects, proxies, URL objects),
so this module keeps only what the hop needs: keep-alive connections per endpoint, one
request at a time per connection, httptools' parser for responses (chunked or sized), and
back-pressure when the downstream client reads slower than the bridge writes.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator

import httptools

READ_HIGH_WATER = 8
MAX_IDLE_PER_ENDPOINT = 64
# Bridges (uvicorn) close idle keep-alive connections after 5 s; retire ours before that.
MAX_IDLE_SECONDS = 4.0
# A reused connection that fails this soon after the write was closed by the other side while
# idle: the request never reached the bridge and is safe to send again.
RETRY_WINDOW_SECONDS = 0.05


class RelayError(Exception):
    """The bridge could not be reached or broke the connection mid-answer."""


class _Connection(asyncio.Protocol):
    def __init__(self, key: tuple[str, str | int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.response: Response | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(RelayError(f"bad answer from the bridge: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(RelayError("the bridge closed the connection"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        response = self.response
        response.status = self.parser.get_status_code()
        response.keep_alive = self.parser.should_keep_alive()
        if not response.ready.done():
            response.ready.set_result(None)

    def on_body(self, body: bytes) -> None:
        response = self.response
        response.chunks.append(body)
        if len(response.chunks) >= READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        response.wake()

    def on_message_complete(self) -> None:
        response = self.response
        response.complete = True
        response.wake()

    def _fail(self, error: Exception) -> None:
        response = self.response
        if response is None or response.complete:
            return
        response.error = error
        if not response.ready.done():
            response.ready.set_exception(error)
        response.wake()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    """A bridge's answer: status and headers at once, the body as it streams in."""

    def __init__(self, connection: _Connection, pool: Pool) -> None:
        self._connection = connection
        self._pool = pool
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.chunks: deque[bytes] = deque()
        self.complete = False
        self.error: Exception | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._released = False
        self.reused = False
        self.sent_at = time.monotonic()

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def body(self) -> bytes:
        return b"".join([chunk async for chunk in self.stream()])

    async def stream(self) -> AsyncIterator[bytes]:
        try:
            while True:
                chunk = self.take()
                if chunk is not None:
                    yield chunk
                elif self.complete:
                    break
                else:
                    await self.arrival()
        finally:
            self.release()

    def take(self) -> bytes | None:
        """The next body chunk if one has arrived; raises if the exchange broke."""
        if self.chunks:
            chunk = self.chunks.popleft()
            transport = self._connection.transport
            if transport is not None and len(self.chunks) < READ_HIGH_WATER // 2:
                transport.resume_reading()
            return chunk
        if self.error is not None and not self.complete:
            raise self.error
        return None

    def arrival(self) -> asyncio.Future[None]:
        """A future that resolves when more of the body (or its end) arrives."""
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def release(self) -> None:
        """Give the connection back when the answer was read whole; otherwise close it.

        Closing an unfinished exchange is how a client's disconnect reaches the bridge.
        """
        if self._released:
            return
        self._released = True
        connection = self._connection
        connection.response = None
        reusable = self.complete and self.keep_alive and self.error is None and not self.chunks
        if reusable and not connection.closed:
            if connection.transport is not None:
                connection.transport.resume_reading()
            self._pool._put(connection)
        else:
            connection.close()

    def failed_at_once(self) -> bool:
        """True when the exchange broke before anything arrived, right after it was sent."""
        return not self.headers and time.monotonic() - self.sent_at < RETRY_WINDOW_SECONDS


class Pool:
    """Keep-alive connections to bridges, by endpoint."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str | int], list[_Connection]] = defaultdict(list)

    async def send(
        self,
        *,
        unix_socket: str | None = None,
        host: str | None = None,
        port: int | None = None,
        method: str,
        path: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
        connect_timeout: float = 5.0,
        host_header: str | None = None,
    ) -> Response:
        """Send a request; its `ready` future resolves when the status and headers arrive.

        `reused` on the answer tells whether a kept-alive connection carried it: if such an
        answer fails before any byte arrived, the bridge had closed the idle connection and the
        request can safely be sent again on a new one.
        """
        key: tuple[str, str | int] = (unix_socket, 0) if unix_socket else (host, port)
        connection, reused = await self._get(key, connect_timeout)
        response = Response(connection, self)
        response.reused = reused
        connection.response = response
        head = _encode_head(method, path, headers, body, host_header or host or "bridge")
        connection.transport.write(head + body if body else head)
        return response

    async def _get(self, key, connect_timeout: float) -> tuple[_Connection, bool]:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < MAX_IDLE_SECONDS:
                return connection, True
            connection.close()
        loop = asyncio.get_running_loop()
        try:
            if key[1] == 0:
                connect = loop.create_unix_connection(lambda: _Connection(key), key[0])
            else:
                connect = loop.create_connection(lambda: _Connection(key), key[0], key[1])
            _, connection = await asyncio.wait_for(connect, connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise RelayError(f"cannot reach the bridge: {exc}") from exc
        return connection, False

    def _put(self, connection: _Connection) -> None:
        idle = self._idle[connection.key]
        if len(idle) < MAX_IDLE_PER_ENDPOINT:
            connection.parser = httptools.HttpResponseParser(connection)
            connection.idle_since = time.monotonic()
            idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


def _encode_head(
    method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes, host: str
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1\r\nhost: {host}\r\n".encode()]
    for name, value in headers:
        lines.append(name + b": " + value + b"\r\n")
    if body or method == "POST":
        lines.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)
