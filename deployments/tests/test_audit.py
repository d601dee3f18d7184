"""The audit log: each security-relevant action is recorded once, with who and from where, and
shown to its owner (and in the admin) but to nobody else."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from catwalk.testing import PASSWORD, make_credential, make_deployment, make_token, make_user
from deployments import services
from deployments.models import AuditAction, AuditEvent, Deployment, DesiredState

pytestmark = pytest.mark.django_db


def actions(user) -> list[str]:
    return list(
        AuditEvent.objects.filter(user=user)
        .order_by("created_at", "id")
        .values_list("action", flat=True)
    )


def test_sign_in_failure_and_sign_out_are_recorded_with_the_address(owner):
    client = Client(REMOTE_ADDR="198.51.100.7")
    client.post(reverse("login"), {"username": owner.username, "password": "wrong"})
    client.post(reverse("login"), {"username": "nobody-by-that-name", "password": "x"})
    client.post(reverse("login"), {"username": owner.username, "password": PASSWORD})
    client.post(reverse("logout"))

    assert actions(owner) == [
        AuditAction.SIGN_IN_FAILED,
        AuditAction.SIGNED_IN,
        AuditAction.SIGNED_OUT,
    ]
    signed_in = AuditEvent.objects.get(user=owner, action=AuditAction.SIGNED_IN)
    assert signed_in.ip_address == "198.51.100.7"
    assert signed_in.actor == owner
    assert AuditEvent.objects.count() == 3  # the unknown name is nobody's event


def test_creating_a_deployment_records_it_its_credentials_and_its_first_token(owner):
    deployment, _ = services.create_deployment(
        owner,
        services.PackageSpec("npm", "server"),
        name="api",
        environment={"API_KEY": "k", "REGION": "eu"},
        issued_to="cli",
    )

    assert sorted(actions(owner)) == sorted(
        [
            AuditAction.DEPLOYMENT_CREATED,
            AuditAction.CREDENTIAL_SET,
            AuditAction.CREDENTIAL_SET,
            AuditAction.TOKEN_CREATED,
        ]
    )
    token_event = AuditEvent.objects.get(action=AuditAction.TOKEN_CREATED)
    assert token_event.deployment == deployment
    assert token_event.subject.startswith("cli (cwk_")
    assert token_event.actor is None  # the command line
    credential_subjects = set(
        AuditEvent.objects.filter(action=AuditAction.CREDENTIAL_SET).values_list(
            "subject", flat=True
        )
    )
    assert credential_subjects == {"API_KEY on api", "REGION on api"}
    assert not AuditEvent.objects.filter(subject__contains="k on").exists()  # never values


def test_revoking_a_token_is_recorded_once(owner):
    deployment = make_deployment(owner, "api")
    token, _ = make_token(deployment, "laptop")

    token.revoke(actor=owner)
    token.revoke(actor=owner)

    revoked = AuditEvent.objects.filter(action=AuditAction.TOKEN_REVOKED)
    assert [(event.actor, event.subject[:6]) for event in revoked] == [(owner, "laptop")]


def test_starting_stopping_and_deleting_are_recorded_and_deletion_is_one_event(owner):
    deployment = make_deployment(owner, "api")
    make_credential(deployment, "API_KEY", "k")
    AuditEvent.objects.all().delete()

    services.stop_deployment(deployment, actor=owner)
    services.stop_deployment(deployment, actor=owner)  # no change, no event
    services.start_deployment(deployment, actor=owner)
    deployment.delete()

    assert actions(owner) == [
        AuditAction.DEPLOYMENT_STOPPED,
        AuditAction.DEPLOYMENT_STARTED,
        AuditAction.DEPLOYMENT_DELETED,
    ]
    deleted = AuditEvent.objects.get(action=AuditAction.DEPLOYMENT_DELETED)
    assert deleted.subject == "api" and deleted.deployment is None


def test_a_credential_is_recorded_when_its_value_changes_only(owner):
    credential = make_credential(make_deployment(owner, "api"), "API_KEY", "one")
    AuditEvent.objects.all().delete()
    credential.is_secret = False
    credential.save()
    credential.set_value("two")
    credential.save()
    credential.delete()

    assert actions(owner) == [AuditAction.CREDENTIAL_SET, AuditAction.CREDENTIAL_DELETED]


def test_changing_the_password_is_recorded(owner, owner_client):
    response = owner_client.post(
        reverse("password_change"),
        {
            "old_password": PASSWORD,
            "new_password1": "another-long-password-77",
            "new_password2": "another-long-password-77",
        },
    )

    assert response.status_code == 302
    assert actions(owner)[-1] == AuditAction.PASSWORD_CHANGED


def test_the_activity_page_shows_only_your_own_events(owner, owner_client, stranger, anon_client):
    make_token(make_deployment(owner, "mine"), "owner-laptop")
    make_token(make_deployment(stranger, "theirs"), "stranger-phone")

    page = owner_client.get(reverse("activity")).content.decode()

    assert "owner-laptop" in page and "Access token created" in page
    assert "stranger-phone" not in page
    assert anon_client.get(reverse("activity")).status_code == 302


def test_the_admin_shows_the_log_read_only_and_records_its_own_actions(owner):
    admin_user = make_user("root", is_staff=True, is_superuser=True)
    client = Client(REMOTE_ADDR="203.0.113.9")
    client.force_login(admin_user)
    deployment = make_deployment(owner, "api")
    token, _ = make_token(deployment, "laptop")

    client.post(
        reverse("admin:deployments_accesstoken_changelist"),
        {"action": "revoke", "_selected_action": [token.pk]},
    )
    listing = client.get(reverse("admin:deployments_auditevent_changelist"))
    add = client.get(reverse("admin:deployments_auditevent_add"))

    revoked = AuditEvent.objects.get(action=AuditAction.TOKEN_REVOKED)
    assert revoked.user == owner and revoked.actor == admin_user
    assert revoked.ip_address == "203.0.113.9"
    assert listing.status_code == 200 and "laptop" in listing.content.decode()
    assert add.status_code == 403


def admin_change(client: Client, deployment, **changes):
    """Post the deployment's admin change form with `changes` applied."""
    url = reverse("admin:deployments_deployment_change", args=[deployment.pk])
    form = client.get(url).context["adminform"].form
    data = {
        name: ("" if value is None else value)
        for name, value in form.initial.items()
        if name in form.fields
    }
    data.update(
        {
            "owner": deployment.owner_id,
            "entry_args": "[]",
            "runtime_settings": "{}",
            "allowed_origins": "[]",
            "credentials-TOTAL_FORMS": 0,
            "credentials-INITIAL_FORMS": 0,
            "access_tokens-TOTAL_FORMS": 0,
            "access_tokens-INITIAL_FORMS": 0,
            **changes,
        }
    )
    return client.post(url, data)


@pytest.fixture
def admin_client_() -> tuple[Client, object]:
    admin_user = make_user("root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin_user)
    return client, admin_user


def test_an_admin_stopping_a_deployment_goes_through_the_audited_path(owner, admin_client_):
    client, admin_user = admin_client_
    deployment = make_deployment(owner, "api")

    response = admin_change(client, deployment, desired_state=DesiredState.STOPPED)

    assert response.status_code == 302, response.context["adminform"].form.errors
    deployment.refresh_from_db()
    assert deployment.desired_state == DesiredState.STOPPED
    stopped = AuditEvent.objects.get(action=AuditAction.DEPLOYMENT_STOPPED)
    assert stopped.actor == admin_user and stopped.user == owner


def test_deleting_an_account_with_deployments_works_and_records_nothing_dangling(owner):
    deployment = make_deployment(owner, "api")
    make_credential(deployment, "API_KEY", "k")
    make_token(deployment, "laptop")

    owner.delete()

    assert not AuditEvent.objects.filter(user_id=owner.pk).exists()
    assert not Deployment.objects.filter(pk=deployment.pk).exists()


def test_deleting_a_live_token_is_recorded_as_a_revocation(owner):
    token, _ = make_token(make_deployment(owner, "api"), "laptop")
    revoked, _ = make_token(token.deployment, "old")
    revoked.revoke()

    token.delete()
    revoked.delete()

    events = AuditEvent.objects.filter(action=AuditAction.TOKEN_REVOKED).order_by("id")
    assert [event.subject.split(" ")[0] for event in events] == ["old", "laptop"]
    assert events.last().subject.endswith("deleted")


def test_deleting_an_expired_token_is_no_revocation(owner):
    expired = timezone.now() - timedelta(minutes=1)
    token, _ = make_token(make_deployment(owner, "api"), "laptop", expires_at=expired)

    token.delete()

    assert not AuditEvent.objects.filter(action=AuditAction.TOKEN_REVOKED).exists()


def test_a_password_set_any_other_way_is_recorded_too(owner):
    owner.set_password("changed-by-the-operator-99")
    owner.save()
    owner.first_name = "Ada"
    owner.save()  # no password change: nothing

    assert actions(owner) == [AuditAction.PASSWORD_CHANGED]
