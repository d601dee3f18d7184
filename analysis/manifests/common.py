"""Helpers shared by the manifest readers."""

from __future__ import annotations

import json
import re
from typing import Any

SECRET_WORDS = re.compile(
    r"(?:^|_)(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|PASS|PAT|CREDENTIALS?|PRIVATE_KEY|"
    r"API_?KEY|ACCESS_?KEY|CLIENT_SECRET|COOKIE|SESSION_?TOKEN)(?:_|$)",
    re.IGNORECASE,
)
# Names that mention a secret but hold something else: a switch (ENABLE_TOKEN_PASSTHROUGH), a
# location (…_KEY_PATH, …_TOKEN_URL) or an identifier (…_KEY_ID).
NOT_SECRET = re.compile(
    r"^(?:ENABLE|DISABLE|USE|IGNORE|ALLOW|SKIP|NO)_|"
    r"_(?:ID|URL|URI|PATH|FILE|DIR|ENDPOINT|ENABLE|ENABLED|DISABLED|PASSTHROUGH|HEADER|TTL|"
    r"TIMEOUT|EXPIRY|EXPIRES|TYPE|MODE|NAME|PREFIX|LIMIT|COUNT|BUDGET)$"
)


class ManifestError(ValueError):
    """A manifest the repository has but that cannot be read; the message says which."""


def looks_secret(name: str) -> bool:
    return bool(SECRET_WORDS.search(name)) and not NOT_SECRET.search(name.upper())


def loads_lenient(text: str) -> Any:
    """JSON as READMEs write it: comments and trailing commas allowed (JSONC)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    cleaned = _strip_comments(text)
    cleaned = re.sub(r",(\s*[}\]])", r"\1", cleaned)
    return json.loads(cleaned)


def _strip_comments(text: str) -> str:
    """Drop // and /* */ comments outside strings."""
    out: list[str] = []
    index, length = 0, len(text)
    in_string = False
    while index < length:
        char = text[index]
        if in_string:
            out.append(char)
            if char == "\\" and index + 1 < length:
                out.append(text[index + 1])
                index += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            out.append(char)
        elif text.startswith("//", index):
            newline = text.find("\n", index)
            index = length if newline < 0 else newline
            continue
        elif text.startswith("/*", index):
            end = text.find("*/", index + 2)
            index = length if end < 0 else end + 2
            continue
        else:
            out.append(char)
        index += 1
    return "".join(out)


def text_value(value: object, limit: int = 2_000) -> str:
    """A manifest's scalar as a short string ('' for anything else)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return " ".join(str(value).split())[:limit]
    return ""


def json_format(schema_type: object) -> str | None:
    """A JSON-schema type as a server.json input format."""
    return {"number": "number", "integer": "number", "boolean": "boolean", "string": "string"}.get(
        schema_type if isinstance(schema_type, str) else ""
    )
