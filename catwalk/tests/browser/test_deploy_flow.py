"""The whole browser workflow, as a new user goes through it: sign up, analyse a repository,
configure it (a wrong submission first), deploy it on this host, copy the endpoint and a token,
call `echo` in the playground, see the call, stop, start, delete."""

from __future__ import annotations

import re

import httpx
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from playwright.sync_api import expect

from catwalk.tests.browser.harness import (
    BrowserCatwalk,
    Visitor,
    analyse,
    assert_usable,
    assert_usable_on_a_phone,
    call_in_playground,
    copy,
    run_async,
    sign_up,
    wait_for_status,
)
from mcpgateway.tests.conftest import sdk_http_factory

API_KEY = "echo-key-5f2c"  # a value the fixture server only checks is there
CALLS_MS = 15_000  # the call history asks for news every 5 s


def test_a_new_user_deploys_a_repository_and_runs_it_from_the_browser(
    catwalk: BrowserCatwalk, new_visitor
):
    ada: Visitor = new_visitor()
    page = ada.page
    sign_up(page, "ada")
    expect(page.get_by_role("heading", name="No deployments yet")).to_be_visible()
    assert_usable(page)

    page.get_by_role("main").get_by_role("link", name="Analyse a repository").click()
    analyse(page, catwalk.publish())
    variables = page.get_by_role("region", name="Environment variables")
    secret = variables.get_by_role("row").filter(has_text="ECHO_API_KEY")
    expect(secret).to_contain_text("The API key of the echo service.")
    # After the name (the row's header): required, secret.
    expect(secret.get_by_role("cell").nth(0)).to_have_text("yes")
    expect(secret.get_by_role("cell").nth(1)).to_have_text("yes")
    assert_usable(page)

    page.get_by_role("link", name="Build and deploy").click()
    expect(
        page.get_by_role("heading", name="Deploy acme/python-api-key from source")
    ).to_be_visible()
    name_field = page.get_by_label("Name")
    name_field.fill("Echo Server")
    page.get_by_label("This host").check()
    # A name that is not a slug and a forgotten secret: the form comes back saying so, with
    # nothing deployed.
    with ada.watch.allow_status(400):
        page.get_by_role("button", name="Deploy").click()
        secret_field = page.get_by_label(re.compile("^ECHO_API_KEY"))
        expect(secret_field).to_have_attribute("aria-invalid", "true")
    expect(name_field).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_text("Use lowercase letters, digits and hyphens")).to_be_visible()
    expect(page.get_by_text("This field is required.")).to_be_visible()
    assert_usable(page)
    assert_no_deployments(ada)

    name_field.fill("echo")
    secret_field.fill(API_KEY)
    page.get_by_role("button", name="Deploy").click()

    expect(page.get_by_role("heading", name="echo", exact=True)).to_be_visible()
    endpoint = copy(page, "Endpoint", "Copy endpoint")
    assert re.fullmatch(rf"{catwalk.url}/mcp/[0-9a-f-]{{36}}", endpoint), endpoint
    token = copy(page, "Your access token", "Copy token")
    assert token.startswith("cwk_"), token
    wait_for_status(page, "Running")
    assert sorted(list_tools(endpoint, token)) == ["add", "echo"]
    assert_usable(page)

    echo = call_in_playground(page, "echo", message="hello from the playground")
    expect(echo.get_by_text("The tool answered")).to_be_visible()
    # The result's text content comes first (its structured form may follow).
    expect(echo.locator("pre").first).to_have_text("hello from the playground")

    # The call history updates itself while the server runs.
    calls = page.get_by_role("region", name="Recent calls")
    echoed = calls.get_by_role("row").filter(has=page.get_by_role("cell", name="echo", exact=True))
    expect(echoed).to_contain_text("tools/call", timeout=CALLS_MS)
    assert_usable(page)
    assert_usable_on_a_phone(page)

    page.get_by_role("button", name="Stop", exact=True).click()
    wait_for_status(page, "Stopped")
    page.get_by_role("button", name="Start", exact=True).click()
    wait_for_status(page, "Running")

    page.get_by_role("link", name="Delete").click()
    assert_usable(page)
    page.get_by_label("Type echo to confirm").fill("echo")
    page.get_by_role("button", name="Delete permanently").click()
    expect(page.get_by_role("heading", name="No deployments yet")).to_be_visible()
    assert_usable_on_a_phone(page)
    gone = httpx.post(endpoint, headers={"Authorization": f"Bearer {token}"}, json={})
    assert gone.status_code in (401, 404), gone


def assert_no_deployments(visitor: Visitor) -> None:
    """The dashboard, in another tab of the same browser, lists nothing."""
    dashboard = visitor.context.new_page()
    dashboard.goto("/")
    expect(dashboard.get_by_role("heading", name="No deployments yet")).to_be_visible()
    dashboard.close()


def list_tools(endpoint: str, token: str) -> list[str]:
    """The tools an MCP client sees at the endpoint with the token, as a user's client would."""

    async def ask() -> list[str]:
        factory = sdk_http_factory({"Authorization": f"Bearer {token}"})
        async with (
            factory() as http,
            Client(streamable_http_client(endpoint, http_client=http)) as client,
        ):
            return [tool.name for tool in (await client.list_tools()).tools]

    return run_async(ask)
