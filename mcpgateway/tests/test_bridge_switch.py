"""A redeploy inside the bridge: new sessions go to the new version once it answers, open ones
finish on the old one, and a new version that fails changes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from mcpgateway.bridge.app import SWITCH_PATH
from mcpgateway.tests.conftest import FIXTURE_SERVER, MCP_ACCEPT, BridgeProcess

pytestmark = pytest.mark.anyio

JSON_HEADERS = {"accept": MCP_ACCEPT, "content-type": "application/json"}
Factory = Callable[..., BridgeProcess]
VERSION_TWO = ["env", "CATWALK_TEST_VERSION=2", *FIXTURE_SERVER]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def message(method: str, params: dict[str, Any], request_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


async def open_session(client: httpx.AsyncClient) -> dict[str, str]:
    response = await client.post(
        "/mcp",
        json=message(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        ),
        headers=JSON_HEADERS,
    )
    assert response.status_code == 200, response.text
    headers = {**JSON_HEADERS, "mcp-session-id": response.headers["mcp-session-id"]}
    await client.post(
        "/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
    )
    return headers


async def version_of(client: httpx.AsyncClient, session: dict[str, str]) -> str | None:
    answer = await client.post(
        "/mcp", json=message("tools/call", {"name": "get-env", "arguments": {}}), headers=session
    )
    assert answer.status_code == 200, answer.text
    environment = json.loads(answer.json()["result"]["content"][0]["text"])
    return environment.get("CATWALK_TEST_VERSION")


@pytest.mark.parametrize("mode", ["shared", "isolated"])
async def test_new_sessions_get_the_new_version_and_open_ones_keep_the_old(
    bridge_factory: Factory, mode: str
):
    bridge = bridge_factory("--mode", mode)
    async with bridge.http() as client:
        before = await open_session(client)
        assert await version_of(client, before) is None

        switched = await client.post(SWITCH_PATH, json={"command": VERSION_TWO, "grace": 60})

        assert switched.status_code == 200, switched.text
        after = await open_session(client)
        assert await version_of(client, after) == "2"
        assert await version_of(client, before) is None  # still served by the old version
        if mode == "shared":
            assert bridge.health()["draining"] == 1
            await client.delete("/mcp", headers=before)
            bridge.wait_for_health(lambda health: health["draining"] == 0)


async def test_the_old_version_stops_when_the_grace_period_ends(bridge_factory: Factory):
    bridge = bridge_factory("--mode", "shared")
    async with bridge.http() as client:
        before = await open_session(client)
        old_pid = bridge.health()["child_pid"]

        assert (
            await client.post(SWITCH_PATH, json={"command": VERSION_TWO, "grace": 0.5})
        ).is_success

        bridge.wait_for_health(lambda health: health["draining"] == 0)
        assert bridge.health()["child_pid"] != old_pid
        ended = await client.post(
            "/mcp",
            json=message("tools/call", {"name": "echo", "arguments": {"message": "x"}}),
            headers=before,
        )
        assert ended.status_code == 404  # its session ended with the old version


async def test_a_new_version_that_fails_to_start_changes_nothing(bridge_factory: Factory):
    bridge = bridge_factory("--mode", "shared")
    async with bridge.http() as client:
        session = await open_session(client)
        pid = bridge.health()["child_pid"]

        refused = await client.post(
            SWITCH_PATH,
            json={"command": ["/bin/sh", "-c", "echo 'boom: bad build' >&2; exit 3"], "grace": 5},
        )

        assert refused.status_code == 409
        assert "boom: bad build" in refused.json()["error"]
        assert bridge.health()["child_pid"] == pid
        assert await version_of(client, session) is None
        fresh = await open_session(client)
        assert await version_of(client, fresh) is None


@pytest.mark.parametrize(
    "body",
    [{}, {"command": []}, {"command": "python"}, {"command": ["x"], "grace": -1}],
)
async def test_a_malformed_switch_is_refused(bridge_factory: Factory, body: dict):
    bridge = bridge_factory("--mode", "shared")
    async with bridge.http() as client:
        response = await client.post(SWITCH_PATH, json=body)
    assert response.status_code == 400
