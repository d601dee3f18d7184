"""The supervisor runs real bridges for local deployments and keeps them matching the database."""

from __future__ import annotations

import json
import signal
import time
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from deployments import services
from deployments.models import Credential, Deployment, Status
from deployments.runtimes import sandbox
from deployments.runtimes.local import SANDBOX_HOME, LocalRuntime, PidRecord, run_paths
from deployments.supervisor import SHUTDOWN_DETAIL
from deployments.tests.conftest import (
    WAIT_SECONDS,
    all_gone,
    bridge_family,
    bridge_process,
    call_tool,
    deploy_fixture_server,
    endpoint_of,
)

pytestmark = pytest.mark.django_db(transaction=True)


def statuses(deployment: Deployment) -> list[str]:
    return list(
        deployment.events.exclude(status="").order_by("id").values_list("status", flat=True)
    )


def test_new_deployment_starts_and_serves_its_tools(supervisor, owner):
    deployment, _ = deploy_fixture_server(owner)

    supervisor.wait_for_status(deployment, Status.RUNNING)

    assert deployment.status_detail.startswith("Serving ")
    assert statuses(deployment) == [Status.STARTING, Status.RUNNING]
    assert call_tool(endpoint_of(deployment), "echo", {"message": "hi"}) == "hi"


@pytest.mark.skipif(not sandbox.check().enabled, reason="needs the sandbox")
def test_server_gets_its_credentials_and_nothing_of_catwalks_environment(
    supervisor, owner, settings
):
    deployment, _ = deploy_fixture_server(owner, environment={"API_KEY": "s3cret"})
    supervisor.wait_for_status(deployment, Status.RUNNING)

    environment = json.loads(call_tool(endpoint_of(deployment), "get-env"))

    assert environment["API_KEY"] == "s3cret"
    # Unsandboxed (the supervisor would refuse here) see test_the_unsafe_setting_….
    assert environment["HOME"] == SANDBOX_HOME
    leaked = [
        name
        for name in environment
        if name.startswith(("CATWALK_", "DJANGO_"))
        or name in {"SECRET_KEY", "DATABASE_URL", "REDIS_URL"}
    ]
    assert not leaked
    assert settings.SECRET_KEY not in environment.values()
    assert not any(key in environment.values() for key in settings.CATWALK_ENCRYPTION_KEYS)


def test_stop_ends_the_bridge_and_its_server_and_start_brings_it_back(supervisor, owner):
    deployment, _ = deploy_fixture_server(owner)
    supervisor.wait_for_status(deployment, Status.RUNNING)
    family = bridge_family(deployment)
    assert len(family) >= 2  # the bridge and the MCP server under it

    services.stop_deployment(deployment)
    supervisor.wait_for_status(deployment, Status.STOPPED)

    assert all_gone(family)
    assert not run_paths(deployment.id).socket.exists()
    assert statuses(deployment)[-2:] == [Status.STOPPING, Status.STOPPED]

    services.start_deployment(deployment)
    supervisor.wait_for_status(deployment, Status.RUNNING)
    assert call_tool(endpoint_of(deployment), "echo", {"message": "back"}) == "back"


def test_killed_bridge_is_restarted_and_the_crash_recorded(supervisor, owner):
    deployment, _ = deploy_fixture_server(owner)
    supervisor.wait_for_status(deployment, Status.RUNNING)
    first = bridge_process(deployment)

    first.kill()

    deadline = time.monotonic() + WAIT_SECONDS
    while not deployment.events.filter(status=Status.CRASHED).exists():
        assert time.monotonic() < deadline, supervisor.log()
        time.sleep(0.1)
    supervisor.wait_for_status(deployment, Status.RUNNING)
    assert bridge_process(deployment).pid != first.pid
    crash = deployment.events.get(status=Status.CRASHED)
    assert "killed by signal 9" in crash.message
    assert call_tool(endpoint_of(deployment), "echo", {"message": "again"}) == "again"


@pytest.mark.parametrize("exit_signal", [signal.SIGKILL, signal.SIGUSR1])
def test_next_supervisor_adopts_the_bridges_a_previous_one_left(
    start_supervisor, owner, exit_signal
):
    first_supervisor = start_supervisor()
    deployment, _ = deploy_fixture_server(owner)
    first_supervisor.wait_for_status(deployment, Status.RUNNING)
    bridge = bridge_process(deployment)

    code = first_supervisor.stop(exit_signal)
    assert code == (-signal.SIGKILL if exit_signal == signal.SIGKILL else 0)
    assert bridge.is_running()
    second_supervisor = start_supervisor()

    assert f"adopted bridge pid {bridge.pid}" in second_supervisor.log()
    assert call_tool(endpoint_of(deployment), "echo", {"message": "still"}) == "still"
    time.sleep(0.5)  # a few passes of the new supervisor
    assert bridge_process(deployment).pid == bridge.pid
    deployment.refresh_from_db()
    assert deployment.status == Status.RUNNING


def test_a_restart_asked_for_while_no_supervisor_runs_happens_once_when_one_comes_back(
    start_supervisor, owner
):
    first_supervisor = start_supervisor()
    deployment, _ = deploy_fixture_server(owner)
    first_supervisor.wait_for_status(deployment, Status.RUNNING)
    family = bridge_family(deployment)
    assert first_supervisor.stop(signal.SIGUSR1) == 0  # leaves the bridge serving

    services.restart_deployment(deployment)
    assert family[0].is_running()  # nothing acts on it yet
    second_supervisor = start_supervisor()

    assert f"adopted bridge pid {family[0].pid}" in second_supervisor.log()
    assert all_gone(family)
    second_supervisor.wait_for_status(deployment, Status.RUNNING)
    fresh = bridge_process(deployment)
    assert statuses(deployment)[-2:] == [Status.STARTING, Status.RUNNING]
    time.sleep(0.6)  # a few passes: the fresh bridge stays
    assert bridge_process(deployment).pid == fresh.pid
    # What the next supervisor to adopt it compares with the request: it would keep it too.
    record = PidRecord.read(run_paths(deployment.id).pidfile)
    assert record is not None and deployment.restart_requested_at is not None
    assert record.restart_requested_at == deployment.restart_requested_at


def test_sigterm_stops_every_bridge_and_exits_cleanly(supervisor, owner):
    shared, _ = deploy_fixture_server(owner)
    isolated, _ = deploy_fixture_server(owner, process_model="isolated")
    supervisor.wait_for_status(shared, Status.RUNNING)
    supervisor.wait_for_status(isolated, Status.RUNNING)
    family = bridge_family(shared) + bridge_family(isolated)

    assert supervisor.stop(signal.SIGTERM) == 0

    assert all_gone(family)
    for deployment in (shared, isolated):
        deployment.refresh_from_db()
        assert (deployment.status, deployment.status_detail) == (Status.STOPPED, SHUTDOWN_DETAIL)
    assert "all bridges stopped" in supervisor.log()


def test_idle_deployment_sleeps_and_a_wake_brings_it_back(supervisor, owner):
    deployment, _ = deploy_fixture_server(owner)
    supervisor.wait_for_status(deployment, Status.RUNNING)
    family = bridge_family(deployment)
    long_ago = timezone.now() - timedelta(hours=2)

    Deployment.objects.filter(pk=deployment.pk).update(
        last_active_at=long_ago, status_changed_at=long_ago
    )
    supervisor.wait_for_status(deployment, Status.SLEEPING)
    assert all_gone(family)

    LocalRuntime().wake(deployment)
    supervisor.wait_for_status(deployment, Status.RUNNING)
    assert call_tool(endpoint_of(deployment), "echo", {"message": "awake"}) == "awake"
    assert statuses(deployment)[-3:] == [Status.SLEEPING, Status.STARTING, Status.RUNNING]


def test_undecryptable_credential_fails_the_deployment_with_the_reason(supervisor, owner):
    stranger_ciphertext = Fernet(Fernet.generate_key()).encrypt(b"s3cret").decode()
    with transaction.atomic():  # the supervisor never sees the readable credential
        deployment, _ = deploy_fixture_server(owner, environment={"API_KEY": "s3cret"})
        Credential.objects.filter(deployment=deployment).update(encrypted_value=stranger_ciphertext)

    supervisor.wait_for_status(deployment, Status.FAILED)

    assert "cannot decrypt credential API_KEY" in deployment.status_detail
    time.sleep(0.5)  # a few more passes: it must stay failed, not loop
    deployment.refresh_from_db()
    assert deployment.status == Status.FAILED
    assert not run_paths(deployment.id).pidfile.exists()


def test_deleted_deployment_loses_its_bridge_and_its_folder(supervisor, owner):
    deployment, _ = deploy_fixture_server(owner)
    supervisor.wait_for_status(deployment, Status.RUNNING)
    family = bridge_family(deployment)
    folder = run_paths(deployment.id).root

    deployment.delete()

    assert all_gone(family)
    deadline = time.monotonic() + WAIT_SECONDS
    while folder.exists():
        assert time.monotonic() < deadline, supervisor.log()
        time.sleep(0.1)


def test_second_supervisor_for_the_same_data_folder_refuses_to_run(supervisor, start_supervisor):
    second = start_supervisor(wait=False)

    assert second.proc.wait(timeout=WAIT_SECONDS) != 0
    assert "another supervisor" in second.log()
    assert f"(pid {supervisor.proc.pid})" in second.log()
    assert supervisor.proc.poll() is None


def test_deleting_a_stopped_deployment_removes_its_folder(supervisor, owner):
    deployment, _ = deploy_fixture_server(owner)
    supervisor.wait_for_status(deployment, Status.RUNNING)
    services.stop_deployment(deployment)
    supervisor.wait_for_status(deployment, Status.STOPPED)
    folder = run_paths(deployment.id).root
    assert folder.exists()

    deployment.delete()

    deadline = time.monotonic() + WAIT_SECONDS
    while folder.exists():
        assert time.monotonic() < deadline, supervisor.log()
        time.sleep(0.1)


@pytest.mark.slow
def test_real_npm_server_runs_through_npx(supervisor, owner):
    deployment, _ = services.create_deployment(
        owner,
        services.parse_package_spec("npm:@modelcontextprotocol/server-everything@2026.1.26"),
        environment={"EVERYTHING_MARKER": "npm-ok"},
        issued_to="tests",
    )

    supervisor.wait_for_status(deployment, Status.RUNNING, timeout=240)

    endpoint = endpoint_of(deployment)
    assert call_tool(endpoint, "echo", {"message": "npm"}).endswith("npm")
    environment = call_tool(endpoint, "get-env")
    assert "npm-ok" in environment
    assert "SECRET_KEY" not in environment
    assert "CATWALK_" not in environment
    family = bridge_family(deployment)
    assert supervisor.stop(signal.SIGTERM) == 0
    assert all_gone(family)


@pytest.mark.slow
def test_real_pypi_server_runs_through_uvx(supervisor, owner):
    deployment, _ = services.create_deployment(
        owner,
        services.parse_package_spec("pypi:mcp-server-time==2026.10.19"),
        entry_args=["--local-timezone", "UTC"],
        issued_to="tests",
    )

    supervisor.wait_for_status(deployment, Status.RUNNING, timeout=240)

    answer = json.loads(call_tool(endpoint_of(deployment), "get_current_time", {"timezone": "UTC"}))
    assert answer["timezone"] == "UTC"
    family = bridge_family(deployment)
    assert supervisor.stop(signal.SIGTERM) == 0
    assert all_gone(family)


def test_without_the_sandbox_tools_deployments_fail_saying_why_on_the_page_and_in_the_log(
    start_supervisor, owner, owner_client
):
    supervisor = start_supervisor(SANDBOX_TOOLS_PATH="/nonexistent", CATWALK_UNSAFE_NO_SANDBOX="")
    deployment, _ = deploy_fixture_server(owner)

    deployment = supervisor.wait_for_status(deployment, Status.FAILED)

    for text in (deployment.status_detail, supervisor.log()):
        assert "bwrap (Debian package bubblewrap)" in text
        assert "CATWALK_UNSAFE_NO_SANDBOX=1" in text
    page = owner_client.get(reverse("deployment-detail", args=[deployment.id])).content.decode()
    assert "MCP servers run only inside the sandbox" in page
    assert not run_paths(deployment.id).pidfile.exists()


def test_the_unsafe_setting_runs_servers_unsandboxed_and_says_so(start_supervisor, owner):
    supervisor = start_supervisor(SANDBOX_TOOLS_PATH="/nonexistent", CATWALK_UNSAFE_NO_SANDBOX="1")
    deployment, _ = deploy_fixture_server(owner)

    supervisor.wait_for_status(deployment, Status.RUNNING)

    assert "UNSANDBOXED" in supervisor.log()
    environment = json.loads(call_tool(endpoint_of(deployment), "get-env"))
    assert environment["HOME"] == str(run_paths(deployment.id).home)
