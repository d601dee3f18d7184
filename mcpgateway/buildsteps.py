"""Running the steps of a build from source, standard library only.

Shared by the builds on a Catwalk host (`deployments/builds.py`) and the Fly runner, which
builds inside the deployment's machine (`mcpgateway/runner.py`): a step runs with a time limit
while its folder is checked against a size limit; the folder is handed to the build's uid
before and sealed after (root's, readable by everyone, writable by no one else).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from mcpgateway import sandbox_profile
from mcpgateway.sandbox import LIMIT_EXIT_STATUS

SIZE_CHECK_SECONDS = 3.0
POLL_SECONDS = 0.2


# Install scripts may read CI to stay non-interactive; uv keeps its venv in the project.
BUILD_VARIABLES = {"CI": "true", "UV_PROJECT_ENVIRONMENT": ".venv"}


def build_environment(*, home: str, tmp: str, npm_cache: str, uv_cache: str) -> dict[str, str]:
    """A build step's environment: what the package managers need, never a credential."""
    environment = sandbox_profile.package_environment(
        home=home, tmp=tmp, npm_cache=npm_cache, uv_cache=uv_cache
    )
    environment.update(BUILD_VARIABLES)
    return environment


class StepFailed(Exception):
    """A build step failed or was stopped; the message is for the user."""


def supervise(
    process: subprocess.Popen, folder: Path, *, timeout_seconds: float, max_mb: int
) -> None:
    """Wait for a step; stop it past the time limit or when `folder` grows past `max_mb`."""
    started = time.monotonic()
    next_size_check = started + SIZE_CHECK_SECONDS
    limit = max_mb << 20
    while process.poll() is None:
        now = time.monotonic()
        problem = ""
        if now - started > timeout_seconds:
            problem = f"The build step ran for more than {timeout_seconds:g} s."
        elif now >= next_size_check:
            next_size_check = now + SIZE_CHECK_SECONDS
            if size(folder) > limit:
                problem = f"The build grew past {max_mb} MiB."
        if problem:
            stop(process)
            raise StepFailed(problem)
        time.sleep(POLL_SECONDS)
    if process.returncode == LIMIT_EXIT_STATUS:
        raise StepFailed("The sandbox stopped the build: it went over a resource limit.")
    if process.returncode != 0:
        raise StepFailed(f"The build step failed (exit status {process.returncode}).")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the step's process group, SIGKILL after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def own(folder: Path, uid: int) -> None:
    """Hand `folder` and everything in it to `uid` (links themselves, never their targets)."""
    for path, folders, files in os.walk(folder):
        os.lchown(path, uid, uid)
        for entry in folders + files:
            os.lchown(os.path.join(path, entry), uid, uid)


def seal(folder: Path) -> None:
    """Root's, readable by everyone, writable by no one else: the deployments' read-only layer."""
    as_root = os.geteuid() == 0
    for path, _, files in os.walk(folder):
        if as_root:
            os.lchown(path, 0, 0)
        os.chmod(path, 0o755)  # noqa: S103 - readable by the deployments' uids, by design
        for entry in files:
            target = os.path.join(path, entry)
            if as_root:
                os.lchown(target, 0, 0)
            if os.path.islink(target):
                continue
            mode = os.stat(target).st_mode
            os.chmod(target, 0o755 if mode & 0o111 else 0o644)


def size(folder: Path) -> int:
    """Bytes of disk the files under `folder` take."""
    total = 0
    for path, _, files in os.walk(folder):
        for entry in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(path, entry)).st_blocks * 512
    return total
