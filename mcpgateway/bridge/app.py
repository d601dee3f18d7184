"""The bridge's raw ASGI application: routing, HTTP rules of the MCP transports, SSE."""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, quote

from . import protocol
from .channels import CLOSED, DISCONNECTED, Exchange, Mailbox, StreamChannel, sse_event
from .core import Bridge, Refusal, SwitchFailed
from .sessions import Session

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

KEEPALIVE_SECONDS = 15.0
# A POST waits this long for its answer before it starts watching for the client
# going away: fast calls never pay for a watcher task, slow ones are cancelled
# soon after their client disconnects.
DISCONNECT_WATCH_AFTER_SECONDS = 0.5
RETRY_HINT_MS = 2000
MAX_LOG_LINES = 1000
# Where the supervisor asks for a redeploy; see `_switch`.
SWITCH_PATH = "/catwalk/switch"

_WANTED_HEADERS = frozenset(
    {
        b"accept",
        b"content-type",
        b"content-length",
        b"mcp-session-id",
        b"mcp-protocol-version",
        b"last-event-id",
        b"x-catwalk-principal",
        b"x-catwalk-bridge-secret",
        b"x-forwarded-prefix",
    }
)
_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]
_KEEPALIVE = b": keepalive\n\n"


class ClientGone(Exception):
    """The client disconnected before its request was read: nothing to answer."""


class HttpError(Exception):
    """Ends a request with a status and a JSON body."""

    def __init__(
        self, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or []


def rpc_http_error(status: int, code: int, message: str, request_id: Any = None) -> HttpError:
    return HttpError(status, protocol.error_message(request_id, code, message))


async def send_json(
    send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = body.encode() if isinstance(body, str) else protocol.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON_HEADERS, *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def send_empty(send: Send, status: int) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _accepts(accept: str, media_type: str) -> bool:
    major = media_type.split("/", 1)[0]
    for part in accept.split(","):
        value = part.split(";", 1)[0].strip().lower()
        if value in (media_type, f"{major}/*", "*/*"):
            return True
    return False


@functools.lru_cache(maxsize=64)
def _accepts_json_and_sse(accept: str) -> bool:
    """Cached: a client sends the same Accept header on every request."""
    return _accepts(accept, "application/json") and _accepts(accept, "text/event-stream")


def _watch_disconnect(receive: Receive, mailbox: Mailbox) -> asyncio.Task[None]:
    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        mailbox.push(DISCONNECTED)

    return asyncio.ensure_future(watch())


class BridgeApp:
    """ASGI entry point (http and lifespan)."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.config = bridge.config
        secret = bridge.config.secret
        self._secret = secret.encode() if secret else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.bridge.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.bridge.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        headers = {
            name: value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _WANTED_HEADERS
        }
        try:
            if path == "/healthz":
                # A crashed server fails the check (Fly's machine check reads the status);
                # the body says why either way.
                health = self.bridge.health()
                await send_json(send, 503 if health["status"] == "crashed" else 200, health)
                return
            if self._secret is not None:
                offered = headers.get(b"x-catwalk-bridge-secret", "").encode("latin-1")
                if not hmac.compare_digest(offered, self._secret):
                    raise HttpError(403, {"error": "forbidden"})
            if path == "/mcp":
                if method == "POST":
                    await self._post_mcp(headers, receive, send)
                elif method == "GET":
                    await self._get_mcp(headers, receive, send)
                elif method == "DELETE":
                    await self._delete_mcp(headers, send)
                else:
                    raise HttpError(
                        405, {"error": "method not allowed"}, [(b"allow", b"GET, POST, DELETE")]
                    )
            elif path == "/sse":
                if method != "GET":
                    raise HttpError(405, {"error": "method not allowed"}, [(b"allow", b"GET")])
                await self._get_legacy_sse(headers, receive, send)
            elif path == "/messages":
                if method != "POST":
                    raise HttpError(405, {"error": "method not allowed"}, [(b"allow", b"POST")])
                await self._post_legacy_message(scope, headers, receive, send)
            elif path == SWITCH_PATH:
                if method != "POST":
                    raise HttpError(405, {"error": "method not allowed"}, [(b"allow", b"POST")])
                await self._switch(headers, receive, send)
            elif path == "/logs":
                if method != "GET":
                    raise HttpError(405, {"error": "method not allowed"}, [(b"allow", b"GET")])
                await self._logs(scope, send)
            else:
                raise HttpError(404, {"error": "not found"})
        except HttpError as exc:
            await send_json(send, exc.status, exc.body, exc.headers)
        except Refusal as exc:
            await send_json(
                send, exc.http_status, protocol.error_message(None, exc.code, exc.message)
            )

    # -- shared request plumbing -----------------------------------------------

    async def _read_json(self, headers: dict[bytes, str], receive: Receive) -> Any:
        """The parsed request body; raises HttpError(415/413/400)."""
        content_type = headers.get(b"content-type", "").split(";", 1)[0].strip().lower()
        if content_type != "application/json":
            raise rpc_http_error(
                415, protocol.INVALID_REQUEST, "Content-Type must be application/json"
            )
        limit = self.config.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise rpc_http_error(
                413, protocol.INVALID_REQUEST, f"request body exceeds {limit} bytes"
            )
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            body += message.get("body", b"")
            if len(body) > limit:
                raise rpc_http_error(
                    413, protocol.INVALID_REQUEST, f"request body exceeds {limit} bytes"
                )
            more = message.get("more_body", False)
        try:
            return json.loads(body)
        except ValueError:
            raise rpc_http_error(
                400, protocol.PARSE_ERROR, "Parse error: body is not valid JSON"
            ) from None

    def _session(self, headers: dict[bytes, str], *, required_for: str) -> Session:
        session_id = headers.get(b"mcp-session-id")
        if not session_id:
            raise rpc_http_error(
                400,
                protocol.INVALID_REQUEST,
                f"Bad Request: Mcp-Session-Id header is required {required_for}",
            )
        session = self.bridge.sessions.lookup(session_id, headers.get(b"x-catwalk-principal", ""))
        if session is None:
            raise rpc_http_error(404, protocol.INVALID_REQUEST, "Session not found")
        return session

    @staticmethod
    def _check_protocol_version(headers: dict[bytes, str]) -> None:
        version = headers.get(b"mcp-protocol-version")
        if version is not None and version not in protocol.SUPPORTED_VERSIONS:
            raise rpc_http_error(
                400,
                protocol.INVALID_REQUEST,
                f"Bad Request: unsupported MCP-Protocol-Version {version!r}; "
                f"supported: {', '.join(protocol.SUPPORTED_VERSIONS)}",
            )

    # -- Streamable HTTP -------------------------------------------------------

    async def _post_mcp(self, headers: dict[bytes, str], receive: Receive, send: Send) -> None:
        accept = headers.get(b"accept", "")
        if not _accepts_json_and_sse(accept):
            raise rpc_http_error(
                406,
                protocol.INVALID_REQUEST,
                "Not Acceptable: Accept must include application/json and text/event-stream",
            )
        payload = await self._read_json(headers, receive)
        if isinstance(payload, dict) and payload.get("method") == "initialize":
            await self._initialize(headers, payload, send)
            return
        if isinstance(payload, list):
            if not payload:
                raise rpc_http_error(400, protocol.INVALID_REQUEST, "Invalid Request: empty batch")
            messages = payload
        elif isinstance(payload, dict):
            messages = [payload]
        else:
            raise rpc_http_error(
                400, protocol.INVALID_REQUEST, "Invalid Request: expected a JSON-RPC message"
            )
        kinds = [protocol.classify(message) for message in messages]
        if None in kinds:
            bad = messages[kinds.index(None)]
            request_id = (
                bad.get("id")
                if isinstance(bad, dict) and protocol.is_valid_id(bad.get("id"))
                else None
            )
            raise rpc_http_error(
                400,
                protocol.INVALID_REQUEST,
                "Invalid Request: not a JSON-RPC 2.0 message",
                request_id,
            )
        self._check_protocol_version(headers)
        session = self._session(headers, required_for="after initialize")
        if isinstance(payload, list):
            if any(message.get("method") == "initialize" for message in messages):
                raise rpc_http_error(
                    400, protocol.INVALID_REQUEST, "Invalid Request: initialize cannot be batched"
                )
            if session.version != protocol.BATCHING_VERSION:
                raise rpc_http_error(
                    400,
                    protocol.INVALID_REQUEST,
                    f"Invalid Request: protocol version {session.version} does not allow batches",
                )
        exchange = self._dispatch(session, messages, kinds, None)
        if exchange is None:
            await send_empty(send, 202)
            return
        await session.upstream.drain()
        await self._respond(exchange, session, isinstance(payload, list), receive, send)

    def _dispatch(
        self,
        session: Session,
        messages: list[dict[str, Any]],
        kinds: list[str | None],
        sink: StreamChannel | None,
    ) -> Exchange | None:
        """Relay client messages; requests get an Exchange (or the given stream) as their sink."""
        upstream = session.upstream
        exchange: Exchange | None = None
        for message, kind in zip(messages, kinds, strict=True):
            if kind == "request":
                target: Exchange | StreamChannel
                if sink is not None:
                    target = sink
                else:
                    if exchange is None:
                        exchange = Exchange()
                    exchange.requests += 1
                    target = exchange
                method = message["method"]
                if method == "ping" and self.bridge.shared:
                    target.put(
                        protocol.dumps({"jsonrpc": "2.0", "id": message["id"], "result": {}}), True
                    )
                elif method == "initialize":
                    target.put(
                        protocol.dumps(
                            protocol.error_message(
                                message["id"],
                                protocol.INVALID_REQUEST,
                                "the session is already initialized",
                            )
                        ),
                        True,
                    )
                else:
                    call = upstream.start_call(session, message, target)
                    if call is not None and target is exchange:
                        exchange.calls.append(call)
            elif kind == "notification":
                if message["method"] == "notifications/initialized" and self.bridge.shared:
                    continue
                upstream.forward_notification(session, message)
            else:
                upstream.forward_response(session, message)
        return exchange

    async def _respond(
        self, exchange: Exchange, session: Session, batch: bool, receive: Receive, send: Send
    ) -> None:
        """Answer a POST: one JSON body when only final responses come, else an SSE stream."""
        mailbox = exchange.mailbox
        collected: list[str] = []
        answered = 0  # finals taken from the mailbox (several may arrive before the first is read)
        streaming = False
        watcher: asyncio.Task[None] | None = None
        try:
            while True:
                timeout = DISCONNECT_WATCH_AFTER_SECONDS if watcher is None else KEEPALIVE_SECONDS
                item = await mailbox.get(timeout)
                if item is None:
                    if watcher is None:
                        watcher = _watch_disconnect(receive, mailbox)
                    elif streaming:
                        await send(
                            {"type": "http.response.body", "body": _KEEPALIVE, "more_body": True}
                        )
                    continue
                if item is DISCONNECTED:
                    return
                data, final = item  # type: ignore[misc]
                answered += final
                if not streaming:
                    if final:
                        collected.append(data)
                        if answered >= exchange.requests:
                            body = f"[{','.join(collected)}]" if batch else collected[0]
                            await send_json(send, 200, body)
                            return
                        continue
                    streaming = True
                    await send(
                        {"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS}
                    )
                    for earlier in collected:
                        await send(
                            {
                                "type": "http.response.body",
                                "body": sse_event(earlier),
                                "more_body": True,
                            }
                        )
                await send(
                    {"type": "http.response.body", "body": sse_event(data), "more_body": True}
                )
                if final and answered >= exchange.requests:
                    await send({"type": "http.response.body", "body": b""})
                    return
        finally:
            if watcher is not None:
                watcher.cancel()
            if exchange.calls:
                session.upstream.cancel_calls(exchange.calls, "the client disconnected")

    async def _initialize(
        self, headers: dict[bytes, str], message: dict[str, Any], send: Send
    ) -> None:
        if protocol.classify(message) != "request":
            raise rpc_http_error(
                400,
                protocol.INVALID_REQUEST,
                "Invalid Request: initialize must be a request with an id",
            )
        principal = headers.get(b"x-catwalk-principal", "")
        session, response = await self.bridge.open_session(principal, message)
        if session is None:
            await send_json(send, 200, response)
            return
        await send_json(send, 200, response, [(b"mcp-session-id", session.id.encode())])

    async def _get_mcp(self, headers: dict[bytes, str], receive: Receive, send: Send) -> None:
        if not _accepts(headers.get(b"accept", ""), "text/event-stream"):
            raise rpc_http_error(
                406,
                protocol.INVALID_REQUEST,
                "Not Acceptable: Accept must include text/event-stream",
            )
        self._check_protocol_version(headers)
        session = self._session(headers, required_for="to open a stream")
        stream = session.stream
        if stream.connected:
            raise rpc_http_error(
                409, protocol.INVALID_REQUEST, "Conflict: this session already has a GET stream"
            )
        replay: list[tuple[int, str]] = []
        last_event_id = headers.get(b"last-event-id")
        if last_event_id:
            seq = stream.parse_event_id(last_event_id)
            if seq is None:
                raise rpc_http_error(
                    400, protocol.INVALID_REQUEST, "Last-Event-ID does not name a resumable stream"
                )
            replay = stream.replay_after(seq)
        mailbox = stream.attach()
        watcher = _watch_disconnect(receive, mailbox)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            if not last_event_id and session.version >= "2025-11-25":
                priming = f"id: {stream.next_event_id()}\nretry: {RETRY_HINT_MS}\ndata: \n\n"
                await send(
                    {"type": "http.response.body", "body": priming.encode(), "more_body": True}
                )
            for seq, data in replay:
                await send(
                    {
                        "type": "http.response.body",
                        "body": sse_event(data, f"{stream.stream_id}-{seq}"),
                        "more_body": True,
                    }
                )
            await self._pump(mailbox, send, stream.stream_id)
        finally:
            watcher.cancel()
            stream.detach(mailbox)

    @staticmethod
    async def _pump(mailbox: Mailbox, send: Send, stream_id: str | None) -> None:
        """Copy a long-lived stream's messages to the client until it closes or leaves."""
        while True:
            item = await mailbox.get(KEEPALIVE_SECONDS)
            if item is None:
                await send({"type": "http.response.body", "body": _KEEPALIVE, "more_body": True})
                continue
            if item is CLOSED:
                await send({"type": "http.response.body", "body": b""})
                return
            if item is DISCONNECTED:
                return
            seq, data = item  # type: ignore[misc]
            event_id = f"{stream_id}-{seq}" if stream_id is not None else None
            await send(
                {"type": "http.response.body", "body": sse_event(data, event_id), "more_body": True}
            )

    async def _delete_mcp(self, headers: dict[bytes, str], send: Send) -> None:
        session = self._session(headers, required_for="to end a session")
        self.bridge.end_session(session, "the client ended the session")
        await send_empty(send, 204)

    # -- legacy HTTP+SSE (2024-11-05) ------------------------------------------

    async def _get_legacy_sse(
        self, headers: dict[bytes, str], receive: Receive, send: Send
    ) -> None:
        if not _accepts(headers.get(b"accept", "*/*") or "*/*", "text/event-stream"):
            raise rpc_http_error(
                406,
                protocol.INVALID_REQUEST,
                "Not Acceptable: Accept must include text/event-stream",
            )
        principal = headers.get(b"x-catwalk-principal", "")
        session, _ = await self.bridge.open_session(principal, None, legacy=True)
        assert session is not None
        stream = session.stream
        mailbox = stream.attach()
        watcher = _watch_disconnect(receive, mailbox)
        prefix = headers.get(b"x-forwarded-prefix", "").rstrip("/")
        endpoint = f"{prefix}/messages?sessionId={quote(session.id)}"
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            await send(
                {
                    "type": "http.response.body",
                    "body": sse_event(endpoint, event="endpoint"),
                    "more_body": True,
                }
            )
            await self._pump(mailbox, send, None)
        finally:
            watcher.cancel()
            stream.detach(mailbox)
            self.bridge.end_session(session, "the client closed its SSE stream")

    async def _post_legacy_message(
        self, scope: Scope, headers: dict[bytes, str], receive: Receive, send: Send
    ) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        session_ids = query.get("sessionId") or query.get("session_id")
        if not session_ids:
            raise rpc_http_error(
                400, protocol.INVALID_REQUEST, "Bad Request: sessionId query parameter is required"
            )
        session = self.bridge.sessions.lookup(
            session_ids[0], headers.get(b"x-catwalk-principal", ""), legacy=True
        )
        if session is None:
            raise rpc_http_error(404, protocol.INVALID_REQUEST, "Session not found")
        payload = await self._read_json(headers, receive)
        messages = payload if isinstance(payload, list) and payload else [payload]
        kinds = [protocol.classify(message) for message in messages]
        if None in kinds:
            raise rpc_http_error(
                400, protocol.INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message"
            )
        initialize = [message for message in messages if message.get("method") == "initialize"]
        if initialize and self.bridge.shared:
            for message in initialize:
                version, result = self.bridge.shared_initialize_result(
                    (message.get("params") or {}).get("protocolVersion")
                )
                session.version = version
                session.stream.put(
                    protocol.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result})
                )
            remaining = [
                (m, k)
                for m, k in zip(messages, kinds, strict=True)
                if m.get("method") != "initialize"
            ]
            messages = [m for m, _ in remaining]
            kinds = [k for _, k in remaining]
        for message, kind in zip(messages, kinds, strict=True):
            if kind == "request" and message["method"] == "initialize":
                session.upstream.start_call(session, message, session.stream)
            elif kind == "request":
                self._dispatch(session, [message], [kind], session.stream)
            else:
                self._dispatch(session, [message], [kind], None)
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"Accepted"})

    # -- switching to a new version --------------------------------------------

    async def _switch(self, headers: dict[bytes, str], receive: Receive, send: Send) -> None:
        """The supervisor's redeploy: `{"command": [...], "grace": seconds}`. Answers once the
        new version serves new sessions (200), or why it does not (409). Not reachable through
        the gateway, which forwards /mcp, /sse and /messages only."""
        body = await self._read_json(headers, receive)
        command = body.get("command") if isinstance(body, dict) else None
        grace = body.get("grace", 300) if isinstance(body, dict) else None
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(part, str) and "\0" not in part for part in command)
            or not isinstance(grace, (int, float))
            or isinstance(grace, bool)
            or grace < 0
        ):
            raise HttpError(400, {"error": "expected {command: [strings], grace: seconds}"})
        try:
            await self.bridge.switch(command, float(grace))
        except SwitchFailed as exc:
            raise HttpError(409, {"error": str(exc)}) from None
        await send_json(send, 200, {"ok": True})

    # -- logs ------------------------------------------------------------------

    async def _logs(self, scope: Scope, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        raw = (query.get("lines") or ["100"])[0]
        if not raw.isdigit():
            raise HttpError(400, {"error": "lines must be a non-negative integer"})
        count = min(int(raw), MAX_LOG_LINES)
        await send_json(send, 200, {"lines": self.bridge.stderr_log.tail(count)})
