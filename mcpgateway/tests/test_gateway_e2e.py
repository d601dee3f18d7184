"""End to end through the whole of Catwalk: gateway → supervisor-run bridge → stdio server.

Each module-scoped stack is a throwaway Catwalk (its own data folder and SQLite database) with
the real supervisor and the ASGI app under uvicorn, serving the stdio fixture server. Clients
are the official `mcp` SDK (Streamable HTTP in default and legacy mode, and the old HTTP+SSE
transport) and raw HTTP for the status-code rules.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import mcp_types as types
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.client import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from mcpgateway.stack import Stack, free_port
from mcpgateway.tests.conftest import check_fixture_resources_prompts_completion, sdk_http_factory

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
CANARY = "deployment-credential-canary-7d1e"
OTHER_CANARY = "other-deployment-canary-55ab"
ACCEPT = "application/json, text/event-stream"
FIXTURE = [sys.executable, "-m", "mcpgateway.fixture_server"]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


class Running:
    def __init__(self, stack: Stack, deployed: dict, port: int, mode: str) -> None:
        self.stack, self.deployed, self.port = stack, deployed, port
        self.mode = mode
        self.url = f"http://127.0.0.1:{port}/mcp/{deployed['id']}"
        self.token = deployed["token"]

    def new_token(self) -> str:
        out = self.stack.manage("mcp_token", "create", self.deployed["id"], "--label", "second")
        return next(word for word in out.split() if word.startswith("cwk_"))

    def bridge_pid(self) -> int:
        record = self.stack.data_dir / "run" / self.deployed["id"] / "bridge.pid"
        return json.loads(record.read_text())["pid"]


def deploy_args(*extra: str) -> list[str]:
    return [
        "--package", "pypi:catwalk-fixture", "--entry", FIXTURE[0],
        *(f"--arg={arg}" for arg in FIXTURE[1:]),
        "--env", f"PYTHONPATH={Path(__file__).resolve().parents[2]}",
        *extra,
    ]  # fmt: skip


@contextlib.contextmanager
def running_stack(args: list[str], server: str = "uvicorn") -> Iterator[Running]:
    """A throwaway Catwalk serving one deployment made by `mcp_deploy ARGS`."""
    data_dir = Path(tempfile.mkdtemp(prefix="catwalk-e2e-"))
    port = free_port()
    stack = Stack(data_dir, server, port)
    try:
        mode = "isolated" if "--isolated" in args else "shared"
        yield Running(stack, stack.start(args), port, mode)
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module", params=["shared", "isolated"])
def catwalk(request) -> Iterator[Running]:
    mode = ["--isolated"] if request.param == "isolated" else []
    with running_stack(deploy_args("--env", f"CANARY={CANARY}", *mode)) as running:
        yield running


@pytest.fixture(scope="module")
def shared(catwalk) -> Running:
    if catwalk.mode != "shared":
        pytest.skip("shared mode only")
    return catwalk


@contextlib.asynccontextmanager
async def sdk_client(
    target: Running, *, legacy_sse: bool = False, token: str | None = None, **options
) -> AsyncIterator[Client]:
    factory = sdk_http_factory({"Authorization": f"Bearer {token or target.token}"})
    if legacy_sse:
        options.setdefault("mode", "legacy")
        transport = sse_client(f"{target.url}/sse", httpx_client_factory=factory)
        async with Client(transport, **options) as client:
            yield client
        return
    async with (
        factory() as http,
        Client(streamable_http_client(target.url, http_client=http), **options) as client,
    ):
        yield client


async def test_default_sdk_client_falls_back_and_calls_tools(catwalk):
    async with sdk_client(catwalk) as client:
        assert client.server_info.name == "catwalk-fixture"
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert {"echo", "get-env", "test_sampling"} <= tools
        result = await client.call_tool("echo", {"message": "through the gateway"})
        assert result.content[0].text == "through the gateway"


async def test_legacy_pinned_client_and_the_whole_feature_set(catwalk):
    progress: list[float] = []
    logged: list[str] = []

    async def on_progress(value, total, message) -> None:
        progress.append(value)

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logged.append(str(params.data))

    async def sample(context, params):
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="42"), model="m"
        )

    async def elicit(context, params):
        return types.ElicitResult(action="accept", content={"username": "ada", "email": "a@b.c"})

    async with sdk_client(
        catwalk, mode="legacy", sampling_callback=sample, elicitation_callback=elicit,
        logging_callback=on_log,
    ) as client:  # fmt: skip
        await client.call_tool("test_tool_with_progress", {}, progress_callback=on_progress)
        assert progress == [0, 50, 100]
        await client.call_tool("test_tool_with_logging", {})
        assert len(logged) == 3
        sampled = await client.call_tool("test_sampling", {"prompt": "answer?"})
        assert sampled.content[0].text == "LLM response: 42"
        elicited = await client.call_tool("test_elicitation", {"message": "who?"})
        assert "ada" in elicited.content[0].text
        await check_fixture_resources_prompts_completion(client)


async def test_old_http_sse_clients_work_through_the_gateway(catwalk):
    async with sdk_client(catwalk, legacy_sse=True) as client:
        result = await client.call_tool("echo", {"message": "old transport"})
        assert result.content[0].text == "old transport"


async def test_the_server_sees_its_credentials_and_nothing_of_catwalk(catwalk):
    async with sdk_client(catwalk) as client:
        result = await client.call_tool("get-env", {})
    environment = json.loads(result.content[0].text)
    assert environment["CANARY"] == CANARY
    leaked = [name for name in environment if name.startswith(("CATWALK_", "DJANGO_"))]
    leaked += [name for name in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL") if name in environment]
    assert leaked == []
    text = result.content[0].text
    for secret in ("SECRET_KEY", "CATWALK_ENCRYPTION_KEYS"):
        assert catwalk.stack.env[secret] not in text
    assert OTHER_CANARY not in text


async def test_another_deployments_credentials_stay_out(shared):
    other = json.loads(
        shared.stack.manage(
            "mcp_deploy", "--user", "stack", "--name", "other-fixture",
            *deploy_args("--env", f"SECRET_OF_OTHER={OTHER_CANARY}"),
        ).strip().splitlines()[-1]
    )  # fmt: skip
    async with sdk_client(shared) as client:
        text = (await client.call_tool("get-env", {})).content[0].text
    assert OTHER_CANARY not in text and "SECRET_OF_OTHER" not in text
    other_url = f"http://127.0.0.1:{shared.port}/mcp/{other['id']}"
    async with httpx.AsyncClient() as http:
        foreign = await http.post(
            other_url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Authorization": f"Bearer {shared.token}"},
        )  # fmt: skip
    assert foreign.status_code == 404


def initialize_raw(target: Running, token: str) -> str:
    response = httpx.post(
        target.url,
        json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "raw", "version": "1"}},
        },
        headers={"Authorization": f"Bearer {token}", "Accept": ACCEPT},
        timeout=60,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return response.headers["mcp-session-id"]


def post_raw(target: Running, token: str, session: str, content: bytes) -> httpx.Response:
    return httpx.post(
        target.url,
        content=content,
        headers={
            "Authorization": f"Bearer {token}", "Mcp-Session-Id": session,
            "MCP-Protocol-Version": "2025-06-18", "Content-Type": "application/json",
            "Accept": ACCEPT,
        },
        timeout=60,
    )  # fmt: skip


async def test_a_session_is_invisible_to_another_token(catwalk):
    session = initialize_raw(catwalk, catwalk.token)
    other_token = catwalk.new_token()
    ping = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping"}).encode()
    assert post_raw(catwalk, other_token, session, ping).status_code == 404
    assert post_raw(catwalk, catwalk.token, session, ping).status_code == 200


async def test_malformed_json_and_invalid_requests_get_json_rpc_errors(catwalk):
    session = initialize_raw(catwalk, catwalk.token)
    malformed = post_raw(catwalk, catwalk.token, session, b'{"jsonrpc": "2.0", "id": 1,')
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == -32700
    invalid = post_raw(catwalk, catwalk.token, session, b'{"jsonrpc": "1.0", "method": 5}')
    assert invalid.status_code == 400
    assert invalid.json()["error"]["code"] == -32600


async def test_calls_are_logged_without_arguments(catwalk):
    async with sdk_client(catwalk) as client:
        await client.call_tool("echo", {"message": "do-not-log-this-argument"})
    time.sleep(2.5)  # the call log is written in the background about once a second
    rows = catwalk.stack.manage(
        "shell", "-c",
        "from deployments.models import ToolCall; import json;"
        "print(json.dumps([[c.method, c.target, c.outcome, c.session_id != ''] "
        "for c in ToolCall.objects.all()]))",
    )  # fmt: skip
    calls = json.loads(rows.strip().splitlines()[-1])
    assert ["tools/call", "echo", "ok", True] in calls
    assert "do-not-log-this-argument" not in rows


async def test_killing_the_bridge_gives_404_then_a_clean_reinitialise(shared):
    async with sdk_client(shared) as client:
        await client.call_tool("echo", {"message": "before"})
        session_probe = initialize_raw(shared, shared.token)
        old_pid = shared.bridge_pid()
        os.kill(old_pid, signal.SIGKILL)
        with anyio.fail_after(60):
            while True:
                with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                    if shared.bridge_pid() != old_pid and psutil.pid_exists(shared.bridge_pid()):
                        break
                await anyio.sleep(0.2)
    ping = json.dumps({"jsonrpc": "2.0", "id": 9, "method": "ping"}).encode()
    with anyio.fail_after(60):
        while (status := post_raw(shared, shared.token, session_probe, ping).status_code) == 502:
            await anyio.sleep(0.2)
    assert status == 404
    async with sdk_client(shared) as client:
        result = await client.call_tool("echo", {"message": "after"})
        assert result.content[0].text == "after"


async def test_restarting_the_supervisor_alone_keeps_sessions_serving(shared):
    session = initialize_raw(shared, shared.token)
    pid = shared.bridge_pid()
    supervisor = shared.stack.processes[0]
    os.killpg(supervisor.pid, signal.SIGKILL)
    supervisor.wait()
    shared.stack.processes[0] = shared.stack.spawn(
        "supervisor-2", [sys.executable, "manage.py", "supervise"]
    )
    time.sleep(3)
    ping = json.dumps({"jsonrpc": "2.0", "id": 3, "method": "ping"}).encode()
    assert post_raw(shared, shared.token, session, ping).status_code == 200
    assert shared.bridge_pid() == pid


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]),
        "id": st.none() | st.integers() | st.text(max_size=8) | json_values,
        "method": st.sampled_from(
            [
                "initialize",
                "tools/call",
                "tools/list",
                "ping",
                "notifications/initialized",
                "notifications/cancelled",
                "resources/read",
                "nope",
            ]
        )
        | st.text(max_size=12)
        | json_values,
        "params": json_values,
        "result": json_values,
        "error": json_values,
    },
)
bodies = (
    envelopes.map(lambda e: json.dumps(e).encode())
    | st.lists(envelopes, max_size=3).map(lambda e: json.dumps(e).encode())
    | st.binary(max_size=200)
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=bodies,
    method=st.sampled_from(["POST", "POST", "POST", "GET", "DELETE"]),
    session=st.sampled_from(["", "known", "bogus", "\x7f"]),
    version=st.sampled_from(["", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28", "junk"]),
    content_type=st.sampled_from(["application/json", "text/plain", ""]),
    accept=st.sampled_from([ACCEPT, "application/json", "text/event-stream", "*/*", ""]),
)
def test_fuzzed_requests_never_get_a_server_error_or_hang(
    fuzz_target, body, method, session, version, content_type, accept
):
    target, known_session = fuzz_target
    headers = {"Authorization": f"Bearer {target.token}"}
    for name, value in [("Mcp-Session-Id", known_session if session == "known" else session),
                        ("MCP-Protocol-Version", version), ("Content-Type", content_type),
                        ("Accept", accept)]:  # fmt: skip
        if value and value.isprintable():
            headers[name] = value
    with httpx.Client(timeout=httpx.Timeout(20)) as http:
        if method == "GET":
            # A GET may open a long-lived stream: its status line is all that matters here.
            with http.stream("GET", target.url, headers=headers) as response:
                status = response.status_code
        else:
            status = http.request(method, target.url, content=body, headers=headers).status_code
    assert status < 500


@pytest.fixture(scope="module")
def fuzz_target(shared):
    return shared, initialize_raw(shared, shared.token)


async def test_the_gateway_also_serves_under_daphne():
    with running_stack(deploy_args(), server="daphne") as target:
        async with sdk_client(target) as client:
            result = await client.call_tool("echo", {"message": "daphne"})
            assert result.content[0].text == "daphne"
        async with sdk_client(target, legacy_sse=True) as client:
            result = await client.call_tool("echo", {"message": "daphne, old transport"})
            assert result.content[0].text == "daphne, old transport"


async def test_revoking_a_token_ends_its_open_stream(shared):
    token = shared.new_token()
    session = initialize_raw(shared, token)
    headers = {
        "Authorization": f"Bearer {token}",
        "Mcp-Session-Id": session,
        "MCP-Protocol-Version": "2025-06-18",
        "Accept": "text/event-stream",
    }
    with (
        httpx.Client(timeout=httpx.Timeout(60)) as http,
        http.stream("GET", shared.url, headers=headers) as stream,
    ):
        assert stream.status_code == 200
        shared.stack.manage("mcp_token", "revoke", token[:12])
        deadline = time.monotonic() + 30
        for _ in stream.iter_bytes():
            assert time.monotonic() < deadline, "the stream outlived its revoked token"
