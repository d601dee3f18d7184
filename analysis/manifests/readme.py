"""The README: MCP client configuration blocks, and the variables its prose names.

`"mcpServers"` blocks (and VS Code's `"servers"`, Zed's `"context_servers"`) are the author's
own instructions for running the server: their `env` keys are the settings a user fills in, and
`command`/`args` name the package (`npx -y NAME@VERSION`, `uvx NAME`). Names that appear only in
prose or tables are kept as mentions, which corroborate what the code scan finds.
"""

from __future__ import annotations

import re

from analysis.checkout import Checkout
from analysis.findings import DOCUMENTATION, MANIFEST, Findings, Source
from analysis.manifests.common import loads_lenient, looks_secret, text_value

_FENCE = re.compile(
    r"^(?P<fence>```+|~~~+)[ \t]*(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$",
    re.DOTALL | re.MULTILINE,
)
CONFIG_KEYS = ("mcpServers", "servers", "context_servers", "mcp_servers")
# An environment-variable-looking word: upper case with an underscore, or a known suffix.
_MENTION = re.compile(r"(?<![A-Za-z0-9_$.-])([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)(?![A-Za-z0-9_(])")
MAX_BLOCKS = 200


def read(checkout: Checkout, findings: Findings) -> None:
    path = checkout.top_level("README.md", "README.markdown", "README.rst", "README.txt", "README")
    if path is None:
        return
    text = checkout.text(path) or ""
    for number, block in enumerate(_FENCE.finditer(text)):
        if number >= MAX_BLOCKS:
            break
        body = block.group("body")
        if not any(f'"{key}"' in body for key in CONFIG_KEYS):
            continue
        line = text.count("\n", 0, block.start()) + 1
        for server in _servers(body):
            _record(server, findings, Source(MANIFEST, path, f"mcpServers block, line {line}"))
    for number, line in enumerate(text.splitlines(), start=1):
        for name in _MENTION.findall(line):
            findings.mention(name, Source(DOCUMENTATION, path, f"line {number}"))


def _servers(body: str) -> list[dict]:
    try:
        document = loads_lenient(_enclose(body))
    except ValueError:
        return []
    found: list[dict] = []
    _collect(document, found, depth=0)
    return found


def _enclose(body: str) -> str:
    """README snippets often show `"mcpServers": {…}` without the outer braces."""
    stripped = body.strip()
    return stripped if stripped.startswith(("{", "[")) else "{" + stripped.rstrip(",") + "}"


def _collect(node: object, found: list[dict], depth: int) -> None:
    if depth > 6 or not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in CONFIG_KEYS and isinstance(value, dict):
            found.extend(entry for entry in value.values() if isinstance(entry, dict))
        else:
            _collect(value, found, depth + 1)


def _record(server: dict, findings: Findings, source: Source) -> None:
    command = text_value(server.get("command"), 300)
    args = [
        text_value(arg, 500)
        for arg in server.get("args") or []
        if isinstance(arg, (str, int, float))
    ]
    if (command or args) and len(findings.client_configs) < 50:
        findings.client_configs.append(
            {"command": command, "args": args, "source": source.as_dict()}
        )
    env = server.get("env")
    if not isinstance(env, dict):
        return
    is_docker = command.rsplit("/", 1)[-1] == "docker"
    for name in env:
        findings.variable(
            str(name),
            Source(MANIFEST, source.file, source.detail + (" (docker)" if is_docker else "")),
            secret=True if looks_secret(str(name)) else None,
        )
