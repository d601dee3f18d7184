"""The gateway's checks before any relaying: path, host, origin, token, deployment state, size.

These run the real ASGI application in-process; nothing here reaches a bridge.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import anyio
import httpx
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from catwalk.asgi import application
from catwalk.testing import make_deployment, make_token, make_user
from deployments.models import DesiredState
from mcpgateway import access

pytestmark = [pytest.mark.anyio, pytest.mark.django_db(transaction=True)]
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def client():
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url="http://127.0.0.1:8000"
    )


@pytest.fixture
def deployment(db):
    return make_deployment(make_user(), "gated", allowed_origins=["https://inspector.example"])


@pytest.fixture
def token(deployment):
    return make_token(deployment)[1]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_unknown_paths_are_404(client, token):
    response = await client.post("/mcp/not-a-deployment", json=INIT, headers=bearer(token))
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "No such endpoint."


async def test_a_missing_token_is_401_with_a_challenge(client, deployment):
    response = await client.post(f"/mcp/{deployment.id}", json=INIT)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer cwk_wrong", "Basic dXNlcjpwYXNz", "Bearer "])
async def test_a_wrong_token_is_401(client, deployment, header):
    response = await client.post(
        f"/mcp/{deployment.id}", json=INIT, headers={"Authorization": header}
    )
    assert response.status_code == 401


async def test_an_expired_token_is_401(client, deployment):
    _, expired = await sync_to_async(make_token)(
        deployment, expires_at=timezone.now() - timedelta(minutes=1)
    )
    response = await client.post(f"/mcp/{deployment.id}", json=INIT, headers=bearer(expired))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_a_revoked_token_is_401(client, deployment):
    token, plaintext = await sync_to_async(make_token)(deployment)
    await sync_to_async(token.revoke)()
    response = await client.post(f"/mcp/{deployment.id}", json=INIT, headers=bearer(plaintext))
    assert response.status_code == 401


async def test_a_token_for_another_deployment_gets_404(client, deployment):
    other = await sync_to_async(make_deployment)(deployment.owner, "other")
    _, other_token = await sync_to_async(make_token)(other)
    response = await client.post(f"/mcp/{deployment.id}", json=INIT, headers=bearer(other_token))
    assert response.status_code == 404


async def test_a_foreign_origin_is_403(client, deployment, token):
    headers = {**bearer(token), "Origin": "https://evil.example"}
    response = await client.post(f"/mcp/{deployment.id}", json=INIT, headers=headers)
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers


async def test_a_foreign_host_is_400(client, deployment, token):
    headers = {**bearer(token), "Host": "evil.example"}
    response = await client.post(f"/mcp/{deployment.id}", json=INIT, headers=headers)
    assert response.status_code == 400


async def test_an_allowed_browser_origin_gets_a_cors_preflight(client, deployment):
    response = await client.options(
        f"/mcp/{deployment.id}",
        headers={"Origin": "https://inspector.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "https://inspector.example"
    assert "mcp-session-id" in response.headers["access-control-allow-headers"]
    assert "mcp-session-id" in response.headers["access-control-expose-headers"]


async def test_a_stopped_deployment_answers_503_with_a_json_rpc_error(client, deployment, token):
    await sync_to_async(deployment.set_desired_state)(DesiredState.STOPPED)
    response = await client.post(f"/mcp/{deployment.id}", json=INIT, headers=bearer(token))
    assert response.status_code == 503
    assert "stopped by its owner" in response.json()["error"]["message"]


async def test_an_oversize_body_is_413(client, deployment, token, settings):
    payload = b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "pad": "' + b"x" * (5 * 2**20) + b'"}'
    response = await client.post(
        f"/mcp/{deployment.id}",
        content=payload,
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    assert response.status_code == 413


async def test_other_methods_are_405(client, deployment, token):
    response = await client.put(f"/mcp/{deployment.id}", json=INIT, headers=bearer(token))
    assert response.status_code == 405


async def test_a_same_origin_browser_request_is_not_refused(client, deployment, token):
    headers = {**bearer(token), "Host": "localhost:8123", "Origin": "http://localhost:8123"}
    response = await client.put(f"/mcp/{deployment.id}", json=INIT, headers=headers)
    assert response.status_code == 405  # got past the origin check


async def test_an_origin_on_an_allowed_host_but_another_port_is_refused(client, deployment, token):
    headers = {**bearer(token), "Origin": "http://127.0.0.1:9999"}
    response = await client.post(f"/mcp/{deployment.id}", json=INIT, headers=headers)
    assert response.status_code == 403


async def test_a_revoked_token_stops_working_within_the_cache_lifetime(client, deployment):
    token, plaintext = await sync_to_async(make_token)(deployment)
    url = f"/mcp/{deployment.id}"
    assert (await client.put(url, json=INIT, headers=bearer(plaintext))).status_code == 405
    await sync_to_async(token.revoke)()
    await anyio.sleep(access.ACCESS_CACHE_SECONDS + 0.2)
    assert access.ACCESS_CACHE_SECONDS <= 5  # the promise: revocation holds within 5 s
    assert (await client.put(url, json=INIT, headers=bearer(plaintext))).status_code == 401


async def test_concurrent_cache_misses_share_one_query(deployment, token, monkeypatch):
    calls = []
    real = access._load_principal

    def counting(token_hash):
        calls.append(token_hash)
        return real(token_hash)

    monkeypatch.setattr(access, "_load_principal", counting)
    found = await asyncio.gather(*(access.authenticate(token) for _ in range(20)))
    assert len(calls) == 1
    assert {p.deployment_id for p in found} == {str(deployment.id)}


async def test_a_sleeping_deployment_its_proxy_wakes_is_reported_once_per_few_seconds(monkeypatch):
    # Fly's proxy wakes the machine for the request itself; the runtime is only told, and only
    # once per PROXY_WAKE_REPORT_SECONDS however many requests arrive meanwhile (each report
    # is a database query), with the gateway's cached view of the deployment kept.
    from dataclasses import replace

    from deployments.models import Status
    from deployments.runtimes.base import Endpoint
    from mcpgateway.gateway import Gateway

    reported: list[tuple[str, bool]] = []

    async def wake(deployment_id: str, *, forget: bool = True) -> None:
        reported.append((deployment_id, forget))

    monkeypatch.setattr(access, "wake", wake)
    gateway = Gateway()
    info = access.DeploymentInfo(
        id="a-sleeping-deployment",
        owner_id=1,
        status=Status.SLEEPING,
        desired_state=DesiredState.RUNNING,
        runtime="fly",
        allowed_origins=frozenset(),
        endpoint=Endpoint(base_url="http://relay.invalid"),
        proxy_wakes=True,
    )

    relayed = [await gateway._awake(info) for _ in range(5)]
    other = await gateway._awake(replace(info, id="another-sleeping-deployment"))

    assert relayed == [info] * 5 and other.id == "another-sleeping-deployment"
    assert reported == [("a-sleeping-deployment", False), ("another-sleeping-deployment", False)]
