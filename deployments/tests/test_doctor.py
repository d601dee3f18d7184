"""The connector doctor runs a remote connector's discovery against a deployment's public URL and
names the step that fails, with its fix.

The gateway and the OAuth endpoints are the ASGI application under uvicorn (or daphne) on
loopback, against the test database; the healthy deployment is the stdio fixture server run by
the real supervisor. Nothing in the doctor is patched: a broken setup is a real one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.conf import settings as django_settings
from django.urls import reverse
from oauth2_provider.models import (
    get_access_token_model,
    get_application_model,
    get_grant_model,
    get_refresh_token_model,
)

from catwalk.testing import make_deployment
from deployments.doctor import CLIENT_NAME, Diagnosis, Outcome, diagnose
from deployments.models import Deployment, DesiredState, Status
from deployments.tests.conftest import asgi_server, deploy_fixture_server
from mcpgateway.stack import free_port

pytestmark = pytest.mark.django_db(transaction=True)
HTMX = {"HTTP_HX_REQUEST": "true"}
STEPS = [
    "The endpoint asks for OAuth",
    "Protected resource metadata",
    "Authorization server metadata",
    "Client registration",
    "A token for this deployment",
    "Tools listed with the token",
]


def doctor_url(deployment: Deployment) -> str:
    return reverse("deployment-doctor", args=[deployment.pk])


def run_doctor(deployment: Deployment) -> Diagnosis:
    return async_to_sync(diagnose)(deployment, deployment.owner)


def outcomes(diagnosis: Diagnosis) -> list[tuple[str, Outcome]]:
    return [(step.title, step.outcome) for step in diagnosis.steps]


def registered_client_id(diagnosis: Diagnosis) -> str:
    """The throwaway client's id, as the registration step reported it."""
    return re.search(r"registered a public client \(([^)]+)\)", diagnosis.steps[3].seen)[1]


def assert_nothing_left_behind() -> None:
    """No client, code, access or refresh token outlives a run (only the doctor makes any)."""
    assert not get_application_model().objects.filter(name=CLIENT_NAME).exists()
    assert not get_grant_model().objects.exists()
    assert not get_access_token_model().objects.exists()
    assert not get_refresh_token_model().objects.exists()


@pytest.fixture
def gateway(supervisor_env, settings) -> Iterator[str]:
    """Catwalk under uvicorn; deployments' endpoint URLs point at it."""
    with asgi_server("uvicorn", supervisor_env) as url:
        settings.PUBLIC_URL = url
        yield url


@pytest.fixture
def fixture_server(supervisor, gateway, owner) -> Deployment:
    """A running deployment of the fixture server, reached through the gateway."""
    deployment, _ = deploy_fixture_server(owner)
    return supervisor.wait_for_status(deployment, Status.RUNNING)


# --- Against a healthy deployment ------------------------------------------------------------


@pytest.mark.slow
def test_a_healthy_deployment_passes_every_step_and_the_client_and_token_are_deleted(
    fixture_server,
):
    diagnosis = run_doctor(fixture_server)

    assert outcomes(diagnosis) == [(title, Outcome.OK) for title in STEPS]
    assert diagnosis.healthy and diagnosis.failed_step is None
    endpoint = fixture_server.endpoint_url
    assert diagnosis.steps[0].seen == (
        f"HTTP 401, pointing to {django_settings.PUBLIC_URL}"
        f"/.well-known/oauth-protected-resource/mcp/{fixture_server.pk}."
    )
    assert diagnosis.steps[4].seen.endswith(f"issued a token for you, bound to {endpoint} alone.")
    assert "echo" in diagnosis.steps[5].seen
    client_id = registered_client_id(diagnosis)
    assert not get_application_model().objects.filter(client_id=client_id).exists()
    assert_nothing_left_behind()


@pytest.mark.slow
def test_the_page_shows_each_step_passing(owner_client, fixture_server):
    response = owner_client.post(doctor_url(fixture_server), **HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html  # the steps, for the section's live region
    assert "Every step passed: connectors can sign in and use this deployment." in html
    assert html.count('<span class="mark" aria-hidden="true">✓</span>') == len(STEPS)
    assert "✗" not in html
    for title in STEPS:
        assert f"<strong>{title}</strong>" in html


@pytest.mark.slow
@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_a_server_checks_its_own_connectors_without_deadlock(
    server, supervisor, supervisor_env, owner, owner_client, settings
):
    """The page, the gateway and the OAuth endpoints in one process, as in production."""
    with asgi_server(server, supervisor_env) as url:
        settings.PUBLIC_URL = url
        deployment, _ = deploy_fixture_server(owner)
        supervisor.wait_for_status(deployment, Status.RUNNING)
        cookies = {django_settings.SESSION_COOKIE_NAME: owner_client.session.session_key}
        with httpx.Client(base_url=url, cookies=cookies, timeout=60) as browser:
            browser.get(reverse("deployment-detail", args=[deployment.pk]))  # the CSRF cookie
            checked = browser.post(
                doctor_url(deployment),
                headers={"HX-Request": "true", "X-CSRFToken": browser.cookies["csrftoken"]},
            )

    assert checked.status_code == 200
    assert "Every step passed" in checked.text
    assert_nothing_left_behind()


# --- Against a broken one --------------------------------------------------------------------


@pytest.mark.slow
def test_metadata_for_another_address_fails_at_the_resource_step_and_skips_the_rest(
    gateway, owner, settings
):
    # Catwalk advertises itself at 127.0.0.1 while its page gives clients "localhost": the
    # protected resource metadata names another resource than the URL a connector was given.
    settings.PUBLIC_URL = gateway.replace("127.0.0.1", "localhost")
    deployment = make_deployment(owner, status=Status.RUNNING)

    diagnosis = run_doctor(deployment)

    assert outcomes(diagnosis) == [
        (STEPS[0], Outcome.OK),
        (STEPS[1], Outcome.FAILED),
        *((title, Outcome.SKIPPED) for title in STEPS[2:]),
    ]
    failed = diagnosis.failed_step
    assert failed.title == "Protected resource metadata"
    assert (
        f'names the resource "{gateway}/mcp/{deployment.pk}", but connectors are given '
        f"{deployment.endpoint_url}." in failed.seen
    )
    assert f"CATWALK_PUBLIC_URL (now {settings.PUBLIC_URL})" in failed.fix
    assert diagnosis.steps[2].seen == "Not run: “Protected resource metadata” failed."
    assert_nothing_left_behind()


@pytest.mark.slow
def test_the_page_names_the_failing_step_and_its_fix(gateway, owner, owner_client, settings):
    settings.PUBLIC_URL = gateway.replace("127.0.0.1", "localhost")
    deployment = make_deployment(owner, status=Status.RUNNING)

    html = owner_client.post(doctor_url(deployment), **HTMX).content.decode()

    assert "“Protected resource metadata” failed: connectors cannot use this deployment" in html
    assert html.count('<span class="mark" aria-hidden="true">✓</span>') == 1
    assert html.count('<span class="mark" aria-hidden="true">✗</span>') == 1
    assert html.count('<span class="mark" aria-hidden="true">\N{EN DASH}</span>') == 4
    assert '<p class="fix"><strong>Fix:</strong> A connector refuses metadata' in html


@pytest.mark.slow
def test_a_stopped_deployment_fails_at_the_tools_and_its_token_is_gone_all_the_same(gateway, owner):
    deployment = make_deployment(owner, desired_state=DesiredState.STOPPED, status=Status.STOPPED)

    diagnosis = run_doctor(deployment)

    assert outcomes(diagnosis) == [
        *((title, Outcome.OK) for title in STEPS[:5]),
        (STEPS[5], Outcome.FAILED),
    ]
    assert diagnosis.failed_step.fix == "The deployment is stopped: start it, then check again."
    assert "This deployment was stopped by its owner." in diagnosis.failed_step.seen
    assert_nothing_left_behind()


def test_an_unreachable_endpoint_fails_at_the_first_step(owner, settings):
    settings.PUBLIC_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    deployment = make_deployment(owner, status=Status.RUNNING)

    diagnosis = run_doctor(deployment)

    assert [step.outcome for step in diagnosis.steps] == [Outcome.FAILED] + [Outcome.SKIPPED] * 5
    assert diagnosis.steps[0].seen.startswith(f"Could not reach {deployment.endpoint_url}: ")
    assert "CATWALK_PUBLIC_URL must be the address clients use" in diagnosis.steps[0].fix


# --- The button ------------------------------------------------------------------------------


def test_the_deployment_page_has_the_button_that_works_without_javascript(owner, owner_client):
    deployment = make_deployment(owner)

    html = owner_client.get(reverse("deployment-detail", args=[deployment.pk])).content.decode()

    assert f'<form method="post" action="{doctor_url(deployment)}"' in html
    assert f'hx-post="{doctor_url(deployment)}" hx-target="#doctor-result"' in html
    assert '<button type="submit" class="button">Check connectors</button>' in html


def test_without_javascript_the_steps_come_back_on_a_page(owner, owner_client, settings):
    settings.PUBLIC_URL = f"http://127.0.0.1:{free_port()}"
    deployment = make_deployment(owner, status=Status.RUNNING)

    response = owner_client.post(doctor_url(deployment))

    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" in html and "<h1>Check connectors</h1>" in html
    assert "“The endpoint asks for OAuth” failed" in html


def test_another_users_deployment_is_404(owner, stranger_client):
    deployment = make_deployment(owner, status=Status.RUNNING)

    assert stranger_client.post(doctor_url(deployment)).status_code == 404


def test_get_is_not_allowed(owner, owner_client):
    deployment = make_deployment(owner, status=Status.RUNNING)

    assert owner_client.get(doctor_url(deployment)).status_code == 405


def test_anonymous_visitors_are_sent_to_sign_in(owner, anon_client):
    deployment = make_deployment(owner, status=Status.RUNNING)

    response = anon_client.post(doctor_url(deployment))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
