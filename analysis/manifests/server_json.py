"""`server.json`: the author's own MCP Registry entry, the most authoritative manifest."""

from __future__ import annotations

import json

from analysis.checkout import Checkout
from analysis.findings import MANIFEST, Findings, PackageCandidate, Source
from analysis.manifests.common import ManifestError, text_value

FILE = "server.json"


def read(checkout: Checkout, findings: Findings) -> None:
    path = checkout.top_level(FILE)
    if path is None:
        return
    try:
        document = json.loads(checkout.text(path) or "")
    except ValueError as exc:
        raise ManifestError(f"not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ManifestError("not a JSON object")
    source = Source(MANIFEST, path)
    findings.name = findings.name or text_value(document.get("name"), 200)
    findings.title = findings.title or text_value(document.get("title"), 200)
    findings.describe(text_value(document.get("description")), source)
    findings.version = findings.version or text_value(document.get("version"), 100)
    packages = document.get("packages")
    for index, package in enumerate(packages if isinstance(packages, list) else []):
        if not isinstance(package, dict):
            continue
        where = Source(MANIFEST, path, f"packages[{index}]")
        registry = text_value(package.get("registryType"), 20).lower()
        identifier = text_value(package.get("identifier"), 300)
        transport = package.get("transport")
        if registry and identifier:
            findings.packages.append(
                PackageCandidate(
                    registry=registry,
                    identifier=identifier,
                    version=text_value(package.get("version"), 100),
                    source=where,
                    transport=text_value((transport or {}).get("type"), 40)
                    if isinstance(transport, dict)
                    else "",
                    runtime_hint=text_value(package.get("runtimeHint"), 40),
                )
            )
        if isinstance(transport, dict) and transport.get("type"):
            findings.transport(text_value(transport["type"], 40), where)
        for variable in _objects(package.get("environmentVariables")):
            findings.variable(
                text_value(variable.get("name"), 128),
                where,
                **_input_facts(variable),
            )
        for argument in _objects(package.get("packageArguments")):
            name = text_value(argument.get("name") or argument.get("valueHint"), 200)
            if name:
                findings.argument(
                    name,
                    where,
                    positional=argument.get("type") == "positional",
                    **_input_facts(argument),
                )


def _objects(value: object) -> list[dict]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _input_facts(item: dict) -> dict:
    choices = item.get("choices")
    return {
        "description": text_value(item.get("description")),
        "required": item["isRequired"] if isinstance(item.get("isRequired"), bool) else None,
        "secret": item["isSecret"] if isinstance(item.get("isSecret"), bool) else None,
        "format": text_value(item.get("format"), 20) or None,
        "default": text_value(item.get("default"), 500) or None,
        "choices": [text_value(choice, 200) for choice in choices]
        if isinstance(choices, list)
        else None,
    }
