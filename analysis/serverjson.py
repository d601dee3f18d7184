"""The output document: a `server.json` in the official MCP Registry format (schema 2025-12-11),
with Catwalk's own findings under the `dev.catwalk/analysis` key of `_meta`.

`build` decides what goes in: the package, its environment variables and arguments, from the
findings of every layer; `validate` checks a document against the registry format's rules
before anything stores or shows it.
"""

from __future__ import annotations

import re
from typing import Any

from analysis.findings import (
    CLAUDE,
    DOCUMENTATION,
    ENV_NAME,
    FORMATS,
    MANIFEST,
    STATIC,
    Findings,
    PackageCandidate,
    Setting,
    Source,
    plain_executables,
)
from analysis.manifests.common import looks_secret
from analysis.scanners.environment import BUNDLED, is_ambient, is_generic

SCHEMA = "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json"
META_KEY = "dev.catwalk/analysis"
DESCRIPTION_MAX = 100
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9.-]+/[a-zA-Z0-9._-]+$")
RUNTIME_HINTS = {"npm": "npx", "pypi": "uvx", "oci": "docker"}
TRANSPORTS = ("stdio", "streamable-http", "sse")
SERVER_MANIFESTS = {"server.json", "smithery.yaml", "smithery.yml"}
# Settings of a server's own inbound HTTP authorization (token issuers, key sets, audiences,
# protected-resource URLs): Catwalk authenticates every caller itself and runs the server
# behind its gateway, so these are not for a user to set.
INBOUND_AUTHORIZATION = re.compile(
    r"(?:^|_)(?:ISSUER|JWKS|AUDIENCE|OIDC|INTROSPECT|INTROSPECTION|AUD|RESOURCE_URL|"
    r"AUTH_SERVER_URL|CHALLENGE_TOKEN|ASSERTION_KEY)(?:_|$)"
)


class InvalidDocument(ValueError):
    """A server.json that does not follow the registry format; the message says where."""


def registry_name(owner: str, repository: str, subdirectory: str) -> str:
    """The registry's reverse-DNS name for a GitHub-hosted server (`io.github.OWNER/NAME`)."""
    name = repository
    if subdirectory:
        name = f"{repository}-{subdirectory.rstrip('/').rsplit('/', 1)[-1]}"
    name = re.sub(r"[^a-zA-Z0-9._-]", "-", name)[:100]
    return f"io.github.{owner}/{name}"


def choose_package(findings: Findings) -> PackageCandidate | None:
    """The package the repository publishes: server.json's first, then package.json, then the
    Python project; a manifest's candidate with a version beats one without."""
    ranked = sorted(
        enumerate(findings.packages),
        key=lambda item: (
            item[1].registry not in ("npm", "pypi"),
            item[1].source.file.lower() != "server.json",
            not item[1].version,
            item[0],
        ),
    )
    return ranked[0][1] if ranked else None


def transport_of(findings: Findings, package: PackageCandidate | None) -> str:
    """stdio whenever the server offers it (the bridge runs it as a child); else what it has."""
    if package and package.transport in TRANSPORTS:
        return package.transport
    if "stdio" in findings.transports or not findings.transports:
        return "stdio"
    return "streamable-http" if "streamable-http" in findings.transports else "sse"


def select_variables(findings: Findings) -> list[Setting]:
    """The variables a user of the server may set, in a stable order: declared ones first.

    Declared in a manifest: always. Read by the server's own code: yes (the scan has already
    dropped names every program reads and dependencies' code). Read only inside a bundle that
    does not say which module is whose: only when the documentation also names it. Named only
    by the README: when it shares its prefix with variables that are kept (a family the server
    documents, like PLAYWRIGHT_MCP_*).
    """
    kept: list[Setting] = []
    for setting in findings.variables.values():
        layers = setting.layers
        if not _declared_by_server_json(setting) and (
            is_generic(setting.name) or INBOUND_AUTHORIZATION.search(setting.name)
        ):
            continue
        if MANIFEST in layers or CLAUDE in layers:
            kept.append(setting)
        elif STATIC in layers:
            own = [
                s
                for s in setting.sources
                if s.layer == STATIC and not s.detail.endswith(f"({BUNDLED})")
            ]
            if own or setting.name in findings.mentioned:
                kept.append(setting)
    prefixes = _families([setting.name for setting in kept]) | _package_prefixes(findings)
    names = {setting.name for setting in kept}
    for name, sources in findings.mentioned.items():
        if name in names or is_generic(name) or is_ambient(name):
            continue
        if not any(name.startswith(prefix) for prefix in prefixes):
            continue
        if any(s.layer == DOCUMENTATION and s.file.lower().startswith("readme") for s in sources):
            kept.append(Setting(name=name, sources=list(sources)))
    order = {MANIFEST: 0, CLAUDE: 1, STATIC: 2, DOCUMENTATION: 3}
    return sorted(
        kept, key=lambda s: min((order.get(source.layer, 9) for source in s.sources), default=9)
    )


def _declared_by_server_json(setting: Setting) -> bool:
    return any(source.file.lower() in SERVER_MANIFESTS for source in setting.sources)


def excluded_variables(findings: Findings, kept: list[Setting]) -> list[dict[str, str]]:
    """What the code or docs name but the document leaves out, and why, for the page to show."""
    names = {setting.name for setting in kept}
    left_out = []
    for setting in findings.variables.values():
        if setting.name in names:
            continue
        if INBOUND_AUTHORIZATION.search(setting.name):
            reason = "configures the server's own HTTP authorization, which Catwalk provides"
        elif is_generic(setting.name) or is_ambient(setting.name):
            reason = "a variable of the runtime or the host, not a setting of this server"
        else:
            reason = "read only inside bundled code, and not documented"
        left_out.append({"name": setting.name, "reason": reason})
    return left_out[:200]


def _families(names: list[str]) -> set[str]:
    """Prefixes (two words, `PLAYWRIGHT_MCP_`) that at least two kept names share."""
    counts: dict[str, int] = {}
    for name in names:
        parts = name.split("_")
        if len(parts) >= 3:
            prefix = "_".join(parts[:2]) + "_"
            counts[prefix] = counts.get(prefix, 0) + 1
    return {prefix for prefix, count in counts.items() if count >= 2 and len(prefix) >= 6}


def _package_prefixes(findings: Findings) -> set[str]:
    """The package's own first two words as a family (`@playwright/mcp` → `PLAYWRIGHT_MCP_`)."""
    prefixes = set()
    for package in findings.packages:
        parts = [part for part in re.split(r"[^A-Za-z0-9]+", package.identifier.upper()) if part]
        prefix = "_".join(parts[:2]) + "_"
        if len(parts) >= 2 and len(prefix) >= 6:
            prefixes.add(prefix)
    return prefixes


def environment_variable(setting: Setting) -> dict[str, Any]:
    secret = setting.secret if setting.secret is not None else looks_secret(setting.name)
    entry: dict[str, Any] = {
        "name": setting.name,
        "description": setting.description or _describe(setting),
        "isRequired": bool(setting.required),
        "isSecret": bool(secret),
    }
    if setting.format in FORMATS and setting.format != "string":
        entry["format"] = setting.format
    if setting.default is not None and not secret:
        entry["default"] = setting.default
    if setting.choices:
        entry["choices"] = setting.choices[:50]
    return entry


def package_argument(setting: Setting) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": "positional" if setting.positional else "named",
        "description": setting.description or "",
        "isRequired": bool(setting.required),
    }
    if setting.positional:
        entry["valueHint"] = setting.name
    else:
        entry["name"] = setting.name
    if setting.repeated:
        entry["isRepeated"] = True
    if setting.default is not None:
        entry["default"] = setting.default
    if setting.choices:
        entry["choices"] = setting.choices[:50]
    return entry


def _describe(setting: Setting) -> str:
    first = setting.sources[0] if setting.sources else Source(STATIC)
    where = f" in {first.file}" if first.file else ""
    return {
        MANIFEST: f"Declared{where}.",
        STATIC: f"Read by the server's code{where}.",
        DOCUMENTATION: f"Named by the documentation{where}.",
    }.get(first.layer, "")


def sources_by_name(settings: list[Setting]) -> dict[str, list[dict[str, str]]]:
    return {
        setting.name: [source.as_dict() for source in setting.sources[:10]] for setting in settings
    }


def short_description(text: str) -> str:
    text = " ".join(text.split())
    if len(text) <= DESCRIPTION_MAX:
        return text
    cut = text[: DESCRIPTION_MAX - 1].rsplit(" ", 1)[0]
    return cut.rstrip(",.;:") + "…"


def meta(document: dict[str, Any]) -> dict[str, Any]:
    return document.setdefault("_meta", {}).setdefault(META_KEY, {})


def package_of(document: dict[str, Any]) -> dict[str, Any] | None:
    packages = document.get("packages") or []
    return packages[0] if packages else None


def entry_command(document: dict[str, Any]) -> str:
    """The package's executable to run, where its name alone does not pick it: a Python
    project whose scripts do not include its own name, or an npm package with several bins
    none of which is named after it. Empty means "the package's default"."""
    package = package_of(document)
    executables = plain_executables(meta(document).get("package", {}).get("executables") or [])
    if not package or not executables:
        return ""
    own_name = package["identifier"].rsplit("/", 1)[-1]
    if own_name in executables or package["identifier"] in executables:
        return "" if package["registryType"] == "npm" else own_name
    if package["registryType"] == "npm" and len(executables) == 1:
        return ""
    return str(executables[0])


def validate(document: dict[str, Any]) -> None:
    """Raise InvalidDocument unless `document` follows the registry format's rules."""
    if not isinstance(document.get("name"), str) or not NAME_PATTERN.match(document["name"]):
        raise InvalidDocument("name must be reverse-DNS, like io.github.owner/server")
    description = document.get("description")
    if not isinstance(description, str) or not 1 <= len(description) <= DESCRIPTION_MAX:
        raise InvalidDocument(f"description must be 1 to {DESCRIPTION_MAX} characters")
    if not isinstance(document.get("version"), str) or not document["version"]:
        raise InvalidDocument("version is required")
    for index, package in enumerate(document.get("packages") or []):
        where = f"packages[{index}]"
        for key in ("registryType", "identifier", "transport"):
            if not package.get(key):
                raise InvalidDocument(f"{where}.{key} is required")
        if package["transport"].get("type") not in TRANSPORTS:
            raise InvalidDocument(f"{where}.transport.type must be one of {', '.join(TRANSPORTS)}")
        for variable in package.get("environmentVariables") or []:
            if not ENV_NAME.match(str(variable.get("name", ""))):
                raise InvalidDocument(f"{where}: {variable.get('name')!r} is not a variable name")
            if variable.get("format", "string") not in FORMATS:
                raise InvalidDocument(f"{where}: {variable['name']} has an unknown format")
        for argument in package.get("packageArguments") or []:
            if argument.get("type") not in ("named", "positional"):
                raise InvalidDocument(f"{where}: argument type must be named or positional")
            if argument["type"] == "named" and not argument.get("name"):
                raise InvalidDocument(f"{where}: a named argument needs a name")
