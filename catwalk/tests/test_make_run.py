"""`make run` from a fresh copy with no variables serves the product; Ctrl-C stops it all."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fresh_copy(destination: Path) -> None:
    """What a clone would hold: tracked files plus new ones that are not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / name.decode()
        if source.is_file():
            target = destination / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def wait_for(url: str, deadline: float, process: subprocess.Popen) -> httpx.Response:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"make run exited early with {process.returncode}")
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in time")


def test_make_run_serves_sign_in_and_health_then_stops_cleanly(tmp_path):
    checkout = tmp_path / "catwalk"
    fresh_copy(checkout)
    port = free_port()
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY", "ALLOWED_HOSTS"}
        and not key.startswith(("CATWALK_", "DJANGO_"))
    }
    log = (tmp_path / "make-run.log").open("w")
    process = subprocess.Popen(
        ["make", "run", f"PORT={port}"],
        cwd=checkout,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 420
        health = wait_for(f"http://127.0.0.1:{port}/healthz", deadline, process)
        assert health.status_code == 200, health.text
        sign_in = httpx.get(f"http://127.0.0.1:{port}/accounts/login/", timeout=30)
        assert sign_in.status_code == 200
        assert "Sign in" in sign_in.text
        stylesheet = httpx.get(f"http://127.0.0.1:{port}/static/css/app.css", timeout=30)
        assert stylesheet.status_code == 200
        output = (tmp_path / "make-run.log").read_text()
        assert "/setup/claim-admin/" in output
        members = [p for p in psutil.process_iter(["pid"]) if _in_session(p, process.pid)]
        assert len(members) >= 4  # make, honcho, web, worker, beat and their helpers

        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        process.wait(timeout=60)
        assert _session_is_empty(process.pid, timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _in_session(proc: psutil.Process, session: int) -> bool:
    try:
        return os.getsid(proc.pid) == session
    except (ProcessLookupError, PermissionError):
        return False


def _session_is_empty(session: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in psutil.process_iter(["pid", "status"]) if _in_session(p, session)]
        if not [p for p in alive if p.info["status"] != psutil.STATUS_ZOMBIE]:
            return True
        time.sleep(0.5)
    return False
