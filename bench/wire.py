"""The few MCP messages the benchmark sends, over stdio and over Streamable HTTP.

Deliberately not the ``mcp`` SDK client: the harness must see every byte the server returns
(to validate it) and must cost as little CPU as possible next to the server it measures.
"""

from __future__ import annotations

import json
import os
import select
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import httpx

PROTOCOL_VERSION = "2025-11-25"
CLIENT_INFO = {"name": "catwalk-bench", "version": "1"}
ACCEPT = "application/json, text/event-stream"


class ProtocolError(RuntimeError):
    """The server answered, but not with what MCP requires."""


def initialize_request(request_id: int | str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": CLIENT_INFO,
        },
    }


INITIALIZED_NOTIFICATION = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def tools_list_request(request_id: int | str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/list", "params": {}}


def echo_request(request_id: int | str, message: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": message}},
    }


def echo_text(message: str) -> str:
    """What server-everything's ``echo`` tool puts in its text content."""
    return f"Echo: {message}"


def is_echo_result(message: Mapping[str, Any], request_id: int | str, text: str) -> bool:
    """True only for the exact successful JSON-RPC answer to our echo call."""
    if message.get("jsonrpc") != "2.0" or message.get("id") != request_id:
        return False
    result = message.get("result")
    if not isinstance(result, dict) or result.get("isError"):
        return False
    content = result.get("content")
    return (
        isinstance(content, list)
        and len(content) == 1
        and content[0] == {"type": "text", "text": text}
    )


def messages_from_body(content_type: str, body: bytes) -> list[dict[str, Any]]:
    """JSON-RPC messages in a Streamable HTTP response, whether sent as JSON or as SSE."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        decoded = json.loads(body)
        return decoded if isinstance(decoded, list) else [decoded]
    if media_type == "text/event-stream":
        messages = []
        for event in body.decode().replace("\r\n", "\n").split("\n\n"):
            data = [line[5:].lstrip(" ") for line in event.split("\n") if line.startswith("data:")]
            if data and "".join(data).strip():
                messages.append(json.loads("\n".join(data)))
        return messages
    raise ProtocolError(f"unexpected Content-Type {content_type!r}")


def _answer_to(messages: list[dict[str, Any]], request_id: int | str) -> dict[str, Any]:
    for message in messages:
        if message.get("id") == request_id and ("result" in message or "error" in message):
            if "error" in message:
                raise ProtocolError(f"JSON-RPC error: {message['error']}")
            return message
    raise ProtocolError(f"no answer to request {request_id!r} in {messages!r}")


@dataclass
class HttpSession:
    """An initialised Streamable HTTP session: what a load generator needs to join it."""

    url: str
    session_id: str | None
    protocol_version: str
    extra_headers: Mapping[str, str]

    def headers(self) -> dict[str, str]:
        headers = {
            "Accept": ACCEPT,
            "Content-Type": "application/json",
            "MCP-Protocol-Version": self.protocol_version,
            **self.extra_headers,
        }
        if self.session_id is not None:
            headers["Mcp-Session-Id"] = self.session_id
        return headers


def _post(
    client: httpx.Client, url: str, headers: Mapping[str, str], payload: dict[str, Any]
) -> httpx.Response:
    response = client.post(url, headers=dict(headers), content=json.dumps(payload).encode())
    if response.status_code not in (200, 202):
        raise ProtocolError(
            f"POST {payload.get('method')} -> HTTP {response.status_code}: {response.text[:300]}"
        )
    return response


def open_http_session(
    url: str,
    extra_headers: Mapping[str, str],
    *,
    deadline: float,
    server_alive: Callable[[], bool],
) -> tuple[HttpSession, int]:
    """initialize (retried while the server is alive but not listening yet, until ``deadline``),
    notifications/initialized, then tools/list. Returns the session and the number of tools."""
    base_headers = {"Accept": ACCEPT, "Content-Type": "application/json", **extra_headers}
    with httpx.Client(timeout=30.0) as client:
        while True:
            try:
                response = _post(client, url, base_headers, initialize_request(0))
                break
            except httpx.TransportError:
                if not server_alive():
                    raise ProtocolError("the server exited before answering initialize") from None
                if time.perf_counter() > deadline:
                    raise
                time.sleep(0.002)
        init = _answer_to(messages_from_body(response.headers["content-type"], response.content), 0)
        session = HttpSession(
            url=url,
            session_id=response.headers.get("mcp-session-id"),
            protocol_version=init["result"]["protocolVersion"],
            extra_headers=dict(extra_headers),
        )
        _post(client, url, session.headers(), INITIALIZED_NOTIFICATION)
        response = _post(client, url, session.headers(), tools_list_request(1))
        messages = messages_from_body(response.headers["content-type"], response.content)
        listed = _answer_to(messages, 1)
        return session, len(listed["result"]["tools"])


class StdioSession:
    """Newline-delimited JSON-RPC over a child's stdin/stdout.

    Reads go through ``select`` with a timeout, so a server that stops answering fails the
    measurement instead of hanging the harness.
    """

    def __init__(self, stdin: IO[bytes], stdout: IO[bytes], *, timeout_s: float = 30.0) -> None:
        self._stdin = stdin
        self._stdout_fd = stdout.fileno()
        self._buffer = bytearray()
        self._timeout_s = timeout_s

    def send(self, message: Mapping[str, Any]) -> None:
        self.send_raw(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def send_raw(self, line: bytes) -> None:
        try:
            self._stdin.write(line)
            self._stdin.flush()
        except BrokenPipeError:
            raise ProtocolError("the server closed its stdin") from None

    def _read_line(self) -> bytes:
        while (end := self._buffer.find(b"\n")) < 0:
            readable, _, _ = select.select([self._stdout_fd], [], [], self._timeout_s)
            if not readable:
                raise ProtocolError(f"the server sent nothing for {self._timeout_s:g} s")
            chunk = os.read(self._stdout_fd, 1 << 16)
            if not chunk:
                raise ProtocolError("the server closed its stdout")
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line

    def receive(self) -> dict[str, Any]:
        """The next message that answers a request; server notifications are skipped."""
        while True:
            message = json.loads(self._read_line())
            if "id" in message and ("result" in message or "error" in message):
                return message

    def initialize(self) -> int:
        """initialize, notifications/initialized, tools/list. Returns the number of tools."""
        self.send(initialize_request(0))
        _answer_to([self.receive()], 0)
        self.send(INITIALIZED_NOTIFICATION)
        self.send(tools_list_request(1))
        return len(_answer_to([self.receive()], 1)["result"]["tools"])
