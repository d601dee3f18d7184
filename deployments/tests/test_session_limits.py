"""Session caps and reaping on supervised bridges: abandoned sessions never pile up."""

from __future__ import annotations

import time

import httpx
import pytest

from deployments.runtimes.base import PackageError
from deployments.runtimes.local import session_limits
from deployments.tests.conftest import bridge_family, deploy_fixture_server, endpoint_of

pytestmark = pytest.mark.slow
ACCEPT = "application/json, text/event-stream"


def initialize(http: httpx.Client, index: int) -> httpx.Response:
    return http.post(
        "http://bridge/mcp",
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": f"abandoner-{index}", "version": "1"},
            },
        },
        headers={"Accept": ACCEPT},
    )


def bridge_client(deployment) -> httpx.Client:
    endpoint = endpoint_of(deployment)
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=endpoint.unix_socket),
        headers=endpoint.headers,
        timeout=60,
    )


def test_200_abandoned_sessions_are_reaped_and_processes_return_to_baseline(supervisor, owner):
    deployment, _ = deploy_fixture_server(
        owner, runtime_settings={"max_sessions": 50, "session_idle_timeout_seconds": 3}
    )
    supervisor.wait_for_status(deployment, "running")
    baseline = {p.pid for p in bridge_family(deployment)}
    with bridge_client(deployment) as http:
        sessions = {initialize(http, i).headers["mcp-session-id"] for i in range(200)}
        assert len(sessions) == 200
        assert http.get("http://bridge/healthz").json()["sessions"] <= 50
        deadline = time.monotonic() + 60
        while http.get("http://bridge/healthz").json()["sessions"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert http.get("http://bridge/healthz").json()["sessions"] == 0
    assert {p.pid for p in bridge_family(deployment)} == baseline


def test_an_isolated_deployment_at_its_cap_refuses_the_next_session(supervisor, owner):
    deployment, _ = deploy_fixture_server(
        owner, process_model="isolated", runtime_settings={"max_sessions": 2}
    )
    supervisor.wait_for_status(deployment, "running")
    with bridge_client(deployment) as http:
        first, second = initialize(http, 1), initialize(http, 2)
        assert first.status_code == second.status_code == 200
        refused = initialize(http, 3)
        assert refused.status_code == 503
        assert "session" in refused.json()["error"]["message"].lower()
        http.delete(
            "http://bridge/mcp", headers={"Mcp-Session-Id": first.headers["mcp-session-id"]}
        )
        assert initialize(http, 4).status_code == 200


@pytest.mark.parametrize(
    "runtime_settings",
    [{"max_sessions": 0}, {"max_sessions": "ten"}, {"session_idle_timeout_seconds": -1}],
)
def test_bad_session_settings_are_refused_with_a_reason(owner, runtime_settings):
    deployment, _ = deploy_fixture_server(owner, runtime_settings=runtime_settings)
    with pytest.raises(PackageError, match="must be"):
        session_limits(deployment)


def test_isolated_deployments_get_a_lower_default_cap(owner, settings):
    settings.LOCAL_ISOLATED_MAX_SESSIONS = 7
    deployment, _ = deploy_fixture_server(owner, process_model="isolated")
    assert session_limits(deployment)[:2] == ["--max-sessions", "7"]
