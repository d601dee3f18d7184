"""The bridge in front of a real third-party server: npm's server-everything via npx."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable

import pytest

from mcpgateway.tests.conftest import BridgeProcess, bridge_sdk_client

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("npx") is None, reason="needs node's npx"),
]

EVERYTHING = ["npx", "-y", "@modelcontextprotocol/server-everything"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_npx_server_through_the_bridge_leaks_nothing_and_leaves_no_process(
    bridge_factory: Callable[..., BridgeProcess],
):
    env = {**os.environ, "CATWALK_BRIDGE_SECRET": "hidden", "SERVICE_API_KEY": "visible"}
    bridge = bridge_factory(command=EVERYTHING, env=env)
    headers = {"x-catwalk-bridge-secret": "hidden"}
    async with bridge_sdk_client(bridge, headers=headers) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"echo", "get-sum", "get-env"} <= names
        echoed = await client.call_tool("echo", {"message": "via npx"})
        assert "via npx" in echoed.content[0].text
        total = await client.call_tool("get-sum", {"a": 2, "b": 40})
        assert "42" in total.content[0].text
        env_text = (await client.call_tool("get-env", {})).content[0].text
    child_env = json.loads(env_text[env_text.index("{") :])
    assert child_env.get("SERVICE_API_KEY") == "visible"
    assert "CATWALK_BRIDGE_SECRET" not in child_env
    # npx runs the server as a grandchild: stopping must reach it too.
    assert len(bridge.snapshot_descendants()) >= 2
    bridge.stop()
    assert bridge.surviving_descendants() == []
