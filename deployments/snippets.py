"""Ready-to-paste client configurations for a deployment's endpoint.

Each is what that client's documentation asks for, for a remote Streamable HTTP server with a
bearer token: Claude Code's `claude mcp add`, Cursor's and VS Code's `mcp.json` shapes, and
Claude Desktop through `mcp-remote` (its own connectors need OAuth). The token is the real one
only on the page that shows it once; everywhere else a placeholder stands in.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

TOKEN_PLACEHOLDER = "YOUR_TOKEN"  # noqa: S105 - a placeholder, not a secret


@dataclass(frozen=True)
class Snippet:
    client: str
    where: str
    text: str


def client_snippets(name: str, url: str, token: str = "") -> list[Snippet]:
    bearer = f"Bearer {token or TOKEN_PLACEHOLDER}"
    claude_code = shlex.join(
        ["claude", "mcp", "add", "--transport", "http", name, url, "--header",
         f"Authorization: {bearer}"]
    )  # fmt: skip
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
        Snippet("Claude Code", "Run in a terminal", claude_code),
        Snippet("Cursor", "~/.cursor/mcp.json", json.dumps(cursor, indent=2)),
        Snippet("VS Code", ".vscode/mcp.json", json.dumps(vscode, indent=2)),
        Snippet(
            "Claude Desktop", "claude_desktop_config.json (needs Node.js)",
            json.dumps(desktop, indent=2),
        ),
    ]  # fmt: skip
