"""Source deployments in the Fly runner: the repository fetched at its commit from GitHub (the
local stand-in), built once into the machine's volume, served; a failed build reported.

Each runner is a real process with a Machine's environment (see test_runner.py), its builds
folder standing for the volume: it outlives a runner, as a volume outlives a machine's boot.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from analysis.tests.github_standin import GitHubStandin
from mcpgateway import runner_source
from mcpgateway.tests.conftest import START_TIMEOUT_SECONDS, bridge_sdk_client
from mcpgateway.tests.test_runner import MODES, SECRET, Runner, running

pytestmark = pytest.mark.anyio

# A repository whose server is the project's fixture server (found through the PYTHONPATH
# credential the runner tests give every server), and whose build step leaves a file behind.
REPOSITORY_FILES = {
    "README.md": b"An MCP server built from source.\n",
    "server/main.py": b"from mcpgateway.fixture_server import main\n\nmain()\n",
}
BUILD_STEP = {
    "what": "write the build stamp",
    "argv": ["/bin/sh", "-c", "echo built-by-$(id -u) > stamp.txt && echo step-output-line"],
    "folder": "server",
}
FAILING_STEP = {
    "what": "compile",
    "argv": ["/bin/sh", "-c", "echo 'error TS2322: not assignable' && exit 2"],
    "folder": "",
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def github() -> Iterator[GitHubStandin]:
    standin = GitHubStandin()
    yield standin
    standin.close()


@pytest.fixture
def volume() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="catwalk-volume-"))
    yield folder / "builds"
    shutil.rmtree(folder, ignore_errors=True)


def spec(github: GitHubStandin, name: str, steps: list[dict], files=REPOSITORY_FILES) -> str:
    sha = github.add_repository("acme", name, dict(files))
    return json.dumps(
        {
            "archive": f"{github.api_url}/repos/acme/{name}/tarball/{sha}",
            "steps": steps,
            "folder": "server",
            "http": None,
            "timeout_seconds": 60,
            "max_mb": 64,
        }
    )


def source_machine(mode: str, source: str, volume: Path, **changes: str):
    return running(
        mode,
        CATWALK_SOURCE=source,
        CATWALK_RUNNER_BUILDS=str(volume),
        CATWALK_SERVER_COMMAND=json.dumps([sys.executable, "/srv/app/server/main.py"]),
        **changes,
    )


def downloads(github: GitHubStandin) -> int:
    return sum(1 for request in github.requests if request.host == "codeload")


def wait_for_health(machine: Runner, status: str) -> dict:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS + 60
    while time.monotonic() < deadline:
        if machine.proc.poll() is not None:
            pytest.fail(f"the runner exited with {machine.proc.returncode}: {machine.stderr}")
        with contextlib.suppress(httpx.TransportError, ValueError):
            health = httpx.get(f"{machine.base_url}/healthz", timeout=10).json()
            if health.get("status") == status:
                return health
        time.sleep(0.05)
    pytest.fail(f"the runner never reported {status}: {machine.stderr}")


@pytest.mark.parametrize("mode", MODES)
async def test_a_repository_is_built_once_and_every_later_boot_serves_at_once(mode, github, volume):
    source = spec(github, f"built-once-{mode}", [BUILD_STEP])
    before = downloads(github)

    with source_machine(mode, source, volume) as first:
        first.wait_until_ready()
        async with bridge_sdk_client(first, headers={"X-Catwalk-Bridge-Secret": SECRET}) as client:
            tools = await client.list_tools()
        assert first.stop() == 0
        first_log = first.stderr

    assert {"echo", "get-env"} <= {tool.name for tool in tools.tools}
    assert "building from source: $ /bin/sh -c" in first_log
    assert "step-output-line" in first_log  # the build's output is in the machine's log
    (build,) = [entry for entry in volume.iterdir() if entry.is_dir()]
    stamp = (build / "app" / "server" / "stamp.txt").read_text().strip()
    # Sandboxed, the step ran as the build uid (the server's uid + 1), never as root.
    if mode == "sandboxed":
        build_uid = int(first.environment["CATWALK_RUNNER_SANDBOX_UID"]) + 1
        assert stamp == f"built-by-{build_uid}"
        assert (build / "app").stat().st_uid == 0  # sealed: root's, read-only to the server
    assert downloads(github) == before + 1

    with source_machine(mode, source, volume) as second:
        second.wait_until_ready()
        async with bridge_sdk_client(second, headers={"X-Catwalk-Bridge-Secret": SECRET}) as client:
            echoed = await client.call_tool("echo", {"message": "from the volume"})
        second_log = second.stderr

    assert echoed.content[0].text == "from the volume"
    assert downloads(github) == before + 1  # nothing fetched or built again
    assert "building from source" not in second_log


@pytest.mark.parametrize("mode", MODES)
def test_a_failed_build_is_reported_on_healthz_with_the_log_until_the_machine_stops(
    mode, github, volume
):
    source = spec(github, f"failing-{mode}", [BUILD_STEP, FAILING_STEP])

    with source_machine(mode, source, volume) as machine:
        health = wait_for_health(machine, "crashed")
        response = httpx.post(f"{machine.base_url}/mcp", json={}, timeout=10)
        status = machine.stop()

    assert health["phase"] == "build"
    assert "The build step failed (exit status 2)" in health["last_error"]
    assert "error TS2322: not assignable" in health["last_error"]
    assert response.status_code == 503
    assert status == 0
    assert not [entry for entry in volume.iterdir() if entry.is_dir()]  # nothing half-built


def test_a_repository_that_cannot_be_downloaded_is_reported(github, volume):
    source = json.loads(spec(github, "gone", [BUILD_STEP]))
    source["archive"] = f"{github.api_url}/repos/acme/no-such-repository/tarball/{'0' * 40}"

    with source_machine("unsandboxed", json.dumps(source), volume) as machine:
        health = wait_for_health(machine, "crashed")

    assert "could not be downloaded (HTTP 404)" in health["last_error"]
    assert "public repositories only" in health["last_error"]


def test_a_new_commit_builds_beside_the_old_one_which_goes_once_it_is_done(github, volume):
    old = spec(github, "moving", [BUILD_STEP])
    with source_machine("unsandboxed", old, volume) as machine:
        machine.wait_until_ready()
    (old_build,) = list(volume.iterdir())
    files = {**REPOSITORY_FILES, "CHANGELOG.md": b"a new commit\n"}
    new = spec(github, "moving", [BUILD_STEP], files=files)

    with source_machine("unsandboxed", new, volume) as machine:
        machine.wait_until_ready()

    (new_build,) = list(volume.iterdir())
    assert new_build.name != old_build.name
    assert (new_build / "app" / "CHANGELOG.md").is_file()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("not json", "CATWALK_SOURCE is not valid JSON"),
        ({"folder": "/etc"}, "folder must be a relative folder"),
        ({"folder": "../outside"}, "folder must stay inside the repository"),
        ({"archive": "file:///etc/passwd"}, "archive must be an http(s) URL"),
        ({"steps": [{"argv": []}]}, "argv must be a non-empty list"),
        ({"timeout_seconds": 0}, "timeout_seconds must be a positive number"),
    ],
)
def test_a_bad_source_spec_exits_78_with_one_line(github, volume, tmp_path, change, named):
    source = json.loads(spec(github, "bad-spec", [BUILD_STEP]))
    text = change if isinstance(change, str) else json.dumps({**source, **change})
    with source_machine("unsandboxed", text, volume) as machine:
        status = machine.proc.wait(timeout=60)
        log = machine.stderr

    assert status == 78
    (line,) = log.strip().splitlines()
    assert named in line


def test_the_server_command_runs_in_its_folder_behind_the_http_child_when_it_serves_http():
    parsed = runner_source.parse_spec(
        json.dumps(
            {
                "archive": "https://example.invalid/tarball",
                "steps": [],
                "folder": "packages/server",
                "http": {"port_argument": "--port", "path": "/mcp"},
                "timeout_seconds": 10,
                "max_mb": 10,
            }
        )
    )

    command = runner_source.server_command(parsed, ["node", "/srv/app/dist/index.js"], ["child"])

    assert command == [
        *runner_source.IN_FOLDER,
        "/srv/app/packages/server",
        "child",
        "--port-argument=--port",
        "--path=/mcp",
        "--",
        "node",
        "/srv/app/dist/index.js",
    ]
    assert (
        parsed.app_path("/data/builds/k/app")("/srv/app/dist/x.js")
        == "/data/builds/k/app/dist/x.js"
    )
    assert parsed.app_path("/data/builds/k/app")("/srv/application") == "/srv/application"


def test_the_build_status_page_refuses_everything_but_healthz():
    status = runner_source.BuildProgress()
    server = runner_source.serve_status("127.0.0.1", 0, status)
    port = server.server_address[1]
    try:
        starting = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        other = httpx.post(f"http://127.0.0.1:{port}/mcp", json={}, timeout=5)
        status.fail("The build from source failed: boom")
        failed = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        server.shutdown()
        server.server_close()

    assert starting.status_code == 200 and starting.json()["status"] == "starting"
    assert other.status_code == 503 and other.headers["retry-after"] == "10"
    assert failed.status_code == 503
    assert failed.json() == {
        "status": "crashed",
        "phase": "build",
        "last_error": "The build from source failed: boom",
    }


def test_a_new_commit_that_fails_to_build_leaves_the_working_build_in_place(github, volume):
    working = spec(github, "kept", [BUILD_STEP])
    with source_machine("unsandboxed", working, volume) as machine:
        machine.wait_until_ready()
    (kept,) = list(volume.iterdir())
    broken = spec(github, "kept-broken", [BUILD_STEP, FAILING_STEP])

    with source_machine("unsandboxed", broken, volume) as machine:
        wait_for_health(machine, "crashed")

    assert list(volume.iterdir()) == [kept]
    assert sorted(entry.name for entry in kept.iterdir()) == [runner_source.BUILT_MARKER, "app"]


def test_another_runner_image_builds_again(github, volume):
    source = spec(github, "rebuilt", [BUILD_STEP])
    before = downloads(github)
    for image in (
        "registry.fly.io/catwalk-runner@sha256:aaaa",
        "registry.fly.io/catwalk-runner@sha256:bbbb",
    ):
        with source_machine("unsandboxed", source, volume, FLY_IMAGE_REF=image) as machine:
            machine.wait_until_ready()

    assert downloads(github) == before + 2  # native modules and venvs are the image's
    assert len(list(volume.iterdir())) == 1


def test_a_step_that_cannot_even_start_is_reported_not_a_crash_loop(github, volume):
    step = {"what": "install", "argv": ["no-such-package-manager", "install"], "folder": ""}

    with source_machine("unsandboxed", spec(github, "no-tool", [step]), volume) as machine:
        health = wait_for_health(machine, "crashed")
        alive = machine.proc.poll() is None

    assert "FileNotFoundError" in health["last_error"]
    assert alive  # it keeps answering with the reason rather than exiting and being restarted
