"""The watch every browser test runs under catches what it claims to: a script or a style that
Catwalk's Content-Security-Policy blocks, a console error, an uncaught exception, and an error
page nobody said to expect. Without this, "no problems reported" could mean "nothing listened"."""

from __future__ import annotations

from playwright.sync_api import Route, expect

from catwalk.tests.browser.harness import BrowserCatwalk, Visitor

PROBE = "/csp-probe/"
# What a page must never contain, under Catwalk's real policy: inline script and inline style.
VIOLATING_PAGE = """<!doctype html><html><head><title>probe</title></head><body>
<p style="color: red">inline style</p>
<script>document.title = "inline script ran";</script>
</body></html>"""


def test_csp_violations_console_errors_and_exceptions_are_reported(
    catwalk: BrowserCatwalk, browser
):
    visitor = Visitor.open(catwalk, browser)
    try:
        policy = visitor.page.goto("/accounts/login/").header_value("content-security-policy")
        visitor.page.route(
            f"{catwalk.url}{PROBE}",
            lambda route: serve(route, VIOLATING_PAGE, {"Content-Security-Policy": policy}),
        )
        visitor.page.goto(PROBE)
        expect(visitor.page).to_have_title("probe")  # the inline script did not run
        visitor.page.evaluate("console.error('something broke')")
        visitor.page.evaluate("setTimeout(() => { throw new Error('uncaught here'); })")
        visitor.page.wait_for_timeout(200)
        problems = "\n".join(visitor.watch.problems)
    finally:
        visitor.context.close()

    assert "CSP violation: script-src-elem blocked inline" in problems
    assert "CSP violation: style-src-attr blocked inline" in problems
    assert "console error: something broke" in problems
    assert "uncaught: uncaught here" in problems


def test_an_error_page_is_reported_unless_the_test_expects_that_status(
    catwalk: BrowserCatwalk, browser
):
    visitor = Visitor.open(catwalk, browser)
    try:
        with visitor.watch.allow_status(404):
            assert visitor.page.goto("/deployments/no-such-page/").status == 404
        assert visitor.watch.problems == []
        assert visitor.page.goto("/deployments/no-such-page/").status == 404
        visitor.page.wait_for_timeout(200)
        problems = list(visitor.watch.problems)
    finally:
        visitor.context.close()

    assert len(problems) == 1
    assert "status of 404" in problems[0]


def serve(route: Route, body: str, headers: dict[str, str]) -> None:
    route.fulfill(status=200, body=body, content_type="text/html", headers=headers)
