"""Screenshots of every page, at desktop (1280 by 800) and phone (390 by 844) width.

    python -m catwalk.screenshots [--output docs/screenshots]      (or: make screenshots)

Brings up the browser tests' whole Catwalk (`catwalk/tests/browser/harness.py`: production
settings, the supervisor, a worker, GitHub and the registries played by local stand-ins) and
fills it the way a person would, in Debian's Chromium: an account, analyses of two fixture
repositories built from source, three deployments (one stopped), calls from an MCP client and
from the playground, the connector doctor's check, and the consent page an MCP client registered
by dynamic registration sends its user to. Each page is saved as `<page>-desktop.png` and
`<page>-phone.png` (the doctor as its section of the deployment page). Any
console error or Content-Security-Policy violation on the way fails the command.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import secrets
import sys
from pathlib import Path
from urllib.parse import urlencode

import httpx
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from catwalk.tests.browser.harness import (
    DESKTOP,
    PHONE,
    BrowserCatwalk,
    Visitor,
    analyse,
    call_in_playground,
    chromium_executable,
    copy,
    deploy,
    launch_chromium,
    run_async,
    sign_up,
    wait_for_status,
)
from mcpgateway.tests.conftest import sdk_http_factory

ROOT = Path(__file__).resolve().parent.parent
# Long pages are cut at this many viewport heights: enough to show what the page is.
MAX_SCREENS = 4


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "screenshots")
    options = parser.parse_args()
    executable = chromium_executable()
    if executable is None:
        sys.exit("The screenshots need Chromium: apt-get install chromium")
    options.output.mkdir(parents=True, exist_ok=True)

    catwalk = BrowserCatwalk()
    try:
        catwalk.start()
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright, executable)
            problems = Tour(catwalk, browser, options.output).run()
            browser.close()
    except Exception:
        print(catwalk.logs(), file=sys.stderr)
        raise
    finally:
        catwalk.stop()
    if problems:
        sys.exit("The pages reported problems:\n" + "\n".join(problems))


class Tour:
    """The pages in the order a new user meets them, each saved at both widths."""

    def __init__(self, catwalk: BrowserCatwalk, browser: Browser, output: Path) -> None:
        self.catwalk, self.browser, self.output = catwalk, browser, output
        self.visitors: list[Visitor] = []

    def visitor(self) -> Visitor:
        visitor = Visitor.open(self.catwalk, self.browser)
        self.visitors.append(visitor)
        return visitor

    def run(self) -> list[str]:
        stranger = self.visitor().page
        stranger.goto("/accounts/login/")
        self.shoot(stranger, "sign-in")
        stranger.goto("/accounts/signup/")
        self.shoot(stranger, "sign-up")

        ada = self.visitor()
        page = ada.page
        sign_up(page, "ada")
        self.shoot(page, "dashboard-empty")

        echo_repository = self.catwalk.publish("python-api-key", "echo-service")
        page.goto("/analyses/new/")
        page.get_by_label("GitHub repository URL").fill(echo_repository)
        self.shoot(page, "new-analysis")
        analyse(page, echo_repository)
        analysis_url = page.url
        self.shoot(page, "analysis")

        page.get_by_role("link", name="Build and deploy").click()
        page.get_by_label("Name").fill("echo-service")
        with ada.watch.allow_status(400):
            page.get_by_role("button", name="Deploy").click()
            expect(page.get_by_text("This field is required.")).to_be_visible()
        self.shoot(page, "configure-error")

        page.goto(analysis_url)
        echo_url = deploy(page, "echo-service", "echo-key-5f2c")
        endpoint = copy(page, "Endpoint", "Copy endpoint")
        token = copy(page, "Your access token", "Copy token")
        use_tools(endpoint, token, ["hello", "good morning", "a longer message"], [(2, 3), (40, 2)])

        page.goto(analysis_url)
        deploy(page, "echo-staging", "staging-key-9a1e")
        page.get_by_role("button", name="Stop", exact=True).click()
        wait_for_status(page, "Stopped")

        tools_repository = self.catwalk.publish("python-requirements", "py-tools")
        analyse(page, tools_repository)
        page.get_by_role("link", name="Build and deploy").click()
        page.get_by_label("Name").fill("py-tools")
        page.get_by_role("button", name="Deploy").click()
        wait_for_status(page, "Running")
        endpoint = copy(page, "Endpoint", "Copy endpoint")
        token = copy(page, "Your access token", "Copy token")
        use_tools(endpoint, token, ["ping"], [(1, 1)])

        page.goto(f"{echo_url}playground/")
        echo = call_in_playground(page, "echo", message="Hello from the playground!")
        expect(echo.get_by_text("The tool answered")).to_be_visible()
        self.shoot(page, "playground")

        page.goto(echo_url)
        wait_for_status(page, "Running")
        playground = page.get_by_role("region", name="Playground")
        playground.get_by_role("link", name="List the tools").click()
        expect(playground.get_by_role("article", name="echo")).to_be_visible()
        self.shoot(page, "deployment")

        doctor = page.get_by_role("region", name="Check connectors")
        doctor.get_by_role("button", name="Check connectors").click()
        expect(doctor.get_by_text("Every step passed")).to_be_visible(timeout=60_000)
        self.shoot_part(doctor, "connector-doctor")

        page.goto(consent_url(self.catwalk.url, endpoint))
        expect(page.get_by_role("button", name="Approve")).to_be_visible()
        self.shoot(page, "consent")

        page.goto("/")
        expect(page.get_by_role("link", name="py-tools")).to_be_visible()
        self.shoot(page, "dashboard")
        page.goto("/activity/")
        self.shoot(page, "activity")

        problems = [problem for visitor in self.visitors for problem in visitor.watch.problems]
        for visitor in self.visitors:
            visitor.context.close()
        return problems

    def shoot_part(self, part: Locator, name: str) -> None:
        """One region of a page, at both widths."""
        for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            part.page.set_viewport_size(viewport)
            part.screenshot(
                path=self.output / f"{name}-{width}.png", animations="disabled", caret="hide"
            )
            print(f"{name}-{width}.png", flush=True)
        part.page.set_viewport_size(DESKTOP)

    def shoot(self, page: Page, name: str) -> None:
        for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(viewport)
            height = page.evaluate("document.documentElement.scrollHeight")
            clip = {"x": 0, "y": 0, "width": viewport["width"]}
            clip["height"] = min(height, viewport["height"] * MAX_SCREENS)
            page.screenshot(
                path=self.output / f"{name}-{width}.png",
                full_page=True,
                clip=clip,
                animations="disabled",
                caret="hide",
            )
            print(f"{name}-{width}.png", flush=True)
        page.set_viewport_size(DESKTOP)


def consent_url(site: str, endpoint: str) -> str:
    """Where an MCP client sends its user to approve it: a client registered as a connector
    registers (anonymous dynamic registration), with PKCE and the endpoint as the resource."""
    registered = httpx.post(
        f"{site}/oauth/register/",
        json={
            "client_name": "Claude",
            "redirect_uris": ["http://127.0.0.1:33418/callback"],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        },
        timeout=30,
    )
    registered.raise_for_status()
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    query = urlencode(
        {
            "response_type": "code",
            "client_id": registered.json()["client_id"],
            "redirect_uri": "http://127.0.0.1:33418/callback",
            "scope": "mcp",
            "state": secrets.token_urlsafe(16),
            "code_challenge": challenge.decode().rstrip("="),
            "code_challenge_method": "S256",
            "resource": endpoint,
        }
    )
    return f"/oauth/authorize/?{query}"


def use_tools(endpoint: str, token: str, messages: list[str], sums: list[tuple[int, int]]) -> None:
    """Calls from an MCP client (the SDK's), so the pages have history to show: echoes, sums,
    and one call with an argument missing, which the server refuses."""

    async def calls() -> None:
        factory = sdk_http_factory({"Authorization": f"Bearer {token}"})
        async with (
            factory() as http,
            Client(streamable_http_client(endpoint, http_client=http)) as client,
        ):
            for message in messages:
                await client.call_tool("echo", {"message": message})
            for a, b in sums:
                await client.call_tool("add", {"a": a, "b": b})
            await client.call_tool("add", {"a": 1})

    run_async(calls)


if __name__ == "__main__":
    main()
