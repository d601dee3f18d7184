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
    r"^[ \t]*(?P<fence>```+|~~~+)[ \t]*(?P<info>[^\n`]*)\n(?P<body>.*?)^[ \t]*(?P=fence)[ \t]*$",
    re.DOTALL | re.MULTILINE,
)
CONFIG_KEYS = ("mcpServers", "servers", "context_servers", "mcp_servers")
# An environment-variable-looking word: upper case with an underscore, or a known suffix.
_MENTION = re.compile(r"(?<![A-Za-z0-9_$.-])([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)(?![A-Za-z0-9_(])")
MAX_BLOCKS = 200
# A row of an options table: `| --port <port> | what it does |`.
_OPTION_ROW = re.compile(r"^\s*\|\s*`?(?P<name>--[a-z0-9][a-z0-9-]*)[^|]*\|\s*(?P<help>[^|]*)")


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
        option = _OPTION_ROW.match(line)
        if option:
            findings.argument(
                option.group("name"),
                Source(DOCUMENTATION, path, f"options table, line {number}"),
                description=" ".join(re.sub(r"<[^>]+>", " ", option.group("help")).split())[:500],
                required=False,
            )


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
    if command.rsplit("/", 1)[-1] in LAUNCHERS:
        _record_arguments(command.rsplit("/", 1)[-1], args, findings, source)
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


# Launchers whose first non-option argument is the package; what follows is the server's own.
LAUNCHERS = {"npx", "uvx", "pipx", "bunx", "pnpx"}
_LAUNCHER_OPTIONS_WITH_VALUE = {"--from", "--with", "-p", "--package", "--python"}


def _record_arguments(launcher: str, args: list[str], findings: Findings, source: Source) -> None:
    """The server's own arguments in `npx -y PKG ARGS…` / `uvx [--from X] PKG ARGS…`."""
    index = 0
    while index < len(args) and args[index].startswith("-"):
        index += 2 if args[index] in _LAUNCHER_OPTIONS_WITH_VALUE else 1
    rest = args[index + 1 :]
    values: list[str] = []
    index = 0
    while index < len(rest):
        token = rest[index]
        if token.startswith("--") and len(token) > 2:
            name, _, inline = token.partition("=")
            takes_value = bool(inline) or (
                index + 1 < len(rest) and not rest[index + 1].startswith("-")
            )
            example = inline or (rest[index + 1] if takes_value else "")
            findings.argument(
                name,
                source,
                description=f"Given in the README's example as {name} {example}".rstrip() + ".",
                required=False,
            )
            index += 2 if takes_value and not inline else 1
            continue
        if not token.startswith("-"):
            values.append(token)
        index += 1
    if values and all(_looks_like_path(value) for value in values):
        findings.argument(
            "path",
            source,
            positional=True,
            repeated=len(values) > 1,
            required=True,
            description="One or more paths; the README's example gives "
            + ", ".join(repr(value) for value in values[:3])
            + ".",
        )
        return
    for position, value in enumerate(values, start=1):
        findings.argument(
            f"argument {position}",
            source,
            positional=True,
            required=True,
            description=f"Positional argument; the README's example gives {value!r}.",
        )


def _looks_like_path(value: str) -> bool:
    if "://" in value:
        return False  # a connection URL, not a file
    return value.startswith(("/", "~", "./", "../", "${")) or "/" in value or "\\" in value
