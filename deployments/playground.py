"""The playground on a deployment's page: its tools listed and called through the real gateway.

The browser never holds a token. The server mints a short-lived one for this deployment, keeps
its plaintext in the signed-in user's session (stored server-side) and makes the MCP requests
itself, with the official SDK's Streamable HTTP client, at the deployment's public endpoint: a
call from the playground passes the gateway's authentication, limits and wake-up, and lands in
the call log, like any client's. Every failure on the way comes back as a sentence to show.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx2
import mcp_types as types
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from mcp.client import Client
from mcp.client.streamable_http import StreamableHTTPError, streamable_http_client
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from deployments import audit
from deployments.models import AccessToken, Deployment, TokenPurpose

logger = logging.getLogger(__name__)

TOKEN_LIFETIME = timedelta(minutes=10)
# A token with less than this left is replaced rather than reused, so no call outlives it.
TOKEN_REUSE_MARGIN = timedelta(minutes=1)
TOKEN_LABEL = "Playground (10-minute token)"  # noqa: S105 - a label, not a secret
# Connecting may wake a sleeping deployment: the gateway holds the request that long.
CONNECT_SLACK_SECONDS = 10
MAX_TOOL_PAGES = 20
MAX_SHOWN_CHARACTERS = 100_000
MAX_IMAGE_BASE64_CHARACTERS = 4 * 1024 * 1024
# An image type is written into a data: URI, so only a plain type/subtype gets there.
IMAGE_TYPE = re.compile(r"image/[a-z0-9][a-z0-9.+-]{0,63}")
REQUEST_TIMEOUT_CODE = -32001  # what the SDK raises when a request gets no answer in time
CLIENT_INFO = types.Implementation(name="catwalk-playground", version="1")


class PlaygroundError(Exception):
    """The gateway could not be reached or refused the playground; the message says why."""


@dataclass(frozen=True)
class Shown:
    """One piece of a tool's result as the page shows it.

    `kind` is "text" (preformatted), "json" (pretty-printed), "image" (`src` is a data: URI)
    or "note" (a sentence describing what the page does not display)."""

    kind: str
    text: str = ""
    src: str = ""
    title: str = ""


@dataclass(frozen=True)
class CallResult:
    """What a call gave: the parts of its result, or `failure`, why there is none."""

    parts: list[Shown] = field(default_factory=list)
    is_error: bool = False
    failure: str = ""
    duration_ms: float | None = None


def _session_key(deployment: Deployment) -> str:
    return f"deployments:playground-token:{deployment.pk}"


async def playground_token(session: SessionBase, deployment: Deployment, actor) -> str:
    """A playground token for this deployment, reused from the session while it has more than a
    minute left, else minted (and audited, as any token). Its plaintext stays in the session,
    stored server-side: whoever could read the session table could take over the web session
    itself, so encrypting it there would protect nothing."""
    key = _session_key(deployment)
    kept = await session.aget(key)
    if kept is not None:
        usable = AccessToken.objects.active().filter(
            pk=kept["id"],
            deployment=deployment,
            purpose=TokenPurpose.PLAYGROUND,
            expires_at__gt=timezone.now() + TOKEN_REUSE_MARGIN,
        )
        if await usable.aexists():
            return kept["token"]
    token, plaintext = await sync_to_async(_issue)(deployment, actor)
    await session.aset(key, {"id": token.pk, "token": plaintext})
    return plaintext


def _issue(deployment: Deployment, actor) -> tuple[AccessToken, str]:
    with audit.acting_as(actor):
        return AccessToken.issue(
            deployment,
            TOKEN_LABEL,
            expires_at=timezone.now() + TOKEN_LIFETIME,
            purpose=TokenPurpose.PLAYGROUND,
        )


class ToolSession:
    """An open MCP session with a deployment through the gateway (see `connect`)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._tools: list[types.Tool] | None = None

    async def tools(self) -> list[types.Tool]:
        if self._tools is None:
            tools: list[types.Tool] = []
            cursor = None
            for _ in range(MAX_TOOL_PAGES):
                page = await self._client.list_tools(cursor=cursor)
                tools.extend(page.tools)
                cursor = page.next_cursor
                if cursor is None:
                    break
            self._tools = tools
        return self._tools

    async def tool(self, name: str) -> types.Tool | None:
        return next((tool for tool in await self.tools() if tool.name == name), None)

    async def call(self, name: str, arguments: dict[str, Any]) -> CallResult:
        started = time.perf_counter()
        try:
            result = await self._client.call_tool(
                name, arguments, read_timeout_seconds=settings.PLAYGROUND_CALL_TIMEOUT_SECONDS
            )
        except (MCPError, ValidationError) as exc:
            return CallResult(failure=_explain(exc), duration_ms=_since(started))
        return present(result, _since(started))


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


# Failures of the connection, the gateway or the protocol; anything else is a bug and is raised.
_EXPLAINED = (
    MCPError,
    ValidationError,
    TimeoutError,
    httpx2.HTTPError,
    StreamableHTTPError,
    OSError,
)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The default trust store, loaded once per process. Each client loading its own cost
    every playground view 20 ms of CPU (measured by bench/pages.py)."""
    return httpx2.create_ssl_context()


@asynccontextmanager
async def connect(deployment: Deployment, token: str) -> AsyncIterator[ToolSession]:
    """A session with the deployment through the gateway, with the playground's token. Raises
    PlaygroundError with the reason when the gateway cannot be reached, refuses the token or the
    deployment (stopped, unknown), the server fails to initialize, or nothing answers in time."""
    connect_timeout = settings.GATEWAY_WAKE_TIMEOUT_SECONDS + CONNECT_SLACK_SECONDS
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"},
        # Above every MCP-level timeout, so those (with their clearer messages) come first.
        timeout=httpx2.Timeout(connect_timeout + CONNECT_SLACK_SECONDS, connect=10),
        verify=_tls_context(),
    )
    client = Client(
        streamable_http_client(deployment.endpoint_url, http_client=http),
        # The bridge speaks the 2025 revisions: going straight to `initialize` spares the probe.
        mode="legacy",
        read_timeout_seconds=connect_timeout,
        client_info=CLIENT_INFO,
        cache=None,  # the client lives for one page request
    )
    used = False
    try:
        async with http, client:
            yield ToolSession(client)
            used = True
    except Exception as exc:
        cause = _first_cause(exc)
        if used:
            # Closing failed after the work was done (the SDK can trip over the answer to a
            # request it gave up on): what the page got stands.
            logger.warning("closing a playground session failed: %r", cause)
            return
        if not isinstance(cause, _EXPLAINED):
            raise
        raise PlaygroundError(_explain(cause)) from exc


def _first_cause(exc: BaseException) -> BaseException:
    """The first exception that is not a group: the SDK's task groups wrap what they raise."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _explain(exc: BaseException) -> str:
    if isinstance(exc, MCPError):
        if exc.code == REQUEST_TIMEOUT_CODE:
            return "No answer in time: the server may be stuck or slow to start."
        return f"{exc.error.message} (JSON-RPC error {exc.code})"
    if isinstance(exc, TimeoutError | httpx2.TimeoutException):
        return "No answer in time: the server may be stuck or slow to start."
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"The gateway answered HTTP {exc.response.status_code}."
    if isinstance(exc, httpx2.HTTPError | OSError):
        return f"Could not reach the gateway: {exc or type(exc).__name__}."
    if isinstance(exc, ValidationError):
        return f"The server's answer is not valid MCP ({exc.error_count()} problems)."
    return str(exc) or type(exc).__name__


def present(result: types.CallToolResult, duration_ms: float | None = None) -> CallResult:
    """The result as the page shows it: text as text, JSON pretty-printed, images inline, audio
    and resources described. Structured content is shown unless a text part already said it."""
    parts = [_show(block) for block in result.content]
    structured = result.structured_content
    if structured is not None:
        said = [_json(b.text) for b in result.content if isinstance(b, types.TextContent)]
        if structured not in said:
            parts.append(_text(_pretty(structured), title="Structured content", kind="json"))
    return CallResult(parts=parts, is_error=bool(result.is_error), duration_ms=duration_ms)


def _show(block: types.ContentBlock) -> Shown:
    if isinstance(block, types.TextContent):
        return _text(block.text)
    if isinstance(block, types.ImageContent):
        return _image(block.data, block.mime_type)
    if isinstance(block, types.AudioContent):
        return Shown("note", f"Audio ({block.mime_type}, {_decoded_size(block.data)}).")
    if isinstance(block, types.ResourceLink):
        name = f" “{block.name}”" if block.name else ""
        return Shown("note", f"A link to the resource{name} at {block.uri}.")
    if isinstance(block, types.EmbeddedResource):
        resource = block.resource
        of_type = f" ({resource.mime_type})" if resource.mime_type else ""
        title = f"Resource {resource.uri}{of_type}"
        if isinstance(resource, types.TextResourceContents):
            return _text(resource.text, title=title)
        return Shown("note", f"{title}: {_decoded_size(resource.blob)} of binary data.")
    return Shown("note", f"Content of a type the page does not show ({block.type}).")


_NOT_JSON = object()


def _json(text: str) -> Any:
    """The JSON object or array the text holds, else _NOT_JSON (plain text stays text)."""
    if text.lstrip()[:1] not in ("{", "["):
        return _NOT_JSON
    try:
        return json.loads(text)
    except ValueError:
        return _NOT_JSON


def _text(text: str, title: str = "", kind: str = "text") -> Shown:
    if kind == "text" and (value := _json(text)) is not _NOT_JSON:
        text, kind = _pretty(value), "json"
    if len(text) > MAX_SHOWN_CHARACTERS:
        text = f"{text[:MAX_SHOWN_CHARACTERS]}\n… ({len(text):,} characters in all, not all shown)"
    return Shown(kind, text, title=title)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _image(data: str, mime_type: str) -> Shown:
    size = _decoded_size(data)
    if not IMAGE_TYPE.fullmatch(mime_type or ""):
        return Shown("note", f"An image of an unusual type ({mime_type}, {size}), not shown.")
    if len(data) > MAX_IMAGE_BASE64_CHARACTERS:
        return Shown("note", f"An image ({mime_type}, {size}), too large to show here.")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return Shown("note", f"An image ({mime_type}) whose data is not valid base64.")
    return Shown("image", src=f"data:{mime_type};base64,{data}", title=f"{mime_type}, {size}")


def _decoded_size(data: str) -> str:
    return filesizeformat(len(data) * 3 // 4)
