"""What the deployment page's actions do: restart, set or remove a credential, delete, and
create or revoke access tokens (deployments.services)."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from catwalk.testing import make_credential, make_deployment, make_token
from deployments import services
from deployments.models import (
    AccessToken,
    AuditAction,
    AuditEvent,
    Credential,
    Deployment,
    DeploymentEvent,
    EventKind,
    Status,
)
from deployments.runtimes.local import run_paths
from deployments.tests.conftest import (
    WAIT_SECONDS,
    all_gone,
    bridge_family,
    bridge_process,
    call_tool,
    deploy_fixture_server,
    endpoint_of,
)

pytestmark = pytest.mark.django_db

supervised = pytest.mark.django_db(transaction=True)


def statuses(deployment: Deployment) -> list[str]:
    return list(
        deployment.events.exclude(status="").order_by("id").values_list("status", flat=True)
    )


def messages(deployment: Deployment) -> list[str]:
    return list(deployment.events.order_by("id").values_list("message", flat=True))


def audited(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


@pytest.fixture
def deployment(owner) -> Deployment:
    return make_deployment(owner, "api", status=Status.RUNNING)


# --- Restart ------------------------------------------------------------------------------------


@supervised
def test_restarting_a_running_deployment_starts_a_fresh_bridge_and_the_history_says_so(
    supervisor, owner
):
    deployment, _ = deploy_fixture_server(owner)
    supervisor.wait_for_status(deployment, Status.RUNNING)
    family = bridge_family(deployment)

    services.restart_deployment(deployment, actor=owner)

    assert all_gone(family)
    supervisor.wait_for_status(deployment, Status.RUNNING)
    assert bridge_process(deployment).pid != family[0].pid
    assert statuses(deployment)[-2:] == [Status.STARTING, Status.RUNNING]
    assert statuses(deployment).count(Status.STARTING) == 2
    asked = deployment.events.get(message="Restart requested.")
    assert (asked.kind, asked.actor) == (EventKind.ACTION, owner)
    assert call_tool(endpoint_of(deployment), "echo", {"message": "fresh"}) == "fresh"
    restarted = bridge_process(deployment)
    time.sleep(0.6)  # a few passes: the fresh bridge is not restarted again
    assert bridge_process(deployment).pid == restarted.pid


def test_restarting_a_stopped_deployment_is_refused_and_changes_nothing(deployment, owner):
    services.stop_deployment(deployment)
    before = messages(deployment)

    with pytest.raises(services.DeploymentError, match="api is stopped; start it instead"):
        services.restart_deployment(deployment, actor=owner)

    deployment.refresh_from_db()
    assert deployment.restart_requested_at is None
    assert messages(deployment) == before
    assert not audited(AuditAction.DEPLOYMENT_RESTARTED)


def test_a_restart_is_in_the_audit_log_with_who_asked(deployment, owner):
    services.restart_deployment(deployment, actor=owner)

    [restarted] = audited(AuditAction.DEPLOYMENT_RESTARTED)
    assert (restarted.user, restarted.actor, restarted.subject) == (owner, owner, "api")
    deployment.refresh_from_db()
    assert deployment.restart_requested_at is not None


def test_restarting_a_failed_deployment_starts_it_again(owner):
    failed = make_deployment(owner, "api", status=Status.FAILED)

    services.restart_deployment(failed, actor=owner)

    failed.refresh_from_db()
    assert failed.status == Status.STARTING
    assert statuses(failed) == [Status.STARTING]


def test_restarting_a_sleeping_deployment_leaves_it_asleep(owner):
    sleeping = make_deployment(owner, "api", status=Status.SLEEPING)

    services.restart_deployment(sleeping, actor=owner)

    sleeping.refresh_from_db()
    assert sleeping.status == Status.SLEEPING  # it starts afresh when a request wakes it
    assert sleeping.restart_requested_at is not None


# --- Credentials --------------------------------------------------------------------------------


@supervised
def test_replacing_a_credential_of_a_running_deployment_restarts_it_with_the_new_value(
    supervisor, owner
):
    deployment, _ = deploy_fixture_server(owner, environment={"API_KEY": "old"})
    supervisor.wait_for_status(deployment, Status.RUNNING)
    family = bridge_family(deployment)

    services.set_credential(deployment, "API_KEY", "new", actor=owner)

    assert all_gone(family)
    supervisor.wait_for_status(deployment, Status.RUNNING)
    environment = json.loads(call_tool(endpoint_of(deployment), "get-env"))
    assert environment["API_KEY"] == "new"
    said = deployment.events.filter(message__contains="API_KEY")
    assert [(event.message, event.actor) for event in said] == [
        ("API_KEY replaced; restarting so the server uses it.", owner)
    ]


def test_a_credential_set_on_a_stopped_deployment_waits_for_the_next_start(deployment, owner):
    services.stop_deployment(deployment)

    services.set_credential(deployment, "API_KEY", "s3cret", actor=owner)

    credential = deployment.credentials.get(name="API_KEY")
    assert credential.get_value() == "s3cret"
    assert "s3cret" not in credential.encrypted_value
    assert messages(deployment)[-1] == "API_KEY set; the server gets it when it next starts."
    deployment.refresh_from_db()
    assert deployment.restart_requested_at is None
    [recorded] = audited(AuditAction.CREDENTIAL_SET)
    assert (recorded.actor, recorded.subject) == (owner, "API_KEY on api")


def test_setting_a_credential_of_a_running_deployment_asks_for_a_restart_in_one_event(
    deployment, owner
):
    make_credential(deployment, "API_KEY", "old")
    before = deployment.events.count()

    services.set_credential(deployment, "API_KEY", "new", actor=owner)

    assert deployment.credentials.get(name="API_KEY").get_value() == "new"
    assert deployment.events.count() == before + 1
    assert messages(deployment)[-1] == "API_KEY replaced; restarting so the server uses it."
    deployment.refresh_from_db()
    assert deployment.restart_requested_at is not None


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("2FAST", "x", "is not an environment variable name"),
        ("API-KEY", "x", "is not an environment variable name"),
        ("", "x", "is not an environment variable name"),
        ("CATWALK_BRIDGE_SECRET", "x", "are reserved"),
        ("API_KEY", "a\0b", "contains a NUL character"),
        ("API_KEY", "x" * (32 * 1024 + 1), "longer than 32 KiB"),
    ],
)
def test_a_credential_no_server_could_receive_is_refused_with_nothing_written(
    deployment, owner, name, value, reason
):
    make_credential(deployment, "API_KEY", "kept")
    before = messages(deployment)
    audit_before = AuditEvent.objects.count()

    with pytest.raises(services.DeploymentError, match=reason):
        services.set_credential(deployment, name, value, actor=owner)

    assert [(c.name, c.get_value()) for c in deployment.credentials.all()] == [("API_KEY", "kept")]
    assert messages(deployment) == before
    assert AuditEvent.objects.count() == audit_before
    deployment.refresh_from_db()
    assert deployment.restart_requested_at is None


def test_removing_a_credential_restarts_the_deployment_without_it(deployment, owner):
    make_credential(deployment, "API_KEY", "k")
    make_credential(deployment, "REGION", "eu")

    services.remove_credential(deployment, "API_KEY", actor=owner)

    assert list(deployment.credentials.values_list("name", flat=True)) == ["REGION"]
    assert messages(deployment)[-1] == "API_KEY removed; restarting so the server goes without it."
    [removed] = audited(AuditAction.CREDENTIAL_DELETED)
    assert (removed.actor, removed.subject) == (owner, "API_KEY on api")


def test_removing_a_credential_that_does_not_exist_is_refused(deployment, owner):
    make_credential(make_deployment(owner, "other"), "API_KEY", "theirs")

    with pytest.raises(services.DeploymentError, match="api has no credential named 'API_KEY'"):
        services.remove_credential(deployment, "API_KEY", actor=owner)

    assert Credential.objects.filter(name="API_KEY").count() == 1
    assert not audited(AuditAction.CREDENTIAL_DELETED)


# --- Delete -------------------------------------------------------------------------------------


@supervised
def test_deleting_a_running_deployment_stops_its_processes_and_the_audit_log_keeps_it(
    supervisor, owner
):
    deployment, _ = deploy_fixture_server(owner, name="doomed", environment={"API_KEY": "k"})
    supervisor.wait_for_status(deployment, Status.RUNNING)
    family = bridge_family(deployment)
    folder = run_paths(deployment.id).root
    deployment_id = deployment.id

    services.delete_deployment(deployment, actor=owner)

    assert all_gone(family)
    assert not Deployment.objects.filter(pk=deployment_id).exists()
    for model in (Credential, AccessToken, DeploymentEvent):
        assert not model.objects.filter(deployment_id=deployment_id).exists()
    [deleted] = audited(AuditAction.DEPLOYMENT_DELETED)
    assert (deleted.user, deleted.actor, deleted.subject) == (owner, owner, "doomed")
    deadline = time.monotonic() + WAIT_SECONDS
    while folder.exists():
        assert time.monotonic() < deadline, supervisor.log()
        time.sleep(0.1)


def test_deleting_a_deployment_already_gone_is_refused_and_recorded_once(deployment, owner):
    stale_copy = Deployment.objects.get(pk=deployment.pk)
    services.delete_deployment(deployment, actor=owner)

    with pytest.raises(services.DeploymentError, match="api no longer exists"):
        services.delete_deployment(stale_copy, actor=owner)

    assert len(audited(AuditAction.DEPLOYMENT_DELETED)) == 1


# --- Access tokens ------------------------------------------------------------------------------


def test_a_created_token_has_its_label_stripped_and_is_shown_once(deployment, owner):
    expires_at = timezone.now() + timedelta(days=30)

    token, plaintext = services.create_token(
        deployment, "  laptop  ", actor=owner, expires_at=expires_at
    )

    assert (token.label, token.expires_at, token.deployment) == ("laptop", expires_at, deployment)
    assert plaintext.startswith(token.prefix) and plaintext not in token.token_hash
    assert AccessToken.objects.active().filter(pk=token.pk).exists()
    [created] = audited(AuditAction.TOKEN_CREATED)
    assert created.actor == owner and created.subject.startswith("laptop (cwk_")


@pytest.mark.parametrize(
    ("label", "expires_in", "reason"),
    [
        ("   ", None, "label must be 1 to 100 characters"),
        ("x" * 101, None, "label must be 1 to 100 characters"),
        ("laptop", timedelta(seconds=-1), "expiry must be in the future"),
    ],
)
def test_a_token_with_a_bad_label_or_a_past_expiry_is_refused(
    deployment, owner, label, expires_in, reason
):
    expires_at = timezone.now() + expires_in if expires_in is not None else None

    with pytest.raises(services.DeploymentError, match=reason):
        services.create_token(deployment, label, actor=owner, expires_at=expires_at)

    assert not deployment.access_tokens.exists()


def test_revoking_a_token_of_the_deployment_records_who_did_it(deployment, owner):
    token, _ = make_token(deployment, "laptop")

    revoked = services.revoke_token(deployment, token.pk, actor=owner)

    assert revoked.pk == token.pk and not revoked.is_active
    [event] = audited(AuditAction.TOKEN_REVOKED)
    assert event.actor == owner


def test_revoking_another_deployments_token_is_refused_and_it_keeps_working(
    deployment, owner, stranger
):
    theirs, _ = make_token(make_deployment(stranger, "theirs"), "phone")

    for reference in (theirs.pk, str(theirs.pk), 999_999, "not-a-number"):
        with pytest.raises(services.TokenNotFound, match="api has no token"):
            services.revoke_token(deployment, reference, actor=owner)

    theirs.refresh_from_db()
    assert theirs.is_active
    assert not audited(AuditAction.TOKEN_REVOKED)


def test_revoking_a_token_twice_is_one_revocation(deployment, owner):
    token, _ = make_token(deployment, "laptop")

    services.revoke_token(deployment, token.pk, actor=owner)
    services.revoke_token(deployment, token.pk, actor=owner)

    assert len(audited(AuditAction.TOKEN_REVOKED)) == 1
