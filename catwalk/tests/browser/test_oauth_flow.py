"""An MCP client signs in to a deployment with OAuth, the way real clients do: the `mcp` SDK's
own `OAuthClientProvider` discovers Catwalk from the endpoint's 401, registers itself (DCR) or
names its Client ID Metadata Document (CIMD), and sends its user to the consent page, which the
user approves in Chromium. Its tokens list the tools, refresh when they expire, and stop working
once the owner revokes the approval on the deployment's page.

The SDK runs on an event loop in another thread (Playwright's sync API holds this one); its
redirect and callback handlers hand the authorization URL to the browser and wait for what the
browser's redirect to the client's loopback URI carried.

The package's Catwalk runs with production settings, which refuse to fetch a metadata document
from this machine (OAUTH_CIMD_ALLOW_LOOPBACK is an SSRF opening): the CIMD flow runs on a small
Catwalk of its own with DEBUG on and that allowance, serving the fixture server.
"""

from __future__ import annotations

import queue
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import httpx2
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from mcp.client import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from playwright.sync_api import Browser, Page, Route, expect

from catwalk.tests.browser.harness import (
    BrowserCatwalk,
    ConsoleWatch,
    Visitor,
    analyse,
    copy,
    deploy,
    sign_up,
)
from deployments.tests.cimd_standin import CimdStandin
from mcpgateway.stack import ROOT, Stack, free_port

API_KEY = "echo-key-0a7d"
CLIENT_NAME = "Inspector Gadget"
FLOW_SECONDS = 60
# The gateway caches who a token belongs to for 4 s (mcpgateway/access.py).
REVOCATION_SECONDS = 10


class MemoryStorage:
    """The SDK's TokenStorage, kept in memory, as a client keeps it on disk."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class BrowserHandoff:
    """The SDK's two handlers, passing the authorization URL to the browser's thread and the
    redirect's parameters back."""

    def __init__(self) -> None:
        self.authorization_urls: queue.Queue[str] = queue.Queue()
        self.callbacks: queue.Queue[AuthorizationCodeResult] = queue.Queue()

    async def redirect_handler(self, authorization_url: str) -> None:
        self.authorization_urls.put(authorization_url)

    async def callback_handler(self) -> AuthorizationCodeResult:
        return await anyio.to_thread.run_sync(self.callbacks.get, True, FLOW_SECONDS)


class LoopbackCallback:
    """The client's redirect URI on 127.0.0.1, answered in the browser by Playwright: it
    records every URL the browser was sent to and shows a page saying the client got it."""

    PAGE = (
        '<!doctype html><html lang="en"><head><link rel="icon" href="data:,">'
        "<title>Signed in</title></head><body><p>You may close this window.</p></body></html>"
    )

    def __init__(self, page: Page) -> None:
        self.uri = f"http://127.0.0.1:{free_port()}/callback"
        self.received: list[dict[str, str]] = []
        origin = self.uri.removesuffix("/callback")
        page.route(f"{origin}/**", self._answer)

    def _answer(self, route: Route) -> None:
        query = parse_qs(urlsplit(route.request.url).query)
        self.received.append({key: values[0] for key, values in query.items()})
        route.fulfill(status=200, content_type="text/html", body=self.PAGE)


class SdkClient:
    """The SDK's OAuth provider with its storage, handlers and loopback redirect URI, and a
    `list_tools` through its Streamable HTTP client, to run on the portal's event loop."""

    def __init__(self, endpoint: str, page: Page, client_metadata_url: str | None = None) -> None:
        self.endpoint = endpoint
        self.callback = LoopbackCallback(page)
        self.handoff = BrowserHandoff()
        self.storage = MemoryStorage()
        self.provider = OAuthClientProvider(
            server_url=endpoint,
            client_metadata=OAuthClientMetadata(
                client_name=CLIENT_NAME,
                redirect_uris=[self.callback.uri],
                grant_types=["authorization_code", "refresh_token"],
                response_types=["code"],
                token_endpoint_auth_method="none",
            ),
            storage=self.storage,
            redirect_handler=self.handoff.redirect_handler,
            callback_handler=self.handoff.callback_handler,
            client_metadata_url=client_metadata_url,
        )

    async def list_tools(self) -> list[str]:
        async with (
            httpx2.AsyncClient(auth=self.provider, timeout=httpx2.Timeout(30, read=120)) as http,
            Client(streamable_http_client(self.endpoint, http_client=http)) as client,
        ):
            return sorted(tool.name for tool in (await client.list_tools()).tools)


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal() as portal:
        yield portal


def test_the_mcp_sdk_signs_in_with_oauth_refreshes_and_is_shut_out_by_revocation(
    catwalk: BrowserCatwalk, new_visitor, portal: BlockingPortal
):
    # A name of their own: the package's Catwalk is shared with the other browser tests.
    margaret: Visitor = new_visitor()
    page = margaret.page
    sign_up(page, "margaret")
    analyse(page, catwalk.publish(name="oauth-tools"))
    deployment_page = deploy(page, "oauth-echo", API_KEY)
    endpoint = copy(page, "Endpoint", "Copy endpoint")

    sdk = SdkClient(endpoint, page)

    # No token yet: the 401 sends the SDK through discovery and registration to the consent
    # page, which the user approves in the browser.
    listing = portal.start_task_soon(sdk.list_tools)
    approve_in_browser(page, sdk, "oauth-echo", catwalk.url)
    assert result(listing) == ["add", "echo"]
    assert sdk.storage.client_info is not None and sdk.storage.client_info.client_id
    first = sdk.storage.tokens
    assert first is not None and first.refresh_token and first.scope == "mcp"

    # The access token has expired, as far as the SDK knows: it refreshes before the call.
    sdk.provider.context.token_expiry_time = time.time() - 1
    assert portal.call(sdk.list_tools) == ["add", "echo"]
    refreshed = sdk.storage.tokens
    assert refreshed is not None
    assert refreshed.access_token != first.access_token
    assert refreshed.refresh_token != first.refresh_token  # rotated

    # The owner revokes the approval on the deployment's page.
    page.goto(deployment_page)
    approvals = page.get_by_role("region", name="Approvals")
    expect(approvals.get_by_role("cell", name=CLIENT_NAME, exact=True)).to_be_visible()
    approvals.get_by_role("button", name=f"Revoke {CLIENT_NAME}").click()
    expect(page.get_by_text(f"{CLIENT_NAME} can no longer use oauth-echo")).to_be_visible()
    expect(page.get_by_role("region", name="Approvals")).to_contain_text(
        "No application is approved."
    )
    assert_refused(endpoint, refreshed.access_token)

    # Refused, the SDK asks its user again (its registration still stands).
    listing = portal.start_task_soon(sdk.list_tools)
    approve_in_browser(page, sdk, "oauth-echo", catwalk.url)
    assert result(listing) == ["add", "echo"]
    assert sdk.storage.tokens is not None
    assert sdk.storage.tokens.access_token != refreshed.access_token


def approve_in_browser(page: Page, sdk: SdkClient, deployment: str, issuer: str) -> None:
    """Open the authorization URL the SDK asks for (the browser is signed in), check what the
    consent page says, approve, and give the SDK what the redirect to its loopback URI
    carried."""
    page.goto(sdk.handoff.authorization_urls.get(timeout=FLOW_SECONDS))
    decide(page, sdk, deployment, issuer)


def decide(page: Page, sdk: SdkClient, deployment: str, issuer: str) -> None:
    """On the consent page: check it, approve, hand the redirect's parameters to the SDK."""
    callback = sdk.callback
    consent = page.get_by_role("region", name=re.compile(f"^{CLIENT_NAME} wants to use"))
    expect(consent.get_by_role("heading")).to_have_text(f"{CLIENT_NAME} wants to use {deployment}")
    expect(consent.locator(".redirect-host")).to_have_text(urlsplit(callback.uri).netloc)
    expect(consent).to_contain_text(sdk.endpoint)
    expect(consent).to_contain_text("Use this deployment's tools, resources and prompts as you")

    seen = len(callback.received)
    consent.get_by_role("button", name="Approve").click()
    expect(page).to_have_url(re.compile(f"^{re.escape(callback.uri)}"))
    assert len(callback.received) == seen + 1
    redirect = callback.received[-1]
    assert redirect["iss"] == issuer
    sdk.handoff.callbacks.put(
        AuthorizationCodeResult(code=redirect["code"], state=redirect["state"], iss=redirect["iss"])
    )


def result[T](future: Future[T]) -> T:
    return future.result(timeout=FLOW_SECONDS)


def assert_refused(endpoint: str, token: str) -> None:
    """Within the gateway's cache time, the token gets a 401 that says it is no longer valid."""
    deadline = time.monotonic() + REVOCATION_SECONDS
    while True:
        response = httpx.post(
            endpoint,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json, text/event-stream",
            },
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        )
        if response.status_code == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert response.status_code == 401, response.text
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


# --- CIMD, on a Catwalk that may fetch a metadata document from this machine ------------------

STACK_USER, STACK_PASSWORD = "stack", "x" * 20  # the owner `Stack.start` creates


@pytest.fixture(scope="module")
def cimd_site() -> Iterator[CimdStandin]:
    folder = Path(tempfile.mkdtemp(prefix="catwalk-cimd-"))
    site = CimdStandin(folder)
    yield site
    site.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cimd_catwalk(chromium: str, cimd_site: CimdStandin) -> Iterator[tuple[str, str]]:
    """A Catwalk with DEBUG on, fetching metadata documents from loopback addresses and trusting
    the stand-in's certificate authority, with the fixture server deployed by its one user.
    Yields (its URL, the endpoint)."""
    data_dir = Path(tempfile.mkdtemp(prefix="catwalk-cimd-stack-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stack = Stack(data_dir, "uvicorn", port)
    stack.env.update(
        {
            "DEBUG": "true",
            "CATWALK_PUBLIC_URL": url,
            "OAUTH_CIMD_ALLOW_LOOPBACK": "true",
            "SSL_CERT_FILE": str(cimd_site.ca_file),
        }
    )
    try:
        deployed = stack.start(
            [
                *("--package", "pypi:catwalk-fixture", "--name", "cimd-echo"),
                *("--entry", sys.executable, "--env", f"PYTHONPATH={ROOT}"),
                *("--arg=-m", "--arg=mcpgateway.fixture_server"),
            ]
        )
        yield url, f"{url}/mcp/{deployed['id']}"
    except BaseException:
        print(stack.logs(last=60))
        raise
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_the_mcp_sdk_signs_in_with_its_client_id_metadata_document(
    browser: Browser, cimd_catwalk: tuple[str, str], cimd_site: CimdStandin, portal: BlockingPortal
):
    url, endpoint = cimd_catwalk
    context = browser.new_context(base_url=url)
    watch = ConsoleWatch()
    watch.watch(context)
    page = context.new_page()
    try:
        sdk = SdkClient(endpoint, page, client_metadata_url=f"{cimd_site.base_url}/client.json")
        cimd_site.publish(
            "/client.json",
            client_name=CLIENT_NAME,
            redirect_uris=[sdk.callback.uri],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        )

        listing = portal.start_task_soon(sdk.list_tools)
        # Not signed in yet: the authorization URL leads through the sign-in page back to the
        # consent page.
        page.goto(sdk.handoff.authorization_urls.get(timeout=FLOW_SECONDS))
        page.get_by_label("Username").fill(STACK_USER)
        page.get_by_label("Password").fill(STACK_PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(
            page.get_by_text(f"published at {urlsplit(cimd_site.base_url).netloc}")
        ).to_be_visible()
        decide(page, sdk, "cimd-echo", url)
        assert "echo" in result(listing)
        assert sdk.storage.client_info is not None
        assert sdk.storage.client_info.client_id == f"{cimd_site.base_url}/client.json"
        assert cimd_site.requested[:1] == ["/client.json"]

        first = sdk.storage.tokens
        assert first is not None and first.refresh_token
        sdk.provider.context.token_expiry_time = time.time() - 1
        assert "echo" in portal.call(sdk.list_tools)
        assert sdk.storage.tokens is not None
        assert sdk.storage.tokens.access_token != first.access_token
    finally:
        context.close()
    assert not watch.problems, "\n".join(watch.problems)
