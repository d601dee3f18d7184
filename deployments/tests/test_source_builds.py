"""Deploying from source, end to end: repositories of every supported shape are analysed, built
in the sandbox and deployed; a broken one fails with the compiler's words; a hostile install
script gets nothing out of its folder.

The repositories are the fixtures in `source_repos/` (see `source_fixtures.py`), served by the
GitHub stand-in; the registry stand-in knows no package, so the analysis finds them unpublished
and derives a build recipe. Dependencies come from the real npm registry and PyPI, so this
module needs the network.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from django.db import connection

from analysis import services as analysis
from analysis.serverjson import meta
from analysis.tests.github_standin import GitHubStandin
from deployments import services
from deployments.builds import BuildFailed, app_folder, build_uid, ensure_build, log_path
from deployments.models import BuildStatus, Deployment, SourceBuild, Status
from deployments.runtimes import sandbox
from deployments.runtimes.local import builds_root, ensure_private_dir
from deployments.tests.conftest import call_tool, endpoint_of, mcp_deploy
from deployments.tests.source_fixtures import OWNER, publish, snapshot

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

STATIC = analysis.Options(use_claude=False, introspect=False)
START_SECONDS = 120.0


@dataclass(frozen=True)
class Shape:
    """A fixture repository that builds and serves `echo` and `add`, and its expected recipe."""

    name: str
    recipe: dict
    # Lines of the build log: each step's command and where it ran.
    steps: tuple[str, ...]
    subfolder: str = ""
    tools: set[str] = field(default_factory=lambda: {"echo", "add"})

    @property
    def url(self) -> str:
        tree = f"/tree/main/{self.subfolder}" if self.subfolder else ""
        return f"https://github.com/{OWNER}/{self.name}{tree}"


NODE = {"runnable": True, "ecosystem": "node", "transport": "stdio"}
PYTHON = {"runnable": True, "ecosystem": "python", "packageManager": "uv", "transport": "stdio"}
SHAPES = {
    shape.name: shape
    for shape in (
        Shape(
            "typescript-build",
            {
                **NODE,
                "packageManager": "npm",
                "root": "",
                "folder": "",
                "lockfile": "package-lock.json",
                "buildScript": True,
                "entry": {"file": "dist/index.js"},
            },
            ("$ npm ci    (install dependencies, in /)", "$ npm run build    (build, in /)"),
        ),
        Shape(
            "plain-javascript",
            {
                **NODE,
                "packageManager": "npm",
                "lockfile": "package-lock.json",
                "buildScript": False,
                "entry": {"file": "index.js"},
            },
            ("$ npm ci    (install dependencies, in /)",),
        ),
        Shape(
            "pnpm-workspace",
            {
                **NODE,
                "packageManager": "pnpm",
                "root": "",
                "folder": "packages/server",
                "lockfile": "pnpm-lock.yaml",
                "buildScript": True,
                "entry": {"file": "packages/server/dist/index.js"},
            },
            (
                "$ npx --yes pnpm@9 install --frozen-lockfile    (install dependencies, in /)",
                "$ npx --yes pnpm@9 run build    (build, in /packages/server)",
            ),
            subfolder="packages/server",
        ),
        Shape(
            "python-pyproject",
            {**PYTHON, "pythonInstall": "project", "entry": {"script": "py-echo-mcp"}},
            (
                "venv --quiet .venv    (create the environment, in /)",
                "pip install --python .venv/bin/python .    (install the project, in /)",
            ),
        ),
        Shape(
            "python-requirements",
            {**PYTHON, "pythonInstall": "requirements", "entry": {"module": "server_pkg"}},
            (
                "venv --quiet .venv    (create the environment, in /)",
                "pip install --python .venv/bin/python -r requirements.txt    "
                "(install the requirements, in /)",
            ),
        ),
    )
}


# --- Stand-ins and folders ---------------------------------------------------------------------


@pytest.fixture
def data_dir(settings) -> Iterator[Path]:
    """A private DATA_DIR for builds without a supervisor."""
    folder = Path(tempfile.mkdtemp(prefix="cwb", dir="/tmp"))
    settings.DATA_DIR = folder
    if not sandbox.check().enabled:
        settings.UNSAFE_NO_SANDBOX = True
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def analysed_recipe(url: str, sha: str) -> dict:
    document, analysed = analysis.analyse(url, STATIC)
    assert analysed == sha
    found = meta(document)
    assert found["deployable"] == "source", found
    return found["source"]


def assert_built(build: SourceBuild, shape: Shape) -> None:
    """The log shows the shape's steps, in order, then success; the tree is sealed."""
    log = log_path(build).read_text()
    lines = [line.split("] ", 1)[1] for line in log.splitlines() if line.startswith("[catwalk] ")]
    commands = [line for line in lines if line.startswith("$ ")]
    assert len(commands) == len(shape.steps), log
    for command, step in zip(commands, shape.steps, strict=True):
        assert command.endswith(step), (command, step)
    assert lines[-1].startswith("Built: "), log
    assert build.size_bytes > 0
    kind, value = next(iter(shape.recipe["entry"].items()))
    app = app_folder(build) / shape.recipe.get("folder", "")
    entry = {
        "file": app_folder(build) / value,
        "script": app / ".venv" / "bin" / value,
        "module": app / value / "__main__.py",
    }[kind]
    assert entry.is_file(), entry
    if sandbox.check().enabled:
        assert entry.stat().st_uid == 0 and not entry.stat().st_mode & 0o022


def codeload_downloads(github: GitHubStandin) -> int:
    return sum(1 for request in github.requests if request.host == "codeload")


# --- Every good shape: analysed, built, deployed, serving ------------------------------------


@pytest.mark.parametrize(
    "shape", ["typescript-build", "pnpm-workspace", "python-pyproject", "python-requirements"]
)
def test_a_repository_is_analysed_built_deployed_and_serves_its_tools(
    shape, github, supervisor, owner
):
    expected = SHAPES[shape]
    repository, sha = publish(github, shape)

    recipe = analysed_recipe(expected.url, sha)
    assert recipe.items() >= expected.recipe.items(), recipe
    build = ensure_build(repository, expected.subfolder, sha, recipe, user=owner)
    assert build.status == BuildStatus.SUCCEEDED
    assert_built(build, expected)
    deployment, _ = services.create_deployment(
        owner, services.source_package(build), source_build=build, issued_to="tests"
    )
    supervisor.wait_for_status(deployment, Status.RUNNING, timeout=START_SECONDS)

    assert set(services.wait_until_ready(deployment, START_SECONDS)) == expected.tools
    endpoint = endpoint_of(deployment)
    assert call_tool(endpoint, "echo", {"message": f"hello {shape}"}) == f"hello {shape}"
    assert call_tool(endpoint, "add", {"a": 2, "b": 40}) == "42"


def test_mcp_deploy_from_a_repository_reuses_its_build_and_serves(github, supervisor, owner):
    expected = SHAPES["plain-javascript"]
    repository, sha = publish(github, "plain-javascript")
    recipe = analysed_recipe(expected.url, sha)
    assert recipe.items() >= expected.recipe.items(), recipe
    build = ensure_build(repository, "", sha, recipe, user=owner)
    assert_built(build, expected)
    log = log_path(build).read_text()
    downloads = codeload_downloads(github)

    printed = mcp_deploy("--user", "owner", "--repo", expected.url)

    deployment = Deployment.objects.get(pk=printed["id"])
    assert deployment.source_build_id == build.pk
    assert printed["endpoint"].endswith(f"/mcp/{deployment.id}")
    assert printed["token"]
    assert set(services.wait_until_ready(deployment, START_SECONDS)) == expected.tools
    endpoint = endpoint_of(deployment)
    assert call_tool(endpoint, "echo", {"message": "from source"}) == "from source"
    assert call_tool(endpoint, "add", {"a": 1.5, "b": 2}) == "3.5"
    # The command analysed the repository again (one download) but built nothing.
    assert codeload_downloads(github) == downloads + 1
    again = ensure_build(repository, "", sha, recipe, user=owner)
    assert again.pk == build.pk
    assert again.started_at == build.started_at
    assert again.finished_at == build.finished_at
    assert log_path(build).read_text() == log
    assert codeload_downloads(github) == downloads + 1
    assert SourceBuild.objects.count() == 1


# --- A build that fails ----------------------------------------------------------------------


def test_a_repository_that_does_not_compile_fails_with_the_compilers_error(github, data_dir, owner):
    repository, sha = publish(github, "failing-build")
    recipe = analysed_recipe(f"https://github.com/{repository}", sha)
    assert recipe["buildScript"] is True

    with pytest.raises(BuildFailed) as failure:
        ensure_build(repository, "", sha, recipe, user=owner)

    message = str(failure.value)
    assert "error TS2322: Type 'string' is not assignable to type 'number'." in message
    assert "src/index.ts(8,7)" in message
    build = SourceBuild.objects.get(repository=repository, commit_sha=sha)
    assert build.status == BuildStatus.FAILED
    assert build.error == message
    assert build.finished_at is not None
    assert "error TS2322" in log_path(build).read_text()
    assert not app_folder(build).exists()


# --- A hostile install script ------------------------------------------------------------------


class Listener:
    """A TCP listener on every interface that counts the connections it accepts."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("0.0.0.0", 0))  # noqa: S104 - the point
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.accepted: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                peer, address = self.socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(address)
            peer.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    running = Listener()
    yield running
    running.close()


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def host_addresses() -> list[str]:
    return [
        network.removesuffix("/32")
        for network in sandbox.host_networks()
        if network.endswith("/32") and not network.startswith("127.")
    ]


def test_a_hostile_install_script_gets_nothing_out_of_its_folder(
    github, data_dir, owner, listener, settings
):
    if not sandbox.check().enabled:
        pytest.skip("unsandboxed, the install script would really get out: this needs the sandbox")
    # What a Catwalk host keeps in its data folder, and the project's own secrets.
    canaries = {name: secrets.token_hex(16) for name in ("encryption_key", "secret_key")}
    for name, value in canaries.items():
        (data_dir / name).write_text(value)
        (data_dir / name).chmod(0o600)
    project = Path(settings.BASE_DIR)
    database = connection.settings_dict
    escapes = [
        "/home/escaped",
        "/srv/escaped",
        "/escaped",
        "/root/escaped",
        "/etc/escaped",
        "/usr/local/escaped",
        str(project / "escaped"),
        str(data_dir / "escaped"),
    ]
    project_files = [
        str(project / "data" / "secret_key"),
        str(project / "data" / "encryption_key"),
        str(project / "catwalk" / "settings.py"),
    ]
    targets = {
        "read": [
            *(str(data_dir / name) for name in canaries),
            *project_files,
            f"/proc/{psutil.Process().pid}/environ",
            *([str(database["NAME"])] if "sqlite" in database["ENGINE"] else []),
        ],
        "connect": [
            {"host": "127.0.0.1", "port": listener.port},
            {"host": "127.0.0.1", "port": int(github.api_url.rsplit(":", 1)[1])},
            *({"host": address, "port": listener.port} for address in host_addresses()),
            *(
                [{"host": database["HOST"], "port": int(database["PORT"] or 5432)}]
                if database.get("HOST")
                else []
            ),
        ],
        "write": escapes,
        "hardlink": [str(Path(sys.prefix) / "pyvenv.cfg"), "/etc/passwd"],
        "symlink": [str(data_dir / "secret_key"), "/etc/passwd"],
    }
    # The host's side of every path written to, read from or linked to (the data folder is
    # snapshotted whole); /tmp/escaped is the host's, the script writes its own /tmp's.
    watched = [
        Path(path)
        for path in (
            "/tmp/escaped",
            *escapes,
            *project_files,
            "/etc/passwd",
            str(Path(sys.prefix) / "pyvenv.cfg"),
        )
    ]
    ensure_private_dir(builds_root())  # as the build will: creating it is no escape
    before = snapshot(data_dir, *watched, skip=(builds_root(),))
    repository, sha = publish(
        github, "hostile-postinstall", {"targets.json": json.dumps(targets).encode()}
    )
    recipe = analysed_recipe(f"https://github.com/{repository}", sha)

    build = ensure_build(repository, "", sha, recipe, user=owner)

    assert build.status == BuildStatus.SUCCEEDED
    text = (app_folder(build) / "escape-report.json").read_text()
    report = json.loads(text)
    assert "crashed" not in report, report
    assert report["uid"] == build_uid() != 0
    for secret in (*canaries.values(), settings.SECRET_KEY, *settings.CATWALK_ENCRYPTION_KEYS):
        assert secret not in text
    assert not [
        name
        for name in report["environment"]
        if name.startswith(("CATWALK_", "DJANGO_"))
        or name in {"SECRET_KEY", "DATABASE_URL", "REDIS_URL"}
    ]
    unexpected_reads = [read for read in report["reads"] if read["ok"]]
    assert not unexpected_reads, unexpected_reads
    assert len(report["connects"]) >= 6
    assert not [attempt for attempt in report["connects"] if attempt["ok"]], report["connects"]
    assert listener.accepted == []
    socket.create_connection(("127.0.0.1", listener.port), timeout=5).close()
    assert wait_for(lambda: len(listener.accepted) == 1)  # it was listening all along
    # Only the sandbox's own /tmp (a tmpfs that dies with the build) takes a write.
    landed = [write["target"] for write in report["writes"] if write["ok"]]
    assert set(landed) == {"/tmp/escaped"}, report["writes"]
    assert report["setuid"]["ok"] is False
    hard = [link for link in report["links"] if link["kind"] == "hardlink"]
    assert hard and not [link for link in hard if link["ok"]], hard
    # The process it left behind did not outlive the build.
    assert report["lingering"]["ok"] is True
    left = [
        process
        for process in psutil.process_iter(["uids", "cmdline"])
        if process.info["uids"]
        and process.info["uids"].real == build_uid()
        and process.info["cmdline"] == ["sleep", "600"]
    ]
    assert not psutil.wait_procs(left, timeout=10)[1]
    # On the host: nothing changed outside the build's own folder.
    after = snapshot(data_dir, *watched, skip=(builds_root(),))
    changed = {
        path: (before[path], after.get(path)) for path in before if before[path] != after.get(path)
    }
    added = sorted(set(after) - set(before))
    assert not changed and not added, (changed, added)
    assert sorted(p.name for p in builds_root().iterdir()) == [str(build.pk)]
    assert sorted(p.name for p in (builds_root() / str(build.pk)).iterdir()) == ["app", "build.log"]
    for index, _ in enumerate(targets["symlink"]):
        assert (app_folder(build) / f"symlink-{index}").is_symlink()
