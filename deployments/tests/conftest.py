"""A real supervisor (`manage.py supervise`) as a subprocess, for tests of the local runtime.

The supervisor, its bridges and the test share one database (the SQLite test database is a
file when testing; PostgreSQL's is `test_<name>`), one SECRET_KEY and one key ring, and a
short private DATA_DIR under /tmp. Reused by the gateway's end-to-end tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import httpx2
import psutil
import pytest
from django.core.management import call_command
from django.db import connection
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

from analysis.tests.github_standin import GitHubStandin
from analysis.tests.registry_standin import RegistryStandin
from deployments import services
from deployments.models import Deployment, Status
from deployments.runtimes import sandbox
from deployments.runtimes.base import Endpoint
from deployments.runtimes.local import LocalRuntime, PidRecord, run_paths
from deployments.tests.fly_standin import FlyStandin
from mcpgateway.stack import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 90.0
FIXTURE_SERVER_ARGS = ["-m", "mcpgateway.fixture_server"]


def database_url() -> str:
    """The URL of the test database this process uses, for subprocesses."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = quote(db["USER"] or "", safe="")
    password = f":{quote(db['PASSWORD'], safe='')}" if db["PASSWORD"] else ""
    host = db["HOST"] or "localhost"
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgres://{user}{password}@{host}{port}/{quote(db['NAME'], safe='')}"


@dataclass
class RunningSupervisor:
    """A `manage.py supervise` process and helpers to watch what it does."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_status(
        self, deployment: Deployment, status: str, timeout: float = WAIT_SECONDS
    ) -> Deployment:
        """Poll the database until the deployment has `status` (fails the test otherwise)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            deployment.refresh_from_db()
            if deployment.status == status:
                return deployment
            if deployment.status == Status.FAILED:
                pytest.fail(f"deployment failed: {deployment.status_detail}\n{self.log()}")
            if self.proc.poll() is not None:
                pytest.fail(f"supervisor exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.1)
        pytest.fail(
            f"deployment stayed {deployment.status} ({deployment.status_detail}), "
            f"wanted {status}\n{self.log()}"
        )

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"supervisor ignored {sig!r}:\n{self.log()}")


def bridge_process(deployment: Deployment) -> psutil.Process:
    """The live bridge of a deployment, found through its pidfile."""
    record = PidRecord.read(run_paths(deployment.id).pidfile)
    assert record is not None, "no bridge pidfile"
    process = record.find_process()
    assert process is not None, "the pidfile names no live bridge"
    return process


def bridge_family(deployment: Deployment) -> list[psutil.Process]:
    """The bridge and every process under it."""
    bridge = bridge_process(deployment)
    return [bridge, *bridge.children(recursive=True)]


def all_gone(processes: list[psutil.Process], timeout: float = 30) -> bool:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return not [p for p in alive if _running(p)]


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextlib.asynccontextmanager
async def mcp_client(endpoint: Endpoint):
    """The real MCP SDK client, connected to a bridge (its unix socket, or its base URL)."""
    if endpoint.unix_socket is not None:
        transport, url = httpx2.AsyncHTTPTransport(uds=endpoint.unix_socket), "http://bridge/mcp"
    else:
        transport, url = httpx2.AsyncHTTPTransport(), f"{endpoint.base_url}/mcp"
    async with (
        httpx2.AsyncClient(
            transport=transport, headers=endpoint.headers, timeout=httpx2.Timeout(30, read=120)
        ) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


def call_tool(endpoint: Endpoint, name: str, arguments: dict[str, Any] | None = None) -> str:
    """Call a tool through a bridge with the SDK client; returns its first text content."""

    async def call() -> str:
        async with mcp_client(endpoint) as client:
            result = await client.call_tool(name, arguments or {})
        assert not result.is_error, result
        return result.content[0].text

    return anyio.run(call)


def deploy_fixture_server(
    owner, *, name: str | None = None, environment: dict[str, str] | None = None, **options: Any
) -> tuple[Deployment, str]:
    """A deployment of `python -m mcpgateway.fixture_server` (this venv's python)."""
    return services.create_deployment(
        owner,
        services.PackageSpec("pypi", "mcp"),
        name=name,
        environment={"PYTHONPATH": str(REPO_ROOT), **(environment or {})},
        entry_command=sys.executable,
        entry_args=FIXTURE_SERVER_ARGS,
        issued_to="tests",
        **options,
    )


def endpoint_of(deployment: Deployment) -> Endpoint:
    return LocalRuntime().endpoint(deployment)


@pytest.fixture
def supervisor_env(transactional_db, settings) -> Iterator[dict[str, str]]:
    """The environment for supervisor subprocesses; points this process at the same DATA_DIR."""
    data_dir = Path(tempfile.mkdtemp(prefix="cws", dir="/tmp"))  # short: unix socket paths
    settings.DATA_DIR = data_dir
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CATWALK_", "DJANGO_", "DATABASE_", "LOCAL_"))
        and key not in {"SECRET_KEY", "DEBUG", "REDIS_URL"}
    }
    env.update(
        {
            "DATABASE_URL": database_url(),
            "CATWALK_DATA_DIR": str(data_dir),
            "CATWALK_TESTING": "1",
            "SECRET_KEY": settings.SECRET_KEY,
            "CATWALK_ENCRYPTION_KEYS": ",".join(settings.CATWALK_ENCRYPTION_KEYS),
            "DJANGO_SETTINGS_MODULE": "catwalk.settings",
            # The fixture servers' code, readable inside the sandbox (PYTHONPATH=REPO_ROOT).
            "SANDBOX_READONLY_PATHS": str(REPO_ROOT / "mcpgateway"),
        }
    )
    settings.SANDBOX_READONLY_PATHS = [env["SANDBOX_READONLY_PATHS"]]
    if not sandbox.check().enabled:  # a machine without root or the tools: run them bare
        env["CATWALK_UNSAFE_NO_SANDBOX"] = "1"
    yield env
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def start_supervisor(supervisor_env) -> Iterator[Callable[..., RunningSupervisor]]:
    """Start supervisors; at the end each is stopped with SIGTERM and no bridge may remain."""
    started: list[RunningSupervisor] = []
    data_dir = supervisor_env["CATWALK_DATA_DIR"]

    def start(*args: str, wait: bool = True, **extra_env: str) -> RunningSupervisor:
        log_path = Path(data_dir) / f"supervisor-{len(started)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "manage.py", "supervise", "--poll-interval", "0.2", *args],
                cwd=REPO_ROOT,
                env={**supervisor_env, **extra_env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        running = RunningSupervisor(proc, log_path)
        started.append(running)
        deadline = time.monotonic() + WAIT_SECONDS
        while wait and "supervising local deployments" not in running.log():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"supervisor did not start:\n{running.log()}")
            time.sleep(0.05)
        return running

    yield start
    for running in started:
        running.stop()
    leftovers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(data_dir in part for part in p.info["cmdline"] or [])
    ]
    for process in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    assert not leftovers, f"processes outlived the supervisor: {leftovers}"


@pytest.fixture
def supervisor(start_supervisor) -> RunningSupervisor:
    return start_supervisor()


@pytest.fixture(scope="session")
def code_hosts() -> Iterator[tuple[GitHubStandin, RegistryStandin]]:
    """Local stand-ins of GitHub and the npm and PyPI registries, shared by the session."""
    github, registry = GitHubStandin(), RegistryStandin()
    yield github, registry
    github.close()
    registry.close()


@pytest.fixture
def github(code_hosts, settings) -> GitHubStandin:
    """The GitHub stand-in, emptied, with the settings pointing at it; the registries know no
    package (so every repository is unpublished) and Claude is off."""
    github, registry = code_hosts
    github.reset()
    registry.reset()
    settings.GITHUB_API_URL, settings.GITHUB_TOKEN = github.api_url, ""
    settings.NPM_REGISTRY_URL, settings.PYPI_URL = registry.npm_url, registry.pypi_url
    settings.ANTHROPIC_API_KEY = ""
    return github


def mcp_deploy(*args: str) -> dict:
    """Run `manage.py mcp_deploy ARGS`; returns the one JSON line it prints."""
    out = StringIO()
    call_command("mcp_deploy", *args, stdout=out, stderr=StringIO())
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    return json.loads(lines[0])


@contextlib.contextmanager
def asgi_server(server: str, env: dict[str, str], **settings: str) -> Iterator[str]:
    """catwalk.asgi:application under uvicorn or daphne on a free port, with extra `settings`
    in its environment; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if server == "daphne":
        argv = ["-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "catwalk.asgi:application"]
    else:
        argv = ["-m", "uvicorn", "catwalk.asgi:application", "--port", str(port)]
    log_path = Path(env["CATWALK_DATA_DIR"]) / f"{server}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=REPO_ROOT,
            env={**env, **settings, "CATWALK_PUBLIC_URL": url},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{server} did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def standin() -> Iterator[FlyStandin]:
    """Fly on 127.0.0.1, its machines running the real runner. Unsandboxed: the tests using it
    are about the Fly runtime; the runner's sandbox has its own tests, and the end-to-end test
    runs sandboxed."""
    with FlyStandin(unsandboxed=True, org_slug="acme", proxy_start_timeout=30) as stand_in:
        yield stand_in


@pytest.fixture
def fly_settings(settings, standin):
    """The Fly runtime configured against the stand-in."""
    settings.FLY_API_URL = standin.api_url
    settings.FLY_LOGS_API_URL = standin.logs_api_url
    settings.FLY_RELAY_URL = standin.proxy_url + "/{app}"
    settings.FLY_API_TOKEN = standin.token
    settings.FLY_ORG = "acme"
    settings.FLY_REGION = "ams"
    settings.FLY_RUNNER_IMAGE = "registry.fly.io/catwalk-runner:test"
    settings.FLY_API_BACKOFF_SECONDS = 0.01
    settings.FLY_START_TIMEOUT_SECONDS = 60
    return settings
