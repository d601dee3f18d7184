"""End to end through the bridge with the real `mcp` SDK client, in both process models."""

from __future__ import annotations

import anyio
import mcp_types as types
import pytest

from mcpgateway.tests.conftest import (
    BridgeProcess,
    bridge_sdk_client,
    check_fixture_resources_prompts_completion,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_default_client_probes_then_falls_back_to_initialize(bridge_any_mode: BridgeProcess):
    async with bridge_sdk_client(bridge_any_mode) as client:
        assert client.protocol_version == "2025-11-25"
        assert client.server_info is not None and client.server_info.name == "catwalk-fixture"
        tools = await client.list_tools()
        assert "echo" in {tool.name for tool in tools.tools}
        result = await client.call_tool("echo", {"message": "hello through the bridge"})
        assert result.content[0].text == "hello through the bridge"


async def test_pinned_legacy_client_gets_the_servers_version(bridge_any_mode: BridgeProcess):
    async with bridge_sdk_client(bridge_any_mode, mode="legacy") as client:
        assert client.protocol_version == "2025-11-25"
        result = await client.call_tool("test_simple_text", {})
        assert result.content[0].type == "text"


async def test_progress_notifications_reach_the_caller(bridge_any_mode: BridgeProcess):
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with bridge_sdk_client(bridge_any_mode) as client:
        result = await client.call_tool(
            "test_tool_with_progress", {}, progress_callback=on_progress
        )
    assert not result.is_error
    assert seen == [0, 50, 100]


async def test_sampling_round_trip(bridge_any_mode: BridgeProcess):
    prompts: list[str] = []

    async def sample(
        context, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        prompts.append(params.messages[0].content.text)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="forty-two"),
            model="test-model",
        )

    async with bridge_sdk_client(bridge_any_mode, sampling_callback=sample) as client:
        result = await client.call_tool("test_sampling", {"prompt": "the answer?"})
    assert prompts == ["the answer?"]
    assert result.content[0].text == "LLM response: forty-two"


async def test_elicitation_round_trip(bridge_any_mode: BridgeProcess):
    async def elicit(context, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert params.message == "who are you?"
        return types.ElicitResult(
            action="accept", content={"username": "ada", "email": "ada@example.com"}
        )

    async with bridge_sdk_client(bridge_any_mode, elicitation_callback=elicit) as client:
        result = await client.call_tool("test_elicitation", {"message": "who are you?"})
    assert "action=accept" in result.content[0].text
    assert "ada" in result.content[0].text


async def test_log_messages_during_a_call_reach_the_client(bridge_any_mode: BridgeProcess):
    logged: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logged.append(str(params.data))

    async with bridge_sdk_client(bridge_any_mode, logging_callback=on_log) as client:
        result = await client.call_tool("test_tool_with_logging", {})
    assert not result.is_error
    assert logged == ["Tool execution started", "Tool processing data", "Tool execution completed"]


async def test_resources_prompts_and_completion(bridge_any_mode: BridgeProcess):
    async with bridge_sdk_client(bridge_any_mode) as client:
        resources = await client.list_resources()
        assert "test://static-text" in {str(r.uri) for r in resources.resources}
        prompts = await client.list_prompts()
        assert "test_prompt_with_arguments" in {p.name for p in prompts.prompts}
        await check_fixture_resources_prompts_completion(client)


async def test_legacy_sse_client_end_to_end(bridge_any_mode: BridgeProcess):
    async with bridge_sdk_client(bridge_any_mode, legacy_sse=True) as client:
        result = await client.call_tool("echo", {"message": "over the old transport"})
        assert result.content[0].text == "over the old transport"
        progress: list[float] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append(value)

        await client.call_tool("test_tool_with_progress", {}, progress_callback=on_progress)
        assert progress == [0, 50, 100]


async def test_concurrent_sessions_share_one_child_without_mixing_answers(
    bridge_shared: BridgeProcess,
):
    answers: dict[int, list[str]] = {}

    async def run(index: int) -> None:
        async with bridge_sdk_client(bridge_shared) as client:
            results = []
            for round_ in range(5):
                result = await client.call_tool("echo", {"message": f"{index}:{round_}"})
                results.append(result.content[0].text)
            answers[index] = results

    async with anyio.create_task_group() as group:
        for index in range(6):
            group.start_soon(run, index)
    assert answers == {i: [f"{i}:{r}" for r in range(5)] for i in range(6)}
    assert bridge_shared.health()["restarts"] == 0
