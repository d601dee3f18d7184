"""The local runtime: the command a package runs as, its environment, paths, wake and logs."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import psutil
import pytest

from catwalk.testing import make_credential, make_deployment
from deployments.models import Status
from deployments.runtimes.base import PackageError, bridge_secret, get_runtime, package_command
from deployments.runtimes.local import (
    SOCKET_PATH_MAX,
    LocalRuntime,
    PidRecord,
    child_environment,
    launch_spec,
    run_paths,
    short_socket_dir,
)

UVX = "/venv/bin/uvx"


def test_registry_finds_the_local_runtime_by_name():
    assert isinstance(get_runtime("local"), LocalRuntime)
    with pytest.raises(LookupError, match=r"no runtime named 'k8s'; known: .*local"):
        get_runtime("k8s")


@pytest.mark.parametrize(
    ("args", "argv"),
    [
        (("npm", "@scope/server", "1.2.3"), ["npx", "-y", "--", "@scope/server@1.2.3"]),
        (("npm", "server", ""), ["npx", "-y", "--", "server@latest"]),
        (
            ("npm", "pkg", "2.0.0-beta.1", "pkg-mcp", ["--flag", "x y"]),
            ["npx", "-y", "--package=pkg@2.0.0-beta.1", "--", "pkg-mcp", "--flag", "x y"],
        ),
        (
            ("pypi", "mcp-server-time", "2026.10.19"),
            [UVX, "--from", "mcp-server-time==2026.10.19", "mcp-server-time"],
        ),
        (
            ("pypi", "Some.Tool", "", "tool-mcp", ["-v"]),
            [UVX, "--from", "Some.Tool", "tool-mcp", "-v"],
        ),
        (("pypi", "anything", "1", "/usr/bin/env", ["-i"]), ["/usr/bin/env", "-i"]),
    ],
)
def test_package_runs_as_an_argv_list(args, argv):
    assert package_command(*args, uvx=UVX) == argv


@pytest.mark.parametrize(
    ("registry", "name", "version", "problem"),
    [
        ("npm", "-y", "", "not a valid npm package name"),
        ("npm", "bad name", "", "not a valid npm package name"),
        ("npm", "../escape", "", "not a valid npm package name"),
        ("npm", "server", "file:../../etc", "not an npm version"),
        ("npm", "server", "^1.0.0", "not an npm version"),
        ("npm", "server", "github:evil/repo", "not an npm version"),
        ("pypi", "--index-url", "", "not a valid PyPI project name"),
        ("pypi", "tool", "1.0; rm -rf /", "not a PEP 440 version"),
        ("pypi", "tool", ">=1.0", "not a PEP 440 version"),
        ("oci", "ghcr.io/x/y", "", "not a command Catwalk runs on this host"),
        ("oci", "ghcr.io/X/y", "", "not a valid"),
        ("docker", "alpine", "", "docker packages cannot be run yet"),
    ],
)
def test_odd_package_names_and_versions_never_reach_a_command_line(
    registry, name, version, problem
):
    with pytest.raises(PackageError, match=problem):
        package_command(registry, name, version)


@pytest.mark.parametrize("entry", ["--eval", "rel/path", "a b"])
def test_entry_command_must_be_an_executable_name_or_an_absolute_path(entry):
    with pytest.raises(PackageError, match="executable name or an absolute path"):
        package_command("npm", "server", "1.0.0", entry)


def test_long_data_dir_puts_sockets_in_a_short_private_folder(settings, tmp_path):
    settings.DATA_DIR = tmp_path / ("deep" * 20)
    paths = run_paths("0b9a4f9e-7d3c-4c4e-9a57-5a1f7f5d8c11")

    assert paths.root.is_relative_to(settings.DATA_DIR)
    assert paths.socket.parent == short_socket_dir()
    assert len(os.fsencode(paths.socket)) <= SOCKET_PATH_MAX
    try:
        paths.prepare()
        assert paths.socket.parent.stat().st_mode & 0o777 == 0o700
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(str(paths.socket))  # really fits the kernel's limit
        paths.remove()
        assert not paths.socket.exists()
        assert not paths.root.exists()
    finally:
        shutil.rmtree(short_socket_dir(), ignore_errors=True)


def test_short_data_dir_keeps_the_socket_beside_the_pidfile(settings):
    settings.DATA_DIR = Path("/srv/catwalk")

    paths = run_paths("0b9a4f9e-7d3c-4c4e-9a57-5a1f7f5d8c11")

    assert paths.socket == paths.root / "bridge.sock"
    assert paths.root == Path("/srv/catwalk/run/0b9a4f9e-7d3c-4c4e-9a57-5a1f7f5d8c11")


@pytest.mark.django_db
def test_child_environment_is_minimal_plus_credentials(owner, settings, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "catwalk-secret")
    monkeypatch.setenv("CATWALK_DATA_DIR", "/somewhere")
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
    deployment = make_deployment(owner)
    make_credential(deployment, "API_KEY", "s3cret")

    environment = child_environment(deployment, run_paths(deployment.id))

    assert environment["API_KEY"] == "s3cret"
    assert environment["HOME"] == str(run_paths(deployment.id).home)
    assert environment["SSL_CERT_FILE"] == "/etc/ssl/certs/ca-certificates.crt"
    assert os.path.dirname(sys.executable) in environment["PATH"].split(os.pathsep)
    assert "SECRET_KEY" not in environment
    assert "CATWALK_DATA_DIR" not in environment


@pytest.mark.django_db
def test_bridge_gets_its_secret_and_runs_from_the_project_folder(owner, settings):
    settings.UNSAFE_NO_SANDBOX = True
    deployment = make_deployment(owner, package_version="2026.1.26")
    make_credential(deployment, "CATWALK_BRIDGE_SECRET", "forged")

    spec = launch_spec(deployment)

    assert spec.env["CATWALK_BRIDGE_SECRET"] == bridge_secret(deployment.id)
    assert spec.cwd == str(settings.BASE_DIR)
    assert spec.argv[:5] == [sys.executable, "-E", "-s", "-m", "mcpgateway.bridge"]
    separator = spec.argv.index("--")
    assert spec.argv[separator + 1 :] == [
        "npx",
        "-y",
        "--",
        "@modelcontextprotocol/server-everything@2026.1.26",
    ]
    assert f"unix:{run_paths(deployment.id).socket}" in spec.argv
    assert "--fatal-exit-status" not in spec.argv


@pytest.mark.django_db
def test_endpoint_is_the_bridge_socket_with_the_bridge_secret(owner):
    deployment = make_deployment(owner)

    endpoint = LocalRuntime().endpoint(deployment)

    assert endpoint.unix_socket == str(run_paths(deployment.id).socket)
    assert endpoint.headers == {"X-Catwalk-Bridge-Secret": bridge_secret(deployment.id)}


@pytest.mark.django_db
def test_wake_starts_a_sleeping_deployment_only(owner):
    sleeping = make_deployment(owner, status=Status.SLEEPING)
    running = make_deployment(owner, status=Status.RUNNING)

    LocalRuntime().wake(sleeping)
    LocalRuntime().wake(running)

    sleeping.refresh_from_db()
    running.refresh_from_db()
    assert sleeping.status == Status.STARTING
    assert running.status == Status.RUNNING
    assert not running.events.exists()


@pytest.mark.django_db
def test_logs_are_the_tail_of_the_servers_stderr_across_rotation(owner, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    deployment = make_deployment(owner)
    paths = run_paths(deployment.id)
    paths.root.mkdir(parents=True)
    paths.stderr_log.with_name("stderr.log.1").write_text("".join(f"old {i}\n" for i in range(5)))
    paths.stderr_log.write_text("".join(f"new {i}\n" for i in range(3)))

    assert LocalRuntime().logs(deployment, lines=2) == ["new 1", "new 2"]
    assert LocalRuntime().logs(deployment, lines=5) == ["old 3", "old 4", "new 0", "new 1", "new 2"]
    assert LocalRuntime().logs(make_deployment(owner)) == []


def test_pid_record_does_not_match_a_reused_pid(tmp_path):
    me = psutil.Process()
    path = tmp_path / "bridge.pid"
    PidRecord(me.pid, me.create_time() - 5, "/tmp/x.sock").write(path)

    record = PidRecord.read(path)

    assert record == PidRecord(me.pid, me.create_time() - 5, "/tmp/x.sock")
    assert record.find_process() is None  # started at another time: not our bridge
    assert PidRecord(me.pid, me.create_time(), "/tmp/x.sock").find_process() is None  # not one
