"""How to connect each client to a deployment's endpoint, in the shape its documentation asks for.

Two kinds. Connectors that sign in with OAuth take the URL alone: Claude's custom connectors
(claude.ai and Claude Desktop share them) and ChatGPT's developer-mode apps. Both call the
endpoint from their vendor's cloud, so they work only when Catwalk is reachable from the internet
over HTTPS. The others send a token in a header: Claude Code's `claude mcp add`, Cursor's and VS
Code's `mcp.json` shapes, and Claude Desktop through `mcp-remote`, which runs on the user's own
machine and so also reaches a Catwalk that Anthropic's cloud cannot (a private network, a laptop).
The token is the real one only on the page that shows it once; everywhere else a placeholder
stands in.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

TOKEN_PLACEHOLDER = "YOUR_TOKEN"  # noqa: S105 - a placeholder, not a secret


@dataclass(frozen=True)
class Snippet:
    """`text` is what to paste (copied with one click); `where` says where it goes, and `note`,
    when there is one, what to do with it in a sentence or two."""

    client: str
    where: str
    text: str
    note: str = ""


def client_snippets(name: str, url: str, token: str = "") -> list[Snippet]:
    return [*_oauth_snippets(url), *_header_snippets(name, url, token)]


def _oauth_snippets(url: str) -> list[Snippet]:
    return [
        Snippet(
            "Claude (claude.ai and Claude Desktop)",
            "Customize → Connectors → + → Add custom connector",
            url,
            note=(
                "Give the connector a name, paste this URL as the server URL and add it, then "
                "press Connect: Catwalk asks you to sign in and allow access to this deployment "
                "(OAuth, no token to paste). Connectors added on claude.ai appear in Claude "
                "Desktop too; older versions of the apps keep them under Settings → Connectors."
            ),
        ),
        Snippet(
            "ChatGPT",
            "Settings → Apps → Create app (developer mode)",
            url,
            note=(
                "Turn on developer mode first, under Settings → Apps → Advanced settings (in a "
                "workspace, an admin allows it under Workspace settings → Permissions & roles → "
                "Connected data). Then create an app with this URL as the MCP server URL and "
                "OAuth as its authentication, confirm that you trust it, and allow access when "
                "Catwalk asks."
            ),
        ),
    ]


def _header_snippets(name: str, url: str, token: str = "") -> list[Snippet]:
    bearer = f"Bearer {token or TOKEN_PLACEHOLDER}"
    claude_code = shlex.join(
        ["claude", "mcp", "add", "--transport", "http", name, url, "--header",
         f"Authorization: {bearer}"]
    )  # fmt: skip
    sign_in_instead = shlex.join(["claude", "mcp", "add", "--transport", "http", name, url])
    headers = {"Authorization": bearer}
    cursor = {"mcpServers": {name: {"url": url, "headers": headers}}}
    vscode = {"servers": {name: {"type": "http", "url": url, "headers": headers}}}
    # mcp-remote's documented form: the header value through an environment variable, so no
    # argument holds a space (which some launchers split).
    desktop = {
        "mcpServers": {
            name: {
                "command": "npx",
                "args": ["-y", "mcp-remote", url, "--header", "Authorization:${AUTH_HEADER}"],
                "env": {"AUTH_HEADER": bearer},
            }
        }
    }
    return [
        Snippet(
            "Claude Code", "Run in a terminal", claude_code,
            note=(
                f"Or sign in with OAuth instead of pasting a token: run {sign_in_instead}, "
                "then /mcp in a Claude Code session and choose the server to authenticate."
            ),
        ),
        Snippet("Cursor", "~/.cursor/mcp.json", json.dumps(cursor, indent=2)),
        Snippet("VS Code", ".vscode/mcp.json", json.dumps(vscode, indent=2)),
        Snippet(
            "Claude Desktop with a token", "claude_desktop_config.json (needs Node.js)",
            json.dumps(desktop, indent=2),
            note=(
                "mcp-remote runs on your computer, so this works where the connector above "
                "cannot: when Catwalk is not reachable from the internet."
            ),
        ),
    ]  # fmt: skip
