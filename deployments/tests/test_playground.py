"""The playground on a deployment's page lists its tools and calls them through the real gateway.

The gateway is the ASGI application under uvicorn (or daphne) on loopback, against the test
database, in front of a bridge the real supervisor runs for the stdio fixture server. The pages
are requested through Django's test client, or from that same server when what matters is a
view waiting on the gateway in its own process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import mcp_types as types
import pytest
from django.conf import settings as django_settings
from django.urls import reverse
from django.utils import timezone

from catwalk.testing import make_deployment
from deployments.models import (
    AccessToken,
    AuditAction,
    AuditEvent,
    Deployment,
    DesiredState,
    Status,
    TokenPurpose,
    ToolCall,
)
from deployments.playground import TOKEN_LABEL, present
from deployments.playground_forms import tool_key
from deployments.tests.conftest import asgi_server, deploy_fixture_server
from mcpgateway.fixture_server import PNG_BASE64
from mcpgateway.stack import free_port

pytestmark = pytest.mark.django_db(transaction=True)
HTMX = {"HTTP_HX_REQUEST": "true"}
ECHOED = "hello from the playground"


def playground_url(deployment: Deployment) -> str:
    return reverse("deployment-playground", args=[deployment.pk])


def call_url(deployment: Deployment, tool: str) -> str:
    return reverse("deployment-playground-call", args=[deployment.pk, tool])


def field(tool: str, argument: str) -> str:
    """The name of the form field for a tool's argument."""
    return f"{tool_key(tool)}-{argument}"


def playground_tokens(deployment: Deployment):
    return AccessToken.objects.filter(deployment=deployment, purpose=TokenPurpose.PLAYGROUND)


def session_token(client, deployment: Deployment) -> str:
    return client.session[f"deployments:playground-token:{deployment.pk}"]["token"]


def wait_for_call(deployment: Deployment, tool: str) -> ToolCall:
    """The logged call of `tool` (the call log writes about once a second)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        call = ToolCall.objects.filter(deployment=deployment, method="tools/call", target=tool)
        if call.exists():
            return call.select_related("token").get()
        time.sleep(0.1)
    pytest.fail(f"no tools/call of {tool} was logged")


@pytest.fixture
def gateway(supervisor_env, settings) -> Iterator[str]:
    """The gateway under uvicorn; deployments' endpoint URLs point at it."""
    with asgi_server("uvicorn", supervisor_env) as url:
        settings.PUBLIC_URL = url
        yield url


@pytest.fixture
def fixture_server(supervisor, gateway, owner) -> Deployment:
    """A running deployment of the fixture server, reached through the gateway."""
    deployment, _ = deploy_fixture_server(owner)
    return supervisor.wait_for_status(deployment, Status.RUNNING)


def call(client, deployment: Deployment, tool: str, data: dict | None = None, **headers):
    return client.post(call_url(deployment, tool), data or {}, **headers)


# --- Through the gateway ---------------------------------------------------------------------


@pytest.mark.slow
def test_the_tools_are_listed_with_a_form_field_for_each_argument(owner_client, fixture_server):
    response = owner_client.get(playground_url(fixture_server), **HTMX)

    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html  # the section's content, for the deployment page to load
    assert "<code>echo</code>" in html and "Returns its message argument as text." in html
    message = field("echo", "message")
    assert f'<label for="id_{message}"><code>message</code> <span class="badge">required' in html
    assert f'name="{message}"' in html and "Text to send back" in html
    assert f'hx-post="{call_url(fixture_server, "echo")}"' in html
    assert f'id="{tool_key("echo")}-result" class="playground-result" aria-live="polite"' in html
    seconds = field("sleep", "seconds")
    assert f'type="number" name="{seconds}"' in html


@pytest.mark.slow
def test_calling_echo_shows_the_answer_and_the_call_is_logged_with_the_playground_token(
    owner_client, fixture_server
):
    response = call(
        owner_client, fixture_server, "echo", {field("echo", "message"): ECHOED}, **HTMX
    )

    assert response.status_code == 200
    html = response.content.decode()
    assert f'<pre class="result-text" tabindex="0">{ECHOED}</pre>' in html
    assert "The tool answered in" in html
    assert f'id="{tool_key("echo")}-form"' in html and 'hx-swap-oob="true"' in html
    logged = wait_for_call(fixture_server, "echo")
    assert logged.outcome == "ok"
    assert logged.token.purpose == TokenPurpose.PLAYGROUND
    assert logged.token.label == TOKEN_LABEL
    assert logged.token.expires_at <= timezone.now() + timedelta(minutes=10)
    assert logged.token == playground_tokens(fixture_server).get()


@pytest.mark.slow
def test_the_playground_token_is_audited_under_its_own_label(owner, owner_client, fixture_server):
    owner_client.get(playground_url(fixture_server), **HTMX)

    created = AuditEvent.objects.filter(
        action=AuditAction.TOKEN_CREATED, subject__startswith="Play"
    )
    assert created.get().actor == owner
    assert created.get().subject.startswith(f"{TOKEN_LABEL} (cwk_")


@pytest.mark.slow
def test_an_image_result_is_shown_inline(owner_client, fixture_server):
    html = call(owner_client, fixture_server, "test_image_content", **HTMX).content.decode()

    assert f'<img src="data:image/png;base64,{PNG_BASE64}"' in html


@pytest.mark.slow
def test_json_in_a_result_is_pretty_printed(owner_client, fixture_server):
    html = call(owner_client, fixture_server, "test_multiple_content_types", **HTMX)

    assert (
        '<pre class="result-json" tabindex="0">{\n  &quot;test&quot;: &quot;data&quot;,'
        in html.content.decode()
    )


@pytest.mark.slow
def test_a_tool_error_is_shown_as_an_error(owner_client, fixture_server):
    html = call(owner_client, fixture_server, "test_error_handling", **HTMX).content.decode()

    assert "The tool reported an error" in html
    assert (
        '<pre class="result-text error" tabindex="0">This tool intentionally returns an error'
        in html
    )


@pytest.mark.slow
def test_invalid_arguments_get_inline_errors_and_no_call_is_made(owner_client, fixture_server):
    not_a_number = call(owner_client, fixture_server, "sleep", {field("sleep", "seconds"): "soon"})
    address = field("json_schema_2020_12_tool", "address")
    not_json = call(
        owner_client, fixture_server, "json_schema_2020_12_tool", {address: "{street"}, **HTMX
    )
    # A valid call after them: once it is logged, any call before it would be too.
    call(owner_client, fixture_server, "echo", {field("echo", "message"): ECHOED}, **HTMX)
    wait_for_call(fixture_server, "echo")

    assert not_a_number.status_code == 400  # the whole page, without JavaScript
    page = not_a_number.content.decode()
    assert '<div class="errors"><ul class="errorlist"' in page and "Enter a number." in page
    assert "Not called: check the arguments above." in page
    assert not_json.status_code == 200  # htmx swaps only successful answers
    assert "This is not valid JSON: Expecting property name" in not_json.content.decode()
    called = ToolCall.objects.filter(deployment=fixture_server, method="tools/call")
    assert list(called.values_list("target", flat=True)) == ["echo"]


@pytest.mark.slow
def test_a_call_without_an_answer_in_time_says_so(owner_client, fixture_server, settings):
    settings.PLAYGROUND_CALL_TIMEOUT_SECONDS = 1

    response = call(owner_client, fixture_server, "sleep", {field("sleep", "seconds"): "5"}, **HTMX)

    assert response.status_code == 200
    assert "The call failed: No answer in time" in response.content.decode()


@pytest.mark.slow
def test_a_refusal_by_the_gateway_is_shown_with_its_reason(
    supervisor, supervisor_env, owner, owner_client, settings
):
    # initialize and notifications/initialized use up the minute's requests: tools/list is refused.
    with asgi_server("uvicorn", supervisor_env, RATE_LIMIT_REQUESTS_PER_MINUTE="2") as url:
        settings.PUBLIC_URL = url
        deployment, _ = deploy_fixture_server(owner)
        supervisor.wait_for_status(deployment, Status.RUNNING)
        response = owner_client.get(playground_url(deployment), **HTMX)

    assert response.status_code == 200
    assert (
        "Could not list the tools: Too many requests: this token may make 2 per minute."
        in response.content.decode()
    )


@pytest.mark.slow
def test_the_token_never_reaches_the_page(owner_client, fixture_server):
    pages = [
        owner_client.get(playground_url(fixture_server)),
        owner_client.get(playground_url(fixture_server), **HTMX),
        call(owner_client, fixture_server, "echo", {field("echo", "message"): ECHOED}),
        call(owner_client, fixture_server, "echo", {field("echo", "message"): ECHOED}, **HTMX),
    ]

    token = session_token(owner_client, fixture_server)
    assert playground_tokens(fixture_server).count() == 1  # one token, reused
    for page in pages:
        assert page.status_code == 200
        assert token not in page.content.decode()
        assert "cwk_" not in page.content.decode()


@pytest.mark.slow
@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_a_server_calls_its_own_gateway_from_the_playground_without_deadlock(
    server, supervisor, supervisor_env, owner, owner_client, settings
):
    with asgi_server(server, supervisor_env) as url:
        settings.PUBLIC_URL = url
        deployment, _ = deploy_fixture_server(owner)
        supervisor.wait_for_status(deployment, Status.RUNNING)
        cookies = {django_settings.SESSION_COOKIE_NAME: owner_client.session.session_key}
        with httpx.Client(base_url=url, cookies=cookies, timeout=60) as browser:
            listed = browser.get(playground_url(deployment), headers={"HX-Request": "true"})
            answered = browser.post(
                call_url(deployment, "echo"),
                data={field("echo", "message"): ECHOED},
                headers={"HX-Request": "true", "X-CSRFToken": browser.cookies["csrftoken"]},
            )
        logged = wait_for_call(deployment, "echo")

    assert listed.status_code == 200 and "<code>echo</code>" in listed.text
    assert answered.status_code == 200
    assert f'<pre class="result-text" tabindex="0">{ECHOED}</pre>' in answered.text
    assert logged.token.purpose == TokenPurpose.PLAYGROUND


# --- Without the gateway ---------------------------------------------------------------------


def test_an_unreachable_gateway_is_reported_on_the_page(owner, owner_client, settings):
    settings.PUBLIC_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    deployment = make_deployment(owner, status=Status.RUNNING)

    listed = owner_client.get(playground_url(deployment), **HTMX)
    called = call(owner_client, deployment, "echo", **HTMX)

    assert listed.status_code == 200
    assert "Could not list the tools: Could not reach the gateway" in listed.content.decode()
    assert "The call failed: Could not reach the gateway" in called.content.decode()


def test_the_token_is_reused_until_it_nears_its_expiry(owner, owner_client, settings):
    settings.PUBLIC_URL = f"http://127.0.0.1:{free_port()}"
    deployment = make_deployment(owner, status=Status.RUNNING)

    owner_client.get(playground_url(deployment), **HTMX)
    owner_client.get(playground_url(deployment), **HTMX)
    first = playground_tokens(deployment).get()
    first.expires_at = timezone.now() + timedelta(seconds=50)
    first.save()
    owner_client.get(playground_url(deployment), **HTMX)

    assert playground_tokens(deployment).count() == 2
    assert session_token(owner_client, deployment) != ""
    newest = playground_tokens(deployment).exclude(pk=first.pk).get()
    assert owner_client.session[f"deployments:playground-token:{deployment.pk}"]["id"] == newest.pk


def test_a_revoked_token_is_replaced(owner, owner_client, settings):
    settings.PUBLIC_URL = f"http://127.0.0.1:{free_port()}"
    deployment = make_deployment(owner, status=Status.RUNNING)

    owner_client.get(playground_url(deployment), **HTMX)
    playground_tokens(deployment).get().revoke()
    owner_client.get(playground_url(deployment), **HTMX)

    assert playground_tokens(deployment).filter(revoked_at__isnull=True).count() == 1


def test_a_stopped_deployment_says_so_and_gets_no_token(owner, owner_client):
    deployment = make_deployment(owner, desired_state=DesiredState.STOPPED, status=Status.STOPPED)

    listed = owner_client.get(playground_url(deployment), **HTMX)
    called = call(owner_client, deployment, "echo", **HTMX)

    assert "is stopped, so there is nothing to call. Start it" in listed.content.decode()
    assert "is stopped: start it to call its tools." in called.content.decode()
    assert not playground_tokens(deployment).exists()


def test_a_sleeping_deployment_is_woken_only_when_asked(owner, owner_client):
    deployment = make_deployment(owner, status=Status.SLEEPING)

    html = owner_client.get(playground_url(deployment), **HTMX).content.decode()

    assert "is asleep. Listing its tools wakes it" in html
    assert '<input type="hidden" name="wake" value="1">' in html
    assert not playground_tokens(deployment).exists()


def test_a_starting_deployment_is_polled_until_it_runs(owner, owner_client):
    deployment = make_deployment(owner, status=Status.STARTING)

    html = owner_client.get(playground_url(deployment), **HTMX).content.decode()

    assert "is starting; its tools appear here once it runs." in html
    assert f'hx-get="{playground_url(deployment)}" hx-trigger="every 2s"' in html


def test_a_failed_deployment_shows_why(owner, owner_client):
    deployment = make_deployment(owner, status=Status.FAILED, status_detail="npm said no")

    html = owner_client.get(playground_url(deployment)).content.decode()

    assert "<html" in html  # without htmx: the whole page
    assert "could not start, so there is nothing to call: npm said no" in html
    assert "hx-trigger" not in html


def test_another_users_deployment_is_404_on_both_urls(owner, stranger_client):
    deployment = make_deployment(owner, status=Status.RUNNING)

    assert stranger_client.get(playground_url(deployment)).status_code == 404
    assert call(stranger_client, deployment, "echo").status_code == 404
    assert not playground_tokens(deployment).exists()


def test_anonymous_visitors_are_sent_to_sign_in(owner, anon_client):
    deployment = make_deployment(owner, status=Status.RUNNING)

    for response in (
        anon_client.get(playground_url(deployment)),
        call(anon_client, deployment, "echo"),
    ):
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


def test_get_on_the_call_url_is_not_allowed(owner, owner_client):
    deployment = make_deployment(owner, status=Status.RUNNING)

    assert owner_client.get(call_url(deployment, "echo")).status_code == 405


# --- How results are shown -------------------------------------------------------------------


def result(*content: types.ContentBlock, **fields) -> types.CallToolResult:
    return types.CallToolResult(content=list(content), **fields)


def text(value: str) -> types.TextContent:
    return types.TextContent(type="text", text=value)


def test_structured_content_is_shown_unless_the_text_already_says_it():
    said = present(result(text('{"temperature": 21}'), structured_content={"temperature": 21}))
    unsaid = present(result(text("It is warm."), structured_content={"temperature": 21}))

    assert [part.kind for part in said.parts] == ["json"]
    assert [(part.kind, part.title) for part in unsaid.parts] == [
        ("text", ""),
        ("json", "Structured content"),
    ]
    assert unsaid.parts[1].text == '{\n  "temperature": 21\n}'


def test_audio_resources_and_odd_images_are_described_not_shown():
    shown = present(
        result(
            types.AudioContent(type="audio", data="AAAA", mime_type="audio/wav"),
            types.ResourceLink(type="resource_link", name="notes", uri="file:///notes.txt"),
            types.ImageContent(type="image", data="AAAA", mime_type='image/png" onload="x'),
            types.ImageContent(type="image", data="not base64!", mime_type="image/png"),
        )
    )

    assert [part.kind for part in shown.parts] == ["note"] * 4
    assert shown.parts[0].text == "Audio (audio/wav, 3\xa0bytes)."
    assert shown.parts[1].text == "A link to the resource “notes” at file:///notes.txt."
    assert "unusual type" in shown.parts[2].text
    assert "not valid base64" in shown.parts[3].text


def test_text_that_only_looks_like_json_stays_text():
    shown = present(result(text("[not json")))

    assert shown.parts[0].kind == "text" and shown.parts[0].text == "[not json"
