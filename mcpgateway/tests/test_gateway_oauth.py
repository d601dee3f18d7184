"""The gateway as an OAuth 2.1 resource server (MCP authorization spec, RFC 6750, 8707, 9728).

The real gateway runs in-process and relays to a real bridge serving the stdio fixture server.
Between the two sits a recording hop at the deployment's own socket path, so the tests can
read exactly what the gateway sent upstream. OAuth clients and access tokens are rows made
directly with django-oauth-toolkit's models; the browser flow that issues them is tested with
the authorization server.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone
from oauth2_provider.models import get_access_token_model, get_application_model, set_token_value

from catwalk.testing import make_deployment, make_token, make_user
from deployments.models import Deployment, Status, ToolCall
from deployments.runtimes.local import run_paths
from mcpgateway import access
from mcpgateway.gateway import Gateway
from mcpgateway.tests.conftest import MCP_ACCEPT, BridgeProcess, module_bridge

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
INIT = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "oauth-test", "version": "1"}},
}  # fmt: skip
TOOLS_LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def bridge() -> Iterator[BridgeProcess]:
    with module_bridge("--mode", "shared", unix_socket=True) as running:
        yield running


class RecordingHop:
    """Passes bytes between the gateway and the bridge, keeping what the gateway sent."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.sent = bytearray()
        self._writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
        self._writers += [writer, up_writer]
        await asyncio.gather(
            self._pipe(reader, up_writer, record=True),
            self._pipe(up_reader, writer, record=False),
            return_exceptions=True,
        )

    async def _pipe(self, reader, writer, *, record: bool) -> None:
        try:
            while chunk := await reader.read(65536):
                if record:
                    self.sent += chunk
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.close()

    def close(self) -> None:
        for writer in self._writers:
            writer.close()


@pytest.fixture(autouse=True)
def data_dir(settings) -> Iterator[Path]:
    """Where the local runtime looks for bridge sockets; short, for unix socket paths."""
    settings.DATA_DIR = Path(tempfile.mkdtemp(prefix="cwo", dir="/tmp"))
    yield settings.DATA_DIR
    shutil.rmtree(settings.DATA_DIR, ignore_errors=True)


def running_deployment(owner, name: str) -> Deployment:
    return make_deployment(owner, name, status=Status.RUNNING)


@pytest.fixture
def deployment(owner) -> Deployment:
    return running_deployment(owner, "oauth-gated")


@pytest.fixture
async def hop(bridge, deployment) -> AsyncIterator[RecordingHop]:
    recorder = RecordingHop(bridge.socket_path)
    socket = run_paths(deployment.id).socket
    socket.parent.mkdir(parents=True, exist_ok=True)
    server = await asyncio.start_unix_server(recorder.handle, path=str(socket))
    yield recorder
    server.close()
    recorder.close()


@pytest.fixture
async def gateway_app(hop) -> AsyncIterator[Gateway]:
    app = Gateway()
    yield app
    await app.close()


@pytest.fixture
async def gateway(gateway_app) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway_app), base_url="http://127.0.0.1:8000", timeout=60
    ) as client:
        yield client


def make_client(name: str = "Claude Desktop"):
    """An OAuth client as dynamic client registration creates one (no developer account)."""
    return get_application_model().objects.create(
        name=name,
        client_type="public",
        authorization_grant_type="authorization-code",
        redirect_uris="http://127.0.0.1:33418/callback",
    )


def make_oauth_token(
    user,
    client,
    resource: list[str],
    scope: str = "mcp",
    expires_in: timedelta = timedelta(hours=1),
) -> tuple[object, str]:
    """An access token as the authorization server stores it; returns (row, plaintext)."""
    plaintext = secrets.token_urlsafe(30)
    token = get_access_token_model()(
        user=user,
        application=client,
        expires=timezone.now() + expires_in,
        scope=scope,
        resource=resource,
    )
    set_token_value(token, plaintext)
    token.save()
    return token, plaintext


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": MCP_ACCEPT, **extra}


def answer(response: httpx.Response) -> dict:
    """The JSON-RPC answer in a JSON body or in the SSE stream of a POST."""
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads(data[-1])
    return response.json()


def metadata_url(settings, deployment_id) -> str:
    return f"{settings.PUBLIC_URL}/.well-known/oauth-protected-resource/mcp/{deployment_id}"


async def open_session(gateway: httpx.AsyncClient, url: str, token: str) -> str:
    response = await gateway.post(url, json=INIT, headers=bearer(token))
    assert response.status_code == 200, response.text
    session = response.headers["mcp-session-id"]
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    headers = bearer(token, **{"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"})
    assert (await gateway.post(url, json=initialized, headers=headers)).status_code == 202
    return session


async def list_tools(gateway: httpx.AsyncClient, url: str, token: str, session: str):
    headers = bearer(token, **{"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"})
    return await gateway.post(url, json=TOOLS_LIST, headers=headers)


async def test_a_valid_oauth_token_lists_tools_and_never_reaches_upstream(
    gateway, hop, owner, deployment
):
    client = await sync_to_async(make_client)()
    _, token = await sync_to_async(make_oauth_token)(owner, client, [deployment.endpoint_url])
    url = f"/mcp/{deployment.id}"

    session = await open_session(gateway, url, token)
    tools = answer(await list_tools(gateway, url, token, session))["result"]["tools"]

    assert "echo" in {tool["name"] for tool in tools}
    sent = bytes(hop.sent).lower()
    assert b"authorization" not in sent
    assert token.encode().lower() not in sent
    assert f"x-catwalk-principal: oauth:{owner.pk}:{client.pk}".encode() in sent


async def test_static_tokens_still_work_and_are_not_forwarded(gateway, hop, deployment):
    _, token = await sync_to_async(make_token)(deployment)
    url = f"/mcp/{deployment.id}"

    session = await open_session(gateway, url, token)
    tools = answer(await list_tools(gateway, url, token, session))["result"]["tools"]

    assert "echo" in {tool["name"] for tool in tools}
    assert b"authorization" not in bytes(hop.sent).lower()


async def test_no_token_is_401_pointing_at_the_resource_metadata(gateway, deployment, settings):
    response = await gateway.post(f"/mcp/{deployment.id}", json=INIT)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        f'Bearer resource_metadata="{metadata_url(settings, deployment.id)}"'
    )


@pytest.mark.parametrize("suffix", ["/sse", "/messages"])
async def test_the_legacy_paths_point_at_the_same_resource_metadata(
    gateway, deployment, settings, suffix
):
    response = await gateway.get(f"/mcp/{deployment.id}{suffix}")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        f'Bearer resource_metadata="{metadata_url(settings, deployment.id)}"'
    )


async def test_an_unknown_deployment_without_a_token_gets_the_same_401(gateway, settings):
    # Nothing is looked up before a token is checked: the answer does not tell whether the id
    # exists (its metadata document does 404, but only for someone who has the exact id).
    unknown = "00000000-0000-4000-8000-000000000000"
    response = await gateway.post(f"/mcp/{unknown}", json=INIT)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        f'Bearer resource_metadata="{metadata_url(settings, unknown)}"'
    )


def invalid_token_challenge(settings, deployment_id) -> str:
    return (
        f'Bearer resource_metadata="{metadata_url(settings, deployment_id)}", error="invalid_token"'
    )


async def test_an_expired_oauth_token_is_401_invalid_token(gateway, owner, deployment, settings):
    client = await sync_to_async(make_client)()
    _, token = await sync_to_async(make_oauth_token)(
        owner, client, [deployment.endpoint_url], expires_in=timedelta(seconds=-1)
    )
    response = await gateway.post(f"/mcp/{deployment.id}", json=INIT, headers=bearer(token))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == invalid_token_challenge(settings, deployment.id)


async def test_an_unknown_bearer_is_401_invalid_token(gateway, deployment, settings):
    response = await gateway.post(
        f"/mcp/{deployment.id}", json=INIT, headers=bearer("not-a-token-anyone-issued")
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == invalid_token_challenge(settings, deployment.id)


async def test_a_token_for_another_deployment_is_401_invalid_token(
    gateway, owner, deployment, settings
):
    # The MCP authorization spec: a token whose audience is another resource is invalid here.
    other = await sync_to_async(running_deployment)(owner, "other")
    client = await sync_to_async(make_client)()
    _, token = await sync_to_async(make_oauth_token)(owner, client, [other.endpoint_url])

    response = await gateway.post(f"/mcp/{deployment.id}", json=INIT, headers=bearer(token))
    unknown = "00000000-0000-4000-8000-000000000000"
    on_unknown = await gateway.post(f"/mcp/{unknown}", json=INIT, headers=bearer(token))

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == invalid_token_challenge(settings, deployment.id)
    assert on_unknown.status_code == 401  # an unknown id looks the same as someone else's


@pytest.mark.parametrize(
    "resource",
    [
        pytest.param([], id="unrestricted"),
        pytest.param(["{public}/mcp"], id="a-prefix-of-the-endpoint"),
        pytest.param(["{endpoint}/sse"], id="a-longer-url"),
    ],
)
async def test_only_a_token_bound_to_exactly_this_endpoint_is_accepted(
    gateway, owner, deployment, settings, resource
):
    client = await sync_to_async(make_client)()
    bound = [
        r.format(endpoint=deployment.endpoint_url, public=settings.PUBLIC_URL) for r in resource
    ]
    _, token = await sync_to_async(make_oauth_token)(owner, client, bound)
    response = await gateway.post(f"/mcp/{deployment.id}", json=INIT, headers=bearer(token))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_a_token_of_a_user_who_no_longer_owns_the_deployment_is_401(
    gateway, owner, deployment
):
    client = await sync_to_async(make_client)()
    _, token = await sync_to_async(make_oauth_token)(owner, client, [deployment.endpoint_url])
    newcomer = await sync_to_async(make_user)("newcomer")
    await sync_to_async(Deployment.objects.filter(pk=deployment.pk).update)(owner=newcomer)

    response = await gateway.post(f"/mcp/{deployment.id}", json=INIT, headers=bearer(token))

    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_a_token_without_the_mcp_scope_is_403_insufficient_scope(
    gateway, owner, deployment, settings
):
    client = await sync_to_async(make_client)()
    _, token = await sync_to_async(make_oauth_token)(
        owner, client, [deployment.endpoint_url], scope="read"
    )
    response = await gateway.post(f"/mcp/{deployment.id}", json=INIT, headers=bearer(token))
    assert response.status_code == 403
    assert response.headers["www-authenticate"] == (
        f'Bearer resource_metadata="{metadata_url(settings, deployment.id)}", '
        'error="insufficient_scope", scope="mcp"'
    )


async def test_a_refreshed_token_keeps_the_session_and_another_client_cannot_use_it(
    gateway, owner, deployment
):
    client = await sync_to_async(make_client)()
    first, token = await sync_to_async(make_oauth_token)(owner, client, [deployment.endpoint_url])
    url = f"/mcp/{deployment.id}"
    session = await open_session(gateway, url, token)

    await sync_to_async(first.delete)()  # what a refresh does: a new token replaces the old
    _, refreshed = await sync_to_async(make_oauth_token)(owner, client, [deployment.endpoint_url])
    other_client = await sync_to_async(make_client)("Another client")
    _, others = await sync_to_async(make_oauth_token)(
        owner, other_client, [deployment.endpoint_url]
    )

    assert "result" in answer(await list_tools(gateway, url, refreshed, session))
    assert (await list_tools(gateway, url, others, session)).status_code == 404


async def test_calls_made_with_an_oauth_token_name_its_client(
    gateway, gateway_app, owner, deployment
):
    client = await sync_to_async(make_client)("Inspector")
    _, token = await sync_to_async(make_oauth_token)(owner, client, [deployment.endpoint_url])
    url = f"/mcp/{deployment.id}"
    session = await open_session(gateway, url, token)
    assert "result" in answer(await list_tools(gateway, url, token, session))

    await gateway_app.calls.flush()

    calls = await sync_to_async(list)(
        ToolCall.objects.filter(deployment=deployment).select_related("oauth_client")
    )
    assert {call.method for call in calls} == {"initialize", "tools/list"}
    assert {(call.token_id, call.oauth_client.name) for call in calls} == {(None, "Inspector")}


async def test_a_known_oauth_caller_costs_no_database_work(gateway, owner, deployment, monkeypatch):
    client = await sync_to_async(make_client)()
    _, token = await sync_to_async(make_oauth_token)(owner, client, [deployment.endpoint_url])
    url = f"/mcp/{deployment.id}"
    session = await open_session(gateway, url, token)
    lookups = []
    real = access.database_work

    def counting(function):
        lookups.append(function.__name__)
        return real(function)

    monkeypatch.setattr(access, "database_work", counting)
    for _ in range(5):
        assert "result" in answer(await list_tools(gateway, url, token, session))
    assert lookups == []


async def test_revoking_an_oauth_token_ends_its_open_stream(gateway, owner, deployment):
    client = await sync_to_async(make_client)()
    row, token = await sync_to_async(make_oauth_token)(owner, client, [deployment.endpoint_url])
    url = f"/mcp/{deployment.id}"
    session = await open_session(gateway, url, token)
    headers = {
        "Authorization": f"Bearer {token}",
        "Mcp-Session-Id": session,
        "MCP-Protocol-Version": "2025-06-18",
        "Accept": "text/event-stream",
    }
    # The in-process transport hands the answer over once the stream has ended.
    stream = asyncio.ensure_future(gateway.get(url, headers=headers))
    await asyncio.sleep(0.5)
    assert not stream.done()
    await sync_to_async(row.delete)()  # how django-oauth-toolkit revokes an access token

    ended, _ = await asyncio.wait({stream}, timeout=3 * access.ACCESS_CACHE_SECONDS)
    if not ended:
        stream.cancel()
    assert ended, "the stream outlived its revoked token"
    assert stream.result().status_code == 200

    after = await gateway.post(url, json=TOOLS_LIST, headers=headers)
    assert after.status_code == 401
