"""The wrk script counts every wrong HTTP answer, whether sent as JSON or as SSE."""

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.load import run_wrk
from bench.wire import HttpSession, echo_text

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


class EchoHandler(BaseHTTPRequestHandler):
    """Answers tools/call echo as SSE (JSON with spaces, as some servers send it); subclasses
    get one detail wrong."""

    protocol_version = "HTTP/1.1"
    status = 200

    def result(self, message: str) -> dict:
        return {"content": [{"type": "text", "text": echo_text(message)}]}

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.headers["Mcp-Session-Id"] == "session-1"
        result = self.result(request["params"]["arguments"]["message"])
        answer = {"jsonrpc": "2.0", "id": request["id"], "result": result}
        body = f"event: message\ndata: {json.dumps(answer)}\n\n".encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class SomeoneElsesTextHandler(EchoHandler):
    def result(self, message: str) -> dict:
        return super().result("not-what-was-sent")


class ToolErrorHandler(EchoHandler):
    def result(self, message: str) -> dict:
        return {**super().result(message), "isError": True}


class ServerErrorHandler(EchoHandler):
    status = 500


@pytest.fixture
def serve() -> Iterator:
    servers = []

    def start(handler: type[BaseHTTPRequestHandler]) -> HttpSession:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return HttpSession(
            url=f"http://127.0.0.1:{server.server_port}/mcp",
            session_id="session-1",
            protocol_version="2025-11-25",
            extra_headers={},
        )

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_right_answers_count_no_errors(serve):
    result = run_wrk(serve(EchoHandler), concurrency=2, duration_s=1, message="m-1", threads=1)

    assert result.requests > 0
    assert result.error_count == 0


@pytest.mark.parametrize(
    ("handler", "kind"),
    [
        (SomeoneElsesTextHandler, "bad_body"),
        (ToolErrorHandler, "bad_body"),
        (ServerErrorHandler, "http_status"),
    ],
)
def test_wrong_answers_are_all_counted(serve, handler, kind):
    result = run_wrk(serve(handler), concurrency=2, duration_s=1, message="m-1", threads=1)

    assert result.requests > 0
    assert result.errors[kind] == result.error_count == result.requests
