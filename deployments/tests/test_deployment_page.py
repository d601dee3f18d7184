"""The deployment page: its live partials and its actions, from the owner's, another user's and
an anonymous visitor's side. The supervisor's side of each action is in test_deployment_actions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from oauth2_provider.models import get_application_model

from catwalk.testing import make_credential, make_deployment, make_token
from deployments.models import (
    AccessToken,
    CallOutcome,
    Credential,
    Deployment,
    DeploymentEvent,
    DesiredState,
    Status,
    ToolCall,
)
from deployments.runtimes.local import run_paths

pytestmark = pytest.mark.django_db

ACTIONS = [
    "start/",
    "stop/",
    "restart/",
    "delete/",
    "tokens/",
    "credentials/",
    "credentials/API_KEY/remove/",
]


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    """Run folders (and the logs the page reads from them) in a folder of this test's own."""
    settings.DATA_DIR = tmp_path


@pytest.fixture
def deployment(owner):
    deployment = make_deployment(owner, "weather", status=Status.RUNNING)
    make_credential(deployment, "API_KEY", "plaintext-never-rendered")
    make_token(deployment, "laptop")
    return deployment


def page(deployment: Deployment, suffix: str = "") -> str:
    return f"/deployments/{deployment.id}/{suffix}"


def record_calls(deployment: Deployment, durations: list[float], outcome=CallOutcome.OK) -> None:
    now = timezone.now()
    ToolCall.objects.bulk_create(
        ToolCall(
            deployment=deployment,
            method="tools/call",
            target="echo",
            started_at=now - timedelta(seconds=len(durations) - index),
            duration_ms=duration,
            outcome=outcome,
        )
        for index, duration in enumerate(durations)
    )


# -- the page and its partials ---------------------------------------------------------------


def test_the_page_offers_copy_buttons_for_the_endpoint_and_every_snippet(owner_client, deployment):
    html = owner_client.get(page(deployment)).content.decode()
    assert f'<code id="endpoint-url" class="endpoint">{deployment.endpoint_url}</code>' in html
    assert 'data-copy="endpoint-url"' in html
    assert html.count('data-copy="snippet-') == 6  # two OAuth connectors, four with a token


def test_a_running_deployment_polls_its_status_now_and_then(owner_client, deployment):
    html = owner_client.get(page(deployment)).content.decode()
    assert f'hx-get="{page(deployment, "status/")}" hx-trigger="every 10s"' in html


def test_a_stopped_deployment_does_not_poll_its_status(owner_client, owner):
    stopped = make_deployment(
        owner, "idle", status=Status.STOPPED, desired_state=DesiredState.STOPPED
    )
    html = owner_client.get(page(stopped)).content.decode()
    assert page(stopped, "status/") not in html
    assert page(stopped, "logs/") not in html


def test_a_stopped_deployment_asked_to_start_polls_soon(owner_client, owner):
    starting = make_deployment(owner, "waking", status=Status.STOPPED)  # wanted running
    html = owner_client.get(page(starting)).content.decode()
    assert f'hx-get="{page(starting, "status/")}" hx-trigger="every 2s"' in html


def test_the_status_partial_shows_the_reason_and_stderr_of_a_failure(owner_client, owner):
    failed = make_deployment(owner, "broken", status=Status.FAILED, status_detail="Gave up.")
    stderr = run_paths(failed.id).stderr_log
    stderr.parent.mkdir(parents=True, exist_ok=True)
    stderr.write_text("Traceback (most recent call last):\nKeyError: 'API_KEY'\n")
    response = owner_client.get(page(failed, "status/"), headers={"HX-Request": "true"})
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html  # only the fragment
    assert "Gave up." in html
    assert "KeyError: &#x27;API_KEY&#x27;" in html
    assert "hx-trigger" not in html  # failed: only the owner can change it, so no polling


def test_the_status_partial_lists_the_history_newest_first(owner_client, deployment):
    DeploymentEvent.objects.create(deployment=deployment, kind="status", message="First.")
    DeploymentEvent.objects.create(deployment=deployment, kind="status", message="Second.")
    html = owner_client.get(page(deployment, "status/")).content.decode()
    assert html.index("Second.") < html.index("First.")


def test_the_calls_partial_draws_one_bar_per_call_and_marks_failures(owner_client, deployment):
    record_calls(deployment, [5.0, 10.0, 40.0])
    record_calls(deployment, [80.0], outcome=CallOutcome.ERROR)
    html = owner_client.get(page(deployment, "calls/")).content.decode()
    assert html.count('<rect class="bar') == 4
    assert html.count('<rect class="bar failed"') == 1
    assert "Last 4 calls: median 25.0 ms" in html
    assert "1 failed." in html


def test_the_calls_partial_names_the_oauth_client_a_call_came_through(owner_client, deployment):
    client = get_application_model().objects.create(
        name="Claude <Desktop>", client_type="public", authorization_grant_type="authorization-code"
    )
    record_calls(deployment, [5.0])
    ToolCall.objects.filter(deployment=deployment).update(oauth_client=client)
    html = owner_client.get(page(deployment, "calls/")).content.decode()
    assert "via Claude &lt;Desktop&gt;" in html


def test_the_logs_partial_shows_the_servers_stderr(owner_client, deployment):
    stderr = run_paths(deployment.id).stderr_log
    stderr.parent.mkdir(parents=True, exist_ok=True)
    stderr.write_text("listening on stdio\n<script>alert(1)</script>\n")
    html = owner_client.get(page(deployment, "logs/")).content.decode()
    assert "listening on stdio" in html
    assert "<script>alert" not in html and "&lt;script&gt;" in html


@pytest.mark.parametrize("suffix", ["", "status/", "calls/", "logs/", "delete/"])
def test_another_user_gets_404_for_every_page_and_partial(stranger_client, deployment, suffix):
    assert stranger_client.get(page(deployment, suffix)).status_code == 404


@pytest.mark.parametrize("suffix", ["status/", "calls/", "logs/", "delete/"])
def test_anonymous_visitors_are_sent_to_sign_in_from_every_partial(anon_client, deployment, suffix):
    response = anon_client.get(page(deployment, suffix))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


# -- actions --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [a for a in ACTIONS if a != "delete/"])
def test_actions_refuse_get(owner_client, deployment, suffix):
    assert owner_client.get(page(deployment, suffix)).status_code == 405


@pytest.mark.parametrize("suffix", ACTIONS)
def test_another_users_post_to_any_action_is_404_and_changes_nothing(
    stranger_client, deployment, suffix
):
    data = {"confirm": "weather", "label": "mine", "name": "API_KEY", "value": "stolen"}
    assert stranger_client.post(page(deployment, suffix), data).status_code == 404
    deployment.refresh_from_db()
    assert deployment.desired_state == DesiredState.RUNNING
    assert deployment.access_tokens.count() == 1
    assert Credential.objects.get(deployment=deployment).get_value() == "plaintext-never-rendered"


@pytest.mark.parametrize("suffix", ACTIONS)
def test_anonymous_posts_are_sent_to_sign_in(anon_client, deployment, suffix):
    response = anon_client.post(page(deployment, suffix), {"confirm": "weather"})
    assert response.status_code == 302
    assert Deployment.objects.filter(pk=deployment.pk).exists()


def test_stop_then_start_change_the_wanted_state_and_the_buttons(owner_client, deployment):
    response = owner_client.post(page(deployment, "stop/"))
    assert response.status_code == 303
    deployment.refresh_from_db()
    assert deployment.desired_state == DesiredState.STOPPED
    html = owner_client.get(page(deployment)).content.decode()
    assert f'action="{page(deployment, "start/")}"' in html
    assert f'action="{page(deployment, "stop/")}"' not in html
    owner_client.post(page(deployment, "start/"))
    deployment.refresh_from_db()
    assert deployment.desired_state == DesiredState.RUNNING


def test_restart_is_recorded_in_the_history(owner_client, deployment):
    response = owner_client.post(page(deployment, "restart/"), follow=True)
    assert b"Restarting weather." in response.content
    deployment.refresh_from_db()
    assert deployment.restart_requested_at is not None
    assert deployment.events.filter(message__icontains="restart").exists()


def test_delete_asks_for_the_name_and_keeps_the_deployment_when_it_is_wrong(
    owner_client, deployment
):
    form = owner_client.get(page(deployment, "delete/"))
    assert b"Delete permanently" in form.content
    response = owner_client.post(page(deployment, "delete/"), {"confirm": "wether"})
    assert response.status_code == 400
    assert b"Type weather exactly" in response.content
    assert Deployment.objects.filter(pk=deployment.pk).exists()


def test_delete_with_the_name_removes_it_and_its_tokens(owner_client, deployment):
    response = owner_client.post(page(deployment, "delete/"), {"confirm": "weather"})
    assert response.status_code == 303
    assert response["Location"] == "/"
    assert not Deployment.objects.filter(pk=deployment.pk).exists()
    assert not AccessToken.objects.filter(deployment_id=deployment.pk).exists()


def test_a_new_token_is_shown_once_and_then_only_by_prefix(owner_client, deployment):
    response = owner_client.post(page(deployment, "tokens/"), {"label": "Cursor"})
    assert response.status_code == 303
    assert response["Location"].endswith("#tokens")
    token = deployment.access_tokens.get(label="Cursor")
    first = owner_client.get(page(deployment))
    shown = first.content.decode()
    plaintext = shown.split('<code id="new-token">', 1)[1].split("</code>", 1)[0]
    assert plaintext.startswith(token.prefix)
    assert AccessToken.objects.filter(token_hash=token.token_hash).exists()
    assert f"Bearer {plaintext}" in shown  # the snippets carry it too, this once
    assert "no-store" in first["Cache-Control"]
    again = owner_client.get(page(deployment)).content.decode()
    assert plaintext not in again
    assert f"{token.prefix}…" in again


def test_a_token_without_a_label_is_refused_inline(owner_client, deployment):
    response = owner_client.post(page(deployment, "tokens/"), {"label": "   "})
    assert response.status_code == 400
    assert b"This field is required." in response.content
    assert deployment.access_tokens.count() == 1


def test_revoking_a_token_ends_it_and_hides_the_button(owner_client, deployment):
    token = deployment.access_tokens.get()
    response = owner_client.post(page(deployment, f"tokens/{token.pk}/revoke/"))
    assert response.status_code == 303
    token.refresh_from_db()
    assert token.revoked_at is not None
    html = owner_client.get(page(deployment)).content.decode()
    assert page(deployment, f"tokens/{token.pk}/revoke/") not in html


def test_a_token_of_another_deployment_cannot_be_revoked_from_this_one(
    owner_client, owner, deployment
):
    other = make_deployment(owner, "other")
    token, _ = make_token(other, "theirs")
    response = owner_client.post(page(deployment, f"tokens/{token.pk}/revoke/"))
    assert response.status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


def test_replacing_a_credential_stores_the_new_value_and_never_shows_it(owner_client, deployment):
    response = owner_client.post(
        page(deployment, "credentials/"), {"name": "API_KEY", "value": "new-secret-value"}
    )
    assert response.status_code == 303
    assert Credential.objects.get(deployment=deployment).get_value() == "new-secret-value"
    html = owner_client.get(page(deployment)).content.decode()
    assert "new-secret-value" not in html
    assert "API_KEY is stored; the server restarts to use it." in html


def test_a_credential_with_a_bad_name_is_refused_inline_and_nothing_is_saved(
    owner_client, deployment
):
    response = owner_client.post(
        page(deployment, "credentials/"), {"name": "1-bad name", "value": "kept-out"}
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert 'class="field has-error"' in html
    assert "kept-out" not in html  # the value is never sent back
    assert list(deployment.credentials.values_list("name", flat=True)) == ["API_KEY"]


def test_a_credential_name_of_catwalks_own_is_refused(owner_client, deployment):
    response = owner_client.post(
        page(deployment, "credentials/"), {"name": "CATWALK_SECRET", "value": "x"}
    )
    assert response.status_code == 400
    assert b"Catwalk&#x27;s own" in response.content


def test_removing_a_credential(owner_client, deployment):
    response = owner_client.post(page(deployment, "credentials/API_KEY/remove/"))
    assert response.status_code == 303
    assert not deployment.credentials.exists()


def test_the_dashboard_rows_refresh_themselves(owner_client, deployment):
    html = owner_client.get("/").content.decode()
    assert 'hx-get="/" hx-trigger="every 10s"' in html
    fragment = owner_client.get("/", headers={"HX-Request": "true"}).content.decode()
    assert fragment.lstrip().startswith('<tbody id="deployment-rows"')
    assert "weather" in fragment


def test_restarting_a_stopped_deployment_says_to_start_it_instead(owner_client, owner):
    stopped = make_deployment(
        owner, "idle", status=Status.STOPPED, desired_state=DesiredState.STOPPED
    )
    response = owner_client.post(page(stopped, "restart/"), follow=True)
    assert b"idle is stopped; start it instead" in response.content
    stopped.refresh_from_db()
    assert stopped.restart_requested_at is None


def test_a_source_deployment_built_by_its_fly_machine_offers_no_redeploy(
    owner_client, owner, settings
):
    from deployments import builds
    from deployments.tests.test_configure import RECIPE

    settings.FLY_API_TOKEN, settings.FLY_ORG = "fly-token", "acme"
    settings.FLY_RUNNER_IMAGE = "registry.fly.io/catwalk-runner:test"
    build = builds.pin("acme/echo", "", "e" * 40, RECIPE, user=owner)
    deployment = make_deployment(owner, "echo", status=Status.STARTING, runtime="fly")
    Deployment.objects.filter(pk=deployment.pk).update(
        source_build=build, package_registry="source"
    )

    response = owner_client.get(page(deployment))

    assert response.status_code == 200
    assert b"Built where it runs" in response.content
    assert b"Built by its own machine at first boot" in response.content
    assert b"Redeploy at the newest commit" not in response.content
