"""The stdio fixture server, driven by the official MCP SDK client.

Importing the SDK costs a child about two seconds here, so the read-only
behaviours share one fixture process per module; tests that need a process of
their own (a custom environment, a crash) start one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.stdio import get_default_environment
from mcp.shared.exceptions import MCPError

from mcpgateway.fixture_server import CRASH_EXIT_CODE, PNG_BASE64

PROJECT_ROOT = Path(__file__).resolve().parents[2]

CONFORMANCE_TOOLS = {
    "test_simple_text",
    "test_image_content",
    "test_audio_content",
    "test_embedded_resource",
    "test_multiple_content_types",
    "test_tool_with_logging",
    "test_tool_with_progress",
    "test_error_handling",
    "test_reconnection",
    "test_sampling",
    "test_elicitation",
    "test_elicitation_sep1034_defaults",
    "test_elicitation_sep1330_enums",
    "json_schema_2020_12_tool",
}
CATWALK_TOOLS = {"echo", "get-env", "sleep", "crash", "touch-watched-resource"}

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    # The fixture speaks 2025-11-25, whose logging and subscriptions 2026-07-28 deprecates.
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def fixture_parameters(env: dict[str, str] | None = None) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "mcpgateway.fixture_server"], env=env, cwd=PROJECT_ROOT
    )


@dataclass
class Peer:
    """The client side of a fixture connection: what the server asked and sent."""

    logs: list[types.LoggingMessageNotificationParams] = field(default_factory=list)
    notifications: list[types.ServerNotification] = field(default_factory=list)
    sampling_requests: list[types.CreateMessageRequestParams] = field(default_factory=list)
    elicitation_requests: list[types.ElicitRequestParams] = field(default_factory=list)

    def forget(self) -> None:
        """Clear the record in place: the session's callbacks are bound to this object."""
        for record in (
            self.logs,
            self.notifications,
            self.sampling_requests,
            self.elicitation_requests,
        ):
            record.clear()

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(params)

    async def on_message(self, message: types.ServerNotification | Exception) -> None:
        if isinstance(message, Exception):
            raise message
        self.notifications.append(message)

    async def on_sampling(
        self, context: Any, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        self.sampling_requests.append(params)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="sampled answer"),
            model="test-model",
            stop_reason="endTurn",
        )

    async def on_elicitation(
        self, context: Any, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        self.elicitation_requests.append(params)
        return types.ElicitResult(
            action="accept", content={"username": "ada", "email": "ada@example.com"}
        )


@dataclass
class Connection:
    session: ClientSession
    peer: Peer


@asynccontextmanager
async def connect(env: dict[str, str] | None = None) -> AsyncIterator[Connection]:
    peer = Peer()
    async with (
        stdio_client(fixture_parameters(env)) as (read_stream, write_stream),
        ClientSession(
            read_stream,
            write_stream,
            read_timeout_seconds=30,
            sampling_callback=peer.on_sampling,
            elicitation_callback=peer.on_elicitation,
            logging_callback=peer.on_log,
            message_handler=peer.on_message,
        ) as session,
    ):
        await session.initialize()
        yield Connection(session, peer)


@pytest.fixture(scope="module")
async def shared() -> AsyncIterator[Connection]:
    async with connect() as connection:
        yield connection


@pytest.fixture
async def fixture(shared: Connection) -> Connection:
    """The shared connection, with what earlier tests recorded forgotten."""
    shared.peer.forget()
    return shared


def only_text(result: types.CallToolResult) -> str:
    assert not result.is_error, result
    [content] = result.content
    assert isinstance(content, types.TextContent)
    return content.text


async def test_lists_every_conformance_and_catwalk_tool(fixture: Connection) -> None:
    tools = (await fixture.session.list_tools()).tools

    assert {tool.name for tool in tools} == CONFORMANCE_TOOLS | CATWALK_TOOLS
    assert all(tool.description and tool.input_schema["type"] == "object" for tool in tools)


async def test_echo_returns_its_message(fixture: Connection) -> None:
    result = await fixture.session.call_tool("echo", {"message": "héllo ✓"})

    assert only_text(result) == "héllo ✓"


async def test_echo_without_a_message_is_invalid_params(fixture: Connection) -> None:
    with pytest.raises(MCPError) as raised:
        await fixture.session.call_tool("echo", {"text": "wrong name"})

    assert raised.value.error.code == types.INVALID_PARAMS
    assert "message" in raised.value.error.message


async def test_unknown_tool_is_invalid_params(fixture: Connection) -> None:
    with pytest.raises(MCPError) as raised:
        await fixture.session.call_tool("no-such-tool", {})

    assert raised.value.error.code == types.INVALID_PARAMS


async def test_progress_is_reported_in_order_before_the_result(fixture: Connection) -> None:
    updates: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total))

    result = await fixture.session.call_tool(
        "test_tool_with_progress", {}, progress_callback=on_progress
    )

    assert updates == [(0, 100), (50, 100), (100, 100)]
    assert "progress" in only_text(result)


async def test_logging_follows_the_level_the_client_set(fixture: Connection) -> None:
    await fixture.session.set_logging_level("warning")
    await fixture.session.call_tool("test_tool_with_logging", {})
    assert fixture.peer.logs == []

    await fixture.session.set_logging_level("info")
    await fixture.session.call_tool("test_tool_with_logging", {})
    assert [(log.level, log.data) for log in fixture.peer.logs] == [
        ("info", "Tool execution started"),
        ("info", "Tool processing data"),
        ("info", "Tool execution completed"),
    ]


async def test_error_tool_returns_a_tool_error_not_a_protocol_error(fixture: Connection) -> None:
    result = await fixture.session.call_tool("test_error_handling", {})

    assert result.is_error is True
    assert "intentionally" in result.content[0].text  # type: ignore[union-attr]


async def test_sampling_asks_the_client_and_returns_its_answer(fixture: Connection) -> None:
    result = await fixture.session.call_tool("test_sampling", {"prompt": "2+2?"})

    [request] = fixture.peer.sampling_requests
    assert request.messages[0].content.text == "2+2?"  # type: ignore[union-attr]
    assert request.max_tokens == 100
    assert only_text(result) == "LLM response: sampled answer"


async def test_elicitation_asks_the_client_and_returns_its_answer(fixture: Connection) -> None:
    result = await fixture.session.call_tool("test_elicitation", {"message": "Who are you?"})

    [request] = fixture.peer.elicitation_requests
    assert request.message == "Who are you?"
    assert request.requested_schema["required"] == ["username", "email"]  # type: ignore[union-attr]
    assert "action=accept" in only_text(result)
    assert "ada@example.com" in only_text(result)


async def test_a_sleeping_call_does_not_block_other_calls(fixture: Connection) -> None:
    async with anyio.create_task_group() as calls:
        calls.start_soon(fixture.session.call_tool, "sleep", {"seconds": 60})
        result = await fixture.session.call_tool("echo", {"message": "still here"})
        calls.cancel_scope.cancel()

    assert only_text(result) == "still here"


async def test_sleep_rejects_a_negative_duration(fixture: Connection) -> None:
    with pytest.raises(MCPError) as raised:
        await fixture.session.call_tool("sleep", {"seconds": -1})

    assert raised.value.error.code == types.INVALID_PARAMS


async def test_sleep_answers_after_sleeping(fixture: Connection) -> None:
    result = await fixture.session.call_tool("sleep", {"seconds": 0.01})

    assert only_text(result) == "Slept 0.01 seconds"


async def test_resources_and_template_read_back(fixture: Connection) -> None:
    static = await fixture.session.read_resource("test://static-text")
    binary = await fixture.session.read_resource("test://static-binary")
    templated = await fixture.session.read_resource("test://template/123/data")

    assert static.contents[0].text.startswith("This is the content")  # type: ignore[union-attr]
    assert binary.contents[0].blob == PNG_BASE64  # type: ignore[union-attr]
    assert json.loads(templated.contents[0].text)["id"] == "123"  # type: ignore[union-attr]


async def test_unknown_resource_is_invalid_params_with_its_uri(fixture: Connection) -> None:
    with pytest.raises(MCPError) as raised:
        await fixture.session.read_resource("test://nope")

    assert raised.value.error.code == types.INVALID_PARAMS
    assert raised.value.error.data == {"uri": "test://nope"}


async def test_a_subscriber_hears_of_updates_until_it_unsubscribes(fixture: Connection) -> None:
    await fixture.session.subscribe_resource("test://watched-resource")
    await fixture.session.call_tool("touch-watched-resource", {})
    await fixture.session.unsubscribe_resource("test://watched-resource")
    await fixture.session.call_tool("touch-watched-resource", {})

    updates = [
        n for n in fixture.peer.notifications if isinstance(n, types.ResourceUpdatedNotification)
    ]
    assert [update.params.uri for update in updates] == ["test://watched-resource"]


async def test_prompt_substitutes_its_arguments(fixture: Connection) -> None:
    prompt = await fixture.session.get_prompt(
        "test_prompt_with_arguments", {"arg1": "hello", "arg2": "world"}
    )

    [message] = prompt.messages
    assert message.content.text == "Prompt with arguments: arg1='hello', arg2='world'"  # type: ignore[union-attr]


async def test_completion_filters_by_prefix(fixture: Connection) -> None:
    result = await fixture.session.complete(
        types.PromptReference(type="ref/prompt", name="test_prompt_with_arguments"),
        {"name": "arg1", "value": "par"},
    )

    assert result.completion.values == ["paris", "park", "party"]


async def test_get_env_reports_exactly_the_environment_it_was_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CATWALK_PARENT_ONLY_SECRET", "must-not-leak")
    # An explicit LC_CTYPE stops Python's locale coercion from adding one of its own.
    env = {"CATWALK_FIXTURE_PROBE": "visible", "LC_CTYPE": "C.UTF-8"}
    async with connect(env) as connection:
        result = await connection.session.call_tool("get-env", {})

    reported = json.loads(only_text(result))
    assert reported == get_default_environment() | env
    assert "CATWALK_PARENT_ONLY_SECRET" not in reported


async def test_crash_fails_the_pending_call_with_connection_closed() -> None:
    async with connect() as connection:
        with pytest.raises(MCPError) as raised:
            await connection.session.call_tool("crash", {})

    assert raised.value.error.code == types.CONNECTION_CLOSED


def test_crash_exits_with_status_3_and_stdout_carries_only_json_rpc() -> None:
    """Raw pipes: the exit status, and that nothing but JSON-RPC lines reaches stdout."""
    messages = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "crash"}},
    ]
    with subprocess.Popen(
        [sys.executable, "-m", "mcpgateway.fixture_server"],
        cwd=PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdin and child.stdout and child.stderr
        try:
            child.stdin.write(json.dumps(messages[0]) + "\n")
            child.stdin.flush()
            # Wait for the handshake answer, so the crash cannot race the initialize response.
            initialized = json.loads(child.stdout.readline())
            for message in messages[1:]:
                child.stdin.write(json.dumps(message) + "\n")
            child.stdin.flush()
            exit_code = child.wait(timeout=60)
        finally:
            child.kill()
        rest_of_stdout = child.stdout.read()
        stderr = child.stderr.read()

    assert initialized["id"] == 1 and "result" in initialized
    assert exit_code == CRASH_EXIT_CODE
    assert rest_of_stdout == ""
    assert "crash tool called" in stderr
