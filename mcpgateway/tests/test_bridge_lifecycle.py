"""Child processes, sessions and the bridge itself over their lifetimes."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from mcpgateway.tests.conftest import FIXTURE_SERVER, MCP_ACCEPT, BridgeProcess

pytestmark = pytest.mark.anyio

JSON_HEADERS = {"accept": MCP_ACCEPT, "content-type": "application/json"}
Factory = Callable[..., BridgeProcess]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _initialize(request_id: Any = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"},
        },
    }


def _call(name: str, arguments: dict[str, Any], request_id: Any = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


async def _open_session(client: httpx.AsyncClient) -> dict[str, str]:
    response = await client.post("/mcp", json=_initialize(), headers=JSON_HEADERS)
    assert response.status_code == 200, response.text
    return {**JSON_HEADERS, "mcp-session-id": response.headers["mcp-session-id"]}


def _shell(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def _fixture_cmd() -> str:
    return " ".join(shlex.quote(part) for part in FIXTURE_SERVER)


def _recording_command(record: Path) -> list[str]:
    """The fixture server behind `tee`, so the test sees every line the child receives."""
    return _shell(f"tee -a {shlex.quote(str(record))} | {_fixture_cmd()}")


def _received(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]


def _is_alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"never happened: {what}")


async def test_child_crash_fails_the_call_at_once_and_the_bridge_restarts(bridge_factory: Factory):
    bridge = bridge_factory("--request-timeout", "120")
    first_pid = bridge.health()["child_pid"]
    async with bridge.http() as client:
        headers = await _open_session(client)
        crashed = await client.post("/mcp", json=_call("crash", {}), headers=headers)
        assert crashed.status_code == 200
        error = crashed.json()["error"]
        assert error["code"] == -32000 and "MCP server unavailable" in error["message"]
        # The session died with its child: the client must re-initialise.
        stale = await client.post("/mcp", json=_call("echo", {"message": "x"}), headers=headers)
        assert stale.status_code == 404
        health = bridge.wait_for_health(lambda h: h["status"] == "ok" and h["restarts"] == 1)
        assert health["child_pid"] != first_pid
        assert "crash tool called" in health["last_error"]
        fresh = await _open_session(client)
        answer = await client.post("/mcp", json=_call("echo", {"message": "again"}), headers=fresh)
    assert answer.json()["result"]["content"][0]["text"] == "again"


async def test_crash_loop_ends_in_crashed_status_with_the_last_error(bridge_factory: Factory):
    bridge = bridge_factory(
        command=[
            sys.executable,
            "-c",
            "import sys; print('boom: missing API_KEY', file=sys.stderr); sys.exit(2)",
        ],
        ready=lambda h: h["status"] == "crashed",
    )
    health = bridge.health()
    assert health["restarts"] == 4 and health["child_pid"] is None
    assert "boom: missing API_KEY" in health["last_error"]
    async with bridge.http() as client:
        response = await client.post("/mcp", json=_initialize(), headers=JSON_HEADERS)
    assert response.status_code == 503
    assert "boom: missing API_KEY" in response.json()["error"]["message"]


async def test_request_timeout_answers_an_error_and_cancels_at_the_child(
    bridge_factory: Factory, tmp_path: Path
):
    record = tmp_path / "received.jsonl"
    bridge = bridge_factory("--request-timeout", "0.5", command=_recording_command(record))
    async with bridge.http() as client:
        headers = await _open_session(client)
        response = await client.post(
            "/mcp", json=_call("sleep", {"seconds": 30}, "slow"), headers=headers
        )
        assert response.json()["id"] == "slow"
        assert response.json()["error"]["code"] == -32001
        quick = await client.post("/mcp", json=_call("echo", {"message": "alive"}), headers=headers)
        assert quick.json()["result"]["content"][0]["text"] == "alive"
    sleep_call = next(m for m in _received(record) if m.get("params", {}).get("name") == "sleep")
    cancels = [m for m in _received(record) if m.get("method") == "notifications/cancelled"]
    assert [c["params"]["requestId"] for c in cancels] == [sleep_call["id"]]


async def test_client_disconnect_mid_call_cancels_it_at_the_child(
    bridge_factory: Factory, tmp_path: Path
):
    record = tmp_path / "received.jsonl"
    bridge = bridge_factory(command=_recording_command(record))
    async with bridge.http() as client:
        headers = await _open_session(client)
    async with bridge.http() as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(
                "/mcp", json=_call("sleep", {"seconds": 30}), headers=headers, timeout=1.0
            )

    def cancelled() -> bool:
        return any(m.get("method") == "notifications/cancelled" for m in _received(record))

    _wait_until(cancelled, "notifications/cancelled reached the child")


async def test_idle_sessions_are_reaped(bridge_factory: Factory):
    bridge = bridge_factory("--session-idle-timeout", "0.3")
    async with bridge.http() as client:
        headers = await _open_session(client)
        bridge.wait_for_health(lambda h: h["sessions"] == 0)
        response = await client.post("/mcp", json=_call("echo", {"message": "x"}), headers=headers)
    assert response.status_code == 404


async def test_shared_mode_evicts_the_least_recently_used_session_at_the_cap(
    bridge_factory: Factory,
):
    bridge = bridge_factory("--max-sessions", "2")
    async with bridge.http() as client:
        first = await _open_session(client)
        second = await _open_session(client)
        await client.post("/mcp", json=_call("echo", {"message": "x"}), headers=first)
        await _open_session(client)
        evicted = await client.post("/mcp", json=_call("echo", {"message": "x"}), headers=second)
        kept = await client.post("/mcp", json=_call("echo", {"message": "x"}), headers=first)
    assert evicted.status_code == 404
    assert kept.status_code == 200


async def test_isolated_mode_refuses_sessions_beyond_the_cap(bridge_factory: Factory):
    bridge = bridge_factory("--mode", "isolated", "--max-sessions", "1")
    async with bridge.http() as client:
        headers = await _open_session(client)
        refused = await client.post("/mcp", json=_initialize(), headers=JSON_HEADERS)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == -32005
        await client.delete("/mcp", headers={"mcp-session-id": headers["mcp-session-id"]})
        await _open_session(client)


async def test_isolated_sessions_get_their_own_child_killed_on_delete(bridge_factory: Factory):
    bridge = bridge_factory("--mode", "isolated")
    bridge_process = psutil.Process(bridge.proc.pid)
    async with bridge.http() as client:
        one = await _open_session(client)
        two = await _open_session(client)
        children = bridge_process.children()
        assert len(children) == 2
        await client.delete("/mcp", headers={"mcp-session-id": one["mcp-session-id"]})
        _wait_until(
            lambda: sum(_is_alive(child) for child in children) == 1,
            "exactly the deleted session's child exited",
        )
        still = await client.post("/mcp", json=_call("echo", {"message": "two"}), headers=two)
    assert still.json()["result"]["content"][0]["text"] == "two"


async def test_child_dying_in_isolated_mode_ends_only_its_session(bridge_factory: Factory):
    bridge = bridge_factory("--mode", "isolated")
    async with bridge.http() as client:
        one = await _open_session(client)
        two = await _open_session(client)
        crashed = await client.post("/mcp", json=_call("crash", {}), headers=one)
        assert crashed.json()["error"]["code"] == -32000
        assert (
            await client.post("/mcp", json=_call("echo", {"message": "x"}), headers=one)
        ).status_code == 404
        assert (
            await client.post("/mcp", json=_call("echo", {"message": "x"}), headers=two)
        ).status_code == 200


async def test_child_gets_the_environment_minus_bridge_settings(bridge_factory: Factory):
    env = {
        **os.environ,
        "CATWALK_BRIDGE_SECRET": "do-not-leak",
        "CATWALK_BRIDGE_OTHER": "x",
        "DEPLOYMENT_TOKEN": "t0k",
    }
    bridge = bridge_factory(env=env)
    async with bridge.http(**{"x-catwalk-bridge-secret": "do-not-leak"}) as client:
        headers = await _open_session(client)
        response = await client.post("/mcp", json=_call("get-env", {}), headers=headers)
    child_env = json.loads(response.json()["result"]["content"][0]["text"])
    assert child_env["DEPLOYMENT_TOKEN"] == "t0k"
    assert not [name for name in child_env if name.startswith("CATWALK_BRIDGE_")]


async def test_non_json_stdout_goes_to_the_log_not_to_clients(bridge_factory: Factory):
    bridge = bridge_factory(
        command=_shell(f"echo 'Server starting on stdio...'; exec {_fixture_cmd()}")
    )
    async with bridge.http() as client:
        headers = await _open_session(client)
        answer = await client.post(
            "/mcp", json=_call("echo", {"message": "clean"}), headers=headers
        )
        logs = (await client.get("/logs", params={"lines": "50"})).json()["lines"]
    assert answer.json()["result"]["content"][0]["text"] == "clean"
    assert "[stdout] Server starting on stdio..." in logs


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_the_bridge_and_every_descendant(
    bridge_factory: Factory, sig: signal.Signals
):
    """Includes a grandchild that ignores SIGTERM, like a stubborn helper process."""
    script = f"(trap '' TERM; sleep 300) & exec {_fixture_cmd()}"
    bridge = bridge_factory(command=_shell(script), unix_socket=True)
    with bridge.sync_http() as client:
        assert client.get("/healthz").json()["status"] == "ok"
    descendants = bridge.snapshot_descendants()
    assert len(descendants) >= 2
    code = bridge.stop(sig)
    assert code in (0, -sig)
    assert bridge.surviving_descendants() == []
    assert not os.path.exists(bridge.listen.removeprefix("unix:"))


def test_unix_socket_is_owner_only(bridge_factory: Factory):
    bridge = bridge_factory(unix_socket=True)
    mode = os.stat(bridge.listen.removeprefix("unix:")).st_mode & 0o777
    assert mode == 0o600


def test_bad_command_line_is_a_usage_error():
    import subprocess

    with tempfile.TemporaryDirectory() as workdir:
        result = subprocess.run(
            [sys.executable, "-m", "mcpgateway.bridge", "--listen", "udp:1", "--", "true"],
            capture_output=True,
            cwd=Path(__file__).resolve().parents[2],
            timeout=30,
            check=False,
        )
        missing = subprocess.run(
            [sys.executable, "-m", "mcpgateway.bridge", "--listen", f"unix:{workdir}/s"],
            capture_output=True,
            cwd=Path(__file__).resolve().parents[2],
            timeout=30,
            check=False,
        )
    assert result.returncode == 2 and b"unix:PATH or tcp:HOST:PORT" in result.stderr
    assert missing.returncode == 2 and b"command is missing" in missing.stderr
