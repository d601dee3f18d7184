"""The Fly runtime end to end: a whole Catwalk (gateway under uvicorn, a Celery worker on a real
Redis broker) deploys server-everything to the Fly stand-in, whose machines run the runner
(bridge and npx package, sandboxed) and whose proxy wakes stopped machines, as Fly's does.

deploy (`mcp_deploy --runtime fly`) → running → the SDK client calls `echo` through the gateway
→ idle until the stand-in stops the machine → the reconciler (through Celery) marks it sleeping
→ the next request wakes it → `get-env` shows the credentials and nothing else → the owner
stops it (requests get 503) → deleting it leaves nothing behind on "Fly".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from deployments.runtimes import sandbox
from deployments.tests.fly_standin import FlyStandin
from mcpgateway.access import ACCESS_CACHE_SECONDS
from mcpgateway.stack import Stack, free_port
from mcpgateway.tests.conftest import sdk_http_factory

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

EVERYTHING = "npm:@modelcontextprotocol/server-everything@2026.8.31"
CREDENTIAL = "fly-e2e-credential-3c9f51"
# Its own Redis database, so no other test's tasks (or leftovers) meet this worker.
REDIS_DB = 9


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def redis_url() -> str:
    base = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    parts = urlsplit(base)
    url = urlunsplit((parts.scheme, parts.netloc, f"/{REDIS_DB}", "", ""))
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.flushdb()
        client.close()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is needed for the Fly end-to-end test: {exc}")
        pytest.skip(f"needs Redis: {exc}")
    return url


class Catwalk:
    def __init__(self, stack: Stack, standin: FlyStandin, port: int) -> None:
        self.stack, self.standin, self.port = stack, standin, port
        self.database = stack.data_dir / "catwalk.sqlite3"

    def row(self, deployment_id: str, columns: str = "status, status_detail") -> tuple:
        with contextlib.closing(sqlite3.connect(self.database, timeout=30)) as db:
            found = db.execute(
                f"SELECT {columns} FROM deployments_deployment WHERE id = ?",  # noqa: S608
                (uuid.UUID(deployment_id).hex,),
            ).fetchone()
        return found

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen:\n{self.stack.logs(last=40)}")
            time.sleep(0.3)

    def shell(self, code: str) -> None:
        self.stack.manage("shell", "-c", f"from deployments import services, tasks\n{code}")


@pytest.fixture(scope="module")
def catwalk() -> Iterator[Catwalk]:
    if shutil.which("npx") is None:
        pytest.skip("needs node's npx")
    if not sandbox.check().enabled:
        if os.environ.get("CI"):
            pytest.fail(f"the runner's sandbox cannot run here: {sandbox.check().problem}")
        pytest.skip(f"the runner's sandbox cannot run here: {sandbox.check().problem}")
    broker = redis_url()
    data_dir = Path(tempfile.mkdtemp(prefix="catwalk-fly-e2e-"))
    port = free_port()
    with FlyStandin(org_slug="acme", idle_stop_seconds=4, proxy_start_timeout=240) as standin:
        stack = Stack(data_dir, "uvicorn", port)
        stack.env.update(
            {
                "REDIS_URL": broker,
                "FLY_API_URL": standin.api_url,
                "FLY_LOGS_API_URL": standin.logs_api_url,
                "FLY_RELAY_URL": standin.proxy_url + "/{app}",
                "FLY_API_TOKEN": standin.token,
                "FLY_ORG": "acme",
                "FLY_REGION": "ams",
                "FLY_RUNNER_IMAGE": "registry.fly.io/catwalk-runner:test",
                "FLY_API_BACKOFF_SECONDS": "0.05",
                "FLY_START_TIMEOUT_SECONDS": "300",
                # No supervisor runs: this Catwalk offers Fly alone.
                "LOCAL_RUNTIME_ENABLED": "false",
            }
        )
        try:
            stack.prepare()
            stack.manage(
                "shell",
                "-c",
                "from django.contrib.auth import get_user_model;"
                "get_user_model().objects.create_user('stack', 'stack@example.com', 'x' * 20)",
            )
            stack.start_worker()
            stack.serve()
            yield Catwalk(stack, standin, port)
        finally:
            stack.stop()
            shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def sdk_client(url: str, token: str) -> AsyncIterator[Client]:
    factory = sdk_http_factory({"Authorization": f"Bearer {token}"})
    async with (
        factory() as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


async def test_a_fly_deployment_from_deploy_to_teardown(catwalk):
    deployed = json.loads(
        catwalk.stack.manage(
            "mcp_deploy",
            "--user",
            "stack",
            "--package",
            EVERYTHING,
            "--runtime",
            "fly",
            "--env",
            f"EVERYTHING_API_KEY={CREDENTIAL}",
            "--timeout",
            "300",
            timeout=400,
        )
        .strip()
        .splitlines()[-1]
    )
    deployment_id, token = deployed["id"], deployed["token"]
    url = f"http://127.0.0.1:{catwalk.port}/mcp/{deployment_id}"
    assert catwalk.row(deployment_id)[0] == "running"
    (app,) = catwalk.standin.apps()
    assert len(catwalk.standin.machines(app)) == 1

    async with sdk_client(url, token) as client:
        echoed = await client.call_tool("echo", {"message": "hello fly"})
    assert "hello fly" in echoed.content[0].text

    # Idle: Fly's proxy stops the machine; the scheduled reconcile (run here by hand, through
    # Celery) sees it and the deployment sleeps.
    catwalk.wait_for(
        "the idle machine stopping",
        lambda: catwalk.standin.machines(app)[0]["state"] == "stopped",
    )
    catwalk.shell("tasks.fly_reconcile_all.delay()")
    catwalk.wait_for("status sleeping", lambda: catwalk.row(deployment_id)[0] == "sleeping")

    # The next request wakes it through the proxy; the credentials and nothing else reach it.
    async with sdk_client(url, token) as client:
        text = (await client.call_tool("get-env", {})).content[0].text
    environment = json.loads(text[text.index("{") :])
    assert environment["EVERYTHING_API_KEY"] == CREDENTIAL
    assert environment["HOME"] == "/home/server"  # the sandbox's, as on a Catwalk host
    leaked = [name for name in environment if name.startswith(("FLY_", "CATWALK_"))]
    assert not leaked, leaked
    relay_secret = catwalk.standin.secrets(app)["CATWALK_BRIDGE_SECRET"]
    assert relay_secret not in text
    assert catwalk.standin.machines(app)[0]["state"] == "started"
    catwalk.wait_for("status running again", lambda: catwalk.row(deployment_id)[0] == "running")

    # The owner stops it: the machine stops and the endpoint answers 503.
    catwalk.shell(
        f"from deployments.models import Deployment\n"
        f"services.stop_deployment(Deployment.objects.get(pk='{deployment_id}'))"
    )
    catwalk.wait_for("status stopped", lambda: catwalk.row(deployment_id)[0] == "stopped")
    assert catwalk.standin.machines(app)[0]["state"] == "stopped"
    # Each gateway process sees the change once its cached view of the deployment expires.
    time.sleep(ACCESS_CACHE_SECONDS + 0.5)
    answer = httpx.post(
        url,
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, text/event-stream",
        },
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        timeout=30,
    )
    assert answer.status_code == 503, answer.text
    assert catwalk.standin.machines(app)[0]["state"] == "stopped"

    # Deleting it tears down machine and app.
    catwalk.shell(
        f"from deployments.models import Deployment\n"
        f"services.delete_deployment(Deployment.objects.get(pk='{deployment_id}'))"
    )
    catwalk.wait_for("the app being destroyed", lambda: catwalk.standin.apps() == [])
    with contextlib.closing(sqlite3.connect(catwalk.database, timeout=30)) as db:
        assert db.execute("SELECT COUNT(*) FROM deployments_flyapp").fetchone() == (0,)
    # The secrets travelled only to the secrets endpoint, never in a task or a machine config.
    for recorded in catwalk.standin.requests:
        if "/machines" in recorded.path:
            assert CREDENTIAL not in json.dumps(recorded.body)
    assert CREDENTIAL not in catwalk.stack.logs()
