"""Browser tests: Debian's Chromium, driven by Playwright, against one whole Catwalk for them all.

Without Chromium they skip, except in CI (`CI` set), where they must run: `.ci/run` installs it.
Every browser context is watched (`ConsoleWatch`): a console error, an uncaught exception or a
Content-Security-Policy violation on any page fails the test that opened it. A failed test's
report ends with the last lines every Catwalk process wrote.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

from catwalk.tests.browser.harness import (
    BrowserCatwalk,
    Visitor,
    chromium_executable,
    launch_chromium,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(os.path.dirname(__file__)):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    catwalk = getattr(item, "funcargs", {}).get("catwalk")
    if report.failed and isinstance(catwalk, BrowserCatwalk):
        report.sections.append(("Catwalk's processes (last lines)", catwalk.logs()))
    return report


@pytest.fixture(scope="session")
def chromium() -> str:
    executable = chromium_executable()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail(
                "Chromium is missing, and CI must run the browser tests: apt-get install chromium"
            )
        pytest.skip("Chromium is not installed (apt-get install chromium); CI runs these")
    return executable


# Package-scoped, not session-scoped: Playwright's sync API keeps an event loop running on this
# thread while it is open, and every later test that runs one of its own (asyncio.run, anyio)
# would fail with "Cannot run the event loop while another loop is running".
@pytest.fixture(scope="package")
def browser(chromium: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium)
        yield browser
        browser.close()


@pytest.fixture(scope="package")
def catwalk(chromium: str) -> Iterator[BrowserCatwalk]:
    catwalk = BrowserCatwalk()
    try:
        catwalk.start()
    except BaseException:
        print(catwalk.logs())
        catwalk.stop()
        raise
    yield catwalk
    catwalk.stop()


@pytest.fixture
def new_visitor(browser: Browser, catwalk: BrowserCatwalk) -> Iterator[Callable[..., Visitor]]:
    """Fresh browser profiles, each with a page and watched; any problem one of their pages
    reported fails the test."""
    opened: list[Visitor] = []

    def new(**options) -> Visitor:
        visitor = Visitor.open(catwalk, browser, **options)
        opened.append(visitor)
        return visitor

    yield new
    problems = [problem for visitor in opened for problem in visitor.watch.problems]
    for visitor in opened:
        visitor.context.close()
    if problems:
        pytest.fail("The pages reported problems:\n" + "\n".join(problems))
