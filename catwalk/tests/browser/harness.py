"""A whole Catwalk for a real browser, and what a browser session needs around it.

`BrowserCatwalk` is `mcpgateway.stack.Stack` set up as the product runs: production settings
(DEBUG off, throwaway keys) in its own data folder with SQLite and its own static files, the ASGI
app under uvicorn (Django and the gateway at `/mcp/…`), the supervisor, a Celery worker on the
filesystem broker in the data folder, sign-up open, and GitHub and the package registries
played by the stand-ins in this process (no Claude). Every process logs into the data folder.

`ConsoleWatch` records what a page reports as wrong (console errors, uncaught exceptions,
Content-Security-Policy violations) so a test or the screenshot command can fail on any of
them. The flow helpers (`sign_up`, `analyse`, …) drive the pages the way a person does, through
labels and roles, and are shared by the tests and `python -m catwalk.screenshots`.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    Playwright,
    expect,
)

from analysis.tests.github_standin import GitHubStandin
from analysis.tests.registry_standin import RegistryStandin
from deployments.tests.source_fixtures import OWNER, repository_files
from mcpgateway.stack import Stack, free_port

# The fixture repository the browser deploys: echo and add, built from source, that refuses to
# start without its one required secret, ECHO_API_KEY (deployments/tests/source_repos/).
FIXTURE_SHAPE = "python-api-key"
PASSWORD = "a long enough passphrase 7"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# How long a page may take to show what the background work did: an analysis, a build from
# source (a first `uv pip install` of the MCP SDK included) and the server's start.
ANALYSIS_MS = 60_000
DEPLOY_MS = 180_000


def chromium_executable() -> str | None:
    """Debian's Chromium (`apt-get install chromium`); Playwright's own download is not used."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserCatwalk:
    """Start with `start()`, `stop()` at the end; `url` is where the browser goes."""

    def __init__(self) -> None:
        self.github, self.registry = GitHubStandin(), RegistryStandin()
        self.data_dir = Path(tempfile.mkdtemp(prefix="catwalk-browser-"))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.stack = Stack(self.data_dir, "uvicorn", port)
        self.stack.env.update(
            {
                "CATWALK_PUBLIC_URL": self.url,
                "SIGNUP_OPEN": "true",
                "GITHUB_API_URL": self.github.api_url,
                "GITHUB_TOKEN": "",
                "NPM_REGISTRY_URL": self.registry.npm_url,
                "PYPI_URL": self.registry.pypi_url,
                "ANTHROPIC_API_KEY": "",
            }
        )

    def start(self) -> None:
        self.stack.prepare()
        self.stack.start_supervisor("--poll-interval", "0.2")
        self.stack.start_worker()
        self.stack.serve()

    def stop(self) -> None:
        try:
            self.stack.stop()
        finally:
            self.github.close()
            self.registry.close()
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def publish(self, shape: str = FIXTURE_SHAPE, name: str = "") -> str:
        """Serve `deployments/tests/source_repos/<shape>` on the GitHub stand-in as
        `acme/<name>` (the shape's own name by default); returns its URL."""
        name = name or shape
        self.github.add_repository(OWNER, name, repository_files(shape))
        return f"https://github.com/{OWNER}/{name}"

    def logs(self) -> str:
        return self.stack.logs(last=60)

    def new_context(self, browser: Browser, viewport: dict[str, int] = DESKTOP) -> BrowserContext:
        """A fresh browser profile (no cookies) that may use the clipboard on this origin."""
        context = browser.new_context(base_url=self.url, viewport=viewport)
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=self.url)
        context.set_default_timeout(15_000)
        return context


def launch_chromium(playwright: Playwright, executable: str) -> Browser:
    return playwright.chromium.launch(executable_path=executable, headless=True)


# --- What pages report as wrong ---------------------------------------------------------------

# Reports every Content-Security-Policy violation to the test through an exposed binding (which
# outlives navigations) and keeps them on the page too, for a look in the browser's console.
CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  const report = `${event.violatedDirective} blocked ${event.blockedURI || "inline"}`
    + ` at ${event.sourceFile || document.location.href}:${event.lineNumber}`;
  window.__cspViolations.push(report);
  window.__reportCspViolation(report);
});
"""
FAILED_LOAD = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


@dataclass
class ConsoleWatch:
    """Everything the pages of one browser context reported as wrong.

    A page answered with an error status is logged by Chromium as a console error; a test that
    expects one (a form sent back with its errors is a 400, another user's page a 404) says so
    with `allow_status`, which lets through only whole pages with that status, never a
    stylesheet, script or htmx fragment that failed.
    """

    problems: list[str] = field(default_factory=list)
    allowed_statuses: set[int] = field(default_factory=set)
    documents: dict[str, int] = field(default_factory=dict)

    def watch(self, context: BrowserContext) -> None:
        context.expose_binding(
            "__reportCspViolation",
            lambda source, report: self.problems.append(f"CSP violation: {report}"),
        )
        context.add_init_script(CSP_LISTENER)
        context.on("page", self._watch_page)
        for page in context.pages:
            self._watch_page(page)

    def _watch_page(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))
        page.on("response", self._response)

    def _response(self, response) -> None:
        if response.request.resource_type == "document" and response.status >= 400:
            self.documents[response.url] = response.status

    def _console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        failed = FAILED_LOAD.search(message.text)
        url = message.location.get("url", "")
        if (
            failed
            and int(failed.group(1)) in self.allowed_statuses
            and self.documents.get(url) == int(failed.group(1))
        ):
            return
        self.problems.append(f"console error: {message.text} ({url})")

    @contextlib.contextmanager
    def allow_status(self, *statuses: int) -> Iterator[None]:
        self.allowed_statuses.update(statuses)
        try:
            yield
        finally:
            self.allowed_statuses.difference_update(statuses)


@dataclass
class Visitor:
    """A person at a browser: a fresh profile (no cookies), one page, and what it reported."""

    context: BrowserContext
    page: Page
    watch: ConsoleWatch

    @classmethod
    def open(
        cls, catwalk: BrowserCatwalk, browser: Browser, viewport: dict[str, int] = DESKTOP
    ) -> Visitor:
        context = catwalk.new_context(browser, viewport)
        watch = ConsoleWatch()
        watch.watch(context)
        return cls(context, context.new_page(), watch)


# --- The flow, as a person goes through it ----------------------------------------------------


def sign_up(page: Page, username: str) -> None:
    page.goto("/accounts/signup/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Email").fill(f"{username}@example.com")
    page.get_by_label(re.compile(r"^Password:?$")).fill(PASSWORD)
    page.get_by_label("Password confirmation").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_text(f"Welcome to Catwalk, {username}.")).to_be_visible()


def analyse(page: Page, repository_url: str) -> None:
    """Ask for an analysis and wait until its page shows the result."""
    page.goto("/analyses/new/")
    page.get_by_label("GitHub repository URL").fill(repository_url)
    page.get_by_role("button", name="Analyse").click()
    expect(page.get_by_role("heading", name="Environment variables")).to_be_visible(
        timeout=ANALYSIS_MS
    )


def deploy(page: Page, name: str, api_key: str) -> str:
    """From an analysis page of the fixture: configure and deploy it on this host, and wait
    until it runs. Returns the deployment page's URL."""
    page.get_by_role("link", name="Build and deploy").click()
    page.get_by_label("Name").fill(name)
    page.get_by_label("This host").check()
    page.get_by_label(re.compile("^ECHO_API_KEY")).fill(api_key)
    page.get_by_role("button", name="Deploy").click()
    expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()
    wait_for_status(page, "Running")
    return page.url


def wait_for_status(page: Page, status: str, timeout: float = DEPLOY_MS) -> None:
    """The deployment page's live status badge shows `status` (it updates itself)."""
    badge = page.get_by_role("region", name="Status").get_by_role("status")
    expect(badge).to_have_text(status, timeout=timeout)


# axe-core's impacts that fail a page: what blocks or seriously hinders someone using a screen
# reader, a keyboard or low vision (labels, names, contrast, focusable scrolling regions…).
BLOCKING_IMPACTS = frozenset({"critical", "serious"})
_axe = Axe()


def accessibility_problems(page: Page) -> list[str]:
    """What axe-core (the WCAG 2 A/AA rules) finds seriously wrong with the page as shown.

    axe runs through the DevTools protocol, which the page's CSP does not govern, so the page
    is checked under the policy it really has."""
    results = _axe.run(page, options={"runOnly": ["wcag2a", "wcag2aa", "best-practice"]})
    return [
        f"{page.url}: {violation['id']} ({violation['impact']}): {violation['help']} — "
        + ", ".join(str(node["target"]) for node in violation["nodes"][:5])
        for violation in results.response["violations"]
        if violation["impact"] in BLOCKING_IMPACTS
    ]


def layout_problems(page: Page) -> list[str]:
    """Content wider than the window (the page scrolls sideways on a phone)."""
    width = page.evaluate("document.documentElement.scrollWidth")
    window = page.viewport_size["width"] if page.viewport_size else width
    return [f"{page.url}: {width} px wide in a {window} px window"] if width > window else []


def assert_usable(page: Page) -> None:
    """The page passes axe's serious checks and fits its window, at the size it has now."""
    problems = accessibility_problems(page) + layout_problems(page)
    assert not problems, "\n".join(problems)


def assert_usable_on_a_phone(page: Page) -> None:
    """The same page, reloaded at a phone's width, is usable too; the window is put back."""
    size = page.viewport_size or DESKTOP
    page.set_viewport_size(PHONE)
    try:
        page.reload()
        assert_usable(page)
    finally:
        page.set_viewport_size(size)
        page.reload()


def copy(page: Page, section: str, button: str) -> str:
    """Press a section's copy button; what it put on the clipboard."""
    region = page.get_by_role("region", name=section)
    region.get_by_role("button", name=button).click()
    expect(region.get_by_role("button", name="Copied")).to_be_visible()
    return page.evaluate("navigator.clipboard.readText()")


def call_in_playground(page: Page, tool: str, **arguments: str) -> Locator:
    """Fill a tool's form in the playground (on the deployment's page or its own) and call it;
    returns the tool's part of the playground, where its answer appears."""
    playground = page.get_by_role("region", name="Playground")
    listing = playground.get_by_role("link", name="List the tools")
    if listing.count():  # on the deployment's page it opens on demand
        listing.click()
    entry = playground.get_by_role("article", name=tool)
    for name, value in arguments.items():
        entry.get_by_label(name).fill(value)
    entry.get_by_role("button", name=f"Call {tool}").click()
    return entry


def run_async[T](function: Callable[[], Awaitable[T]]) -> T:
    """Run an async function (an MCP client's calls) from a browser test; Playwright's sync API
    keeps an event loop running on this thread, so it runs on another."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(anyio.run, function).result()
