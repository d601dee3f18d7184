"""Catwalk as an OAuth 2.1 authorization server for its MCP endpoints, over HTTP.

An MCP client (tests/oauth_client.py) discovers the server, registers itself or names its
metadata document, and runs the authorization code flow with PKCE S256 for one deployment's
endpoint; each refusal is the status and error that RFC 6749, 7636, 7591, 8707 and 9207 name.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from django.utils.html import escape
from oauth2_provider.models import AccessToken, Application, Grant, RefreshToken

from catwalk.testing import PASSWORD, make_deployment
from deployments.tests.cimd_standin import CimdStandin
from deployments.tests.oauth_client import (
    LOOPBACK_CALLBACK,
    PkceClient,
    checksum,
    consent_form,
    redirect_params,
    register,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(owner):
    return make_deployment(owner, "notes")


@pytest.fixture
def mcp_client() -> PkceClient:
    return PkceClient.register()


def error_of(response) -> str:
    return response.json()["error"]


# --- Discovery --------------------------------------------------------------------------------


def test_authorization_server_metadata_names_what_mcp_clients_need(anon_client):
    response = anon_client.get("/.well-known/oauth-authorization-server")

    assert response.status_code == 200
    metadata = response.json()
    issuer = settings.PUBLIC_URL
    assert metadata["issuer"] == issuer
    assert metadata["authorization_endpoint"] == f"{issuer}/oauth/authorize/"
    assert metadata["token_endpoint"] == f"{issuer}/oauth/token/"
    assert metadata["registration_endpoint"] == f"{issuer}/oauth/register/"
    assert metadata["revocation_endpoint"] == f"{issuer}/oauth/revoke_token/"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["client_id_metadata_document_supported"] is True
    assert metadata["authorization_response_iss_parameter_supported"] is True
    assert metadata["response_types_supported"] == ["code"]
    assert metadata["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert "none" in metadata["token_endpoint_auth_methods_supported"]
    assert metadata["scopes_supported"] == ["mcp"]


def test_each_deployment_publishes_protected_resource_metadata_for_its_endpoint(
    anon_client, deployment
):
    response = anon_client.get(f"/.well-known/oauth-protected-resource/mcp/{deployment.pk}")

    assert response.status_code == 200
    assert response.json() == {
        "resource": deployment.endpoint_url,
        "authorization_servers": [settings.PUBLIC_URL],
        "scopes_supported": ["mcp"],
        "bearer_methods_supported": ["header"],
        "resource_name": "notes",
    }


def test_protected_resource_metadata_of_an_unknown_deployment_is_404(anon_client):
    missing = "00000000-0000-4000-8000-000000000000"
    assert (
        anon_client.get(f"/.well-known/oauth-protected-resource/mcp/{missing}").status_code == 404
    )


# --- The authorization code flow --------------------------------------------------------------


def test_a_registered_public_client_gets_a_token_bound_to_the_deployment_endpoint(
    owner, owner_client, deployment, mcp_client
):
    redirect = mcp_client.approve(owner_client, deployment.endpoint_url)

    assert redirect["state"] == mcp_client.state
    assert redirect["iss"] == settings.PUBLIC_URL  # RFC 9207
    response = mcp_client.exchange(redirect["code"], deployment.endpoint_url)

    assert response.status_code == 200
    tokens = response.json()
    assert tokens["token_type"] == "Bearer"
    assert tokens["scope"] == "mcp"
    assert tokens["expires_in"] == settings.OAUTH_ACCESS_TOKEN_SECONDS
    token = AccessToken.objects.get(token_checksum=checksum(tokens["access_token"]))
    assert token.resource == [deployment.endpoint_url]
    assert token.user == owner
    assert token.application.client_id == mcp_client.client_id
    assert token.token == ""  # stored hashed: only its checksum is kept
    refresh = RefreshToken.objects.get(token_checksum=checksum(tokens["refresh_token"]))
    assert refresh.resource == [deployment.endpoint_url]


def test_a_refresh_token_rotates_and_the_old_one_then_fails_with_invalid_grant(
    owner_client, deployment, mcp_client
):
    first = mcp_client.tokens(owner_client, deployment.endpoint_url)

    response = mcp_client.refresh(first["refresh_token"], deployment.endpoint_url)

    assert response.status_code == 200
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    new_token = AccessToken.objects.get(token_checksum=checksum(second["access_token"]))
    assert new_token.resource == [deployment.endpoint_url]
    replay = mcp_client.refresh(first["refresh_token"])
    assert (replay.status_code, error_of(replay)) == (400, "invalid_grant")
    # A replayed refresh token means it leaked: its whole family is revoked (RFC 9700 §4.14).
    again = mcp_client.refresh(second["refresh_token"])
    assert (again.status_code, error_of(again)) == (400, "invalid_grant")


def test_a_refresh_without_a_resource_keeps_the_one_it_was_granted_for(
    owner_client, deployment, mcp_client
):
    first = mcp_client.tokens(owner_client, deployment.endpoint_url)

    response = mcp_client.refresh(first["refresh_token"])

    assert response.status_code == 200
    token = AccessToken.objects.get(token_checksum=checksum(response.json()["access_token"]))
    assert token.resource == [deployment.endpoint_url]


def test_an_endpoint_url_with_a_trailing_slash_names_the_same_deployment(
    owner_client, deployment, mcp_client
):
    tokens = mcp_client.tokens(owner_client, deployment.endpoint_url + "/")

    token = AccessToken.objects.get(token_checksum=checksum(tokens["access_token"]))
    assert token.resource == [deployment.endpoint_url]


def test_resources_compare_in_canonical_form_scheme_and_host_case_and_default_port(
    settings, owner_client, deployment, mcp_client
):
    settings.PUBLIC_URL = "https://Catwalk.Example:443"
    spelled_otherwise = f"HTTPS://catwalk.example/mcp/{deployment.pk}"

    code = mcp_client.approve(owner_client, spelled_otherwise)["code"]
    response = mcp_client.exchange(code, spelled_otherwise)

    assert response.status_code == 200
    token = AccessToken.objects.get(token_checksum=checksum(response.json()["access_token"]))
    assert token.resource == [deployment.endpoint_url]


# --- The consent page -------------------------------------------------------------------------


def test_the_consent_page_says_which_client_where_it_returns_which_deployment_and_scope(
    owner_client, deployment
):
    mcp_client = PkceClient.register(
        redirect_uri="https://client.example/oauth/callback", name="Acme Agent"
    )

    page = mcp_client.consent_page(owner_client, deployment.endpoint_url)

    assert page.status_code == 200
    text = page.content.decode()
    assert "Acme Agent wants to use notes" in text
    assert "client.example" in text
    assert deployment.endpoint_url in text
    assert escape(settings.OAUTH2_PROVIDER["SCOPES"]["mcp"]) in text
    assert ">Approve</button>" in text and ">Deny</button>" in text
    assert "<img" not in text  # no remote logo, whatever the client registered
    # The approval's redirect leaves this site: the page's form-action lets it reach the client.
    csp = page["Content-Security-Policy"]
    assert "form-action 'self' https://client.example;" in csp + ";"
    assert "img-src 'self' data:" in csp


def test_a_loopback_redirect_is_shown_as_an_application_on_this_computer(
    owner_client, deployment, mcp_client
):
    page = mcp_client.consent_page(owner_client, deployment.endpoint_url)

    assert "127.0.0.1:53682" in page.content.decode()
    assert "an application on this computer" in page.content.decode()


def test_signing_in_comes_first_and_leads_back_to_the_consent_page(owner, deployment, mcp_client):
    browser = Client()
    url = mcp_client.authorize_url(deployment.endpoint_url)

    response = browser.get(url)

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")
    signed_in = browser.post(
        response["Location"], {"username": owner.username, "password": PASSWORD}
    )
    assert signed_in.status_code == 302
    assert signed_in["Location"] == url
    assert browser.get(url).status_code == 200


def test_deny_sends_access_denied_back_with_the_state_and_the_issuer(
    owner_client, deployment, mcp_client
):
    page = mcp_client.consent_page(owner_client, deployment.endpoint_url)

    response = mcp_client.decide(owner_client, page, allow=False)

    redirect = redirect_params(response)
    assert response["Location"].startswith(LOOPBACK_CALLBACK + "?")
    assert redirect["error"] == "access_denied"
    assert redirect["state"] == mcp_client.state
    assert redirect["iss"] == settings.PUBLIC_URL
    assert not Grant.objects.exists()


def test_a_client_asking_to_skip_consent_still_gets_the_consent_page(
    owner_client, deployment, mcp_client
):
    mcp_client.tokens(owner_client, deployment.endpoint_url)  # approved once already

    page = mcp_client.consent_page(owner_client, deployment.endpoint_url, approval_prompt="auto")

    assert page.status_code == 200
    assert ">Approve</button>" in page.content.decode()


def test_a_changed_or_incomplete_consent_form_is_refused_without_a_500(
    owner_client, deployment, mcp_client
):
    page = mcp_client.consent_page(owner_client, deployment.endpoint_url)
    action, fields = consent_form(page)

    incomplete = owner_client.post(action, {"allow": "true", "state": fields["state"]})
    unknown_client = mcp_client.decide(owner_client, page, client_id="no-such-client")

    assert incomplete.status_code == 400
    assert "This approval form is incomplete" in incomplete.content.decode()
    assert unknown_client.status_code == 400
    assert not Grant.objects.exists()


# --- Refusals: PKCE (RFC 7636, OAuth 2.1) ------------------------------------------------------


def test_an_authorization_request_without_pkce_goes_back_with_invalid_request(
    owner_client, deployment, mcp_client
):
    response = mcp_client.consent_page(
        owner_client, deployment.endpoint_url, code_challenge=None, code_challenge_method=None
    )

    redirect = redirect_params(response)
    assert redirect["error"] == "invalid_request"
    assert redirect["iss"] == settings.PUBLIC_URL


def test_the_plain_pkce_method_is_refused(owner_client, deployment, mcp_client):
    response = mcp_client.consent_page(
        owner_client,
        deployment.endpoint_url,
        code_challenge=mcp_client.verifier,
        code_challenge_method="plain",
    )

    assert redirect_params(response)["error"] == "invalid_request"


def test_a_code_exchanged_without_its_verifier_is_refused(owner_client, deployment, mcp_client):
    code = mcp_client.approve(owner_client, deployment.endpoint_url)["code"]

    response = mcp_client.exchange(code, deployment.endpoint_url, code_verifier=None)

    assert (response.status_code, error_of(response)) == (400, "invalid_request")


def test_a_code_exchanged_with_the_wrong_verifier_is_invalid_grant(
    owner_client, deployment, mcp_client
):
    code = mcp_client.approve(owner_client, deployment.endpoint_url)["code"]

    response = mcp_client.exchange(code, deployment.endpoint_url, code_verifier="x" * 50)

    assert (response.status_code, error_of(response)) == (400, "invalid_grant")


# --- Refusals: codes ---------------------------------------------------------------------------


def test_a_code_used_twice_is_invalid_grant_the_second_time(owner_client, deployment, mcp_client):
    code = mcp_client.approve(owner_client, deployment.endpoint_url)["code"]
    assert mcp_client.exchange(code, deployment.endpoint_url).status_code == 200

    response = mcp_client.exchange(code, deployment.endpoint_url)

    assert (response.status_code, error_of(response)) == (400, "invalid_grant")


def test_an_expired_code_is_invalid_grant(owner_client, deployment, mcp_client):
    code = mcp_client.approve(owner_client, deployment.endpoint_url)["code"]
    Grant.objects.filter(code=code).update(expires=timezone.now() - timedelta(seconds=1))

    response = mcp_client.exchange(code, deployment.endpoint_url)

    assert (response.status_code, error_of(response)) == (400, "invalid_grant")


def test_a_code_is_bound_to_its_client(owner_client, deployment, mcp_client):
    code = mcp_client.approve(owner_client, deployment.endpoint_url)["code"]
    other = PkceClient.register(name="Other client")
    other.verifier = mcp_client.verifier

    response = other.exchange(code, deployment.endpoint_url)

    assert (response.status_code, error_of(response)) == (400, "invalid_grant")


# --- Refusals: redirect URIs -------------------------------------------------------------------


def test_an_unregistered_redirect_uri_shows_an_error_and_never_redirects(
    owner_client, deployment, mcp_client
):
    response = mcp_client.consent_page(
        owner_client, deployment.endpoint_url, redirect_uri="https://attacker.example/callback"
    )

    assert response.status_code == 400
    assert "Location" not in response
    assert "cannot go on" in response.content.decode()


def test_redirect_uris_match_exactly(owner_client, deployment):
    mcp_client = PkceClient.register(redirect_uri="https://client.example/callback")

    for near_miss in (
        "https://client.example/callback/",
        "https://client.example/callback?x=1",
        "https://client.example:8443/callback",
        "https://evil.client.example/callback",
    ):
        response = mcp_client.consent_page(
            owner_client, deployment.endpoint_url, redirect_uri=near_miss
        )
        assert response.status_code == 400, near_miss
        assert "Location" not in response


def test_registration_refuses_a_plain_http_redirect_to_another_machine():
    response = register(redirect_uris=["http://client.example/callback"], client_name="x")

    assert (response.status_code, error_of(response)) == (400, "invalid_redirect_uri")
    assert not Application.objects.exists()


def test_registration_refuses_grants_other_than_code_and_refresh():
    response = register(redirect_uris=[LOOPBACK_CALLBACK], grant_types=["client_credentials"])

    assert (response.status_code, error_of(response)) == (400, "invalid_client_metadata")


def test_a_registered_client_cannot_change_its_registration_past_the_same_rules():
    registered = register(redirect_uris=[LOOPBACK_CALLBACK], client_name="x").json()
    management = Client(
        headers={"Authorization": f"Bearer {registered['registration_access_token']}"}
    )
    url = registered["registration_client_uri"].removeprefix(settings.PUBLIC_URL)
    changed = {
        "redirect_uris": ["http://client.example/callback"],
        "token_endpoint_auth_method": "none",
    }

    response = management.put(url, json.dumps(changed), content_type="application/json")

    assert (response.status_code, error_of(response)) == (400, "invalid_redirect_uri")
    assert management.get(url).json()["redirect_uris"] == [LOOPBACK_CALLBACK]


def test_the_token_endpoint_refuses_other_grant_types(anon_client):
    for grant_type in (
        "client_credentials",
        "password",
        "urn:ietf:params:oauth:grant-type:device_code",
    ):
        response = anon_client.post("/oauth/token/", {"grant_type": grant_type})
        assert (response.status_code, error_of(response)) == (400, "unsupported_grant_type")


# --- Refusals: resources (RFC 8707) ------------------------------------------------------------


def test_an_authorization_request_without_a_resource_goes_back_with_invalid_target(
    owner_client, mcp_client
):
    response = mcp_client.consent_page(owner_client, resource=None)

    redirect = redirect_params(response)
    assert redirect["error"] == "invalid_target"
    assert redirect["state"] == mcp_client.state
    assert redirect["iss"] == settings.PUBLIC_URL


def test_a_resource_that_is_no_deployment_endpoint_is_invalid_target(owner_client, mcp_client):
    for resource in (
        f"{settings.PUBLIC_URL}/mcp/00000000-0000-4000-8000-000000000000",
        "https://elsewhere.example/mcp",
        "not a url",
    ):
        response = mcp_client.consent_page(owner_client, resource)
        assert redirect_params(response)["error"] == "invalid_target", resource


def test_another_users_deployment_is_refused_on_the_consent_page(
    stranger_client, deployment, mcp_client
):
    response = mcp_client.consent_page(stranger_client, deployment.endpoint_url)

    assert response.status_code == 403
    assert "Location" not in response
    text = response.content.decode()
    assert "Not your deployment" in text
    assert "Approve" not in text


def test_a_consent_form_changed_to_another_users_deployment_grants_nothing(
    owner_client, stranger, deployment, mcp_client
):
    theirs = make_deployment(stranger, "theirs")
    page = mcp_client.consent_page(owner_client, deployment.endpoint_url)

    response = mcp_client.decide(owner_client, page, resource=theirs.endpoint_url)

    assert redirect_params(response)["error"] == "access_denied"
    assert not Grant.objects.exists()


def test_a_token_request_without_the_resource_is_invalid_target(
    owner_client, deployment, mcp_client
):
    code = mcp_client.approve(owner_client, deployment.endpoint_url)["code"]

    response = mcp_client.exchange(code, resource=None)

    assert (response.status_code, error_of(response)) == (400, "invalid_target")


def test_a_token_request_for_another_deployment_is_invalid_target(
    owner, owner_client, deployment, mcp_client
):
    other = make_deployment(owner, "other")
    code = mcp_client.approve(owner_client, deployment.endpoint_url)["code"]

    response = mcp_client.exchange(code, other.endpoint_url)

    assert (response.status_code, error_of(response)) == (400, "invalid_target")
    assert response["Cache-Control"] == "no-store"
    assert not AccessToken.objects.filter(resource=[other.endpoint_url]).exists()
    # The refused request did not use the code up: the right resource still gets the token.
    assert mcp_client.exchange(code, deployment.endpoint_url).status_code == 200


def test_a_refresh_for_another_deployment_is_invalid_target(
    owner, owner_client, deployment, mcp_client
):
    other = make_deployment(owner, "other")
    tokens = mcp_client.tokens(owner_client, deployment.endpoint_url)

    response = mcp_client.refresh(tokens["refresh_token"], other.endpoint_url)

    assert (response.status_code, error_of(response)) == (400, "invalid_target")


def test_a_refresh_stops_working_once_the_deployment_is_deleted(
    owner_client, deployment, mcp_client
):
    tokens = mcp_client.tokens(owner_client, deployment.endpoint_url)
    deployment.delete()

    response = mcp_client.refresh(tokens["refresh_token"])

    assert (response.status_code, error_of(response)) == (400, "invalid_grant")


# --- Client ID Metadata Documents -------------------------------------------------------------


@pytest.fixture
def cimd_site(settings, monkeypatch, tmp_path):
    """A client's website on 127.0.0.1, trusted through SSL_CERT_FILE, with the loopback
    allowance the tests (and only they, or local development) turn on."""
    site = CimdStandin(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(site.ca_file))
    settings.OAUTH_CIMD_ALLOW_LOOPBACK = True
    yield site
    site.close()


def test_a_client_identified_by_its_metadata_document_url_completes_the_flow(
    owner_client, deployment, cimd_site
):
    client_id = cimd_site.publish(
        "/oauth/client.json",
        client_name="Site Agent",
        redirect_uris=[LOOPBACK_CALLBACK],
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        token_endpoint_auth_method="none",
        logo_uri="https://logos.example/agent.png",
    )
    mcp_client = PkceClient(client_id=client_id)

    page = mcp_client.consent_page(owner_client, deployment.endpoint_url)
    assert page.status_code == 200, page.content[:500]
    text = page.content.decode()
    assert "Site Agent wants to use notes" in text
    assert f"published at <strong>127.0.0.1:{client_id.split(':')[2].split('/')[0]}" in text
    assert "logos.example" not in text
    code = redirect_params(mcp_client.decide(owner_client, page))["code"]
    response = mcp_client.exchange(code, deployment.endpoint_url)

    assert response.status_code == 200
    application = Application.objects.get(client_id=client_id)
    assert application.registration_source == Application.RegistrationSource.CIMD
    assert cimd_site.requested == ["/oauth/client.json"]


def test_without_the_loopback_allowance_a_metadata_document_on_a_private_address_is_not_fetched(
    owner_client, deployment, cimd_site, settings
):
    settings.OAUTH_CIMD_ALLOW_LOOPBACK = False
    client_id = cimd_site.publish(
        "/ssrf/client.json", client_name="Probe", redirect_uris=[LOOPBACK_CALLBACK]
    )

    response = PkceClient(client_id=client_id).consent_page(owner_client, deployment.endpoint_url)

    assert response.status_code == 400
    assert "Location" not in response
    assert cimd_site.requested == []
    assert not Application.objects.filter(client_id=client_id).exists()
