"""Fixtures for the bridge tests: the real bridge as a subprocess on a unix socket."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import httpx2
import mcp_types as types
import psutil
import pytest
from mcp.client.client import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_SERVER = [sys.executable, "-m", "mcpgateway.fixture_server"]
MCP_ACCEPT = "application/json, text/event-stream"
START_TIMEOUT_SECONDS = 60.0


@dataclass
class BridgeProcess:
    """A running bridge and the helpers to talk to it."""

    proc: subprocess.Popen[bytes]
    listen: str
    workdir: str
    stderr_path: Path
    stopped: bool = False
    descendants: list[psutil.Process] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return "http://" + self.listen.removeprefix("tcp:")

    @property
    def socket_path(self) -> str | None:
        return self.listen.removeprefix("unix:") if self.listen.startswith("unix:") else None

    def _transport_options(self) -> dict[str, Any]:
        if self.socket_path is not None:
            return {
                "transport": httpx.HTTPTransport(uds=self.socket_path),
                "base_url": "http://bridge",
            }
        return {"base_url": self.base_url}

    def http(self, **headers: str) -> httpx.AsyncClient:
        """A raw async HTTP client (TCP bridges only)."""
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30)

    def sync_http(self, **headers: str) -> httpx.Client:
        """A raw blocking HTTP client, on TCP or on the unix socket."""
        return httpx.Client(headers=headers, timeout=30, **self._transport_options())

    def health(self) -> dict[str, Any]:
        with self.sync_http() as client:
            return client.get("/healthz").json()

    def wait_for_health(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Poll /healthz until `predicate` holds (fails the test after a generous bound)."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"bridge exited early: {self.stderr_path.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                last = self.health()
                if predicate(last):
                    return last
            time.sleep(0.05)
        pytest.fail(f"bridge health never matched; last was {last}")

    def snapshot_descendants(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.NoSuchProcess):
            self.descendants = psutil.Process(self.proc.pid).children(recursive=True)
        return self.descendants

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Signal the bridge to stop; returns its exit status. Records descendants first."""
        if self.stopped:
            return self.proc.returncode
        self.snapshot_descendants()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.stopped = True
        return code

    def surviving_descendants(self) -> list[psutil.Process]:
        """Descendants recorded at stop time that are still running (not zombies reaped)."""
        _, alive = psutil.wait_procs(self.descendants, timeout=5)
        return [p for p in alive if _is_running(p)]


def _is_running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _status_ok(health: dict[str, Any]) -> bool:
    return health["status"] == "ok"


def start_bridge(
    *args: str,
    command: Sequence[str] = FIXTURE_SERVER,
    env: dict[str, str] | None = None,
    ready: Callable[[dict[str, Any]], bool] = _status_ok,
    unix_socket: bool = False,
) -> BridgeProcess:
    """Start `python -m mcpgateway.bridge` and wait until its health matches `ready`.

    TCP on an ephemeral loopback port by default: anyio's unix-socket streams (under
    the SDK's httpx2 client) race on cancellation and log spurious loop errors.
    """
    # Unix socket paths are limited to ~107 bytes: keep them short.
    workdir = tempfile.mkdtemp(prefix="cwb", dir="/tmp")
    listen = f"unix:{os.path.join(workdir, 's')}" if unix_socket else "tcp:127.0.0.1:0"
    stderr_path = Path(workdir) / "bridge.stderr"
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("PYTHONPATH", str(REPO_ROOT))
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mcpgateway.bridge",
                "--listen",
                listen,
                "--stderr-log",
                os.path.join(workdir, "child.log"),
                *args,
                "--",
                *command,
            ],
            cwd=REPO_ROOT,
            env=child_env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        bridge = BridgeProcess(proc, _announced_address(proc, stderr_path), workdir, stderr_path)
        bridge.wait_for_health(ready)
    except BaseException:
        # Never leave a half-started bridge (and its children) behind a failed test.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    return bridge


def _announced_address(proc: subprocess.Popen[bytes], stderr_path: Path) -> str:
    """The address from the bridge's "listening on ADDRESS" line."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        for line in stderr_path.read_text().splitlines():
            if line.startswith("catwalk-bridge listening on "):
                return line.rsplit(" ", 1)[1]
        if proc.poll() is not None:
            pytest.fail(f"bridge exited early: {stderr_path.read_text()}")
        time.sleep(0.02)
    pytest.fail("bridge never announced its address")


@pytest.fixture
def bridge_factory() -> Iterator[Callable[..., BridgeProcess]]:
    """Start bridges for one test; all are stopped afterwards and must leave no process behind."""
    started: list[BridgeProcess] = []

    def factory(*args: str, **kwargs: Any) -> BridgeProcess:
        bridge = start_bridge(*args, **kwargs)
        started.append(bridge)
        return bridge

    yield factory
    for bridge in started:
        retire(bridge)


@contextlib.contextmanager
def module_bridge(*args: str, **kwargs: Any) -> Iterator[BridgeProcess]:
    """A bridge shared by a module's tests (same no-orphan check at the end)."""
    bridge = start_bridge(*args, **kwargs)
    try:
        yield bridge
    finally:
        retire(bridge)


def retire(bridge: BridgeProcess) -> None:
    """Stop a bridge, remove its folder, and fail if any process it started outlived it."""
    bridge.stop()
    survivors = bridge.surviving_descendants()
    for process in survivors:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    shutil.rmtree(bridge.workdir, ignore_errors=True)
    assert not survivors, f"processes outlived the bridge: {survivors}"


@pytest.fixture(scope="module")
def bridge_shared() -> Iterator[BridgeProcess]:
    with module_bridge("--mode", "shared") as bridge:
        yield bridge


@pytest.fixture(scope="module")
def bridge_isolated() -> Iterator[BridgeProcess]:
    with module_bridge("--mode", "isolated") as bridge:
        yield bridge


@pytest.fixture(params=["shared", "isolated"])
def bridge_any_mode(
    request: pytest.FixtureRequest, bridge_shared: BridgeProcess, bridge_isolated: BridgeProcess
) -> BridgeProcess:
    return bridge_shared if request.param == "shared" else bridge_isolated


def sdk_http_factory(extra_headers: dict[str, str]) -> Callable[..., httpx2.AsyncClient]:
    def factory(
        headers: dict[str, str] | None = None,
        timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
    ) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            headers={**(headers or {}), **extra_headers},
            timeout=timeout or httpx2.Timeout(30, read=120),
            auth=auth,
        )

    return factory


@contextlib.asynccontextmanager
async def bridge_sdk_client(
    bridge: BridgeProcess,
    *,
    legacy_sse: bool = False,
    headers: dict[str, str] | None = None,
    **client_options: Any,
) -> AsyncIterator[Client]:
    """The real `mcp` SDK client connected to the bridge (Streamable HTTP or legacy SSE)."""
    factory = sdk_http_factory(headers or {})
    if legacy_sse:
        client_options.setdefault("mode", "legacy")
        async with Client(
            sse_client(f"{bridge.base_url}/sse", httpx_client_factory=factory), **client_options
        ) as client:
            yield client
        return
    async with (
        factory() as http_client,
        Client(
            streamable_http_client(f"{bridge.base_url}/mcp", http_client=http_client),
            **client_options,
        ) as client,
    ):
        yield client


async def check_fixture_resources_prompts_completion(client: Client) -> None:
    """What the fixture server offers besides tools, checked the same way at every layer."""
    read = await client.read_resource("test://static-text")
    assert read.contents[0].text
    prompt = await client.get_prompt("test_prompt_with_arguments", {"arg1": "a", "arg2": "b"})
    assert prompt.messages
    completion = await client.complete(
        types.PromptReference(type="ref/prompt", name="test_prompt_with_arguments"),
        {"name": "arg1", "value": "par"},
    )
    assert "paris" in completion.completion.values
