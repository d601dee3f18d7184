"""Real servers from the registries, deployed by package and called through the gateway.

`@modelcontextprotocol/server-everything` runs through `npx`, `mcp-server-time` through `uvx`,
exactly as a user's deployment would: `manage.py mcp_deploy --package …` with a supervisor.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import mcp_types as types
import pytest

from mcpgateway.tests.test_gateway_e2e import Running, running_stack, sdk_client

EVERYTHING = "npm:@modelcontextprotocol/server-everything@2026.8.31"
TIME = "pypi:mcp-server-time==2026.10.19"
CREDENTIAL = "everything-credential-3f9a"
pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", params=["shared", "isolated"])
def everything(request) -> Iterator[Running]:
    if shutil.which("npx") is None:
        pytest.skip("needs node's npx")
    mode = ["--isolated"] if request.param == "isolated" else []
    credential = ["--env", f"EVERYTHING_API_KEY={CREDENTIAL}"]
    with running_stack(
        ["--package", EVERYTHING, "--timeout", "300", *credential, *mode]
    ) as running:
        yield running


@pytest.mark.parametrize("client_mode", ["default", "legacy"])
async def test_server_everything_through_the_gateway(everything, client_mode):
    progress: list[float] = []
    sampled: list[str] = []
    logged: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logged.append(str(params.data))

    async def on_progress(value, total, message) -> None:
        progress.append(value)

    async def sample(context, params):
        sampled.append(params.messages[0].content.text)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled!"), model="m"
        )

    async def elicit(context, params):
        return types.ElicitResult(action="decline")

    options = {"mode": "legacy"} if client_mode == "legacy" else {}
    async with sdk_client(
        everything,
        sampling_callback=sample,
        elicitation_callback=elicit,
        logging_callback=on_log,
        **options,
    ) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert {"echo", "get-sum", "trigger-long-running-operation"} <= tools
        echoed = await client.call_tool("echo", {"message": "via npx and the gateway"})
        assert "via npx and the gateway" in echoed.content[0].text
        await client.call_tool(
            "trigger-long-running-operation", {"duration": 1, "steps": 3},
            progress_callback=on_progress,
        )  # fmt: skip
        assert len(progress) == 3
        if "trigger-sampling-request" in tools:
            result = await client.call_tool("trigger-sampling-request", {"prompt": "hello"})
            assert sampled and "sampled!" in str(result.content)
        if "trigger-elicitation-request" in tools:
            result = await client.call_tool("trigger-elicitation-request", {})
            assert "decline" in str(result.content).lower()
        resources = (await client.list_resources()).resources
        read = await client.read_resource(str(resources[0].uri))
        assert read.contents
        prompt = await client.get_prompt("simple-prompt", {})
        assert prompt.messages
        completion = await client.complete(
            types.PromptReference(type="ref/prompt", name="completable-prompt"),
            {"name": "department", "value": "E"},
        )
        assert completion.completion.values
        # The first simulated log message is sent while the toggling call is in flight.
        await client.call_tool("toggle-simulated-logging", {})
        assert logged
        await client.call_tool("toggle-simulated-logging", {})
    assert {"trigger-sampling-request", "trigger-elicitation-request"} <= tools


async def test_server_everything_sees_its_own_credentials_and_nothing_of_catwalks(everything):
    async with sdk_client(everything) as client:
        text = (await client.call_tool("get-env", {})).content[0].text

    environment = json.loads(text[text.index("{") :])
    assert environment["EVERYTHING_API_KEY"] == CREDENTIAL
    assert environment["HOME"] == "/home/server"
    catwalk_names = {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "CATWALK_BRIDGE_SECRET"}
    assert not [
        name
        for name in environment
        if name in catwalk_names or name.startswith(("CATWALK_", "DJANGO_", "SANDBOX_"))
    ]
    stack_env = everything.stack.env
    for secret in (stack_env["SECRET_KEY"], stack_env["CATWALK_ENCRYPTION_KEYS"]):
        assert secret not in text


async def test_mcp_server_time_through_uvx_and_the_gateway():
    with running_stack(["--package", TIME, "--timeout", "300"]) as running:
        async with sdk_client(running) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            assert "get_current_time" in tools
            result = await client.call_tool("get_current_time", {"timezone": "Europe/Paris"})
            assert "Europe/Paris" in result.content[0].text
