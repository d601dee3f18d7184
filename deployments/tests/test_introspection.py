"""Introspection starts real servers (sandboxed where this host can, bare otherwise, as the
supervisor tests do) and records what they really answer, or why they did not."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from catwalk.testing import make_credential, make_deployment
from deployments.introspection import (
    MAX_DESCRIPTION_CHARS,
    MAX_ITEMS,
    IntrospectionResult,
    credential_hints,
    introspect_package,
    introspection_uid,
    preflight,
)
from deployments.models import Credential, PackageRegistry
from deployments.runtimes import sandbox
from deployments.runtimes.base import PackageError

SANDBOXED, SANDBOX_PROBLEM = sandbox.check().enabled, sandbox.check().problem
EVERYTHING = ("@modelcontextprotocol/server-everything", "2026.8.31")
TIME = ("mcp-server-time", "2026.10.19")
# Downloading a package inside a fresh sandbox, with pytest's own 300 s limit above it.
DOWNLOAD_TIMEOUT = 240.0

# Plain JSON-RPC over stdio, standard library only: 600 tools with long descriptions, 250 a
# page, and only the tools capability. Says on stderr what it was asked and as which uid.
PAGED_SERVER = """
import json, os, sys
print(f"uid {os.getuid()}", file=sys.stderr, flush=True)
for line in sys.stdin:
    message = json.loads(line)
    method, request = message.get("method"), message.get("id")
    params = message.get("params") or {}
    if request is None:
        continue
    print(method, params.get("cursor"), file=sys.stderr, flush=True)
    if method == "initialize":
        result = {
            "protocolVersion": params["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "paged", "version": "1.2.3"},
        }
    elif method == "tools/list":
        start = int(params.get("cursor") or 0)
        result = {"tools": [
            {"name": f"tool-{n}", "description": "d" * 5000, "inputSchema": {"type": "object"}}
            for n in range(start, min(start + 250, 600))
        ]}
        if start + 250 < 600:
            result["nextCursor"] = str(start + 250)
    else:
        print(json.dumps({"jsonrpc": "2.0", "id": request,
                          "error": {"code": -32601, "message": method}}), flush=True)
        continue
    print(json.dumps({"jsonrpc": "2.0", "id": request, "result": result}), flush=True)
"""
MISSING_KEY_SERVER = """
import os, sys
if not os.environ.get("FOO_API_KEY"):
    sys.exit("Error: FOO_API_KEY must be set")
"""
# The marker finds its processes afterwards; it shrugs off SIGTERM, so only the kill ends it.
HANGING_SERVER = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(3600)  # {marker}
"""
DISK_FILLING_SERVER = """
import time
try:
    with open("/tmp/fill", "wb") as handle:
        handle.write(b"x" * (2 << 20))
except OSError:
    pass
time.sleep(60)
"""
REFUSED_SERVER = """
import os, sys
print("uid", os.getuid(), file=sys.stderr)
if os.environ.get("FOO_API_KEY") != "wrong-key-123" or os.environ.get("REGION") != "eu":
    sys.exit("the credentials did not arrive")
sys.exit({message!r})
"""


def run_script(script: str, **options) -> IntrospectionResult:
    """Introspect `python -c SCRIPT`: an absolute entry runs as it is, with no package."""
    return introspect_package(
        "pypi", "mcp", "", entry=sys.executable, arguments=["-c", script], **options
    )


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path_factory) -> Path:
    settings.DATA_DIR = tmp_path_factory.mktemp("introspect")
    if not SANDBOXED:  # a machine without root or the sandbox's tools: run the servers bare
        settings.UNSAFE_NO_SANDBOX = True
    return settings.DATA_DIR


@pytest.mark.parametrize(
    ("text", "secret_names", "given", "expected"),
    [
        ("Error: FOO_API_KEY must be set", {"FOO_API_KEY"}, (), (True, [])),
        ("Missing environment variable GITHUB_PERSONAL_ACCESS_TOKEN", (), (), (True, [])),
        ("Please provide an API key", (), (), (True, [])),
        ("SyntaxError: Unexpected token < in JSON at position 0", (), (), (False, [])),
        ("Error: connect ECONNREFUSED 127.0.0.1:5432", (), (), (False, [])),
        ("unknown option --region-name", (), {"REGION"}, (False, [])),
        (
            "HTTP 403 Forbidden: check FOO_API_KEY",
            {"FOO_API_KEY", "BAR_TOKEN"},
            {"FOO_API_KEY", "BAR_TOKEN"},
            (True, ["FOO_API_KEY"]),
        ),
        (
            "401 Unauthorized",
            {"FOO_API_KEY", "BAR_TOKEN"},
            {"FOO_API_KEY", "BAR_TOKEN", "REGION"},
            (True, ["BAR_TOKEN", "FOO_API_KEY"]),
        ),
        (
            "no such region: REGION=xx",
            {"FOO_API_KEY"},
            {"FOO_API_KEY", "REGION"},
            (True, ["REGION"]),
        ),
        ("Error: invalid api key", {"FOO_API_KEY"}, {"FOO_API_KEY"}, (True, ["FOO_API_KEY"])),
        ("Error: invalid api key", {"FOO_API_KEY"}, (), (True, [])),
    ],
)
def test_credential_hints(text, secret_names, given, expected):
    assert credential_hints(text, secret_names, given) == expected


@pytest.mark.parametrize("sandboxed", [True, False], ids=["sandboxed", "unsandboxed"])
def test_lists_every_page_within_the_bounds_and_asks_only_for_what_was_announced(
    sandboxed, settings
):
    if sandboxed and not SANDBOXED:
        pytest.skip(f"no sandbox here: {SANDBOX_PROBLEM}")
    settings.UNSAFE_NO_SANDBOX = not sandboxed

    result = run_script(PAGED_SERVER, timeout=60)

    assert result.ok, result
    assert (result.server_name, result.server_version) == ("paged", "1.2.3")
    assert result.protocol_version
    assert [tool["name"] for tool in result.tools] == [f"tool-{n}" for n in range(MAX_ITEMS)]
    assert result.tools[0] == {
        "name": "tool-0",
        "description": "d" * MAX_DESCRIPTION_CHARS,
        "inputSchema": {"type": "object"},
    }
    assert (result.resources, result.prompts) == ([], [])
    # Two pages make 500 tools: the third is never asked for, nor resources or prompts.
    assert result.stderr_tail[1:] == ["initialize None", "tools/list None", "tools/list 250"]
    uid = introspection_uid() if sandboxed else os.getuid()
    assert result.stderr_tail[0] == f"uid {uid}"
    meta = json.loads(json.dumps(result.as_meta()))
    assert meta["verified"] is True
    assert meta["serverInfo"] == {"name": "paged", "version": "1.2.3"}
    assert len(meta["tools"]) == MAX_ITEMS
    assert (meta["needsCredentials"], meta["suspectCredentials"], meta["error"]) == (False, [], "")


def test_works_from_a_worker_thread():
    results: list[IntrospectionResult] = []
    thread = threading.Thread(target=lambda: results.append(run_script(PAGED_SERVER, timeout=60)))

    thread.start()
    thread.join(90)

    assert not thread.is_alive()
    assert results[0].ok, results[0]
    assert len(results[0].tools) == MAX_ITEMS


def test_a_server_that_exits_asking_for_an_api_key_needs_credentials():
    started = time.monotonic()

    result = run_script(MISSING_KEY_SERVER, secret_names={"FOO_API_KEY"}, timeout=60)

    assert time.monotonic() - started < 30  # its exit ends the wait, not the timeout
    assert not result.ok
    assert result.needs_credentials
    assert result.suspect_credentials == []  # it was given none
    assert result.error == "The server exited before answering initialize."
    assert result.stderr_tail[-1] == "Error: FOO_API_KEY must be set"
    assert (result.tools, result.server_name) == ([], "")


def test_a_server_that_never_answers_times_out_and_leaves_no_process_behind():
    marker = f"introspection-hang-{uuid.uuid4()}"
    started = time.monotonic()

    result = run_script(HANGING_SERVER.format(marker=marker), timeout=3)

    # The timeout, then the SDK's stop: stdin closed, SIGTERM, SIGKILL, about 2 s each.
    assert time.monotonic() - started < 20
    assert not result.ok
    assert result.error == "The server did not answer within 3 s (waiting for initialize)."
    assert not result.needs_credentials
    survivors = [
        p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])
    ]
    assert survivors == []


def test_a_server_the_sandbox_stops_says_which_limit_it_blew(settings):
    if not SANDBOXED:
        pytest.skip(f"no sandbox here: {SANDBOX_PROBLEM}")
    settings.SANDBOX_DISK_MB = 1

    result = run_script(DISK_FILLING_SERVER, timeout=60)

    assert not result.ok
    assert result.error == "The sandbox stopped the server: disk limit (1 MiB) reached."


def test_without_the_sandbox_nothing_starts_and_the_result_says_why(settings):
    settings.SANDBOX_TOOLS_PATH = "/nonexistent"
    settings.UNSAFE_NO_SANDBOX = False

    result = run_script(PAGED_SERVER)

    assert not result.ok
    assert result.error.startswith("Not started: MCP servers run only inside the sandbox")
    assert "CATWALK_UNSAFE_NO_SANDBOX=1" in result.error
    assert not (settings.DATA_DIR / "run").exists()


@pytest.mark.parametrize(
    ("registry", "name", "version"),
    [("npm", "--eval", ""), ("pypi", "mcp-server-time", ">=1"), ("oci", "alpine", "")],
)
def test_an_invalid_package_is_refused_before_anything_runs(registry, name, version, settings):
    with pytest.raises(PackageError):
        introspect_package(registry, name, version)
    assert not (settings.DATA_DIR / "run").exists()


def deployment_refused_with(owner, message: str):
    deployment = make_deployment(
        owner,
        package_registry=PackageRegistry.PYPI,
        package_name="mcp",
        package_version="",
        entry_command=sys.executable,
        entry_args=["-c", REFUSED_SERVER.format(message=message)],
    )
    make_credential(deployment, "FOO_API_KEY", "wrong-key-123")
    make_credential(deployment, "BAR_TOKEN", "bar-secret-456")
    region = Credential(deployment=deployment, name="REGION", is_secret=False)
    region.set_value("eu")
    region.save()
    return deployment


@pytest.mark.django_db
def test_preflight_points_at_the_credential_the_server_rejects(owner):
    deployment = deployment_refused_with(owner, "401 Unauthorized: invalid FOO_API_KEY")

    result = preflight(deployment, timeout=60)

    assert not result.ok
    assert result.needs_credentials
    assert result.suspect_credentials == ["FOO_API_KEY"]
    assert result.stderr_tail[-1] == "401 Unauthorized: invalid FOO_API_KEY"
    deployment.refresh_from_db()
    uid = deployment.sandbox_uid if SANDBOXED else os.getuid()
    assert uid is not None
    assert result.stderr_tail[0] == f"uid {uid}"


@pytest.mark.django_db
def test_preflight_keeps_no_secret_in_stderr_and_an_echoed_one_points_at_its_variable(owner):
    deployment = deployment_refused_with(owner, "Error 401: the key wrong-key-123 was refused")

    result = preflight(deployment, timeout=60)

    assert result.suspect_credentials == ["FOO_API_KEY"]
    assert result.stderr_tail[-1] == "Error 401: the key [FOO_API_KEY] was refused"
    assert "wrong-key-123" not in json.dumps(result.as_meta())


@pytest.mark.slow
def test_the_everything_server_from_npm():
    result = introspect_package("npm", *EVERYTHING, timeout=DOWNLOAD_TIMEOUT)

    assert result.ok, result
    assert (result.server_name, result.server_version) == ("mcp-servers/everything", "2.0.0")
    tools = {tool["name"]: tool for tool in result.tools}
    assert {"echo", "get-sum", "get-env", "get-tiny-image"} <= tools.keys()
    assert tools["echo"]["inputSchema"]["properties"]["message"]["type"] == "string"
    assert set(tools["get-sum"]["inputSchema"]["properties"]) == {"a", "b"}
    resources = {resource["uri"]: resource for resource in result.resources}
    assert resources["demo://resource/static/document/architecture.md"] == {
        "uri": "demo://resource/static/document/architecture.md",
        "name": "architecture.md",
        "description": "Static document file exposed from /docs: architecture.md",
        "mimeType": "text/markdown",
    }
    prompts = {prompt["name"]: prompt for prompt in result.prompts}
    assert {"simple-prompt", "args-prompt", "completable-prompt", "resource-prompt"} <= set(prompts)
    assert prompts["args-prompt"]["arguments"][0] == {
        "name": "city",
        "description": "Name of the city",
        "required": True,
    }
    assert not result.needs_credentials


@pytest.mark.slow
def test_the_time_server_from_pypi():
    result = introspect_package("pypi", *TIME, timeout=DOWNLOAD_TIMEOUT)

    assert result.ok, result
    assert (result.server_name, result.server_version) == ("mcp-time", TIME[1])
    assert [tool["name"] for tool in result.tools] == ["get_current_time", "convert_time"]
    assert result.tools[0]["inputSchema"]["required"] == ["timezone"]
    assert (result.resources, result.prompts) == ([], [])


@pytest.mark.django_db
def test_an_analysis_preflight_on_a_draft_deployment_names_the_wrong_credential(
    owner, stranger, github, code_hosts
):
    from analysis import services
    from analysis.tests.test_services import meta_of, publish_weather, weather_files

    github.add_repository("acme", "weather-mcp", weather_files())
    publish_weather(code_hosts[1])
    deployment = deployment_refused_with(owner, "401 Unauthorized: invalid FOO_API_KEY")
    options = services.Options(
        use_claude=False, introspect=True, preflight_deployment=str(deployment.pk)
    )
    mine = services.request_analysis(owner, "https://github.com/acme/weather-mcp", options)
    theirs = services.request_analysis(stranger, "https://github.com/acme/weather-mcp", options)

    mine = services.run_analysis(mine.pk, options)
    theirs = services.run_analysis(theirs.pk, options)

    tools = meta_of(mine)["tools"]
    assert tools["verified"] is False
    assert tools["suspectCredentials"] == ["FOO_API_KEY"]
    assert "check FOO_API_KEY" in " ".join(meta_of(mine)["warnings"])
    assert "wrong-key-123" not in json.dumps(mine.result)
    # Another user's analysis cannot run someone else's deployment with its credentials.
    assert meta_of(theirs)["tools"]["error"] == "The draft deployment was not found."


def test_an_analysis_never_introspects_a_host_program_named_as_the_entry():
    from deployments.introspection import introspect_for_analysis

    package = {"registryType": "npm", "identifier": "weather-mcp", "version": "1.2.0"}
    for entry in ("/bin/sh", "../../bin/sh", "--eval"):
        result = introspect_for_analysis({**package, "entry": entry}, owner_id=None)

        assert result["verified"] is False
        assert "not a command name" in result["error"]
