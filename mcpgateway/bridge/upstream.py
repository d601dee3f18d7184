"""The relay between HTTP sessions and one child process.

Every request a client sends gets a fresh integer id on its way to the child (and
its `_meta.progressToken` is replaced by that same integer), so any number of
sessions can share one child without their ids colliding; the originals are put
back on the way out. Responses, progress notifications and `notifications/cancelled`
are routed by those ids. Everything else the child emits is routed by the rules in
the package docstring.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import protocol
from .channels import Sink
from .child import ChildProcess
from .stderr_log import StderrLog

if TYPE_CHECKING:
    from .sessions import Session


class UpstreamGone(Exception):
    """The child died (or was stopped) before answering."""


class Call:
    """A client request in flight at the child."""

    __slots__ = (
        "child_id",
        "client_id",
        "client_token",
        "deadline",
        "has_token",
        "session",
        "sink",
        "started",
        "timer",
    )

    def __init__(self, session: Session, client_id: Any, child_id: int, sink: Sink) -> None:
        self.session = session
        self.client_id = client_id
        self.child_id = child_id
        self.sink = sink
        self.client_token: Any = None
        self.has_token = False
        self.deadline = 0.0
        self.started = 0.0
        self.timer: asyncio.TimerHandle | None = None


class Upstream:
    """One child process and the routing state of the messages it exchanges."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | None,
        stderr_log: StderrLog,
        request_timeout: float,
        on_dead: Callable[[Upstream, str], None],
    ) -> None:
        self.child = ChildProcess(
            argv,
            env=env,
            cwd=cwd,
            stderr_log=stderr_log,
            on_message=self._on_child_line,
            on_exit=self._on_child_exit,
        )
        self.stderr_log = stderr_log
        self.request_timeout = request_timeout
        self._on_dead = on_dead
        self._loop = asyncio.get_running_loop()
        self._next_id = 1
        self.calls: dict[int, Call] = {}
        self._by_token: dict[int, Call] = {}
        self._internal: dict[int, asyncio.Future[dict[str, Any]]] = {}
        # The child's own requests (sampling, elicitation, roots...) awaiting a
        # client's answer: child id -> (session it went to, where it went).
        self._server_requests: dict[Any, tuple[Session, Sink]] = {}
        self.sessions: set[Session] = set()
        self.dead = False
        self.dead_reason = ""
        self.died = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self.child.pid

    async def start(self) -> None:
        """Spawn the child (ChildStartError if it cannot run)."""
        await self.child.start()

    async def stop(self) -> None:
        """Stop the child and fail everything still waiting on it."""
        await self.child.stop()
        self._fail_everything("the MCP server was stopped")

    # -- sending ---------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        self.child.write((protocol.dumps(message) + "\n").encode())

    async def drain(self) -> None:
        await self.child.drain()

    async def request(
        self, method: str, params: dict[str, Any] | None, timeout: float
    ) -> dict[str, Any]:
        """Send the bridge's own request; returns the child's whole response message."""
        if self.dead:
            raise UpstreamGone(self.dead_reason)
        child_id = self._allocate_id()
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._internal[child_id] = future
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": child_id, "method": method}
        if params is not None:
            message["params"] = params
        self._send(message)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self.notify("notifications/cancelled", {"requestId": child_id, "reason": "timed out"})
            raise
        finally:
            self._internal.pop(child_id, None)

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self._send(message)

    def _allocate_id(self) -> int:
        child_id = self._next_id
        self._next_id += 1
        return child_id

    def start_call(self, session: Session, message: dict[str, Any], sink: Sink) -> Call | None:
        """Relay a client request; its answer (or an error) is later put on `sink`.

        Returns the call in flight, or None when it was answered at once.
        """
        client_id = message["id"]
        if self.dead:
            sink.put(self._gone_error(client_id), True)
            return None
        child_id = self._allocate_id()
        call = Call(session, client_id, child_id, sink)
        params = message.get("params")
        if params is not None:
            meta = params.get("_meta")
            if isinstance(meta, dict) and "progressToken" in meta:
                call.client_token = meta["progressToken"]
                call.has_token = True
                meta["progressToken"] = child_id
                self._by_token[child_id] = call
        message["id"] = child_id
        self.calls[child_id] = call
        session.calls[client_id] = call
        now = self._loop.time()
        call.started = now
        call.deadline = now + self.request_timeout
        call.timer = self._loop.call_at(call.deadline, self._check_deadline, call)
        self._send(message)
        return call

    def forward_notification(self, session: Session, message: dict[str, Any]) -> None:
        """Relay a client notification, translating ids the child knows differently."""
        if self.dead:
            return
        if message["method"] == "notifications/cancelled":
            params = message.get("params") or {}
            call = session.calls.get(params.get("requestId"))
            if call is None:
                return
            self._cancel_call(call, params.get("reason") or "cancelled by the client")
            return
        self._send(message)

    def forward_response(self, session: Session, message: dict[str, Any]) -> None:
        """Relay a client's answer to one of the child's requests."""
        entry = self._server_requests.get(message["id"])
        if entry is None or entry[0] is not session or self.dead:
            return
        del self._server_requests[message["id"]]
        self._send(message)

    def cancel_calls(self, calls: list[Call], reason: str) -> None:
        """Abandon calls whose client went away: the child is told to stop working."""
        for call in calls:
            if self.calls.get(call.child_id) is call:
                self._cancel_call(call, reason, answer=False)

    def _cancel_call(self, call: Call, reason: str, *, answer: bool = True) -> None:
        self._finish(call)
        self.notify("notifications/cancelled", {"requestId": call.child_id, "reason": reason})
        if answer:
            call.sink.put(
                protocol.dumps(
                    protocol.error_message(call.client_id, protocol.INTERNAL_ERROR, reason)
                ),
                True,
            )

    def _finish(self, call: Call) -> None:
        del self.calls[call.child_id]
        if call.has_token:
            self._by_token.pop(call.child_id, None)
        session_calls = call.session.calls
        if session_calls.get(call.client_id) is call:
            del session_calls[call.client_id]
        if call.timer is not None:
            call.timer.cancel()

    def _check_deadline(self, call: Call) -> None:
        if self.calls.get(call.child_id) is not call:
            return
        if call.deadline > self._loop.time():
            call.timer = self._loop.call_at(call.deadline, self._check_deadline, call)
            return
        self._finish(call)
        self.notify("notifications/cancelled", {"requestId": call.child_id, "reason": "timed out"})
        message = f"Request timed out after {self.request_timeout:g} s without a response"
        call.sink.put(
            protocol.dumps(
                protocol.error_message(call.client_id, protocol.REQUEST_TIMEOUT, message)
            ),
            True,
        )

    def detach_session(self, session: Session, reason: str) -> None:
        """A session ended: cancel its calls and forget the child's requests to it."""
        self.sessions.discard(session)
        for call in list(session.calls.values()):
            if self.calls.get(call.child_id) is call:
                if self.dead:
                    self._finish(call)
                    call.sink.put(self._gone_error(call.client_id), True)
                else:
                    self._cancel_call(call, reason)
        for request_id, (target, _) in list(self._server_requests.items()):
            if target is session:
                del self._server_requests[request_id]
                if not self.dead:
                    self._send(
                        protocol.error_message(
                            request_id, protocol.INTERNAL_ERROR, "the client session ended"
                        )
                    )

    # -- receiving -------------------------------------------------------------

    def _on_child_line(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            self.stderr_log.write("[stdout] " + line.decode("utf-8", "replace"))
            return
        if isinstance(message, list):
            for item in message:
                self._on_child_message(item, line)
        else:
            self._on_child_message(message, line)

    def _on_child_message(self, message: Any, line: bytes) -> None:
        kind = protocol.classify(message)
        if kind == "response":
            self._on_response(message)
        elif kind == "notification":
            self._on_notification(message)
        elif kind == "request":
            self._on_server_request(message)
        else:
            self.stderr_log.write("[stdout] " + line.decode("utf-8", "replace"))

    def _on_response(self, message: dict[str, Any]) -> None:
        child_id = message["id"]
        call = self.calls.get(child_id) if type(child_id) is int else None
        if call is None:
            future = self._internal.get(child_id)
            if future is not None and not future.done():
                future.set_result(message)
            return
        self._finish(call)
        message["id"] = call.client_id
        call.sink.put(protocol.dumps(message), True)

    def _on_notification(self, message: dict[str, Any]) -> None:
        method = message["method"]
        params = message.get("params")
        if method == "notifications/progress" and params is not None:
            token = params.get("progressToken")
            call = self._by_token.get(token) if type(token) is int else None
            if call is None:
                return
            params["progressToken"] = call.client_token
            # Progress proves the call is alive: it extends the deadline.
            call.deadline = self._loop.time() + self.request_timeout
            call.sink.put(protocol.dumps(message), False)
            return
        if method == "notifications/cancelled" and params is not None:
            entry = self._server_requests.pop(params.get("requestId"), None)
            if entry is not None:
                entry[1].put(protocol.dumps(message), False)
            return
        data = protocol.dumps(message)
        if method == "notifications/message" and len(self.calls) == 1:
            # stdio carries no request id on log messages: with a single call in
            # flight, a log line is almost surely that call's (a tool logging as
            # it runs). Everything else is session-wide news for the GET streams.
            for call in self.calls.values():
                call.sink.put(data, False)
            return
        for session in self.sessions:
            session.stream.put(data)

    def _on_server_request(self, message: dict[str, Any]) -> None:
        request_id = message["id"]
        if message["method"] == "ping":
            self._send({"jsonrpc": "2.0", "id": request_id, "result": {}})
            return
        target = self._route_server_request()
        if target is None:
            self._send(
                protocol.error_message(
                    request_id,
                    protocol.INTERNAL_ERROR,
                    "no client session this request can be routed to",
                )
            )
            return
        session, sink = target
        self._server_requests[request_id] = (session, sink)
        sink.put(protocol.dumps(message), False)

    def _route_server_request(self) -> tuple[Session, Sink] | None:
        if len(self.calls) == 1:
            for call in self.calls.values():
                return call.session, call.sink
        if self.calls:
            owners = {call.session for call in self.calls.values()}
            if len(owners) != 1:
                return None
            session = owners.pop()
            if session.stream.connected:
                return session, session.stream
            latest = max(session.calls.values(), key=lambda call: call.started)
            return session, latest.sink
        if len(self.sessions) == 1:
            session = next(iter(self.sessions))
            return session, session.stream
        listening = [session for session in self.sessions if session.stream.connected]
        if not listening:
            return None
        session = max(listening, key=lambda session: session.last_seen)
        return session, session.stream

    # -- death -----------------------------------------------------------------

    def _gone_error(self, client_id: Any) -> str:
        reason = self.dead_reason or "the MCP server is not running"
        return protocol.dumps(
            protocol.error_message(
                client_id, protocol.SERVER_UNAVAILABLE, f"MCP server unavailable: {reason}"
            )
        )

    def _on_child_exit(self, reason: str) -> None:
        if self.dead:
            return
        # A failure recorded before the child was stopped is the better explanation.
        self.dead_reason = self.dead_reason or reason
        self._fail_everything(reason)
        self._on_dead(self, reason)

    def _fail_everything(self, reason: str) -> None:
        if not self.dead:
            self.dead = True
            self.dead_reason = reason
        self.died.set()
        for call in list(self.calls.values()):
            self._finish(call)
            call.sink.put(self._gone_error(call.client_id), True)
        for future in self._internal.values():
            if not future.done():
                future.set_exception(UpstreamGone(reason))
        self._server_requests.clear()
