"""Pages show a user their own deployments only, from three sides."""

from __future__ import annotations

import pytest

from catwalk.testing import make_credential, make_deployment, make_token

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(owner):
    deployment = make_deployment(owner, "weather")
    make_credential(deployment, "WEATHER_API_KEY", "plaintext-never-rendered")
    make_token(deployment, "laptop")
    return deployment


def test_owner_sees_their_deployment_on_the_dashboard(owner_client, deployment):
    response = owner_client.get("/")
    assert response.status_code == 200
    assert b"weather" in response.content


def test_another_user_does_not_see_it_on_their_dashboard(stranger_client, deployment):
    response = stranger_client.get("/")
    assert b"weather" not in response.content
    assert b"No deployments yet" in response.content


def test_anonymous_visitors_are_sent_to_sign_in(anon_client, deployment):
    response = anon_client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_owner_sees_the_deployment_page_without_secret_values(owner_client, deployment):
    response = owner_client.get(f"/deployments/{deployment.id}/")
    assert response.status_code == 200
    assert b"WEATHER_API_KEY" in response.content
    assert b"plaintext-never-rendered" not in response.content
    assert deployment.access_tokens.get().prefix.encode() in response.content


def test_another_user_gets_404_for_the_deployment_page(stranger_client, deployment):
    assert stranger_client.get(f"/deployments/{deployment.id}/").status_code == 404


def test_anonymous_visitors_are_sent_to_sign_in_from_the_deployment_page(anon_client, deployment):
    response = anon_client.get(f"/deployments/{deployment.id}/")
    assert response.status_code == 302
