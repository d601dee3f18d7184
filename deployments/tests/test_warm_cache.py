"""Shared package caches: `warm_cache` fills them in the sandbox; sandboxed servers then start
from them offline, and what a server writes stays in its own layer."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from deployments.runtimes import sandbox
from deployments.runtimes.local import (
    SANDBOX_BINDS,
    SHARED_CACHE_MARKER,
    cache_root,
    sandboxed_package_environment,
    shared_caches,
)

EVERYTHING = ("@modelcontextprotocol/server-everything", "2026.8.31")
TIME = ("mcp-server-time", "2026.10.19")
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not sandbox.check().enabled, reason=f"no sandbox here: {sandbox.check().problem}"
    ),
]


@pytest.fixture
def data_dir(settings, tmp_path_factory) -> Path:
    settings.DATA_DIR = tmp_path_factory.mktemp("warm")
    return settings.DATA_DIR


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in folder.rglob("*")
        if path.is_file()
    }


def start_offline(folder: Path, command: list[str], extra_env: dict[str, str]) -> dict:
    """Start a server sandboxed over the shared caches, offline; its answer to initialize."""
    sandboxed = sandbox.prepare(
        command,
        environment={**sandboxed_package_environment(), **extra_env},
        environment_file=folder / "env",
        profile_file=folder / "sandbox.json",
        name="warm-test",
        uid=299_000,
        area=folder / "area",
        binds=SANDBOX_BINDS,
        caches=shared_caches(),
    )
    result = subprocess.run(
        sandboxed,
        input=json.dumps(INITIALIZE) + "\n",
        capture_output=True,
        text=True,
        env=sandbox.ROOT_ENVIRONMENT,
        timeout=120,
        check=False,
    )
    for line in result.stdout.splitlines():
        if line.startswith("{") and '"id":1' in line.replace(" ", ""):
            return json.loads(line)
    raise AssertionError(f"no answer to initialize:\n{result.stderr[-2000:]}")


def test_warmed_packages_start_offline_and_the_shared_cache_stays_untouched(data_dir):
    call_command("warm_cache", f"npm:{EVERYTHING[0]}@{EVERYTHING[1]}", f"pypi:{TIME[0]}=={TIME[1]}")
    npm, uv = cache_root() / "npm", cache_root() / "uv"
    assert (npm / SHARED_CACHE_MARKER).is_file() and (uv / SHARED_CACHE_MARKER).is_file()
    before = {name: snapshot(cache_root() / name) for name in ("npm", "uv")}

    everything = start_offline(
        data_dir,
        ["npx", "-y", "--", f"{EVERYTHING[0]}@{EVERYTHING[1]}", "stdio"],
        {"npm_config_offline": "true"},
    )
    time_server = start_offline(
        data_dir,
        [str(Path(sys.executable).with_name("uvx")), "--offline", "--from",
         f"{TIME[0]}=={TIME[1]}", TIME[0]],
        {"UV_OFFLINE": "1"},
    )  # fmt: skip

    assert everything.get("result", {}).get("serverInfo"), everything
    assert time_server["result"]["serverInfo"]["name"] == "mcp-time"
    # Both servers wrote (npm's index, uv's environments): into their own layers only.
    assert {name: snapshot(cache_root() / name) for name in ("npm", "uv")} == before
    # Owned by the warming uid, never by a deployment's.
    assert not any(path.stat().st_uid >= settings.SANDBOX_UID_BASE for path in npm.rglob("*"))


def test_an_unprepared_cache_is_not_layered(data_dir):
    (cache_root() / "npm").mkdir(parents=True)  # filled as root by an unsandboxed run, say

    assert shared_caches() == {}


def test_warming_a_bad_name_is_refused_before_anything_runs(data_dir):
    with pytest.raises(CommandError, match="npm:NAME"):
        call_command("warm_cache", "left-pad")
    assert not os.path.exists(cache_root())
