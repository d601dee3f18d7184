"""The whole analysis with its introspection layer: real reference servers from the corpus,
downloaded from their registries and started in the sandbox (bare where the machine cannot
sandbox), list their real tools into the server.json's `_meta`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from analysis import services
from analysis.corpus.fixtures import load_corpus, served
from analysis.serverjson import META_KEY
from deployments.runtimes import sandbox

pytestmark = [pytest.mark.slow, pytest.mark.django_db]
SERVERS = ("modelcontextprotocol-server-everything", "mcp-server-time")


@pytest.fixture(scope="module")
def standins() -> Iterator[None]:
    with served(entry for entry in load_corpus() if entry.slug in SERVERS):
        yield


@pytest.fixture(autouse=True)
def runtime(settings, tmp_path_factory) -> None:
    settings.DATA_DIR = tmp_path_factory.mktemp("analysis-introspection")
    if not sandbox.check().enabled:  # no root or no sandbox tools here: run the servers bare
        settings.UNSAFE_NO_SANDBOX = True


def introspected(url: str) -> dict:
    document, _ = services.analyse(url, services.Options(use_claude=False, introspect=True))
    return document["_meta"][META_KEY]["tools"]


def test_server_everything_lists_its_real_tools_resources_and_prompts(standins):
    tools = introspected("https://github.com/modelcontextprotocol/servers/tree/main/src/everything")

    assert tools["verified"] is True, tools.get("error")
    assert tools["serverInfo"]["name"] == "mcp-servers/everything"
    names = {tool["name"] for tool in tools["tools"]}
    assert {"echo", "get-sum", "get-env"} <= names
    assert tools["resources"] and tools["prompts"]


def test_mcp_server_time_lists_its_two_tools(standins):
    tools = introspected("https://github.com/modelcontextprotocol/servers/tree/main/src/time")

    assert tools["verified"] is True, tools.get("error")
    assert [tool["name"] for tool in tools["tools"]] == ["get_current_time", "convert_time"]
    assert tools["resources"] == [] and tools["prompts"] == []
