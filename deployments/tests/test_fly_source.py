"""Source deployments on Fly: pinned on the platform, built by the runner in the deployment's
own machine into a volume of its own, and served from there at every later boot.

Fly, GitHub and the machines are the local stand-ins (the machines run the real runner, which
downloads the fixture repository from the GitHub stand-in and runs its real build).
"""

from __future__ import annotations

import json

import pytest

from analysis.models import Repository
from deployments import builds, redeploy, services
from deployments.models import (
    BuildStatus,
    Deployment,
    EventKind,
    FlyApp,
    SourceBuild,
    Status,
)
from deployments.runtimes import fly
from deployments.runtimes.fly_api import FlyClient
from deployments.tests.conftest import call_tool
from deployments.tests.source_fixtures import publish
from deployments.tests.test_configure import RECIPE
from deployments.tests.test_fly_runtime import (
    app_of,
    delete_and_settle,
    idle_until_fly_stops_it,
    settle,
)
from deployments.tests.test_source_builds import analysed_recipe, codeload_downloads

pytestmark = pytest.mark.slow

BUILD_SECONDS = 240


def source_deployment(owner, github, shape: str) -> Deployment:
    repository, sha = publish(github, shape)
    recipe = analysed_recipe(f"https://github.com/{repository}", sha)
    build = builds.pin(repository, "", sha, recipe, user=owner)
    deployment, _ = services.create_deployment(
        owner, services.source_package(build), source_build=build, runtime="fly", issued_to="t"
    )
    return deployment


def test_a_repository_is_built_in_its_machine_once_and_served_after_every_wake(
    db, owner, github, fly_settings, standin, tmp_path
):
    fly_settings.DATA_DIR = tmp_path
    deployment = source_deployment(owner, github, "plain-javascript")
    downloads = codeload_downloads(github)

    settle(deployment, timeout=BUILD_SECONDS)

    assert deployment.status == Status.RUNNING, deployment.status_detail
    # Nothing was built on this host: the build row only pins the commit and recipe.
    assert deployment.source_build.status == BuildStatus.ELSEWHERE
    assert not builds.build_folder(deployment.source_build).exists()
    app = app_of(deployment)
    (volume,) = standin.volumes(app.name)
    assert (volume["id"], volume["name"]) == (app.volume_id, fly.VOLUME_NAME)
    (machine,) = standin.machines(app.name)
    assert machine["config"]["mounts"] == [{"volume": volume["id"], "path": fly.VOLUME_PATH}]
    source = json.loads(machine["config"]["env"]["CATWALK_SOURCE"])
    assert source["archive"].endswith(f"/tarball/{deployment.source_build.commit_sha}")
    assert [step["argv"] for step in source["steps"]] == [["npm", "ci"]]
    endpoint = fly.FlyRuntime().endpoint(deployment)
    assert call_tool(endpoint, "echo", {"message": "built on fly"}) == "built on fly"
    assert codeload_downloads(github) == downloads + 1
    assert any("building from source" in line for line in standin.logs(app.name))

    # Idle: Fly stops the machine; the next request wakes it and it serves from the volume.
    idle_until_fly_stops_it(standin, app)
    assert settle(deployment).status == Status.SLEEPING
    assert call_tool(endpoint, "add", {"a": 2, "b": 40}) == "42"
    assert codeload_downloads(github) == downloads + 1  # not fetched, not built again

    key = deployment.id
    delete_and_settle(deployment)
    assert standin.apps() == [] and not standin.volume_path(volume["id"]).exists()
    assert not FlyApp.objects.filter(deployment_key=key).exists()


def test_a_build_that_fails_fails_the_deployment_with_the_compilers_error(
    db, owner, github, fly_settings, standin
):
    deployment = source_deployment(owner, github, "failing-build")

    settle(deployment, timeout=BUILD_SECONDS)

    assert deployment.status == Status.FAILED
    assert "The build from source failed" in deployment.status_detail
    assert "TS2322" in deployment.status_detail
    # Building again would fail the same way: the machine is not left running.
    (machine,) = standin.machines(app_of(deployment).name)
    assert machine["state"] in ("stopping", "stopped")


def test_a_private_repository_is_refused_on_fly_with_the_reason(
    db, owner, github, fly_settings, standin
):
    deployment = source_deployment(owner, github, "plain-javascript")
    Repository.objects.update_or_create(
        owner="acme", name="plain-javascript", defaults={"private": True}
    )

    settle(deployment)

    assert deployment.status == Status.FAILED
    assert "private repositories cannot be built on Fly yet" in deployment.status_detail
    assert standin.apps() == []  # refused before anything was made


def test_redeploy_and_rollback_are_refused_with_the_reason_on_fly(db, owner, settings):
    settings.FLY_API_TOKEN, settings.FLY_ORG = "fly-token", "acme"
    settings.FLY_RUNNER_IMAGE = "registry.fly.io/catwalk-runner:test"
    build = builds.pin("acme/echo", "", "e" * 40, RECIPE, user=owner)
    deployment, _ = services.create_deployment(
        owner, services.source_package(build), source_build=build, runtime="fly", issued_to="t"
    )

    for act in (redeploy.redeploy, redeploy.rollback):
        with pytest.raises(services.DeploymentError, match="not available yet"):
            act(deployment, owner)
    deployment.refresh_from_db()
    assert deployment.next_build_id is None


def test_a_volume_deleted_behind_catwalks_back_is_replaced_with_a_new_machine_and_build(
    db, owner, github, fly_settings, standin, tmp_path
):
    fly_settings.DATA_DIR = tmp_path
    deployment = settle(source_deployment(owner, github, "plain-javascript"), BUILD_SECONDS)
    assert deployment.status == Status.RUNNING, deployment.status_detail
    app = app_of(deployment)
    old_volume, old_machine = app.volume_id, app.machine_id
    downloads = codeload_downloads(github)
    with FlyClient() as client:
        client.delete_machine(app.name, old_machine)
        client.delete_volume(app.name, old_volume)

    settle(deployment, BUILD_SECONDS)

    assert deployment.status == Status.RUNNING, deployment.status_detail
    app.refresh_from_db()
    (volume,) = standin.volumes(app.name)
    assert volume["id"] == app.volume_id != old_volume
    machines = standin.machines(app.name)
    assert {m["id"]: m["state"] for m in machines} == {
        old_machine: "destroyed",
        app.machine_id: "started",
    }
    (machine,) = [m for m in machines if m["id"] == app.machine_id]
    assert machine["config"]["mounts"] == [{"volume": app.volume_id, "path": fly.VOLUME_PATH}]
    assert codeload_downloads(github) == downloads + 1  # built again on the new volume
    gone = deployment.events.filter(message__startswith="Its Fly volume is gone")
    assert gone.filter(kind=EventKind.ERROR).count() == 1  # said once, however many runs
    endpoint = fly.FlyRuntime().endpoint(deployment)
    assert call_tool(endpoint, "echo", {"message": "rebuilt"}) == "rebuilt"


def test_pinning_a_commit_whose_build_failed_on_this_host_lets_the_machine_build_it(db, owner):
    build, _ = builds.claim("acme/echo", "", "f" * 40, RECIPE, user=owner)
    SourceBuild.objects.filter(pk=build.pk).update(status=BuildStatus.FAILED, error="no sandbox")

    pinned = builds.pin("acme/echo", "", "f" * 40, RECIPE, user=owner)

    assert pinned.pk == build.pk
    assert (pinned.status, pinned.error) == (BuildStatus.ELSEWHERE, "")
