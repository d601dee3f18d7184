"""The deployment lifecycle, tokens and credentials as model behaviour."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError
from django.utils import timezone

from catwalk.testing import make_credential, make_deployment, make_token
from deployments.models import (
    AccessToken,
    DeploymentEvent,
    DesiredState,
    Status,
    TransitionError,
    hash_token,
)

pytestmark = pytest.mark.django_db


def test_a_status_change_is_recorded_in_the_history(owner):
    deployment = make_deployment(owner)
    assert deployment.move_to(Status.STARTING, "Starting the server.")
    deployment.refresh_from_db()
    assert deployment.status == Status.STARTING
    event = DeploymentEvent.objects.get(deployment=deployment)
    assert event.status == Status.STARTING
    assert event.message == "Starting the server."


def test_the_lifecycle_refuses_impossible_transitions(owner):
    deployment = make_deployment(owner)
    with pytest.raises(TransitionError, match="cannot go from pending to sleeping"):
        deployment.move_to(Status.SLEEPING)
    deployment.refresh_from_db()
    assert deployment.status == Status.PENDING
    assert not DeploymentEvent.objects.exists()


def test_moving_to_the_current_status_is_a_quiet_no_op(owner):
    deployment = make_deployment(owner)
    deployment.move_to(Status.STARTING)
    assert deployment.move_to(Status.STARTING, "still starting") is False
    assert DeploymentEvent.objects.count() == 1
    deployment.refresh_from_db()
    assert deployment.status_detail == "still starting"


def test_a_full_life(owner):
    deployment = make_deployment(owner)
    for status in [
        Status.STARTING,
        Status.RUNNING,
        Status.SLEEPING,
        Status.STARTING,
        Status.RUNNING,
        Status.CRASHED,
        Status.STARTING,
        Status.RUNNING,
        Status.STOPPING,
        Status.STOPPED,
    ]:
        deployment.move_to(status)
    assert DeploymentEvent.objects.filter(deployment=deployment).count() == 10


def test_desired_state_changes_are_logged_once(owner):
    deployment = make_deployment(owner)
    deployment.set_desired_state(DesiredState.STOPPED, actor=owner)
    deployment.set_desired_state(DesiredState.STOPPED, actor=owner)
    deployment.refresh_from_db()
    assert deployment.desired_state == DesiredState.STOPPED
    assert DeploymentEvent.objects.get().message == "Stop requested."


def test_names_are_unique_per_owner_only(owner, stranger):
    make_deployment(owner, "search")
    make_deployment(stranger, "search")
    with pytest.raises(IntegrityError):
        make_deployment(owner, "search")


def test_package_spec_reads_like_the_registry_writes_it(owner):
    assert (
        make_deployment(
            owner, package_registry="npm", package_name="@a/b", package_version="1.2.3"
        ).package_spec
        == "npm:@a/b@1.2.3"
    )
    assert (
        make_deployment(
            owner, package_registry="pypi", package_name="mcp-server-time", package_version="0.6.2"
        ).package_spec
        == "pypi:mcp-server-time==0.6.2"
    )
    assert (
        make_deployment(
            owner, package_registry="pypi", package_name="x", package_version=""
        ).package_spec
        == "pypi:x"
    )


def test_one_credential_per_name(owner):
    deployment = make_deployment(owner)
    make_credential(deployment, "API_KEY", "one")
    with pytest.raises(IntegrityError):
        make_credential(deployment, "API_KEY", "two")


def test_a_token_is_stored_as_a_hash_with_a_visible_prefix(owner):
    token, plaintext = make_token(make_deployment(owner))
    assert plaintext.startswith("cwk_") and len(plaintext) > 40
    stored = AccessToken.objects.get(pk=token.pk)
    assert stored.token_hash == hash_token(plaintext)
    assert plaintext[:12] == stored.prefix
    assert plaintext not in {value for value in vars(stored).values() if isinstance(value, str)}


def test_revoked_and_expired_tokens_are_not_active(owner):
    deployment = make_deployment(owner)
    live, _ = make_token(deployment)
    revoked, _ = make_token(deployment)
    expired, _ = make_token(deployment, expires_at=timezone.now() - timedelta(seconds=1))
    revoked.revoke()
    assert set(AccessToken.objects.active()) == {live}
    assert not revoked.is_active and not expired.is_active and live.is_active
