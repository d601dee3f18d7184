"""Pages cost a fixed number of queries however much a user has: no query per deployment, call,
token or event. (How long they take at scale is measured by `python -m bench --only pages`.)"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from catwalk.testing import make_credential, make_deployment, make_token
from deployments.models import CallOutcome, Deployment, DeploymentEvent, EventKind, ToolCall

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    """The run folders the deployment page reads its logs from, in this test's own folder."""
    settings.DATA_DIR = tmp_path


def add_history(deployment: Deployment, calls: int, *, hours_ago: float = 1) -> None:
    """Calls through a token of its own each, as many lifecycle events, and a credential."""
    for n in range(calls):
        token, _ = make_token(deployment, f"client {n}")
        ToolCall.objects.create(
            deployment=deployment,
            token=token,
            method="tools/call",
            target="echo",
            started_at=timezone.now() - timedelta(hours=hours_ago),
            duration_ms=12.5,
            outcome=CallOutcome.OK,
        )
        DeploymentEvent.objects.create(deployment=deployment, kind=EventKind.ACTION, message="x")
    make_credential(deployment, f"API_KEY_{deployment.credentials.count()}", "value")


def queries_for(client, url: str, **headers) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url, headers=headers)
    assert response.status_code == 200
    return len(captured.captured_queries)


def test_the_dashboard_query_count_does_not_grow_with_the_number_of_deployments(
    owner, owner_client
):
    add_history(make_deployment(owner, "first"), calls=2)
    with_one = queries_for(owner_client, "/")
    fragment_with_one = queries_for(owner_client, "/", HX_Request="true")

    for n in range(5):
        add_history(make_deployment(owner, f"more-{n}"), calls=3)

    assert queries_for(owner_client, "/") == with_one
    assert queries_for(owner_client, "/", HX_Request="true") == fragment_with_one


def test_the_dashboard_counts_each_deployments_calls_of_the_last_24_hours(owner, owner_client):
    busy, idle = make_deployment(owner, "busy"), make_deployment(owner, "idle")
    add_history(busy, calls=3)
    add_history(busy, calls=2, hours_ago=25)
    add_history(idle, calls=4, hours_ago=48)

    response = owner_client.get("/")

    counts = {
        deployment.name: deployment.calls_24h for deployment in response.context["deployments"]
    }
    assert counts == {"busy": 3, "idle": 0}


@pytest.mark.parametrize("suffix", ["", "status/", "calls/", "logs/"])
def test_the_deployment_page_query_count_does_not_grow_with_its_calls_tokens_and_events(
    owner, owner_client, suffix
):
    deployment = make_deployment(owner, "weather")
    add_history(deployment, calls=1)
    url = f"/deployments/{deployment.id}/{suffix}"
    with_one = queries_for(owner_client, url)

    add_history(deployment, calls=8)

    assert queries_for(owner_client, url) == with_one
