"""OCI deployments in the Fly runner: the image pulled from its registry (the local stand-in)
once into the machine's volume, its entrypoint run in the sandbox with the image's files as
the root; a pull that fails reported; an image never run unsandboxed.

Each runner is a real process with a Machine's environment (see test_runner.py); its images
folder stands for the volume, which outlives a runner as a volume outlives a machine's boot.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcpgateway.runner import EX_CONFIG
from mcpgateway.tests.conftest import bridge_sdk_client
from mcpgateway.tests.oci_standin import RegistryStandIn, fixture_image
from mcpgateway.tests.test_runner import (
    CREDENTIAL,
    SECRET,
    machine_environment,
    needs_sandbox,
    run_to_exit,
    running,
)
from mcpgateway.tests.test_runner_source import wait_for_health

pytestmark = pytest.mark.anyio

HEADERS = {"X-Catwalk-Bridge-Secret": SECRET}
SHOWN_VARIABLES = (
    "API_KEY",
    "FIXTURE_IMAGE_VARIABLE",
    "HOME",
    "PATH",
    "FLY_APP_NAME",
    "CATWALK_BRIDGE_SECRET",
    "CATWALK_IMAGE",
    "MACHINE_ONLY_SETTING",
)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry() -> Iterator[RegistryStandIn]:
    with RegistryStandIn() as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def reference(registry) -> str:
    return fixture_image(registry)


@pytest.fixture
def volume() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="catwalk-volume-"))
    yield folder / "images"
    shutil.rmtree(folder, ignore_errors=True)


def image_spec(registry: RegistryStandIn, reference: str) -> str:
    return json.dumps({"reference": reference, "registries": {registry.host: registry.url}})


def image_machine(registry, reference: str, volume: Path, arguments=(), **changes: str):
    return running(
        "sandboxed",
        CATWALK_IMAGE=image_spec(registry, reference),
        CATWALK_RUNNER_IMAGES=str(volume),
        CATWALK_SERVER_COMMAND=json.dumps(list(arguments)),
        **changes,
    )


def blob_fetches(registry: RegistryStandIn) -> int:
    return sum(1 for method, path in registry.requests if method == "GET" and "/blobs/" in path)


async def text_of(client, tool: str, **arguments) -> str:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result
    return result.content[0].text


@needs_sandbox
async def test_an_image_is_pulled_once_and_every_later_boot_runs_it_at_once(
    registry, reference, volume
):
    before = blob_fetches(registry)

    with image_machine(registry, reference, volume) as first:
        first.wait_until_ready()
        async with bridge_sdk_client(first, headers=HEADERS) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            echoed = await text_of(client, "echo", text="from the image")
            argv = await text_of(client, "echo", text="__argv__")
            folder = await text_of(client, "echo", text="__pwd__")
            seen = {name: await text_of(client, "getenv", name=name) for name in SHOWN_VARIABLES}
        assert first.stop() == 0
        first_log = first.stderr
    pulled = blob_fetches(registry) - before

    assert tools == {"echo", "getenv"}
    assert echoed == "from the image"
    assert argv == "--greeting hello"  # the image's Cmd after its Entrypoint
    assert folder == "/srv"  # its WorkingDir
    assert seen == {
        "API_KEY": CREDENTIAL,
        "FIXTURE_IMAGE_VARIABLE": "from-the-image",
        "HOME": "/home/server",
        "PATH": "/bin",
        "FLY_APP_NAME": "",
        "CATWALK_BRIDGE_SECRET": "",
        "CATWALK_IMAGE": "",
        "MACHINE_ONLY_SETTING": "",
    }
    assert pulled >= 3  # its config and both layers
    assert f"pulling the image {reference}" in first_log
    (folder_on_volume,) = volume.iterdir()
    assert (folder_on_volume / "rootfs" / "srv" / "server.sh").is_file()

    # A later boot (a wake, a restart) finds the image on the volume and asks nothing of the
    # registry; arguments given replace the image's command.
    with image_machine(registry, reference, volume, ["--mode", "second"]) as second:
        second.wait_until_ready()
        async with bridge_sdk_client(second, headers=HEADERS) as client:
            argv = await text_of(client, "echo", text="__argv__")
        assert second.stop() == 0
        second_log = second.stderr

    assert argv == "--mode second"
    assert blob_fetches(registry) - before == pulled
    assert "pulling the image" not in second_log


@needs_sandbox
async def test_an_image_that_cannot_be_pulled_is_reported_on_the_health_route(
    registry, reference, volume
):
    missing = reference.rsplit(":", 1)[0] + ":no-such-tag"

    with image_machine(registry, missing, volume) as machine:
        health = wait_for_health(machine, "crashed")
        assert machine.stop() == 0

    assert health["phase"] == "build"
    assert "The image could not be pulled" in health["last_error"]
    assert "not found" in health["last_error"]
    assert not any(volume.iterdir()) if volume.exists() else True


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"CATWALK_UNSAFE_NO_SANDBOX": "1"}, "an OCI image runs only in the sandbox"),
        ({"CATWALK_IMAGE": "{not json"}, "CATWALK_IMAGE must be a JSON object"),
        ({"CATWALK_IMAGE": '{"reference": "Bad/Name"}'}, "CATWALK_IMAGE:"),
        (
            {"CATWALK_IMAGE": '{"reference": "a/b", "registries": {"docker.io": "ftp://x"}}'},
            "must be http(s)",
        ),
        ({"CATWALK_SOURCE": '{"archive": "https://x"}'}, "cannot both be set"),
    ],
)
def test_a_bad_image_setting_is_one_line_and_exit_78(tmp_path, changes, message):
    environment = machine_environment(
        tmp_path / "root",
        "sandboxed",
        CATWALK_IMAGE=json.dumps({"reference": "ghcr.io/acme/server:1.0"}),
        CATWALK_SERVER_COMMAND="[]",
        CATWALK_RUNNER_IMAGES=str(tmp_path / "images"),
    )
    environment.update(changes)

    result = run_to_exit(environment)

    assert result.returncode == EX_CONFIG
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "images").exists()
