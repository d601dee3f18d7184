"""`smithery.yaml`: a config schema and the function mapping it onto the server's environment.

The `commandFunction` is JavaScript; it is never run. Its `env` object literal is read for
`NAME: config.property` pairs, which tie each environment variable to its schema property
(description, type, required, `format: password` for secrets).
"""

from __future__ import annotations

import re

import yaml

from analysis.checkout import Checkout
from analysis.findings import MANIFEST, Findings, Source
from analysis.manifests.common import ManifestError, json_format, text_value

_ENV_BLOCK = re.compile(r"\benv\s*[:=]\s*\{(?P<body>.*?)\}", re.DOTALL)
_ENV_PAIR = re.compile(
    r"['\"]?(?P<name>[A-Z][A-Z0-9_]*)['\"]?\s*:\s*(?:String\()?\s*config\s*\??(?:\.\s*(?P<prop>\w+)|\[\s*['\"](?P<quoted>[^'\"]+)['\"]\s*\])"
)
_ENV_KEY = re.compile(r"['\"]?(?P<name>[A-Z][A-Z0-9_]{2,})['\"]?\s*:")


def read(checkout: Checkout, findings: Findings) -> None:
    path = checkout.top_level("smithery.yaml", "smithery.yml")
    if path is None:
        return
    try:
        document = yaml.safe_load(checkout.text(path) or "")
    except yaml.YAMLError as exc:
        raise ManifestError(f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(document, dict):
        raise ManifestError("not a YAML mapping")
    start = document.get("startCommand")
    if not isinstance(start, dict):
        return
    kind = text_value(start.get("type"), 40)
    if kind in {"stdio", "http", "streamable-http"}:
        findings.transport(
            "stdio" if kind == "stdio" else "streamable-http", Source(MANIFEST, path)
        )
    schema = start.get("configSchema") if isinstance(start.get("configSchema"), dict) else {}
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = {str(name) for name in schema.get("required") or [] if isinstance(name, str)}
    function = start.get("commandFunction") if isinstance(start.get("commandFunction"), str) else ""
    block = _ENV_BLOCK.search(function)
    if not block:
        return
    body = block.group("body")
    mapped: set[str] = set()
    for match in _ENV_PAIR.finditer(body):
        name = match.group("name")
        prop = match.group("prop") or match.group("quoted")
        mapped.add(name)
        spec = properties.get(prop) if isinstance(properties.get(prop), dict) else {}
        default = spec.get("default")
        findings.variable(
            name,
            Source(MANIFEST, path, f"configSchema.{prop}"),
            description=text_value(spec.get("description")),
            required=prop in required,
            secret=True if spec.get("format") == "password" else None,
            format=json_format(spec.get("type")),
            default=text_value(default, 500) if default is not None else None,
            choices=[text_value(item, 200) for item in spec["enum"]]
            if isinstance(spec.get("enum"), list)
            else None,
        )
    for match in _ENV_KEY.finditer(body):
        if match.group("name") not in mapped:
            findings.variable(match.group("name"), Source(MANIFEST, path, "commandFunction env"))
