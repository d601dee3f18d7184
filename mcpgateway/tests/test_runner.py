"""The Fly runner (`python -m mcpgateway.runner`), run as a Fly Machine runs it.

Each runner is a real process started from an environment like the one the Fly runtime gives
a Machine (config env, app secrets, FLY_* variables), serving the project's stdio fixture
server on a loopback port, sandboxed where this host can (root and the sandbox's tools) and
with CATWALK_UNSAFE_NO_SANDBOX=1.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from mcpgateway import runner, sandbox_profile
from mcpgateway.tests.conftest import REPO_ROOT, START_TIMEOUT_SECONDS, bridge_sdk_client

pytestmark = pytest.mark.anyio

SECRET = "relay-secret-9c1e"
CREDENTIAL = "credential-value-it's $(id)"
STDERR_MARKER = "fixture-server-says-hello-on-stderr"
# The fixture server, saying one line on stderr first (as servers do when they start).
SERVER_COMMAND = [
    sys.executable,
    "-c",
    f"import sys; print({STDERR_MARKER!r}, file=sys.stderr, flush=True); "
    "from mcpgateway.fixture_server import main; main()",
]
# What Fly puts in every Machine's environment, besides the config's env and the app secrets.
FLY_ENVIRONMENT = {
    "FLY_APP_NAME": "catwalk-d-test",
    "FLY_MACHINE_ID": "e784079b449483",
    "FLY_REGION": "ams",
    "FLY_ALLOC_ID": "e784079b449483",
    "FLY_PUBLIC_IP": "2a09:8280:1::1",
    "FLY_PRIVATE_IP": "fdaa:0:1::2",
    "FLY_IMAGE_REF": "registry.fly.io/catwalk-runner:latest",
}
SANDBOX_PROBLEMS = sandbox_profile.problems(sandbox_profile.DEFAULT_TOOLS_PATH, "the tests")
needs_sandbox = pytest.mark.skipif(
    bool(SANDBOX_PROBLEMS), reason=f"no sandbox: {'; '.join(SANDBOX_PROBLEMS)}"
)
MODES = [pytest.param("sandboxed", marks=needs_sandbox), "unsandboxed"]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def machine_environment(root: Path, mode: str, **changes: str) -> dict[str, str]:
    """A Machine's environment as the Fly runtime and Fly set it (the stand-in's choices)."""
    environment = {
        "PATH": os.environ["PATH"],
        "CATWALK_SERVER_COMMAND": json.dumps(SERVER_COMMAND),
        "CATWALK_BRIDGE_MODE": "shared",
        "CATWALK_MAX_SESSIONS": "10",
        "CATWALK_SESSION_IDLE_TIMEOUT": "600",
        "CATWALK_DEPLOYMENT": "0b9e8c2e-5f1d-4f7e-9a35-1d6f2f7f9b10",
        "CATWALK_BRIDGE_SECRET": SECRET,
        "CATWALK_ENV_API_KEY": CREDENTIAL,
        # How the fixture server finds its own module: a credential like any other.
        "CATWALK_ENV_PYTHONPATH": str(REPO_ROOT),
        "CATWALK_RUNNER_LISTEN": f"tcp:127.0.0.1:{free_port()}",
        "CATWALK_RUNNER_ROOT": str(root),
        # A uid of its own: other tests' sandboxes may run at the same time.
        "CATWALK_RUNNER_SANDBOX_UID": str(random.randint(400_000, 499_999)),
        "CATWALK_RUNNER_READONLY_PATHS": str(REPO_ROOT / "mcpgateway"),
        "MACHINE_ONLY_SETTING": "not-for-the-server",
        **FLY_ENVIRONMENT,
    }
    if mode == "unsandboxed":
        environment["CATWALK_UNSAFE_NO_SANDBOX"] = "1"
    environment.update(changes)
    return environment


@dataclass
class Runner:
    """A running runner: its process (the bridge, once it has exec'd) and its stderr."""

    proc: subprocess.Popen[bytes]
    environment: dict[str, str]
    stderr_path: Path

    @property
    def base_url(self) -> str:
        return "http://" + self.environment["CATWALK_RUNNER_LISTEN"].removeprefix("tcp:")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def health(self) -> dict:
        return httpx.get(f"{self.base_url}/healthz", timeout=10).json()

    def wait_until_ready(self) -> dict:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the runner exited with {self.proc.returncode}: {self.stderr}")
            with contextlib.suppress(httpx.TransportError):
                health = self.health()
                if health["status"] == "ok" and health["child_pid"]:
                    return health
            time.sleep(0.05)
        pytest.fail(f"the runner never became healthy: {self.stderr}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the runner ignored SIGTERM: {self.stderr}")


@contextlib.contextmanager
def running(mode: str, **changes: str) -> Iterator[Runner]:
    folder = Path(tempfile.mkdtemp(prefix="catwalk-runner-"))
    environment = machine_environment(folder / "root", mode, **changes)
    stderr_path = folder / "runner.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcpgateway.runner"],
            cwd=REPO_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    started = Runner(proc, environment, stderr_path)
    try:
        yield started
    finally:
        if proc.poll() is None:
            started.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module", params=MODES)
def machine(request) -> Iterator[Runner]:
    with running(request.param) as started:
        started.wait_until_ready()
        yield started


def run_to_exit(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcpgateway.runner"],
        cwd=REPO_ROOT,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- Serving -----------------------------------------------------------------------------------


def test_health_answers_without_the_secret(machine: Runner):
    response = httpx.get(f"{machine.base_url}/healthz", timeout=10)

    assert response.status_code == 200
    assert response.json()["status"] == "ok"


@pytest.mark.parametrize("offered", [None, "wrong-secret"])
def test_mcp_without_the_relay_secret_is_refused(machine: Runner, offered: str | None):
    headers = {"Accept": "application/json, text/event-stream"}
    if offered is not None:
        headers["X-Catwalk-Bridge-Secret"] = offered
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }

    response = httpx.post(f"{machine.base_url}/mcp", json=initialize, headers=headers)

    assert response.status_code == 403


async def test_an_mcp_client_with_the_secret_initializes_and_lists_tools(machine: Runner):
    async with bridge_sdk_client(machine, headers={"X-Catwalk-Bridge-Secret": SECRET}) as client:
        tools = await client.list_tools()

    assert {"echo", "get-env"} <= {tool.name for tool in tools.tools}


async def test_the_server_gets_its_credentials_and_nothing_of_the_machine(machine: Runner):
    async with bridge_sdk_client(machine, headers={"X-Catwalk-Bridge-Secret": SECRET}) as client:
        result = await client.call_tool("get-env", {})
    server_environment = json.loads(result.content[0].text)

    assert server_environment["API_KEY"] == CREDENTIAL
    assert not [name for name in server_environment if name.startswith(("FLY_", "CATWALK_"))]
    assert "MACHINE_ONLY_SETTING" not in server_environment
    assert not [value for value in server_environment.values() if SECRET in value]
    assert {"PATH", "HOME", "TMPDIR", "LANG", "npm_config_cache", "UV_CACHE_DIR"} <= set(
        server_environment
    )


def test_the_servers_stderr_is_the_runners_stderr(machine: Runner):
    assert STDERR_MARKER in machine.stderr.splitlines()


@needs_sandbox
async def test_sandboxed_the_server_runs_as_its_own_uid_in_its_own_folders():
    with running("sandboxed") as started:
        started.wait_until_ready()
        async with bridge_sdk_client(
            started, headers={"X-Catwalk-Bridge-Secret": SECRET}
        ) as client:
            result = await client.call_tool("get-env", {})
        launcher = psutil.Process(started.health()["child_pid"])
        uids = {p.uids().real for p in launcher.children(recursive=True)}
        stderr = started.stderr
    server_environment = json.loads(result.content[0].text)

    assert server_environment["HOME"] == runner.SANDBOX_HOME
    assert int(started.environment["CATWALK_RUNNER_SANDBOX_UID"]) in uids
    assert "sandboxed as uid" in stderr


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_stops_the_server_and_exits_0(mode: str):
    with running(mode) as started:
        server = psutil.Process(started.wait_until_ready()["child_pid"])

        status = started.stop()

        assert status == 0, started.stderr
        _, alive = psutil.wait_procs([server], timeout=10)
        assert not alive


# --- Refusing to start -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"CATWALK_SERVER_COMMAND": ""}, "CATWALK_SERVER_COMMAND"),
        ({"CATWALK_SERVER_COMMAND": "npx -y server"}, "CATWALK_SERVER_COMMAND"),
        ({"CATWALK_SERVER_COMMAND": '{"argv": ["npx"]}'}, "CATWALK_SERVER_COMMAND"),
        ({"CATWALK_SERVER_COMMAND": "[]"}, "CATWALK_SERVER_COMMAND"),
        ({"CATWALK_SERVER_COMMAND": '["npx", 1]'}, "CATWALK_SERVER_COMMAND"),
        ({"CATWALK_BRIDGE_SECRET": ""}, "CATWALK_BRIDGE_SECRET"),
        ({"CATWALK_BRIDGE_MODE": "both"}, "CATWALK_BRIDGE_MODE"),
        ({"CATWALK_MAX_SESSIONS": "many"}, "CATWALK_MAX_SESSIONS"),
        ({"CATWALK_MAX_SESSIONS": "0"}, "CATWALK_MAX_SESSIONS"),
        ({"CATWALK_SESSION_IDLE_TIMEOUT": "-5"}, "CATWALK_SESSION_IDLE_TIMEOUT"),
        ({"CATWALK_SESSION_IDLE_TIMEOUT": "nan"}, "CATWALK_SESSION_IDLE_TIMEOUT"),
        ({"CATWALK_RUNNER_LISTEN": "http://0.0.0.0:8080"}, "CATWALK_RUNNER_LISTEN"),
        ({"CATWALK_RUNNER_LISTEN": "tcp:127.0.0.1:99999"}, "CATWALK_RUNNER_LISTEN"),
        ({"CATWALK_RUNNER_ROOT": "relative/root"}, "CATWALK_RUNNER_ROOT"),
        ({"CATWALK_RUNNER_SANDBOX_UID": "0"}, "CATWALK_RUNNER_SANDBOX_UID"),
        ({"CATWALK_DEPLOYMENT": "../../escape"}, "CATWALK_DEPLOYMENT"),
        ({"CATWALK_UNSAFE_NO_SANDBOX": "perhaps"}, "CATWALK_UNSAFE_NO_SANDBOX"),
        ({"CATWALK_ENV_1BAD": "x"}, "CATWALK_ENV_1BAD"),
    ],
)
def test_a_bad_environment_exits_78_with_one_line_naming_the_variable(tmp_path, changes, named):
    result = run_to_exit(machine_environment(tmp_path / "root", "unsandboxed", **changes))

    assert result.returncode == runner.EX_CONFIG
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("catwalk-runner: ")
    assert named in lines[0]


def test_a_root_that_cannot_be_made_exits_78_with_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")

    result = run_to_exit(
        machine_environment(tmp_path, "unsandboxed", CATWALK_RUNNER_ROOT=str(blocker / "root"))
    )

    assert result.returncode == runner.EX_CONFIG
    assert re.fullmatch(r"catwalk-runner: cannot prepare the MCP server: .*\n", result.stderr)


def test_without_the_sandbox_it_refuses_unless_told_to_run_unsandboxed(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox_profile, "DEFAULT_TOOLS_PATH", str(tmp_path / "no-tools"))
    config = runner.read_config(machine_environment(tmp_path / "root", "sandboxed"))

    with pytest.raises(runner.ConfigError) as refused:
        runner.prepare(config)
    unsafe = runner.read_config(machine_environment(tmp_path / "root", "unsandboxed"))
    launch = runner.prepare(unsafe)

    assert "refusing to start" in str(refused.value)
    assert "bwrap (Debian package bubblewrap)" in str(refused.value)
    assert "CATWALK_UNSAFE_NO_SANDBOX=1" in str(refused.value)
    assert str(sandbox_profile.LAUNCHER) not in launch.argv
    assert launch.argv[-len(SERVER_COMMAND) :] == SERVER_COMMAND


def test_the_refusal_is_one_line_and_status_78(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sandbox_profile, "DEFAULT_TOOLS_PATH", str(tmp_path / "no-tools"))
    for name, value in machine_environment(tmp_path / "root", "sandboxed").items():
        monkeypatch.setenv(name, value)
    exec_calls: list[list[str]] = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: exec_calls.append(argv))

    with pytest.raises(SystemExit) as exited:
        runner.main()

    assert exited.value.code == runner.EX_CONFIG
    assert not exec_calls
    stderr = capsys.readouterr().err
    assert stderr.startswith("catwalk-runner: refusing to start:")
    assert stderr.count("\n") == 1


# --- What the bridge is started with -----------------------------------------------------------


@needs_sandbox
def test_sandboxed_the_bridge_holds_no_credential_and_the_profile_is_private(tmp_path):
    root = tmp_path / "root"
    config = runner.read_config(
        machine_environment(root, "sandboxed", CATWALK_BRIDGE_MODE="isolated")
    )

    launch = runner.prepare(config)

    assert launch.env == {**sandbox_profile.ROOT_ENVIRONMENT, "CATWALK_BRIDGE_SECRET": SECRET}
    assert "--stderr-log=-" in launch.argv
    assert launch.argv.count("--fatal-exit-status=125") == 1
    profile = json.loads((root / "sandbox.json").read_text())
    assert (root / "sandbox.json").stat().st_mode & 0o077 == 0
    assert profile["uid"] == config.sandbox_uid
    assert profile["name"] == config.sandbox_name
    assert profile["hidden"] == [str(root)]
    assert profile["limits"]["uid_processes"] == profile["limits"]["pids"] * 10
    assert set(sandbox_profile.host_networks()) <= set(profile["blocked"])
    assert CREDENTIAL not in json.dumps(profile)


def test_unsandboxed_the_bridge_passes_the_servers_environment_and_the_secret(tmp_path):
    config = runner.read_config(machine_environment(tmp_path / "root", "unsandboxed"))

    launch = runner.prepare(config)

    assert launch.env["API_KEY"] == CREDENTIAL
    assert launch.env["CATWALK_BRIDGE_SECRET"] == SECRET
    assert not [name for name in launch.env if name.startswith("FLY_")]
    assert launch.env["HOME"] == str(tmp_path / "root" / "server" / "home")
    assert "--fatal-exit-status=125" not in launch.argv


# --- The image --------------------------------------------------------------------------------


def dockerfile_stages() -> list[tuple[str, list[str]]]:
    """The Dockerfile's stages in order: (name, instructions with continuations joined)."""
    text = (REPO_ROOT / "Dockerfile").read_text()
    instructions = [
        " ".join(line.split())
        for line in re.sub(r"\\\n", " ", text).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    stages: list[tuple[str, list[str]]] = []
    for instruction in instructions:
        if instruction.upper().startswith("FROM "):
            name = instruction.split(" AS ")[-1] if " AS " in instruction else ""
            stages.append((name, []))
        stages[-1][1].append(instruction)
    return stages


def test_the_dockerfile_has_a_runner_target_and_keeps_the_platform_as_default():
    stages = dict(dockerfile_stages())
    runner_stage = stages["runner"]
    final_name, final_stage = dockerfile_stages()[-1]

    assert "COPY mcpgateway /app/mcpgateway" in runner_stage
    assert not [i for i in runner_stage if i.startswith("COPY . ")]
    assert 'CMD ["python", "-m", "mcpgateway.runner"]' in runner_stage
    assert "EXPOSE 8080" in runner_stage
    installed = " ".join(i for i in runner_stage if i.startswith("RUN "))
    for package in ("bubblewrap", "slirp4netns", "nftables", "util-linux", "uvicorn", "uv"):
        assert package in installed
    assert final_name != "runner"
    assert any("catwalk.asgi:application" in i for i in final_stage)
