"""Where messages from the child go: a POST's exchange or a session's long-lived stream.

Messages travel as already-encoded JSON text, so a notification broadcast to many
sessions is serialised once.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .upstream import Call

# Sentinels placed in a mailbox besides JSON texts.
DISCONNECTED = object()
CLOSED = object()

REPLAY_BUFFER_EVENTS = 256


class Sink(Protocol):
    """Receives messages addressed to one HTTP response."""

    def put(self, data: str, final: bool) -> None:
        """Deliver one JSON text; `final` marks the response that ends a call."""


class Mailbox:
    """A minimal single-consumer queue whose `get` can time out without a task."""

    __slots__ = ("_items", "_loop", "_waiter")

    def __init__(self) -> None:
        self._items: collections.deque[object] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()

    def push(self, item: object) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, timeout: float) -> object | None:
        """The next item, or None when `timeout` seconds pass first."""
        if not self._items:
            waiter = self._loop.create_future()
            self._waiter = waiter
            timer = self._loop.call_later(timeout, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._items:
                return None
        return self._items.popleft()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Exchange:
    """The messages for one POST: the final responses of its requests and what they cause."""

    __slots__ = ("calls", "mailbox", "requests")

    def __init__(self) -> None:
        self.mailbox = Mailbox()
        self.requests = 0  # requests in the POST: the reader is done after this many finals
        self.calls: list[Call] = []

    def put(self, data: str, final: bool) -> None:
        self.mailbox.push((data, final))


class StreamChannel:
    """A session's long-lived SSE stream (the GET stream, or the legacy /sse stream).

    Every message gets a sequence number and is kept in a bounded buffer, so a
    client reconnecting with `Last-Event-ID` gets what it missed. Messages sent
    while no client is connected are buffered the same way.
    """

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self._buffer: collections.deque[tuple[int, str]] = collections.deque(
            maxlen=REPLAY_BUFFER_EVENTS
        )
        self._seq = 0
        self.mailbox: Mailbox | None = None

    @property
    def connected(self) -> bool:
        return self.mailbox is not None

    def next_event_id(self) -> str:
        """Allocate an event id that carries no message (a priming event)."""
        self._seq += 1
        return f"{self.stream_id}-{self._seq}"

    def put(self, data: str, final: bool = False) -> None:
        self._seq += 1
        self._buffer.append((self._seq, data))
        if self.mailbox is not None:
            self.mailbox.push((self._seq, data))

    def attach(self) -> Mailbox:
        """Connect a client; the caller must `detach` when its response ends."""
        self.mailbox = Mailbox()
        return self.mailbox

    def detach(self, mailbox: Mailbox) -> None:
        if self.mailbox is mailbox:
            self.mailbox = None

    def parse_event_id(self, event_id: str) -> int | None:
        """The sequence number in an event id of this stream, else None."""
        prefix, _, seq = event_id.rpartition("-")
        if prefix != self.stream_id or not seq.isdigit():
            return None
        return int(seq)

    def replay_after(self, seq: int) -> list[tuple[int, str]]:
        """Buffered events after `seq`, oldest first."""
        return [(number, data) for number, data in self._buffer if number > seq]

    def close(self) -> None:
        if self.mailbox is not None:
            self.mailbox.push(CLOSED)


def sse_event(data: str, event_id: str | None = None, event: str = "message") -> bytes:
    """One SSE event. JSON text never contains a raw newline, so one data line suffices."""
    if event_id is None:
        return f"event: {event}\ndata: {data}\n\n".encode()
    return f"id: {event_id}\nevent: {event}\ndata: {data}\n\n".encode()
