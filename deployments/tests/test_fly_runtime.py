"""The Fly runtime's reconciler and client against the Fly stand-in, whose machines really run
the runner (bridge and fixture server): provisioning, Fly's faults, drift, stop and teardown.

The reconciler is run here the way the `fly_sync` task runs it (`settle`); the whole path
through Celery, Redis and the gateway is `test_fly_e2e.py`.
"""

from __future__ import annotations

import json
import time

import psutil
import pytest

from deployments import services
from deployments.models import (
    Deployment,
    DeploymentEvent,
    EventKind,
    FlyApp,
    Status,
)
from deployments.runtimes import fly
from deployments.runtimes.base import bridge_secret, list_tools
from deployments.runtimes.fly_api import FlyClient, FlyError
from deployments.tests.conftest import call_tool, deploy_fixture_server
from deployments.tests.fly_standin import FlyStandin

pytestmark = pytest.mark.slow

SECRET_VALUE = "sk-live-fly-runtime-test-9876543210"


def settle(deployment: Deployment, timeout: float = 90) -> Deployment:
    """Run the reconciler until it asks for no further run (as the task chain does)."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = fly.sync(str(deployment.id))
        if outcome.again is None:
            break
        assert time.monotonic() < deadline, "the reconciler did not settle"
        time.sleep(min(outcome.again, 0.25))
    if Deployment.objects.filter(pk=deployment.pk).exists():
        deployment.refresh_from_db()
    return deployment


def delete_and_settle(deployment: Deployment) -> None:
    """Delete the deployment as its owner does, then reconcile until Fly is cleaned up."""
    key = str(deployment.id)
    services.delete_deployment(deployment)
    deadline = time.monotonic() + 90
    while (outcome := fly.sync(key)).again is not None:
        assert time.monotonic() < deadline, "the teardown did not settle"
        time.sleep(min(outcome.again, 0.25))


def deploy(owner, **options) -> Deployment:
    deployment, _ = deploy_fixture_server(owner, runtime="fly", **options)
    return deployment


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def idle_until_fly_stops_it(standin: FlyStandin, app: FlyApp) -> None:
    standin.idle_stop_seconds = 1.0
    deadline = time.monotonic() + 30
    while standin.machines(app.name)[0]["state"] != "stopped":
        assert time.monotonic() < deadline, "the stand-in never stopped the idle machine"
        time.sleep(0.2)


def app_of(deployment: Deployment) -> FlyApp:
    return FlyApp.objects.get(deployment=deployment)


def test_a_deployment_becomes_an_app_with_secrets_an_address_and_one_running_machine(
    db, owner, fly_settings, standin
):
    deployment = deploy(owner, environment={"API_KEY": SECRET_VALUE})

    settle(deployment)

    assert deployment.status == Status.RUNNING, deployment.status_detail
    app = app_of(deployment)
    assert standin.apps() == [app.name]
    (machine,) = standin.machines(app.name)
    assert machine["state"] == "started"
    assert machine["region"] == "ams"
    assert machine["config"]["services"][0]["autostop"] in ("stop", True)
    assert set(standin.secrets(app.name)) == {
        "CATWALK_BRIDGE_SECRET",
        "CATWALK_ENV_API_KEY",
        "CATWALK_ENV_PYTHONPATH",
    }
    ips = [r for r in standin.requests if r.method == "POST" and r.path.endswith("/ip_assignments")]
    assert [r.body for r in ips] == [{"type": "private_v6"}]
    # The gateway's way in: Fly's proxy with the deployment's relay secret.
    endpoint = fly.FlyRuntime().endpoint(deployment)
    assert endpoint.base_url == standin.relay_url(app.name)
    assert call_tool(endpoint, "echo", {"message": "over fly"}) == "over fly"


def test_no_secret_reaches_a_machine_config_a_task_argument_or_the_log(
    db, owner, fly_settings, standin, caplog
):
    caplog.set_level("DEBUG")
    deployment = deploy(owner, environment={"API_KEY": SECRET_VALUE})
    settle(deployment)

    relay_secret = bridge_secret(deployment.id)
    machine_calls = [r for r in standin.requests if "/machines" in r.path]
    assert machine_calls
    for recorded in machine_calls:
        text = json.dumps(recorded.body)
        assert SECRET_VALUE not in text and relay_secret not in text
    secret_calls = [r for r in standin.requests if r.path.endswith("/secrets")]
    assert SECRET_VALUE in json.dumps([r.body for r in secret_calls])
    assert SECRET_VALUE not in caplog.text and relay_secret not in caplog.text
    assert SECRET_VALUE not in json.dumps(list(FlyApp.objects.values()), default=str)


def test_a_storm_of_429s_is_ridden_out_with_retries(db, owner, fly_settings, standin):
    standin.fail_next("*", r"^/v1/apps", 429, count=4)
    deployment = deploy(owner)

    settle(deployment)

    assert deployment.status == Status.RUNNING, deployment.status_detail
    assert len(standin.machines(app_of(deployment).name)) == 1


def test_a_5xx_after_an_ambiguous_create_adopts_the_machine_instead_of_a_second(
    db, owner, fly_settings, standin
):
    standin.fail_next("POST", r"/machines$", 503, after=True)
    deployment = deploy(owner)

    settle(deployment)

    assert deployment.status == Status.RUNNING, deployment.status_detail
    app = app_of(deployment)
    machines = standin.machines(app.name)
    assert len(machines) == 1
    assert app.machine_id == machines[0]["id"]
    creates = [
        r
        for r in standin.requests
        if r.method == "POST" and r.path == f"/v1/apps/{app.name}/machines"
    ]
    assert len(creates) == 1


def test_a_machine_that_never_starts_fails_the_deployment_with_flys_reason(
    db, owner, fly_settings, standin
):
    fly_settings.FLY_START_TIMEOUT_SECONDS = 3
    deployment = deploy(owner)
    standin.never_start(fly.app_name_for(deployment.id))

    settle(deployment)

    assert deployment.status == Status.FAILED
    assert "did not become ready within 3 s" in deployment.status_detail
    assert "no host can place this machine" in deployment.status_detail


def test_a_server_that_keeps_exiting_fails_with_the_exit_status(db, owner, fly_settings, standin):
    deployment, _ = services.create_deployment(
        owner,
        services.PackageSpec("pypi", "mcp"),
        entry_command="/bin/sh",
        entry_args=["-c", "echo 'cannot open the database' >&2; exit 3"],
        runtime="fly",
        issued_to="tests",
    )

    settle(deployment)

    assert deployment.status == Status.FAILED
    assert "keeps crashing" in deployment.status_detail
    assert "cannot open the database" in deployment.status_detail
    assert any("cannot open the database" in line for line in fly.FlyRuntime().logs(deployment))


def test_an_app_deleted_behind_catwalks_back_is_recreated_and_the_owner_is_told(
    db, owner, fly_settings, standin
):
    deployment = settle(deploy(owner))
    old = app_of(deployment)
    standin.delete_app_behind_the_back(old.name)

    settle(deployment)

    assert deployment.status == Status.RUNNING, deployment.status_detail
    assert standin.apps() == [old.name]
    assert len(standin.machines(old.name)) == 1
    told = DeploymentEvent.objects.filter(deployment=deployment, kind=EventKind.ERROR)
    assert any("deleted outside Catwalk" in event.message for event in told)
    assert list_tools(fly.FlyRuntime().endpoint(deployment))


def test_a_taken_app_name_elsewhere_on_fly_gets_another_name(db, owner, fly_settings, standin):
    deployment = deploy(owner)
    # Another organisation's app already carries the name Catwalk would choose.
    taken = fly.app_name_for(deployment.id)
    standin.foreign_apps.add(taken)

    settle(deployment)

    assert deployment.status == Status.RUNNING, deployment.status_detail
    assert app_of(deployment).name.startswith(taken + "-")


def test_stop_then_start_again(db, owner, fly_settings, standin):
    deployment = settle(deploy(owner))
    app = app_of(deployment)

    services.stop_deployment(deployment)
    settle(deployment)
    assert deployment.status == Status.STOPPED
    assert standin.machines(app.name)[0]["state"] == "stopped"

    services.start_deployment(deployment)
    settle(deployment)
    assert deployment.status == Status.RUNNING, deployment.status_detail
    assert standin.machines(app.name)[0]["state"] == "started"


def test_a_changed_credential_reaches_the_server_through_new_secrets(
    db, owner, fly_settings, standin
):
    deployment = settle(deploy(owner, environment={"API_KEY": "first"}))
    app = app_of(deployment)
    first_version = app.secrets_version

    services.set_credential(deployment, "API_KEY", SECRET_VALUE)
    deployment.refresh_from_db()
    settle(deployment)

    assert deployment.status == Status.RUNNING, deployment.status_detail
    app.refresh_from_db()
    assert app.secrets_version > first_version
    (machine,) = standin.machines(app.name)
    assert standin.boot_env(app.name, machine["id"])["CATWALK_ENV_API_KEY"] == SECRET_VALUE
    updates = [
        r
        for r in standin.requests
        if r.method == "POST" and r.path == f"/v1/apps/{app.name}/machines/{machine['id']}"
    ]
    assert updates and updates[-1].body["min_secrets_version"] == app.secrets_version
    assert SECRET_VALUE not in json.dumps(updates[-1].body)


def test_an_idle_machine_stopped_by_fly_sleeps_and_a_request_wakes_it(
    db, owner, fly_settings, standin
):
    deployment = settle(deploy(owner))
    app = app_of(deployment)
    idle_until_fly_stops_it(standin, app)

    settle(deployment)
    assert deployment.status == Status.SLEEPING

    # Fly's proxy starts it for the next request; the reconciler then catches up.
    assert call_tool(fly.FlyRuntime().endpoint(deployment), "echo", {"message": "up"}) == "up"
    settle(deployment)
    assert deployment.status == Status.RUNNING, deployment.status_detail


def test_a_credential_changed_while_asleep_waits_for_the_next_wake(
    db, owner, fly_settings, standin
):
    deployment = settle(deploy(owner, environment={"API_KEY": "first"}))
    app = app_of(deployment)
    idle_until_fly_stops_it(standin, app)
    settle(deployment)
    assert deployment.status == Status.SLEEPING

    services.set_credential(deployment, "API_KEY", SECRET_VALUE)
    deployment.refresh_from_db()
    settle(deployment)

    assert deployment.status == Status.SLEEPING  # not woken by the change
    (machine,) = standin.machines(app.name)
    assert machine["state"] == "stopped"
    # The next request boots it with the new secret.
    endpoint = fly.FlyRuntime().endpoint(deployment)
    assert call_tool(endpoint, "echo", {"message": "woken"}) == "woken"
    assert standin.boot_env(app.name, machine["id"])["CATWALK_ENV_API_KEY"] == SECRET_VALUE


def test_deleting_the_deployment_leaves_nothing_behind_on_fly(db, owner, fly_settings, standin):
    deployment = settle(deploy(owner))
    app = app_of(deployment)

    delete_and_settle(deployment)

    assert standin.apps() == []
    assert not FlyApp.objects.filter(pk=app.pk).exists()
    assert not [pid for pid in standin.launched_pids if psutil.pid_exists(pid) and _alive(pid)]


def test_logs_come_from_flys_logs_api(db, owner, fly_settings, standin):
    deployment = settle(deploy(owner))

    lines = fly.FlyRuntime().logs(deployment)
    reads = sum(1 for r in standin.requests if r.path.endswith("/logs"))
    again = fly.FlyRuntime().logs(deployment, lines=1)

    assert any("catwalk-bridge listening" in line for line in lines), lines
    # Open pages poll every few seconds: one read of Fly's logs API serves them for a while.
    assert again == lines[-1:]
    assert sum(1 for r in standin.requests if r.path.endswith("/logs")) == reads


def test_fly_errors_keep_flys_status_and_code(fly_settings, standin):
    with FlyClient(retries=0) as client:
        client.create_app("catwalk-twice", "acme")
        with pytest.raises(FlyError) as raised:
            client.create_app("catwalk-twice", "acme")
        assert client.get_machine("catwalk-twice", "0123456789abcd") is None
    assert (raised.value.status, raised.value.code) == (422, "name_taken")
    assert not raised.value.ambiguous


def test_a_deployment_deleted_after_an_ambiguous_app_create_leaves_no_app(
    db, owner, fly_settings, standin
):
    # The app is made but its creator never hears so; then the deployment is deleted.
    standin.fail_next("POST", r"^/v1/apps$", 503, count=6, after=True)
    deployment = deploy(owner)
    settle(deployment)
    assert standin.apps() == [fly.app_name_for(deployment.id)]
    assert not app_of(deployment).app_created

    delete_and_settle(deployment)

    assert standin.apps() == []
    assert not FlyApp.objects.exists()
