"""How long a Fly deployment's machine takes from boot to serving, on Catwalk's side.

What runs in a Fly Machine is the runner (`python -m mcpgateway.runner`): it prepares the
server's folders and environment, sandboxes the server and execs the bridge, which starts the
server. This times that path here, as the machine would run it, from spawning the runner to the
answer of `tools/list` through the bridge (health check polled, then `initialize`,
`notifications/initialized`, `tools/list` with the relay secret), for three servers:

- the stdio fixture server (Python, nothing to download): the runner, sandbox and bridge alone;
- server-everything through `npx` with an empty package cache: a machine's first boot, and every
  wake from `stop` (a stopped machine boots from a fresh root filesystem);
- the same with the package in the image's warm cache (the runner image's `WARM_NPM_PACKAGES`),
  which is also about what a wake from `suspend` costs before its memory is restored;
- a repository built from source (the `plain-javascript` fixture, served by the local GitHub
  stand-in): its first boot, which downloads the repository and runs `npm ci` in the sandbox
  with an empty npm cache, and every later boot, which finds the build on the machine's volume;
- an OCI image from the local registry stand-in: the fixture image (a POSIX-shell server on
  dash, 2 layers, under 1 MiB) and the same with a third layer of 64 MiB of incompressible
  files in 256 files, at its first boot (pull, verify, unpack, then the sandbox with the image
  as its root) and at every later boot (the image on the volume). The registry is on loopback,
  so the pull's network time is not in it: add the image's size over the registry's bandwidth.

Fly's own part — placing the machine and booting its VM — is not measurable here and comes on
top. The CPU column is the runner's whole process tree (bridge, launcher, sandbox helpers, npm,
the server) at the moment the answer arrives.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import report, sandbox_start
from bench.proctree import tree_cpu_seconds

REPO = Path(__file__).resolve().parents[1]
EVERYTHING = "@modelcontextprotocol/server-everything@2026.8.31"
BEGIN_MARKER = "<!-- bench:fly-start:begin -->"
END_MARKER = "<!-- bench:fly-start:end -->"
START_TIMEOUT_S = 300.0
SECRET = "bench-relay-secret"  # noqa: S105 - a throwaway for a loopback bridge
MCP_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "X-Catwalk-Bridge-Secret": SECRET,
}


@dataclass
class Case:
    label: str
    command: list[str]
    warm_npm: str = ""
    env: dict[str, str] = field(default_factory=dict)
    # A source build's volume kept across starts (a later boot); else each start gets a new one.
    keep_builds: Path | None = None
    keep_images: Path | None = None  # the same for an image
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    tools: int = 0

    def as_dict(self) -> dict:
        return {"label": self.label, "wall_ms": self.wall_ms, "cpu_ms": self.cpu_ms}


def unavailable() -> str | None:
    """Why the runner's start cannot be measured here, or None."""
    if os.geteuid() != 0:
        return "the runner's sandbox needs root"
    missing = [tool for tool in ("bwrap", "slirp4netns", "nft", "npx") if not shutil.which(tool)]
    return f"missing {', '.join(missing)}" if missing else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _warm(root: Path, package: str) -> None:
    """Fill the runner's warm npm cache as the runner image's build does."""
    cache = root / "cache" / "npm"
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [shutil.which("npm") or "npm", "exec", "--yes", f"--package={package}", "--", "true"],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(root / "warm-home"),
            "npm_config_cache": str(cache),
            "npm_config_ignore_scripts": "true",
            "npm_config_update_notifier": "false",
        },
        check=True,
        capture_output=True,
        timeout=START_TIMEOUT_S,
    )
    subprocess.run(["chmod", "-R", "a+rwX", str(cache)], check=True)


def _post(client: httpx.Client, body: dict, session: str = "") -> httpx.Response:
    headers = dict(MCP_HEADERS, **({"Mcp-Session-Id": session} if session else {}))
    return client.post("/mcp", headers=headers, json=body)


def _start_once(case: Case, scratch: Path) -> tuple[float, float, int]:
    """Spawn the runner with a fresh root; (wall ms, tree CPU ms, tools) at tools/list's answer."""
    root = Path(tempfile.mkdtemp(prefix="runner-", dir=scratch))
    root.chmod(0o700)
    if case.warm_npm:
        _warm(root, case.warm_npm)
    builds = case.keep_builds or root / "volume" / "builds"
    images = case.keep_images or root / "volume" / "images"
    port = _free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "CATWALK_SERVER_COMMAND": json.dumps(case.command),
        "CATWALK_BRIDGE_SECRET": SECRET,
        "CATWALK_DEPLOYMENT": "bench",
        "CATWALK_RUNNER_LISTEN": f"tcp:127.0.0.1:{port}",
        "CATWALK_RUNNER_ROOT": str(root),
        "CATWALK_RUNNER_READONLY_PATHS": str(REPO / "mcpgateway"),
        "CATWALK_RUNNER_BUILDS": str(builds),
        "CATWALK_RUNNER_IMAGES": str(images),
        **case.env,
    }
    started = time.perf_counter()
    runner = subprocess.Popen(
        [sys.executable, "-m", "mcpgateway.runner"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=START_TIMEOUT_S) as client:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                try:
                    health = client.get("/healthz")
                    # 200 from the bridge; the runner's own answers while it builds say so.
                    if health.status_code == 200 and health.json().get("phase") != "build":
                        break
                except httpx.TransportError:
                    pass
                if runner.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{case.label}: the runner did not come up")
                time.sleep(0.01)
            init = json.loads(sandbox_start.INITIALIZE)
            answer = _post(client, init)
            answer.raise_for_status()
            session = answer.headers.get("mcp-session-id", "")
            _post(client, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
            listed = _post(client, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, session)
            wall = (time.perf_counter() - started) * 1000
            cpu = tree_cpu_seconds(runner.pid) * 1000
            text = listed.text
            payload = text[text.index("{") :].splitlines()[0] if "data:" in text else text
            tools = len(json.loads(payload)["result"]["tools"])
    finally:
        runner.terminate()
        try:
            runner.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(runner.pid, 9)
            runner.wait()
        shutil.rmtree(root, ignore_errors=True)
    return wall, cpu, tools


def _source_env(archive: str) -> dict[str, str]:
    """A source deployment's machine environment, as the Fly runtime composes it for the
    fixture's recipe (npm, a lockfile, no build script)."""
    spec = {
        "archive": archive,
        "steps": [{"what": "install dependencies", "argv": ["npm", "ci"], "folder": ""}],
        "folder": "",
        "http": None,
        "timeout_seconds": START_TIMEOUT_S,
        "max_mb": 1024,
    }
    return {"CATWALK_SOURCE": json.dumps(spec)}


def _image_env(registry, reference: str) -> dict[str, str]:
    spec = {"reference": reference, "registries": {registry.host: registry.url}}
    return {"CATWALK_IMAGE": json.dumps(spec)}


def _large_image(registry) -> str:
    """The fixture image with a third layer of 64 MiB in 256 incompressible files."""
    from mcpgateway.tests import oci_standin

    files = [
        oci_standin.regular(f"srv/data/{index:03}.bin", os.urandom(256 << 10))
        for index in range(256)
    ]
    layers = [*oci_standin.fixture_layers(), oci_standin.tar_gz(files)]
    registry.push("catwalk/large", "1.0", layers, oci_standin.FIXTURE_CONFIG)
    return f"{registry.host}/catwalk/large:1.0"


def measure(starts: int = 5) -> list[Case]:
    from analysis.tests.github_standin import GitHubStandin
    from deployments.tests.source_fixtures import publish
    from mcpgateway.tests.oci_standin import RegistryStandIn, fixture_image

    registry = RegistryStandIn().start()
    small_env = _image_env(registry, fixture_image(registry))
    large_env = _image_env(registry, _large_image(registry))
    github = GitHubStandin()
    repository, sha = publish(github, "plain-javascript")
    source_env = _source_env(f"{github.api_url}/repos/{repository}/tarball/{sha}")
    source_command = ["node", "/srv/app/index.js"]
    cases = [
        Case(
            "fixture server (Python, nothing to download)",
            [sys.executable, str(REPO / "mcpgateway" / "fixture_server.py")],
        ),
        Case("server-everything via npx, empty cache", ["npx", "-y", "--", EVERYTHING]),
        Case(
            "server-everything via npx, warm cache",
            ["npx", "-y", "--", EVERYTHING],
            warm_npm=EVERYTHING,
        ),
        Case(
            "plain-javascript from source, first boot (download, `npm ci`, empty cache)",
            source_command,
            env=source_env,
        ),
        Case(
            "plain-javascript from source, later boot (build on the volume)",
            source_command,
            env=source_env,
        ),
        Case("fixture image (<1 MiB), first boot (pull and unpack)", [], env=small_env),
        Case("fixture image (<1 MiB), later boot (image on the volume)", [], env=small_env),
        Case("64 MiB image, first boot (pull and unpack)", [], env=large_env),
        Case("64 MiB image, later boot (image on the volume)", [], env=large_env),
    ]
    later_source, later_small, later_large = cases[4], cases[6], cases[8]
    try:
        with tempfile.TemporaryDirectory(prefix="cwfly") as folder:
            scratch = Path(folder)
            later_source.keep_builds = scratch / "volume" / "builds"
            later_small.keep_images = scratch / "volume" / "small-images"
            later_large.keep_images = scratch / "volume" / "large-images"
            _start_once(cases[0], scratch)  # warm the page cache; not counted
            # What the later boots find on their volume; not counted.
            for case in (later_source, later_small, later_large):
                _start_once(case, scratch)
            for _ in range(starts):
                for case in cases:  # interleaved, so drift hits all alike
                    wall, cpu, case.tools = _start_once(case, scratch)
                    case.wall_ms.append(wall)
                    case.cpu_ms.append(cpu)
    finally:
        github.close()
        registry.stop()
    return cases


def render(cases: list[Case], context: dict, starts: int) -> str:
    lines = [
        f"| Runner start to `tools/list` answered ({starts} starts each) | median ms | "
        "max ms | CPU ms (median, runner tree) | tools |",
        "|---|---|---|---|---|",
    ]
    for case in cases:
        lines.append(
            f"| {case.label} | {statistics.median(case.wall_ms):.0f} | {max(case.wall_ms):.0f} "
            f"| {statistics.median(case.cpu_ms):.0f} | {case.tools} |"
        )
    lines += ["", *report.provenance(context)]
    return "\n".join(lines)


def update_docs(path: Path, markdown: str) -> None:
    report.replace_section(path, BEGIN_MARKER, END_MARKER, markdown)
