"""Repositories of every shape, built from source and deployed with `mcp_deploy --repo` on a
whole Catwalk (the supervisor and the gateway under uvicorn), serve the MCP SDK client through
the gateway with their access token."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import anyio
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from analysis.tests.github_standin import GitHubStandin
from analysis.tests.registry_standin import RegistryStandin
from deployments.tests.source_fixtures import publish
from mcpgateway.stack import Stack, free_port
from mcpgateway.tests.conftest import sdk_http_factory

pytestmark = pytest.mark.slow
SHAPES = {
    "plain-javascript": "https://github.com/acme/plain-javascript",
    "typescript-build": "https://github.com/acme/typescript-build",
    "pnpm-workspace": "https://github.com/acme/pnpm-workspace/tree/main/packages/server",
    "python-pyproject": "https://github.com/acme/python-pyproject",
    "python-requirements": "https://github.com/acme/python-requirements",
}


@pytest.mark.parametrize("shape", SHAPES)
def test_a_source_deployment_serves_sdk_clients_through_the_gateway(shape):
    github, registry = GitHubStandin(), RegistryStandin()
    publish(github, shape)
    data_dir = Path(tempfile.mkdtemp(prefix="catwalk-source-"))
    port = free_port()
    stack = Stack(data_dir, "uvicorn", port)
    stack.env.update(
        {
            "GITHUB_API_URL": github.api_url,
            "GITHUB_TOKEN": "",
            "NPM_REGISTRY_URL": registry.npm_url,
            "PYPI_URL": registry.pypi_url,
        }
    )
    try:
        deployed = stack.start(["--repo", SHAPES[shape]])
        url = f"http://127.0.0.1:{port}/mcp/{deployed['id']}"

        async def use() -> tuple[set[str], str]:
            factory = sdk_http_factory({"Authorization": f"Bearer {deployed['token']}"})
            async with (
                factory() as http,
                Client(streamable_http_client(url, http_client=http)) as client,
            ):
                tools = {tool.name for tool in (await client.list_tools()).tools}
                echoed = await client.call_tool("echo", {"message": "from source"})
                return tools, echoed.content[0].text

        tools, echoed = anyio.run(use)
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        github.close()
        registry.close()

    assert tools == {"echo", "add"}
    assert "from source" in echoed
