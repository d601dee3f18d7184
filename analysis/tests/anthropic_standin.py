"""A local stand-in for the Anthropic Messages API.

A real HTTP server on 127.0.0.1 answers `POST /v1/messages` in the documented shapes: a message
(`id`, `type: "message"`, `role`, `model`, `content` blocks including `tool_use`, `stop_reason`,
`usage`) or an error (`{"type": "error", "error": {"type", "message"}}` with the documented
status: 400 invalid_request_error, 401 authentication_error, 404 not_found_error, 429
rate_limit_error with `retry-after`, 500 api_error, 529 overloaded_error). The key may come as
`x-api-key` or as `Authorization: Bearer` (what the Python SDK 2.x sends); `anthropic-version` is
required.

Each test queues its answers (`answers`): a `Reply`, or a callable given the request body that
returns one, so a test can both inspect what was sent and decide what comes back. Every request
is recorded in `requests`.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_KEY = "sk-ant-standin"


@dataclass
class Reply:
    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)
    # Seconds to wait before answering, to run past a client's timeout.
    delay: float = 0.0


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict


Answer = Reply | Callable[[dict], Reply]


def tool_use(
    tool_input: object, *, name: str = "record_analysis", model: str = "claude-standin-1"
) -> Reply:
    """A message whose only block calls the tool `name` with `tool_input`."""
    block = {"type": "tool_use", "id": f"toolu_{secrets.token_hex(12)}", "name": name}
    block["input"] = tool_input
    return message([block], stop_reason="tool_use", model=model)


def text(words: str, *, model: str = "claude-standin-1") -> Reply:
    """A message that answers in prose instead of calling a tool."""
    return message([{"type": "text", "text": words}], stop_reason="end_turn", model=model)


def message(content: list[dict], *, stop_reason: str, model: str) -> Reply:
    body = {
        "id": f"msg_{secrets.token_hex(12)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 1_000, "output_tokens": len(json.dumps(content)) // 4},
    }
    return Reply(200, body, {"request-id": f"req_{secrets.token_hex(12)}"})


ERRORS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def error(kind: str, words: str = "", *, retry_after: int = 30) -> Reply:
    """The documented error answer of type `kind` (a key of ERRORS)."""
    body = {"type": "error", "error": {"type": kind, "message": words or kind.replace("_", " ")}}
    headers = {"request-id": f"req_{secrets.token_hex(12)}"}
    if kind == "rate_limit_error":
        headers["retry-after"] = str(retry_after)
    return Reply(ERRORS[kind], body, headers)


class AnthropicStandin:
    """Start with `AnthropicStandin()`, point `ANTHROPIC_BASE_URL` at `url`, `close()` at the
    end; `reset()` between tests that share one. `api_keys` are the keys it accepts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.standin = self  # type: ignore[attr-defined]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def reset(self) -> None:
        """Forget every answer, request and key, as if freshly started."""
        self.answers: list[Answer] = []
        self.requests: list[RecordedRequest] = []
        self.api_keys: set[str] = {API_KEY}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def next_answer(self, body: dict) -> Reply:
        with self._lock:
            answer = self.answers.pop(0) if self.answers else None
        if answer is None:
            return error("api_error", "the stand-in has no answer queued")
        return answer(body) if callable(answer) else answer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output quiet

    def do_POST(self) -> None:
        standin: AnthropicStandin = self.server.standin  # type: ignore[attr-defined]
        headers = {k.lower(): v for k, v in self.headers.items()}
        raw = self.rfile.read(int(headers.get("content-length", "0")))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        standin.record(RecordedRequest(self.path, headers, body if isinstance(body, dict) else {}))
        if self.path.split("?")[0] != "/v1/messages":
            self.send_reply(error("not_found_error", f"Not found: {self.path}"))
            return
        key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        if key not in standin.api_keys:
            self.send_reply(error("authentication_error", "invalid x-api-key"))
            return
        if not headers.get("anthropic-version"):
            self.send_reply(error("invalid_request_error", "anthropic-version: header is required"))
            return
        problem = _request_problem(body)
        if problem:
            self.send_reply(error("invalid_request_error", problem))
            return
        self.send_reply(standin.next_answer(body))

    def send_reply(self, reply: Reply) -> None:
        if reply.delay:
            time.sleep(reply.delay)
        payload = json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up waiting


def _request_problem(body: object) -> str:
    """What the API would refuse in the request body, or ""."""
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: field required"
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: field required"
    messages = body.get("messages")
    first = messages[0] if isinstance(messages, list) and messages else None
    if not isinstance(first, dict) or first.get("role") != "user":
        return "messages: the first message must use the user role"
    tool_choice = body.get("tool_choice")
    if tool_choice and tool_choice.get("type") == "tool":
        names = {tool.get("name") for tool in body.get("tools", [])}
        if tool_choice.get("name") not in names:
            return "tool_choice: names a tool that is not in tools"
    return ""
