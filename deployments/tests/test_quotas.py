"""Tenancy limits: deployments and running deployments per user (refused before anything is
written), and at the gateway open sessions per user and requests per minute per token (429 with
Retry-After and a JSON-RPC error), counted in memory or in Redis."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from django.core.management import CommandError, call_command

from catwalk.testing import make_user
from deployments import services
from deployments.models import (
    AccessToken,
    AuditEvent,
    Credential,
    Deployment,
    DeploymentEvent,
    DesiredState,
    Status,
)
from deployments.tests.conftest import deploy_fixture_server
from mcpgateway.gateway import Gateway
from mcpgateway.limits import RATE_LIMITED

PACKAGE = services.PackageSpec("npm", "@modelcontextprotocol/server-everything", "2026.8.31")


def counts() -> tuple[int, ...]:
    return tuple(
        model.objects.count()
        for model in (Deployment, Credential, AccessToken, DeploymentEvent, AuditEvent)
    )


def create(owner, name: str) -> Deployment:
    deployment, _ = services.create_deployment(
        owner, PACKAGE, name=name, environment={"API_KEY": "k"}, issued_to="test"
    )
    return deployment


# --- Deployments per user -----------------------------------------------------------------------


@pytest.mark.django_db
def test_the_deployment_quota_refuses_the_next_one_and_writes_nothing(owner, settings):
    settings.QUOTA_DEPLOYMENTS_PER_USER = 2
    settings.QUOTA_RUNNING_DEPLOYMENTS_PER_USER = 0
    create(owner, "one")
    create(owner, "two")
    before = counts()

    with pytest.raises(services.QuotaExceeded) as refused:
        create(owner, "three")

    assert "already has 2 deployments" in str(refused.value)
    assert "QUOTA_DEPLOYMENTS_PER_USER" in str(refused.value)
    assert counts() == before
    create(make_user("someone-else"), "three")  # another user's quota is their own


@pytest.mark.django_db
def test_the_running_quota_counts_what_is_wanted_running(owner, settings):
    settings.QUOTA_RUNNING_DEPLOYMENTS_PER_USER = 1
    first = create(owner, "one")

    with pytest.raises(services.QuotaExceeded, match=r"already has 1 deployments running"):
        create(owner, "two")
    services.stop_deployment(first)
    second = create(owner, "two")
    before = counts()
    with pytest.raises(services.QuotaExceeded, match="Stop one first"):
        services.start_deployment(first)

    first.refresh_from_db()
    assert first.desired_state == DesiredState.STOPPED
    assert counts() == before
    services.start_deployment(second)  # already wanted running: no new slot needed


@pytest.mark.django_db
def test_zero_turns_a_quota_off(owner, settings):
    settings.QUOTA_DEPLOYMENTS_PER_USER = 0
    settings.QUOTA_RUNNING_DEPLOYMENTS_PER_USER = 0
    for index in range(4):
        create(owner, f"d{index}")
    assert Deployment.objects.filter(owner=owner).count() == 4


def test_the_command_line_reports_the_quota(owner, settings, supervisor):
    settings.QUOTA_DEPLOYMENTS_PER_USER = 1
    create(owner, "one")

    with pytest.raises(CommandError, match="the most an account may have"):
        call_command("mcp_deploy", "--user", owner.username, "--package", "npm:other")


# --- At the gateway -------------------------------------------------------------------------------

INIT = {
    "jsonrpc": "2.0",
    "id": 7,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t"}},
}
HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def gateway_client() -> AsyncIterator[httpx.AsyncClient]:
    """A gateway built with the test's settings, in this process, relaying to real bridges."""
    app = Gateway()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000", timeout=30
        ) as client:
            yield client
    finally:
        await app.close()


def running_fixture(owner, supervisor) -> tuple[Deployment, str]:
    deployment, token = deploy_fixture_server(owner)
    supervisor.wait_for_status(deployment, Status.RUNNING)
    return deployment, token


async def initialize(client: httpx.AsyncClient, deployment, token: str) -> httpx.Response:
    return await client.post(
        f"/mcp/{deployment.id}",
        json=INIT,
        headers={**HEADERS, "Authorization": f"Bearer {token}"},
    )


async def away_from_a_minute_boundary() -> None:
    """Rate windows are calendar minutes: start a burst where it cannot straddle two."""
    if time.time() % 60 > 50:
        await anyio.sleep(61 - time.time() % 60)


def assert_429(response: httpx.Response, words: str, longest_wait: int) -> None:
    assert response.status_code == 429, response.text
    assert 1 <= int(response.headers["retry-after"]) <= longest_wait
    body = response.json()
    assert body["jsonrpc"] == "2.0"
    assert body["id"] == INIT["id"]
    assert body["error"]["code"] == RATE_LIMITED
    assert words in body["error"]["message"]


async def check_rate_limit(owner, supervisor, settings, gateway) -> None:
    deployment, token = await anyio.to_thread.run_sync(running_fixture, owner, supervisor)
    _, other_token = await anyio.to_thread.run_sync(
        lambda: services.issue_token(deployment, "second")
    )
    await away_from_a_minute_boundary()

    answers = [await initialize(gateway, deployment, token) for _ in range(3)]
    over = await initialize(gateway, deployment, token)
    another = await initialize(gateway, deployment, other_token)

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert_429(over, "this token may make 3 per minute", longest_wait=60)
    assert another.status_code == 200  # the limit is per token


@pytest.mark.anyio
async def test_requests_per_minute_per_token_in_memory(owner, supervisor, settings):
    settings.REDIS_URL = None
    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = 3
    settings.QUOTA_SESSIONS_PER_USER = 0
    async with gateway_client() as client:
        await check_rate_limit(owner, supervisor, settings, client)


@pytest.mark.anyio
async def test_requests_per_minute_per_token_in_redis(owner, supervisor, settings, redis_url):
    import redis

    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = 3
    settings.QUOTA_SESSIONS_PER_USER = 0
    connection = redis.Redis.from_url(redis_url)
    for key in connection.scan_iter("catwalk:limits:*"):
        connection.delete(key)
    async with gateway_client() as client:
        await check_rate_limit(owner, supervisor, settings, client)

    assert list(connection.scan_iter("catwalk:limits:rate:*"))  # counted where all gateways see


@pytest.mark.anyio
@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_open_sessions_per_user(owner, supervisor, settings, request, store):
    if store == "redis":
        import redis

        redis_url = request.getfixturevalue("redis_url")
        for key in redis.Redis.from_url(redis_url).scan_iter("catwalk:limits:*"):
            redis.Redis.from_url(redis_url).delete(key)
    else:
        settings.REDIS_URL = None
    settings.QUOTA_SESSIONS_PER_USER = 2
    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = 0
    deployment, token = await anyio.to_thread.run_sync(running_fixture, owner, supervisor)
    async with gateway_client() as client:
        auth = {**HEADERS, "Authorization": f"Bearer {token}"}
        first = await initialize(client, deployment, token)
        second = await initialize(client, deployment, token)
        third = await initialize(client, deployment, token)
        session = first.headers["mcp-session-id"]
        disguised = await client.post(
            f"/mcp/{deployment.id}",
            json=INIT,
            headers={**auth, "Mcp-Session-Id": "not-a-session"},
        )
        other_token = (await anyio.to_thread.run_sync(services.issue_token, deployment, "b"))[1]
        # Someone else's 404 on this session must not free its slot.
        await client.post(
            f"/mcp/{deployment.id}",
            json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"},
            headers={
                **HEADERS,
                "Authorization": f"Bearer {other_token}",
                "Mcp-Session-Id": session,
            },
        )
        still_full = await initialize(client, deployment, token)
        within = await client.post(
            f"/mcp/{deployment.id}",
            json={"jsonrpc": "2.0", "id": 8, "method": "tools/list"},
            headers={**auth, "Mcp-Session-Id": session},
        )
        closed = await client.delete(
            f"/mcp/{deployment.id}", headers={**auth, "Mcp-Session-Id": session}
        )
        fourth = await initialize(client, deployment, token)

    assert [first.status_code, second.status_code] == [200, 200]
    assert disguised.status_code == 429  # an initialize counts whatever session header it has
    # Retry-After: until the oldest session would expire unused.
    assert_429(
        third, "your account may hold 2 at once", settings.LOCAL_SESSION_IDLE_TIMEOUT_SECONDS
    )
    assert still_full.status_code == 429
    assert within.status_code == 200  # sessions already open keep working at the quota
    assert closed.status_code == 204
    assert fourth.status_code == 200  # a closed session frees its slot
