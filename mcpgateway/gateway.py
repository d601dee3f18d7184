"""The public MCP endpoint: `/mcp/<deployment-id>` (+ `/sse` and `/messages` for old clients).

A lean ASGI callable mounted beside Django (no middleware stack on the hot path). Per request
it validates Host and Origin, authenticates the bearer token (cached), finds the deployment's
bridge through its runtime, wakes it if it sleeps, relays the request over a pooled connection
and streams the answer back as it arrives. Sessions belong to the principal that created them:
the bridge enforces that from the `X-Catwalk-Principal` header set here. One tool-call record
per JSON-RPC request is queued and written in the background.

As an OAuth 2.1 resource server (MCP authorization spec): every 401 points the client at the
deployment's protected-resource metadata (RFC 9728 §5.1), an OAuth token not issued for this
very endpoint (RFC 8707 audience) or by a user who no longer owns it is a 401 `invalid_token`,
and one without the `mcp` scope a 403 `insufficient_scope` (RFC 6750 §3.1).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils import timezone

from deployments.models import CallOutcome, DesiredState, Status
from mcpgateway import access
from mcpgateway.calllog import CallLog, CallRecord, SseAnswerScanner, error_codes_in, requests_in
from mcpgateway.limits import RATE_LIMITED, Limits
from mcpgateway.relay import Pool, RelayError

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

logger = logging.getLogger(__name__)

PATH = re.compile(
    r"^/mcp/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(/sse|/messages)?/?$",
    re.IGNORECASE,
)
FORWARDED_HEADERS = frozenset(
    {b"accept", b"content-type", b"mcp-session-id", b"mcp-protocol-version", b"last-event-id"}
)
DROPPED_ANSWER_HEADERS = frozenset(
    {
        *(b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade"),
        *(b"proxy-authenticate", b"proxy-authorization", b"date", b"server"),
    }
)
CORS_ALLOW_HEADERS = (
    b"authorization, content-type, accept, mcp-session-id, mcp-protocol-version, last-event-id"
)
CORS_EXPOSE_HEADERS = b"mcp-session-id, mcp-protocol-version, www-authenticate"
WATCH_DISCONNECT_AFTER = 0.5
WAKE_POLL_SECONDS = 0.1
# A deployment its runtime's proxy wakes (Fly) is reported to the runtime once per this long,
# however many requests arrive while it is marked sleeping.
PROXY_WAKE_REPORT_SECONDS = 5.0
RESTART_GRACE_SECONDS = 3.0
MCP_SCOPE = "mcp"
# An open stream re-checks its caller's token this often, so revocation also ends streams.
STREAM_RECHECK_SECONDS = access.ACCESS_CACHE_SECONDS


class Refusal(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: int = -32000,
        headers: list[tuple[bytes, bytes]] | None = None,
        request_id: object = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or []
        self.request_id = request_id


class Gateway:
    def __init__(self) -> None:
        self.pool = Pool()
        self.calls = CallLog()
        self.limits = Limits()
        self.max_body = settings.GATEWAY_MAX_BODY_BYTES
        self.wake_timeout = settings.GATEWAY_WAKE_TIMEOUT_SECONDS
        self.public_url = settings.PUBLIC_URL
        self.public_origin = _origin_of(settings.PUBLIC_URL)
        self._hosts: dict[bytes, bool] = {}
        self._wakes_reported: dict[str, float] = {}

    async def close(self) -> None:
        """Write what the call log still holds and drop pooled connections."""
        await self.calls.close()
        await self.limits.close()
        self.pool.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        request = _Request(scope, headers, send)
        try:
            match = PATH.match(scope["path"])
            if match is None:
                raise Refusal(404, "No such endpoint.")
            await self._handle(request, receive, match)
        except Refusal as refusal:
            if not request.started:
                await _send_error(request.send, refusal, request.cors_origin)
        except Exception:
            logger.exception("gateway error on %s %s", scope["method"], scope["path"])
            if not request.started:
                await _send_error(request.send, Refusal(500, "Internal error in the gateway."), "")

    async def _handle(self, request: _Request, receive: Receive, match: re.Match) -> None:
        scope, headers = request.scope, request.headers
        if not self._host_allowed(headers.get(b"host", b"")):
            raise Refusal(400, "Invalid Host header.")
        deployment_id, suffix = match.group(1).lower(), match.group(2) or ""
        request.deployment_id = deployment_id
        method = scope["method"]

        origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/")
        info: access.DeploymentInfo | None = None
        if origin and not self._same_origin(origin, scope, headers):
            # Only a cross-origin browser request needs the deployment before authentication.
            info = await access.deployment_info(deployment_id)
            if info is None or origin not in info.allowed_origins:
                raise Refusal(403, f"Origin {origin} is not allowed to call this endpoint.")
        request.cors_origin = origin
        if method == "OPTIONS":
            await _send_preflight(request.send, origin)
            return

        principal = await self._authenticate(headers, deployment_id)
        info = await self._authorize(principal, deployment_id, info)

        body = b""
        if method == "POST":
            body = await self._read_body(headers, receive)
        elif method not in ("GET", "DELETE"):
            raise Refusal(
                405,
                f"Method {method} is not allowed here.",
                headers=[(b"allow", b"GET, POST, DELETE")],
            )

        session_id = headers.get(b"mcp-session-id", b"").decode("latin-1")
        session = f"{deployment_id}:{session_id}" if session_id else None
        calls = self._start_records(body, info.id, principal, headers)
        # An initialize opens a session whatever headers come with it.
        opening = any(call.method == "initialize" for call in calls)
        reservation = f"{deployment_id}:reserved-{uuid.uuid4().hex}" if opening else None
        if self.limits.active:
            over = await self.limits.admit(
                principal.key, info.owner_id, session, opening, reservation
            )
            if over is not None:
                raise Refusal(
                    429,
                    over.message,
                    code=RATE_LIMITED,
                    headers=[(b"retry-after", str(over.retry_after).encode())],
                    request_id=calls[0].request_id if len(calls) == 1 else None,
                )

        info = await self._awake(info)
        upstream_headers = [
            (name, value) for name, value in headers.items() if name in FORWARDED_HEADERS
        ]
        upstream_headers += [
            (b"x-catwalk-principal", principal.key.encode()),
            (b"x-forwarded-prefix", f"/mcp/{deployment_id}".encode()),
            *((k.lower().encode(), v.encode()) for k, v in info.endpoint.headers.items()),
        ]
        path = {"": "/mcp", "/sse": "/sse", "/messages": "/messages"}[suffix]
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")

        self.calls.touch(info.id, principal.token_id)
        started = time.perf_counter()
        watcher: asyncio.Task | None = None
        try:
            response, watcher = await self._exchange(
                info, method, path, upstream_headers, body, receive
            )
            if response is None:  # the client left before the bridge answered
                self._finish_records(calls, started, 499, {}, disconnected=True)
                if reservation is not None and self.limits.active:
                    await self.limits.closed(info.owner_id, reservation)
                return
            if self.limits.active:
                await self._track_session(response, info, method, session, reservation)
            await self._stream_back(response, request, receive, calls, started, watcher, principal)
        finally:
            if watcher is not None:
                watcher.cancel()

    # --- checks ---------------------------------------------------------------------------
    def _host_allowed(self, host: bytes) -> bool:
        allowed = self._hosts.get(host)
        if allowed is None:
            domain, _ = split_domain_port(host.decode("latin-1"))
            allowed = bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)
            if len(self._hosts) < 1000:
                self._hosts[host] = allowed
        return allowed

    def _same_origin(self, origin: str, scope: Scope, headers: dict[bytes, bytes]) -> bool:
        """Catwalk's own pages, or a page served from the very origin the request goes to.

        The Host header has already passed ALLOWED_HOSTS: a DNS-rebinding page carries its own
        (refused) host name, never ours.
        """
        if origin == self.public_origin:
            return True
        host = headers.get(b"host", b"").decode("latin-1")
        return origin == f"{scope.get('scheme', 'http')}://{host}"

    async def _authenticate(
        self, headers: dict[bytes, bytes], deployment_id: str
    ) -> access.Principal:
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            # The same answer whether the deployment exists or not: nothing is looked up yet.
            raise Refusal(401, "Missing bearer token.", headers=self._challenge(deployment_id))
        principal = await access.authenticate(token.strip())
        if principal is None:
            raise self._invalid_token(
                deployment_id, "The bearer token is invalid, expired or revoked."
            )
        return principal

    async def _authorize(
        self,
        principal: access.Principal,
        deployment_id: str,
        info: access.DeploymentInfo | None,
    ) -> access.DeploymentInfo:
        """The deployment, if this principal may call it now; otherwise the refusal."""
        if isinstance(principal, access.OAuthPrincipal):
            # Checked before any lookup, so a token tried on other ids costs no query.
            if f"{self.public_url}/mcp/{deployment_id}" not in principal.resources:
                raise self._invalid_token(
                    deployment_id, "This access token was not issued for this endpoint."
                )
            info = info or await access.deployment_info(deployment_id)
            if info is None or info.owner_id != principal.user_id:
                raise self._invalid_token(
                    deployment_id, "This access token's user no longer owns this deployment."
                )
            if MCP_SCOPE not in principal.scopes:
                raise Refusal(
                    403,
                    f"This access token lacks the {MCP_SCOPE} scope.",
                    headers=self._challenge(
                        deployment_id, f'error="insufficient_scope", scope="{MCP_SCOPE}"'
                    ),
                )
        elif principal.deployment_id != deployment_id:
            raise Refusal(404, "No such deployment.")
        info = info or await access.deployment_info(deployment_id)
        if info is None:
            raise Refusal(404, "No such deployment.")
        if info.desired_state == DesiredState.STOPPED:
            raise Refusal(503, "This deployment was stopped by its owner.")
        return info

    def _challenge(self, deployment_id: str, error: str = "") -> list[tuple[bytes, bytes]]:
        """A Bearer challenge that points at the deployment's protected-resource metadata."""
        metadata = f"{self.public_url}/.well-known/oauth-protected-resource/mcp/{deployment_id}"
        value = f'Bearer resource_metadata="{metadata}"' + (f", {error}" if error else "")
        return [(b"www-authenticate", value.encode())]

    def _invalid_token(self, deployment_id: str, message: str) -> Refusal:
        return Refusal(
            401, message, headers=self._challenge(deployment_id, 'error="invalid_token"')
        )

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise Refusal(413, f"The request body is larger than {self.max_body} bytes.")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Refusal(400, "The client went away.")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise Refusal(413, f"The request body is larger than {self.max_body} bytes.")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    # --- waking and relaying ----------------------------------------------------------------
    async def _awake(self, info: access.DeploymentInfo) -> access.DeploymentInfo:
        if info.status not in (Status.SLEEPING, Status.STOPPED, Status.PENDING, Status.STARTING):
            return info
        if info.status == Status.SLEEPING and info.proxy_wakes:
            # The runtime's proxy starts it for this very request; the runtime only catches
            # up with its status, told once per few seconds (a database query each time).
            now = time.monotonic()
            if now - self._wakes_reported.get(info.id, -PROXY_WAKE_REPORT_SECONDS) >= (
                PROXY_WAKE_REPORT_SECONDS
            ):
                if len(self._wakes_reported) > 1000:
                    self._wakes_reported = {
                        key: at
                        for key, at in self._wakes_reported.items()
                        if now - at < PROXY_WAKE_REPORT_SECONDS
                    }
                self._wakes_reported[info.id] = now
                await access.wake(info.id, forget=False)
            return info
        if info.status in (Status.SLEEPING, Status.STOPPED):
            await access.wake(info.id)
        deadline = time.monotonic() + self.wake_timeout
        while time.monotonic() < deadline:
            info = await access.deployment_info(info.id, fresh=True)
            if info is None:
                raise Refusal(404, "No such deployment.")
            if info.status == Status.RUNNING:
                return info
            if info.status in (Status.FAILED, Status.CRASHED):
                raise Refusal(503, "The deployment could not start; see its page for the reason.")
            await asyncio.sleep(WAKE_POLL_SECONDS)
        raise Refusal(
            503,
            f"The deployment did not become ready within {self.wake_timeout:.0f} seconds.",
            headers=[(b"retry-after", b"5")],
        )

    async def _exchange(self, info, method, path, headers, body, receive):
        """Relay the request; return the answer once its headers arrive (None if the client left).

        Fast answers never pay for a disconnect watcher; slower ones get one after
        WATCH_DISCONNECT_AFTER, and a client that leaves closes the upstream exchange, which the
        bridge turns into a cancellation of the call.
        """
        watcher: asyncio.Task | None = None
        for attempt in range(2):
            response = await self._send(info, method, path, headers, body)
            try:
                done, _ = await asyncio.wait({response.ready}, timeout=WATCH_DISCONNECT_AFTER)
                if not done:
                    if watcher is None:
                        watcher = asyncio.get_running_loop().create_task(
                            _wait_for_disconnect(receive)
                        )
                    await asyncio.wait(
                        {response.ready, watcher}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if not response.ready.done():
                        response.release()
                        return None, watcher
            except BaseException:
                response.release()
                raise
            if response.ready.exception() is None:
                return response, watcher
            response.release()
            # Only a kept-alive connection that failed before the bridge could have acted on
            # the request (it had closed the idle connection) is worth a second try.
            if not (response.reused and response.failed_at_once() and attempt == 0):
                raise Refusal(502, "The deployment's server closed the connection.")
        raise AssertionError("unreachable")

    async def _send(self, info, method, path, headers, body):
        deadline = time.monotonic() + RESTART_GRACE_SECONDS
        refreshed = False
        while True:
            endpoint = info.endpoint
            try:
                if endpoint.unix_socket:
                    return await self.pool.send(
                        unix_socket=endpoint.unix_socket,
                        method=method,
                        path=path,
                        headers=headers,
                        body=body,
                    )
                url = urlsplit(endpoint.base_url)
                return await self.pool.send(
                    host=url.hostname,
                    port=url.port or 80,
                    method=method,
                    path=url.path.rstrip("/") + path,
                    headers=headers,
                    body=body,
                )
            except RelayError as exc:
                if not refreshed:
                    # The cached state may be seconds old: the deployment may have gone to
                    # sleep since, in which case it is woken rather than reported unreachable.
                    refreshed = True
                    fresh = await access.deployment_info(info.id, fresh=True)
                    if fresh is None:
                        raise Refusal(404, "No such deployment.") from None
                    info = await self._awake(fresh)
                    continue
                # A bridge being restarted by its supervisor is back within moments.
                if time.monotonic() >= deadline:
                    logger.warning("deployment %s unreachable: %s", info.id, exc)
                    raise Refusal(
                        502, "The deployment's server is not reachable right now."
                    ) from None
                await asyncio.sleep(0.1)

    async def _stream_back(
        self, response, request: _Request, receive, calls, started, watcher, principal
    ) -> None:
        if calls and not calls[0].session_id:  # initialize: the bridge has just issued the id
            session = (response.header(b"mcp-session-id") or b"").decode("latin-1")
            for call in calls:
                call.session_id = session
        answer_headers = [(k, v) for k, v in response.headers if k not in DROPPED_ANSWER_HEADERS]
        if request.cors_origin:
            answer_headers += _cors_headers(request.cors_origin)
        is_sse = (response.header(b"content-type") or b"").startswith(b"text/event-stream")
        start = {
            "type": "http.response.start",
            "status": response.status,
            "headers": answer_headers,
        }
        if not is_sse:
            try:
                payload = await response.body()
            except RelayError:
                self._finish_records(calls, started, 502, {})
                raise Refusal(502, "The deployment's server broke off its answer.") from None
            await request.send(start)
            await request.send({"type": "http.response.body", "body": payload})
            self._finish_records(
                calls, started, response.status, error_codes_in(payload) if calls else {}
            )
            return

        await request.send(start)
        scanner = SseAnswerScanner({c.request_id for c in calls}) if calls else None
        if watcher is None:
            watcher = asyncio.get_running_loop().create_task(_wait_for_disconnect(receive))
        disconnected = broken = False
        recheck_at = time.monotonic() + STREAM_RECHECK_SECONDS
        try:
            while not (disconnected := watcher.done()):
                if time.monotonic() >= recheck_at:
                    recheck_at = time.monotonic() + STREAM_RECHECK_SECONDS
                    if not await self._still_allowed(principal, request.deployment_id):
                        broken = True  # token revoked or expired, or the deployment stopped
                        await request.send({"type": "http.response.body", "body": b""})
                        break
                chunk = response.take()
                if chunk is not None:
                    if scanner is not None:
                        scanner.feed(chunk)
                    await request.send(
                        {"type": "http.response.body", "body": chunk, "more_body": True}
                    )
                    continue
                if response.complete:
                    await request.send({"type": "http.response.body", "body": b""})
                    break
                await asyncio.wait(
                    {response.arrival(), watcher},
                    timeout=STREAM_RECHECK_SECONDS,
                    return_when=asyncio.FIRST_COMPLETED,
                )

        except RelayError:
            broken = True
            await request.send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()
            response.release()  # an unfinished exchange is closed: the bridge cancels the call
            if calls:
                answers = scanner.answers if scanner else {}
                self._finish_records(
                    calls, started, response.status, answers, disconnected, broken=broken
                )

    async def _still_allowed(self, principal: access.Principal, deployment_id: str) -> bool:
        current = await access.recheck(principal)
        if current is None:
            return False
        try:
            await self._authorize(current, deployment_id, None)
        except Refusal:
            return False
        return True

    async def _track_session(self, response, info, method, session, reservation) -> None:
        """Keep the per-user session count: an initialize's slot becomes its session (or is
        given back), a DELETE ends one. Not a 404: another principal presenting someone's
        session id gets one too, and must not end it; unused sessions age out instead."""
        if reservation is not None:
            issued = response.header(b"mcp-session-id") if response.status == 200 else None
            if issued:
                key = f"{info.id}:{issued.decode('latin-1')}"
                await self.limits.opened(info.owner_id, key, reservation)
            else:
                await self.limits.closed(info.owner_id, reservation)
        elif session is not None and method == "DELETE" and response.status < 300:
            await self.limits.closed(info.owner_id, session)

    # --- call log ---------------------------------------------------------------------------
    def _start_records(self, body, deployment_id, principal, headers) -> list[CallRecord]:
        found = requests_in(body)
        if not found:
            return []
        now = timezone.now()
        session = headers.get(b"mcp-session-id", b"").decode("latin-1")
        token_id, client_id = principal.token_id, principal.oauth_client_id
        return [
            CallRecord(
                deployment_id,
                token_id,
                session,
                method,
                target,
                request_id,
                now,
                oauth_client_id=client_id,
            )
            for request_id, method, target in found
        ]

    def _finish_records(
        self, calls, started, status, answers, disconnected=False, broken=False
    ) -> None:
        if not calls:
            return
        duration = (time.perf_counter() - started) * 1000
        for call in calls:
            call.duration_ms = duration
            key = (
                call.request_id
                if isinstance(call.request_id, (str, int, float, type(None)))
                else repr(call.request_id)
            )
            if key in answers:
                call.error_code = answers[key]
                call.outcome = CallOutcome.OK if call.error_code is None else CallOutcome.ERROR
            elif disconnected:
                call.outcome = CallOutcome.CANCELLED
            elif status >= 400:
                call.outcome = CallOutcome.REJECTED
            elif status != 202 or broken:  # the answer never came
                call.outcome = CallOutcome.ERROR
        self.calls.add(calls)


class _Request:
    """What the gateway tracks of one request: has the answer started, may it carry CORS, which
    deployment it is for."""

    __slots__ = ("_send", "cors_origin", "deployment_id", "headers", "scope", "send", "started")

    def __init__(self, scope: Scope, headers: dict[bytes, bytes], send: Send) -> None:
        self.scope, self.headers, self._send = scope, headers, send
        self.started = False
        self.cors_origin = ""
        self.deployment_id = ""
        self.send = self._tracked_send

    async def _tracked_send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-expose-headers", CORS_EXPOSE_HEADERS),
        (b"vary", b"origin"),
    ]


async def _send_preflight(send: Send, origin: str) -> None:
    headers = [
        (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
        (b"access-control-allow-headers", CORS_ALLOW_HEADERS),
        (b"access-control-max-age", b"600"),
    ]
    if origin:
        headers += _cors_headers(origin)
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _send_error(send: Send, refusal: Refusal, origin: str) -> None:
    error = {"code": refusal.code, "message": str(refusal)}
    body = json.dumps({"jsonrpc": "2.0", "id": refusal.request_id, "error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += refusal.headers
    if origin:
        headers += _cors_headers(origin)
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
