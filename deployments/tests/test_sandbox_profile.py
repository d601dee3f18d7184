"""The local runtime's side of the sandbox: availability, refusal, uids and the profile."""

from __future__ import annotations

import json
import shlex
import socket
import stat
import sys
from pathlib import Path

import pytest

from catwalk.testing import make_credential, make_deployment
from deployments.runtimes import sandbox
from deployments.runtimes.local import SHARED_CACHE_MARKER, cache_root, launch_spec, run_paths
from mcpgateway import sandbox as launcher

needs_sandbox = pytest.mark.skipif(
    not sandbox.check().enabled, reason=f"no sandbox here: {sandbox.check().problem}"
)


def server_environment(path: Path) -> dict[str, str]:
    """What the server gets: the file, read the way the launcher's shell reads it."""
    return {
        name: shlex.split(value)[0] if value else ""
        for name, _, value in (line.partition("=") for line in path.read_text().splitlines())
    }


@needs_sandbox
@pytest.mark.django_db
def test_credentials_reach_the_file_quoted_and_never_the_bridge(owner, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    deployment = make_deployment(owner)
    make_credential(deployment, "API_KEY", "it's $(id) `id`")

    spec = launch_spec(deployment)

    assert "API_KEY" not in spec.env
    assert server_environment(run_paths(deployment.id).sandbox_environment)["API_KEY"] == (
        "it's $(id) `id`"
    )


def test_the_runtime_and_the_launcher_agree_on_exit_statuses_and_messages():
    assert sandbox.LIMIT_EXIT_STATUS == launcher.LIMIT_EXIT_STATUS
    assert sandbox.SETUP_EXIT_STATUS == launcher.SETUP_EXIT_STATUS
    assert f"{launcher.MESSAGE_PREFIX} stopped: " == sandbox.LIMIT_MESSAGE_PREFIX
    assert sandbox.LAUNCHER.resolve() == Path(launcher.__file__).resolve()


@pytest.mark.django_db
def test_missing_tools_refuse_to_start_and_say_what_to_install(owner, settings):
    settings.SANDBOX_TOOLS_PATH = "/nonexistent"
    deployment = make_deployment(owner)

    check = sandbox.check()
    with pytest.raises(sandbox.SandboxUnavailable) as refused:
        launch_spec(deployment)

    assert not check.enabled and not check.may_start
    message = str(refused.value)
    assert "bwrap (Debian package bubblewrap)" in message
    assert "slirp4netns (Debian package slirp4netns)" in message
    assert "CATWALK_UNSAFE_NO_SANDBOX=1" in message


@pytest.mark.django_db
def test_unsafe_setting_runs_servers_unsandboxed(owner, settings):
    settings.UNSAFE_NO_SANDBOX = True
    deployment = make_deployment(owner)

    spec = launch_spec(deployment)

    assert sandbox.check().may_start and not sandbox.check().enabled
    assert str(sandbox.LAUNCHER) not in spec.argv


@pytest.mark.django_db
def test_each_deployment_gets_its_own_uid_above_the_base_once(owner, settings):
    settings.SANDBOX_UID_BASE = 300_000
    first, second = make_deployment(owner, name="one"), make_deployment(owner, name="two")

    uids = [first.ensure_sandbox_uid(), second.ensure_sandbox_uid(), first.ensure_sandbox_uid()]

    assert uids == [300_000, 300_001, 300_000]
    first.refresh_from_db()
    assert first.sandbox_uid == 300_000


@pytest.mark.django_db
def test_host_addresses_and_networks_are_blocked(owner, settings):
    settings.SANDBOX_BLOCKED_NETWORKS = ["203.0.113.7/32"]
    paths = run_paths(make_deployment(owner).id)

    profile = sandbox.profile(
        name="x",
        uid=300_000,
        area=paths.sandbox_area,
        binds={"home": "/h"},
        caches={},
        environment_file=paths.sandbox_environment,
    )

    # The address this host leaves by, found independently of host_networks().
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("203.0.113.1", 9))  # no packet is sent
        own_address = probe.getsockname()[0]
    assert "203.0.113.7/32" in profile["blocked"]
    assert f"{own_address}/32" in profile["blocked"]


@needs_sandbox
@pytest.mark.django_db
def test_sandboxed_launch_wraps_the_server_and_writes_a_private_profile(owner, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    settings.SANDBOX_MEMORY_MB = 300
    settings.SANDBOX_DISK_MB = 40
    deployment = make_deployment(owner, package_version="2026.1.26")

    spec = launch_spec(deployment)

    paths = run_paths(deployment.id)
    separator = spec.argv.index("--")
    assert spec.argv[separator + 1 : separator + 8] == [
        sys.executable,
        "-I",
        "-S",
        str(sandbox.LAUNCHER),
        "--profile",
        str(paths.sandbox_profile),
        "--",
    ]
    assert spec.argv[-4:] == [
        "npx",
        "-y",
        "--",
        "@modelcontextprotocol/server-everything@2026.1.26",
    ]
    assert spec.argv.count("--fatal-exit-status") == 2
    assert stat.S_IMODE(paths.sandbox_profile.stat().st_mode) == 0o600
    profile = json.loads(paths.sandbox_profile.read_text())
    deployment.refresh_from_db()
    assert profile["uid"] == deployment.sandbox_uid >= settings.SANDBOX_UID_BASE
    assert profile["limits"]["memory_bytes"] == 300 << 20
    assert profile["writable"]["size_bytes"] == 40 << 20
    assert str(settings.DATA_DIR) in profile["hidden"]
    # The bridge runs as root with a fixed environment; the server's is in a 0600 file.
    assert set(spec.env) == {"PATH", "LANG", "CATWALK_BRIDGE_SECRET"}
    server_env = server_environment(paths.sandbox_environment)
    assert stat.S_IMODE(paths.sandbox_environment.stat().st_mode) == 0o600
    assert profile["environment_file"] == str(paths.sandbox_environment)
    assert server_env["HOME"] == profile["writable"]["binds"]["home"] == "/home/server"
    assert str(settings.DATA_DIR) not in json.dumps(profile["writable"]["binds"])
    assert server_env["TMPDIR"] == "/tmp"
    assert server_env["npm_config_cache"] == "/home/server/.npm"
    assert profile["caches"] == []  # no shared cache has been prepared by warm_cache


@needs_sandbox
@pytest.mark.django_db
def test_prepared_shared_caches_are_layered_under_the_servers_own(owner, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    for name in ("npm", "uv"):
        folder = cache_root() / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SHARED_CACHE_MARKER).touch()
    deployment = make_deployment(owner)

    launch_spec(deployment)

    profile = json.loads(run_paths(deployment.id).sandbox_profile.read_text())
    assert {(c["shared"], c["target"]) for c in profile["caches"]} == {
        (str(cache_root() / "npm"), "/home/server/.npm"),
        (str(cache_root() / "uv"), "/home/server/.cache/uv"),
    }
