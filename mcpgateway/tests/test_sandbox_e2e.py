"""A hostile MCP server deployed on a whole Catwalk, beside an innocent one.

The throwaway stack (supervisor, uvicorn gateway, SQLite, keys in a file) runs two deployments:
the fixture server and `mcpgateway.hostile_server`. The hostile one tries, on start and in a
tool call, to read Catwalk's secrets and other processes', reach the host's services and write
outside its folder; then it blows its memory, process and disk limits. Every attempt must fail,
each blown limit must mark it crashed with the reason, and all the while the innocent
deployment and the host keep answering through the gateway.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from deployments.runtimes import sandbox
from mcpgateway.stack import ROOT, Stack, free_port
from mcpgateway.tests.test_gateway_e2e import Running, deploy_args, sdk_client

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
HOSTILE = [sys.executable, "-m", "mcpgateway.hostile_server"]
LIMITS = {"SANDBOX_MEMORY_MB": "256", "SANDBOX_DISK_MB": "64", "SANDBOX_MAX_PROCESSES": "64"}


if not sandbox.check().enabled:
    pytestmark.append(pytest.mark.skip(reason=f"no sandbox: {sandbox.check().problem}"))


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def listener() -> Iterator[tuple[int, list[socket.socket]]]:
    """A service on all the host's interfaces, as a database or admin port would be."""
    server = socket.create_server(("0.0.0.0", 0))  # noqa: S104 - the point of the test
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1], accepted
    server.close()


def reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return False
    return True


def host_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("203.0.113.1", 9))  # picks the outgoing address; sends nothing
        return probe.getsockname()[0]


class Site:
    """The stack with both deployments, and what the attacks aim at."""

    def __init__(self, stack: Stack, port: int, innocent: dict, hostile: dict, keys: Path):
        self.stack, self.port, self.keys = stack, port, keys
        self.innocent = Running(stack, innocent, port, "shared")
        self.hostile = Running(stack, hostile, port, "shared")
        self.database = stack.data_dir / "catwalk.sqlite3"

    def query(self, sql: str, *params: object) -> list[tuple]:
        with contextlib.closing(sqlite3.connect(self.database, timeout=10)) as connection:
            return connection.execute(sql, params).fetchall()

    def status(self, deployment: Running) -> tuple[str, str]:
        deployment_id = deployment.deployed["id"].replace("-", "")
        rows = self.query(
            "SELECT status, status_detail FROM deployments_deployment WHERE id = ?", deployment_id
        )
        return rows[0]

    def wait_for(self, deployment: Running, status: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current, detail = self.status(deployment)
            if current == status:
                return detail
            time.sleep(0.2)
        raise AssertionError(f"stayed {current} ({detail}), wanted {status}")


@pytest.fixture(scope="module")
def site(listener) -> Iterator[Site]:
    data_dir = Path(tempfile.mkdtemp(prefix="catwalk-sbx-"))
    port = free_port()
    stack = Stack(data_dir, "uvicorn", port)
    keys = data_dir / "encryption.keys"
    keys.write_text(stack.env.pop("CATWALK_ENCRYPTION_KEYS"))
    keys.chmod(0o600)
    stack.env["CATWALK_ENCRYPTION_KEYS_FILE"] = str(keys)
    stack.env.update(LIMITS)
    try:
        innocent = stack.start(deploy_args("--name", "innocent"))
        socket_path = data_dir / "run" / innocent["id"] / "bridge.sock"
        assert socket_path.exists()
        listener_port, _ = listener
        targets = {
            "HOSTILE_FILES": [
                str(keys),
                str(data_dir / "catwalk.sqlite3"),
                str(data_dir / "run" / innocent["id"] / "sandbox.json"),
                "/etc/shadow",
                "/root/.bashrc",
                f"/proc/{os.getpid()}/environ",
            ],
            "HOSTILE_DIRS": [str(data_dir), str(data_dir / "run")],
            "HOSTILE_TCP": [
                "127.0.0.1:5432",
                "127.0.0.1:6379",
                "127.0.0.1:8000",
                f"127.0.0.1:{port}",
                f"10.0.2.2:{port}",
                f"{host_address()}:{listener_port}",
                f"{host_address()}:{port}",
                "169.254.169.254:80",
            ],
            "HOSTILE_UNIX": [str(socket_path)],
            "HOSTILE_WRITES": [
                str(data_dir / "owned"),
                str(ROOT / "mcpgateway" / "owned"),
                "/usr/local/owned",
                "/etc/owned",
            ],
        }
        # Only targets that are really there from the host's side: a refusal inside proves the
        # sandbox, not an absent file or a port nobody listens on.
        targets["HOSTILE_FILES"] = [p for p in targets["HOSTILE_FILES"] if os.path.exists(p)]
        targets["HOSTILE_TCP"] = [
            address
            for address in targets["HOSTILE_TCP"]
            if not address.startswith("127.") or reachable(address)
        ]
        assert {str(keys), "/etc/shadow"} <= set(targets["HOSTILE_FILES"])
        assert {"127.0.0.1:5432", "127.0.0.1:6379", f"127.0.0.1:{port}"} <= set(
            targets["HOSTILE_TCP"]
        ), "PostgreSQL, Redis and the gateway must listen on the host for this test to mean it"
        hostile_args = [
            "--name", "hostile", "--package", "pypi:catwalk-hostile",
            "--entry", HOSTILE[0], *(f"--arg={arg}" for arg in HOSTILE[1:]),
            "--env", f"PYTHONPATH={ROOT}",
            *(f"--env={name}={','.join(values)}" for name, values in targets.items()),
        ]  # fmt: skip
        hostile = json.loads(
            stack.manage("mcp_deploy", "--user", "stack", *hostile_args).strip().splitlines()[-1]
        )
        yield Site(stack, port, innocent, hostile, keys)
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


class Watch:
    """Calls the innocent deployment and the host's health check every 100 ms meanwhile."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.answers = 0
        self.failures: list[str] = []

    async def run(self, stop: anyio.Event) -> None:
        async with (
            sdk_client(self.site.innocent) as client,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.site.port}") as http,
        ):
            while not stop.is_set():
                try:
                    echoed = await client.call_tool("echo", {"message": "still here"})
                    health = await http.get("/healthz", headers={"Host": "localhost"})
                    assert "still here" in echoed.content[0].text, echoed
                    assert health.status_code == 200, health.text
                    self.answers += 1
                except Exception as exc:  # every failure is recorded
                    self.failures.append(repr(exc))
                await anyio.sleep(0.1)


async def call_hostile(site: Site, tool: str) -> str:
    """Call a tool of the hostile server in a session of its own; its text or the error."""
    try:
        async with sdk_client(site.hostile) as client:
            result = await client.call_tool(tool, {})
            return result.content[0].text if result.content else repr(result)
    except Exception as exc:  # a server that dies mid-call is expected
        return f"call failed: {exc!r}"


def assert_all_refused(report: dict) -> None:
    succeeded = [r for r in report["results"] if not r["outcome"].startswith("refused")]
    assert succeeded == [], succeeded
    # Addresses beyond the sandbox's own loopback are refused by its firewall (ICMP
    # admin-prohibited: "No route to host"), not merely found closed.
    beyond = [
        r
        for r in report["results"]
        if r["target"][:1].isdigit() and not r["target"].startswith("127.")
    ]
    assert beyond and all("No route to host" in r["outcome"] for r in beyond), beyond
    assert report["uid"] >= 200_000
    # Its own PID namespace: bubblewrap's reaper and the server (and nothing of the host's).
    assert len(report["visible_pids"]) <= 3, report["visible_pids"]


async def test_every_attack_fails_on_start_and_in_a_tool_call(site, listener):
    _, accepted = listener
    watch = Watch(site)
    stop = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(watch.run, stop)
        startup = json.loads(await call_hostile(site, "startup-report"))
        in_call = json.loads(await call_hostile(site, "attack"))
        await anyio.sleep(1)
        stop.set()

    for report in (startup, in_call):
        assert_all_refused(report)
        assert len(report["results"]) >= 20
    assert accepted == []
    assert not (site.stack.data_dir / "owned").exists()
    assert not (ROOT / "mcpgateway" / "owned").exists()
    assert watch.failures == [] and watch.answers >= 5


async def test_public_egress_still_works_from_inside(site):
    async with sdk_client(site.hostile) as client:
        result = await client.call_tool("fetch", {"url": "https://registry.npmjs.org/is-number"})

    assert result.content[0].text.startswith("200 "), result


@pytest.mark.parametrize(
    ("tool", "limit"),
    [
        ("allocate", "memory limit (256 MiB) reached"),
        ("fork-bomb", "process limit (64 processes) reached"),
        ("fill-disk", "disk limit (64 MiB) reached"),
    ],
)
async def test_a_blown_limit_marks_it_crashed_with_the_reason_and_others_keep_serving(
    site, tool, limit
):
    site.wait_for(site.hostile, "running")
    watch = Watch(site)
    stop = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(watch.run, stop)
        outcome = await call_hostile(site, tool)
        detail = await anyio.to_thread.run_sync(site.wait_for, site.hostile, "crashed")
        await anyio.to_thread.run_sync(site.wait_for, site.hostile, "running")
        stop.set()

    assert "call failed" in outcome or "unavailable" in outcome, outcome
    assert f"The MCP server was stopped by its sandbox: {limit}." in detail
    events = site.query("SELECT message FROM deployments_deploymentevent")
    assert any(limit in message for (message,) in events)
    assert watch.failures == [] and watch.answers >= 5


async def test_the_innocent_deployment_is_unharmed_and_its_secrets_are_its_own(site):
    innocent_status, _ = site.status(site.innocent)
    async with sdk_client(site.innocent) as client:
        text = (await client.call_tool("get-env", {})).content[0].text

    environment = json.loads(text)
    assert innocent_status == "running"
    assert not any(name.startswith("HOSTILE_") for name in environment)
    assert site.keys.read_text() not in text
    assert environment["HOME"] == "/home/server"
