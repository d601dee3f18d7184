"""OCI packages on Fly: the deployment's own machine pulls the image into a volume of its own,
once, and runs the image's entrypoint in the sandbox with the image's files as its root.

Fly and the image's registry are local stand-ins; the machines run the real runner, sandboxed,
which pulls the fixture image (a POSIX-shell MCP server on the host's dash) over the registry's
HTTP API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from deployments import introspection, services
from deployments.models import Deployment, FlyApp, Status
from deployments.runtimes import fly, sandbox
from deployments.tests.conftest import call_tool
from deployments.tests.fly_standin import FlyStandin
from deployments.tests.test_fly_runtime import (
    app_of,
    delete_and_settle,
    idle_until_fly_stops_it,
    settle,
)
from mcpgateway.tests.oci_standin import RegistryStandIn, fixture_image

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not sandbox.check().enabled, reason=f"no sandbox: {sandbox.check().problem}"
    ),
]

CREDENTIAL = "oci-credential-51d2"


@pytest.fixture(scope="module")
def standin() -> Iterator[FlyStandin]:
    """Fly on 127.0.0.1 with sandboxed machines: an image runs only in the sandbox."""
    with FlyStandin(org_slug="acme", proxy_start_timeout=30) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def registry() -> Iterator[RegistryStandIn]:
    with RegistryStandIn() as stand_in:
        yield stand_in


@pytest.fixture
def image(registry, fly_settings) -> str:
    """The fixture image's reference; its registry reached through OCI_REGISTRY_URLS, as a
    mirror would be."""
    fly_settings.OCI_REGISTRY_URLS = {registry.host: registry.url}
    return fixture_image(registry)


def blob_fetches(registry: RegistryStandIn) -> int:
    return sum(1 for method, path in registry.requests if method == "GET" and "/blobs/" in path)


def oci_deployment(owner, reference: str, **options) -> Deployment:
    deployment, _ = services.create_deployment(
        owner,
        services.parse_package_spec(f"oci:{reference}"),
        runtime="fly",
        issued_to="t",
        environment={"API_KEY": CREDENTIAL},
        **options,
    )
    return deployment


def test_an_image_is_pulled_into_its_volume_once_and_served_after_every_wake(
    db, owner, standin, registry, image
):
    before = blob_fetches(registry)
    deployment = oci_deployment(owner, image)

    settle(deployment, timeout=120)

    assert deployment.status == Status.RUNNING, deployment.status_detail
    app = app_of(deployment)
    (volume,) = standin.volumes(app.name)
    (machine,) = standin.machines(app.name)
    config = machine["config"]
    assert config["image"] == fly.settings.FLY_RUNNER_IMAGE  # the runner, with the image in it
    assert config["mounts"] == [{"volume": volume["id"], "path": fly.VOLUME_PATH}]
    spec = json.loads(config["env"]["CATWALK_IMAGE"])
    assert spec["reference"] == image and spec["registries"] == {registry.host: registry.url}
    assert json.loads(config["env"]["CATWALK_SERVER_COMMAND"]) == []
    assert CREDENTIAL not in json.dumps(config)
    pulled = blob_fetches(registry) - before
    assert pulled >= 3  # the config and both layers

    endpoint = fly.FlyRuntime().endpoint(deployment)
    assert call_tool(endpoint, "echo", {"text": "from an image on fly"}) == "from an image on fly"
    # The image's own command and working folder, its variables and the credentials; nothing
    # of the machine's (the relay secret, FLY_*, CATWALK_*).
    assert call_tool(endpoint, "echo", {"text": "__argv__"}) == "--greeting hello"
    assert call_tool(endpoint, "echo", {"text": "__pwd__"}) == "/srv"
    getenv = {
        name: call_tool(endpoint, "getenv", {"name": name})
        for name in (
            "API_KEY",
            "FIXTURE_IMAGE_VARIABLE",
            "CATWALK_BRIDGE_SECRET",
            "CATWALK_ENV_API_KEY",
            "CATWALK_IMAGE",
            "FLY_APP_NAME",
            "FLY_MACHINE_ID",
        )
    }
    assert getenv == {
        "API_KEY": CREDENTIAL,
        "FIXTURE_IMAGE_VARIABLE": "from-the-image",
        "CATWALK_BRIDGE_SECRET": "",
        "CATWALK_ENV_API_KEY": "",
        "CATWALK_IMAGE": "",
        "FLY_APP_NAME": "",
        "FLY_MACHINE_ID": "",
    }
    assert any("pulling the image" in line for line in standin.logs(app.name))

    # Idle: Fly stops the machine; the next request wakes it and it runs from the volume.
    idle_until_fly_stops_it(standin, app)
    assert settle(deployment).status == Status.SLEEPING
    assert call_tool(endpoint, "echo", {"text": "awake"}) == "awake"
    assert blob_fetches(registry) - before == pulled  # nothing downloaded again

    key = deployment.id
    delete_and_settle(deployment)
    assert standin.apps() == [] and not standin.volume_path(volume["id"]).exists()
    assert not FlyApp.objects.filter(deployment_key=key).exists()


def test_arguments_replace_the_images_command(db, owner, standin, image):
    deployment = oci_deployment(owner, image, entry_args=["--mode", "argued"])

    settle(deployment, timeout=120)

    assert deployment.status == Status.RUNNING, deployment.status_detail
    endpoint = fly.FlyRuntime().endpoint(deployment)
    assert call_tool(endpoint, "echo", {"text": "__argv__"}) == "--mode argued"
    delete_and_settle(deployment)


def test_an_image_that_cannot_be_pulled_fails_the_deployment_with_the_reason(
    db, owner, standin, registry, image
):
    missing = image.rsplit(":", 1)[0] + ":no-such-tag"
    deployment = oci_deployment(owner, missing)

    settle(deployment, timeout=120)

    assert deployment.status == Status.FAILED
    assert "The image could not be pulled" in deployment.status_detail
    assert "not found" in deployment.status_detail
    (machine,) = standin.machines(app_of(deployment).name)
    assert machine["state"] in ("stopping", "stopped")  # pulling again would fail the same way
    delete_and_settle(deployment)


def test_an_analysis_lists_an_images_tools_in_a_throwaway_machine(standin, image, fly_settings):
    fly_settings.FLY_JOBS = True
    name, _, tag = image.rpartition(":")

    listed = introspection.introspect_package("oci", name, tag, timeout=90)
    missing = introspection.introspect_package("oci", name, "no-such-tag", timeout=90)

    assert listed.ok, listed.error
    assert {tool["name"] for tool in listed.tools} == {"echo", "getenv"}
    assert not missing.ok
    assert "The image could not be pulled" in missing.error and "not found" in missing.error
    assert standin.apps() == []  # both jobs' apps, and their machines, are gone


def test_an_image_runs_on_fly_only_and_never_as_a_host_command(db, owner, fly_settings):
    spec = services.parse_package_spec("oci:ghcr.io/acme/weather:1.4.0")
    assert (spec.name, spec.version) == ("ghcr.io/acme/weather", "1.4.0")

    with pytest.raises(services.DeploymentError, match="cannot run on the local runtime"):
        services.create_deployment(owner, spec, runtime="local", issued_to="t")
    with pytest.raises(services.DeploymentError, match="runs its own entrypoint"):
        services.create_deployment(
            owner, spec, runtime="fly", issued_to="t", entry_command="/bin/sh"
        )
    for bad in ("oci:", "oci:Upper/Case", "oci:acme/x:bad tag", "oci:acme/x@sha256:12"):
        with pytest.raises(services.PackageError):
            services.parse_package_spec(bad)
    assert Deployment.objects.count() == 0
