"""Client configurations on the deployment page: each in its client's documented shape, with the
real token only on the page that shows it once."""

from __future__ import annotations

import json
import shlex

import pytest

from catwalk.testing import make_deployment
from deployments.snippets import TOKEN_PLACEHOLDER, client_snippets

URL = "https://catwalk.example/mcp/0d9c7a52-0000-4000-8000-000000000001"


def by_client(token: str = "") -> dict[str, str]:
    return {snippet.client: snippet.text for snippet in client_snippets("weather", URL, token)}


def test_claude_code_gets_its_add_command_with_the_header():
    command = shlex.split(by_client("cwk_secret")["Claude Code"])

    assert command == [
        "claude", "mcp", "add", "--transport", "http", "weather", URL,
        "--header", "Authorization: Bearer cwk_secret",
    ]  # fmt: skip


def test_cursor_and_vs_code_get_their_mcp_json_shapes():
    snippets = by_client("cwk_secret")
    headers = {"Authorization": "Bearer cwk_secret"}

    assert json.loads(snippets["Cursor"]) == {
        "mcpServers": {"weather": {"url": URL, "headers": headers}}
    }
    assert json.loads(snippets["VS Code"]) == {
        "servers": {"weather": {"type": "http", "url": URL, "headers": headers}}
    }


def test_claude_desktop_goes_through_mcp_remote_with_the_header_in_its_environment():
    server = json.loads(by_client("cwk_secret")["Claude Desktop"])["mcpServers"]["weather"]

    assert server["command"] == "npx"
    assert server["args"] == ["-y", "mcp-remote", URL, "--header", "Authorization:${AUTH_HEADER}"]
    assert server["env"] == {"AUTH_HEADER": "Bearer cwk_secret"}


def test_without_a_token_every_snippet_has_the_placeholder():
    assert all(TOKEN_PLACEHOLDER in text for text in by_client().values())


@pytest.mark.django_db
def test_the_page_shows_the_real_token_in_the_snippets_only_once(owner, owner_client):
    deployment = make_deployment(owner, name="weather")
    session = owner_client.session
    session[f"deployments:first-token:{deployment.pk}"] = "cwk_shown_once"
    session.save()

    first = owner_client.get(f"/deployments/{deployment.pk}/").content.decode()
    second = owner_client.get(f"/deployments/{deployment.pk}/").content.decode()

    assert "Authorization: Bearer cwk_shown_once" in first
    assert "cwk_shown_once" not in second
    assert f"Bearer {TOKEN_PLACEHOLDER}" in second
    assert "mcp-remote" in second and "claude mcp add" in second
