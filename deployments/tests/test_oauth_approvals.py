"""Approvals on a deployment's page: the clients its owner let in through OAuth, each revocable.

Approvals are made the real way, through the consent page and the token endpoint
(tests/oauth_client.py).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from oauth2_provider.models import AccessToken, Application, RefreshToken

from catwalk.testing import make_deployment
from deployments.models import AuditAction, AuditEvent, CallOutcome, ToolCall
from deployments.tests.oauth_client import PkceClient, checksum

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    """The run folders the deployment page reads its logs from, in this test's own folder."""
    settings.DATA_DIR = tmp_path


@pytest.fixture
def deployment(owner):
    return make_deployment(owner, "notes")


def approve(browser, deployment, name: str = "Desk Agent") -> tuple[PkceClient, dict]:
    client = PkceClient.register(redirect_uri="https://agent.example/callback", name=name)
    return client, client.tokens(browser, deployment.endpoint_url)


def page_of(browser, deployment) -> str:
    response = browser.get(f"/deployments/{deployment.pk}/")
    assert response.status_code == 200
    return response.content.decode()


def revoke_url(deployment, client: PkceClient) -> str:
    application = Application.objects.get(client_id=client.client_id)
    return f"/deployments/{deployment.pk}/approvals/{application.pk}/revoke/"


def access_token(tokens: dict) -> AccessToken | None:
    return AccessToken.objects.filter(token_checksum=checksum(tokens["access_token"])).first()


def test_an_approved_client_is_listed_with_where_it_redirects_and_when(owner_client, deployment):
    approve(owner_client, deployment)

    text = page_of(owner_client, deployment)

    section = text[text.index('id="approvals"') :]
    assert "Desk Agent" in section
    assert "agent.example" in section
    assert timezone.now().strftime("%Y-%m-%d") in section
    assert "no call recorded" in section
    assert ">Revoke</button>" in section


def test_the_last_call_a_client_made_says_when_it_was_last_used(owner_client, deployment):
    client, _ = approve(owner_client, deployment)
    ToolCall.objects.create(
        deployment=deployment,
        oauth_client=Application.objects.get(client_id=client.client_id),
        method="tools/call",
        target="echo",
        started_at=timezone.now() - timedelta(hours=2),
        duration_ms=3.0,
        outcome=CallOutcome.OK,
    )

    text = page_of(owner_client, deployment)

    assert "2\xa0hours ago" in text[text.index('id="approvals"') :]


def test_a_deployment_lists_only_its_own_approvals(owner, owner_client, deployment):
    other = make_deployment(owner, "other")
    approve(owner_client, other, name="Elsewhere Agent")

    assert "Elsewhere Agent" not in page_of(owner_client, deployment)
    assert "Elsewhere Agent" in page_of(owner_client, other)


def test_an_approval_whose_refresh_token_has_expired_is_no_longer_listed(
    owner_client, deployment, settings
):
    _, tokens = approve(owner_client, deployment)
    lifetime = timedelta(seconds=settings.OAUTH_REFRESH_TOKEN_SECONDS)
    AccessToken.objects.filter(pk=access_token(tokens).pk).update(
        expires=timezone.now() - lifetime - timedelta(minutes=1)
    )

    assert "Desk Agent" not in page_of(owner_client, deployment)


def test_revoking_an_approval_ends_its_access_and_refresh_tokens(owner, owner_client, deployment):
    client, tokens = approve(owner_client, deployment)
    assert access_token(tokens) is not None

    response = owner_client.post(revoke_url(deployment, client))

    assert response.status_code == 303
    assert response["Location"] == f"/deployments/{deployment.pk}/#approvals"
    assert access_token(tokens) is None
    assert not RefreshToken.objects.filter(revoked__isnull=True).exists()
    refresh = client.refresh(tokens["refresh_token"])
    assert (refresh.status_code, refresh.json()["error"]) == (400, "invalid_grant")
    text = page_of(owner_client, deployment)  # with the message, once
    assert "Desk Agent can no longer use notes" in text
    assert "Desk Agent" not in text[text.index('id="approvals"') :]
    event = AuditEvent.objects.get(action=AuditAction.TOKEN_REVOKED)
    assert (event.user, event.actor, event.deployment) == (owner, owner, deployment)
    assert event.subject == "OAuth access of Desk Agent to notes"


def test_revoking_leaves_the_same_clients_approval_of_another_deployment(
    owner, owner_client, deployment
):
    other = make_deployment(owner, "other")
    client, _ = approve(owner_client, deployment)
    other_tokens = client.tokens(owner_client, other.endpoint_url)

    owner_client.post(revoke_url(deployment, client))

    assert access_token(other_tokens) is not None
    assert client.refresh(other_tokens["refresh_token"], other.endpoint_url).status_code == 200


def test_another_user_cannot_revoke_an_approval(owner_client, stranger_client, deployment):
    client, tokens = approve(owner_client, deployment)

    response = stranger_client.post(revoke_url(deployment, client))

    assert response.status_code == 404
    assert access_token(tokens) is not None


def test_revoking_takes_a_post_from_a_signed_in_owner(owner_client, anon_client, deployment):
    client, tokens = approve(owner_client, deployment)
    url = revoke_url(deployment, client)

    assert owner_client.get(url).status_code == 405
    anonymous = anon_client.post(url)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/accounts/login/")
    assert access_token(tokens) is not None


def test_revoking_a_client_that_holds_nothing_for_this_deployment_is_404(
    owner, owner_client, deployment
):
    other = make_deployment(owner, "other")
    client, _ = approve(owner_client, other)

    assert owner_client.post(revoke_url(deployment, client)).status_code == 404
    missing = f"/deployments/{deployment.pk}/approvals/999999/revoke/"
    assert owner_client.post(missing).status_code == 404


def test_the_page_costs_the_same_queries_however_many_approvals_it_lists(owner_client, deployment):
    approve(owner_client, deployment, name="First")
    with CaptureQueriesContext(connection) as with_one:
        page_of(owner_client, deployment)

    for n in range(3):
        approve(owner_client, deployment, name=f"More {n}")
    with CaptureQueriesContext(connection) as with_four:
        text = page_of(owner_client, deployment)

    assert text.count(">Revoke</button>") >= 4
    assert len(with_four.captured_queries) == len(with_one.captured_queries)
