"""A second user reaches nothing of the first user's: not their deployment's page, partials or
playground, not their analysis or its configure form, and none of their deployment's actions,
even with a valid session and CSRF token of their own. Every answer is a 404, as for an id that
does not exist, and the first user's deployment is untouched afterwards."""

from __future__ import annotations

import re

from django.urls import reverse
from playwright.sync_api import expect

from catwalk.tests.browser.harness import (
    BrowserCatwalk,
    Visitor,
    analyse,
    deploy,
    sign_up,
    wait_for_status,
)

PAGES = ("deployment-detail", "deployment-status", "deployment-calls", "deployment-logs")
ACTIONS = (
    "deployment-start",
    "deployment-stop",
    "deployment-restart",
    "deployment-delete",
    "deployment-token-create",
    "deployment-credential-set",
    "deployment-redeploy",
    "deployment-rollback",
)


def test_another_user_gets_404_for_every_page_and_action_of_a_deployment(
    catwalk: BrowserCatwalk, new_visitor
):
    grace: Visitor = new_visitor()
    sign_up(grace.page, "grace")
    analyse(grace.page, catwalk.publish())
    analysis_id = int(re.search(r"/analyses/(\d+)/", grace.page.url).group(1))
    deployment_url = deploy(grace.page, "private-echo", "grace-key-31d0")
    deployment_id = re.search(r"/deployments/([0-9a-f-]{36})/", deployment_url).group(1)
    revoke = grace.page.get_by_role("button", name=re.compile("^Revoke"))
    revoke_url = revoke.evaluate("button => button.form.action")
    owner_view = snapshot(grace)

    mallory: Visitor = new_visitor()
    sign_up(mallory.page, "mallory")
    expect(mallory.page.get_by_role("heading", name="No deployments yet")).to_be_visible()

    own = {"deployment_id": deployment_id}
    pages = [reverse(name, kwargs=own) for name in PAGES]
    pages += [
        reverse("deployment-playground", kwargs=own),
        reverse("analysis-detail", args=[analysis_id]),
        reverse("analysis-deploy", args=[analysis_id]),
        reverse("analysis-server-json", args=[analysis_id]),
    ]
    with mallory.watch.allow_status(404):
        for url in pages:
            response = mallory.page.goto(url)
            assert response.status == 404, f"GET {url}: {response.status}"
            expect(mallory.page.get_by_text("private-echo")).to_have_count(0)

    csrf = next(c["value"] for c in mallory.context.cookies() if c["name"] == "csrftoken")
    posts = {reverse(name, kwargs=own): {} for name in ACTIONS}
    posts[reverse("deployment-delete", kwargs=own)] = {"confirm": "private-echo"}
    posts[reverse("deployment-token-create", kwargs=own)] = {"label": "stolen"}
    posts[reverse("deployment-credential-set", kwargs=own)] = {
        "name": "ECHO_API_KEY",
        "value": "mallory's",
    }
    posts[reverse("deployment-credential-remove", kwargs={**own, "name": "ECHO_API_KEY"})] = {}
    posts[revoke_url] = {}
    posts[reverse("analysis-deploy", args=[analysis_id])] = {
        "deployment-name": "stolen",
        "ECHO_API_KEY": "mallory's",
    }
    for url, form in posts.items():
        # A 403 would mean the CSRF check refused it before the view ran: it must be the view.
        response = mallory.context.request.post(
            url, form=form, headers={"X-CSRFToken": csrf}, max_redirects=0
        )
        assert response.status == 404, f"POST {url}: {response.status}"

    mallory.page.goto("/")
    expect(mallory.page.get_by_role("heading", name="No deployments yet")).to_be_visible()
    assert snapshot(grace) == owner_view


def snapshot(owner: Visitor) -> dict[str, object]:
    """What the owner's deployment page says about its tokens, credentials and history (and
    that it still runs), leaving out times that move on their own ("set 2 minutes ago")."""
    page = owner.page
    page.reload()
    wait_for_status(page, "Running")
    tokens = page.get_by_role("region", name="Access tokens").get_by_role("row")
    return {
        # Label, prefix and state of each token.
        "tokens": [
            [row.get_by_role("cell").nth(column).inner_text() for column in (0, 1, 4)]
            for row in tokens.filter(has=page.get_by_role("cell")).all()
        ],
        "credentials": page.get_by_role("region", name="Credentials")
        .get_by_role("listitem")
        .locator("code")
        .all_inner_texts(),
        "history": page.get_by_role("region", name="Status")
        .get_by_role("listitem")
        .all_inner_texts(),
    }
