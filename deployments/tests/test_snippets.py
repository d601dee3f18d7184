"""Client configurations on the deployment page: each in its client's documented shape; OAuth
connectors get the URL alone, the others the real token only on the page that shows it once."""

from __future__ import annotations

import json
import shlex

import pytest

from catwalk.testing import make_deployment
from deployments.snippets import TOKEN_PLACEHOLDER, client_snippets

URL = "https://catwalk.example/mcp/0d9c7a52-0000-4000-8000-000000000001"


CONNECTORS = ("Claude (claude.ai and Claude Desktop)", "ChatGPT")


def by_client(token: str = "") -> dict[str, str]:
    return {snippet.client: snippet.text for snippet in client_snippets("weather", URL, token)}


def notes() -> dict[str, str]:
    return {snippet.client: snippet.note for snippet in client_snippets("weather", URL)}


def test_claude_and_chatgpt_connectors_get_the_url_alone_even_when_a_token_is_shown():
    snippets = by_client("cwk_secret")

    assert [snippets[client] for client in CONNECTORS] == [URL, URL]


def test_the_connectors_say_where_they_are_added_and_that_they_sign_in_with_oauth():
    where = {snippet.client: snippet.where for snippet in client_snippets("weather", URL)}

    assert where[CONNECTORS[0]] == "Customize → Connectors → + → Add custom connector"
    assert "Settings → Connectors" in notes()[CONNECTORS[0]]  # where older versions keep them
    assert where["ChatGPT"] == "Settings → Apps → Create app (developer mode)"
    assert "Settings → Apps → Advanced settings" in notes()["ChatGPT"]
    assert all("OAuth" in notes()[client] for client in CONNECTORS)


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


def test_claude_code_also_offers_to_sign_in_with_oauth_instead_of_a_token():
    assert (
        f"claude mcp add --transport http weather {URL}, then /mcp in a Claude Code session"
        in notes()["Claude Code"]
    )


def test_claude_desktop_with_a_token_goes_through_mcp_remote_with_the_header_in_its_environment():
    desktop = by_client("cwk_secret")["Claude Desktop with a token"]
    server = json.loads(desktop)["mcpServers"]["weather"]

    assert server["command"] == "npx"
    assert server["args"] == ["-y", "mcp-remote", URL, "--header", "Authorization:${AUTH_HEADER}"]
    assert server["env"] == {"AUTH_HEADER": "Bearer cwk_secret"}


def test_without_a_token_every_header_snippet_has_the_placeholder():
    header_based = {c: text for c, text in by_client().items() if c not in CONNECTORS}

    assert len(header_based) == 4
    assert all(TOKEN_PLACEHOLDER in text for text in header_based.values())


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
    assert "Customize → Connectors → + → Add custom connector" in second
