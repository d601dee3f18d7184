"""The Fly runtime's pieces that need no Fly: what a machine is configured with, which runtime
is offered when, and the status paths its reconciler takes."""

from __future__ import annotations

import json

import pytest

from catwalk.testing import make_credential, make_deployment
from deployments import services
from deployments.models import TRANSITIONS, Deployment, FlyApp, Status
from deployments.runtimes import fly
from deployments.runtimes.base import available_runtimes, bridge_secret

SECRET_VALUE = "sk-live-fly-config-test-0123456789"


@pytest.fixture
def fly_configured(settings):
    settings.FLY_API_TOKEN = "fly-test-token"
    settings.FLY_ORG = "acme"
    settings.FLY_RUNNER_IMAGE = "registry.fly.io/catwalk-runner:test"
    settings.FLY_REGION = "ams"
    return settings


def test_fly_is_offered_only_once_token_org_and_image_are_set(settings, fly_configured):
    assert available_runtimes() == ["local", "fly"]
    settings.FLY_RUNNER_IMAGE = ""
    assert available_runtimes() == ["local"]


def test_the_machine_config_names_the_runner_and_holds_no_secret(db, owner, fly_configured):
    deployment = make_deployment(owner, runtime="fly")
    make_credential(deployment, "API_KEY", SECRET_VALUE)

    config = fly.machine_config(deployment)

    assert SECRET_VALUE not in json.dumps(config)
    assert bridge_secret(deployment.id) not in json.dumps(config)
    assert config["image"] == "registry.fly.io/catwalk-runner:test"
    assert json.loads(config["env"]["CATWALK_SERVER_COMMAND"]) == [
        "npx",
        "-y",
        "--",
        "@modelcontextprotocol/server-everything@2026.1.26",
    ]
    (service,) = config["services"]
    assert service["internal_port"] == fly.RUNNER_PORT
    assert service["autostart"] is True and service["autostop"] == "stop"
    assert service["min_machines_running"] == 0
    assert config["checks"]["bridge"]["path"] == "/healthz"
    assert config["metadata"] == {fly.METADATA_KEY: str(deployment.id)}
    assert config["guest"]["memory_mb"] % 256 == 0


def test_secrets_carry_the_relay_secret_and_each_credential_under_a_prefix(
    db, owner, fly_configured
):
    deployment = make_deployment(owner, runtime="fly")
    make_credential(deployment, "API_KEY", SECRET_VALUE)

    assert fly.app_secrets(deployment) == {
        "CATWALK_BRIDGE_SECRET": bridge_secret(deployment.id),
        "CATWALK_ENV_API_KEY": SECRET_VALUE,
    }


def test_app_names_are_valid_fly_names_unique_to_the_deployment(db, owner):
    deployment = make_deployment(owner)
    name = fly.app_name_for(deployment.id)
    assert len(name) <= 63 and name == name.lower() and deployment.id.hex in name
    assert fly.app_name_for(deployment.id, "a1b2c3").endswith("-a1b2c3")


@pytest.mark.parametrize("start", list(TRANSITIONS))
@pytest.mark.parametrize("goal", [Status.RUNNING, Status.FAILED, Status.STOPPED, Status.SLEEPING])
def test_every_status_reaches_the_reconcilers_goals_by_allowed_steps(start, goal):
    if start == goal:
        assert fly._path(start, goal) == [goal]
        return
    path = fly._path(start, goal)
    assert path[-1] == goal
    for before, after in zip([start, *path], path, strict=False):
        assert after in TRANSITIONS[before]


def test_a_fly_deployment_is_refused_while_fly_is_not_configured(db, owner):
    package = services.PackageSpec("npm", "@modelcontextprotocol/server-everything")
    with pytest.raises(services.DeploymentError, match="fly runtime is not available"):
        services.create_deployment(owner, package, runtime="fly", issued_to="test")
    assert not Deployment.objects.exists()


def test_an_oci_package_becomes_a_runner_machine_that_pulls_its_image(
    db, owner, fly_configured, settings
):
    settings.OCI_REGISTRY_URLS = {"ghcr.io": "https://mirror.example", "quay.io": "https://q"}
    package = services.PackageSpec("oci", "ghcr.io/acme/server", "1.0")
    deployment, _ = services.create_deployment(
        owner, package, runtime="fly", issued_to="test", entry_args=["--stdio"]
    )

    config = fly.machine_config(deployment)

    assert config["image"] == settings.FLY_RUNNER_IMAGE
    assert json.loads(config["env"]["CATWALK_IMAGE"]) == {
        "reference": "ghcr.io/acme/server:1.0",
        "registries": {"ghcr.io": "https://mirror.example"},  # only the image's own
        "max_bytes": settings.OCI_MAX_IMAGE_MB << 20,
    }
    assert config["env"]["CATWALK_RUNNER_IMAGES"] == f"{fly.VOLUME_PATH}/images"
    assert json.loads(config["env"]["CATWALK_SERVER_COMMAND"]) == ["--stdio"]
    assert fly.uses_volume(deployment)


def test_a_platform_without_a_supervisor_offers_only_fly(settings, fly_configured):
    settings.LOCAL_RUNTIME_ENABLED = False
    assert available_runtimes() == ["fly"]

    from deployments.forms import DeployForm

    form = DeployForm(prefix="deployment")
    assert [kind for kind, _ in form.fields["runtime"].choices] == ["fly"]
    assert form.fields["runtime"].initial == "fly"


def test_the_deployment_page_names_its_fly_app(owner, owner_client, fly_configured):
    deployment = make_deployment(owner, runtime="fly")
    FlyApp.objects.create(
        deployment=deployment, deployment_key=deployment.id, name=fly.app_name_for(deployment.id)
    )

    page = owner_client.get(f"/deployments/{deployment.pk}/").content.decode()

    assert "Fly.io Machines" in page
    assert fly.app_name_for(deployment.id) in page


def test_the_task_message_carries_the_deployment_id_and_no_secret(
    db, owner, fly_configured, django_capture_on_commit_callbacks
):
    """What the Fly runtime hands Celery, read back from the configured broker as a worker
    would receive it."""
    from catwalk.celery import app as celery_app

    deployment = make_deployment(owner, runtime="fly")
    make_credential(deployment, "API_KEY", SECRET_VALUE)

    with django_capture_on_commit_callbacks(execute=True):
        fly.FlyRuntime().apply(deployment)  # sent once the transaction commits

    found = []
    with celery_app.connection_for_read() as connection:
        queue = connection.SimpleQueue(celery_app.conf.task_default_queue)
        try:
            while True:
                try:
                    message = queue.get(block=True, timeout=2)
                except queue.Empty:
                    break
                if message.headers.get("task") == "deployments.tasks.fly_sync":
                    message.ack()
                    found.append(message)
                else:
                    message.requeue()
                    break  # someone else's; leave it queued
        finally:
            queue.close()
    ours = [m for m in found if str(deployment.id) in str(m.headers.get("argsrepr"))]
    assert len(ours) == 1
    args, kwargs, _ = ours[0].decode()
    assert args == [str(deployment.id)] and kwargs == {}
    assert SECRET_VALUE not in str(ours[0].body) + str(ours[0].headers)


def test_an_error_fly_keeps_answering_is_shown_on_the_deployment_page(
    owner, owner_client, fly_configured
):
    deployment = make_deployment(owner, runtime="fly")
    FlyApp.objects.create(
        deployment=deployment,
        deployment_key=deployment.id,
        name=fly.app_name_for(deployment.id),
        last_error="Fly API POST /apps: 401 unauthorized: token expired",
    )

    status = owner_client.get(f"/deployments/{deployment.pk}/status/").content.decode()

    assert "Fly&#x27;s API refused the last attempt" in status
    assert "token expired" in status
