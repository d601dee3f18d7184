"""The static part of an analysis: from an extracted folder to a draft server.json.

No network and no database: layer 1 (manifests) and layer 2 (source scans) run over the
folder, and `build` assembles the document. The services module adds the registry check,
Claude and introspection around it, and stores the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from analysis import recipe
from analysis.checkout import Checkout
from analysis.findings import Findings
from analysis.manifests import read_manifests
from analysis.scanners import arguments, environment, transport
from analysis.serverjson import (
    META_KEY,
    SCHEMA,
    choose_package,
    environment_variable,
    excluded_variables,
    package_argument,
    registry_name,
    select_variables,
    short_description,
    sources_by_name,
    transport_of,
)

# Bumped whenever a change to the analysis could change its result: cached analyses of an
# older version are not reused.
ANALYSER_VERSION = "2"
README_EVIDENCE_CHARS = 30_000


@dataclass
class Draft:
    document: dict[str, Any]
    findings: Findings
    # Untrusted repository text for the Claude layer: README and the lines reading each variable.
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Origin:
    owner: str
    name: str
    subdirectory: str = ""
    commit: str = ""
    ref: str = ""


def read_manifests_step(checkout: Checkout) -> Findings:
    findings = Findings()
    read_manifests(checkout, findings)
    return findings


def scan_step(checkout: Checkout, findings: Findings) -> dict[str, list[str]]:
    evidence = environment.scan(checkout, findings)
    transport.scan(checkout, findings)
    arguments.scan(checkout, findings)
    return evidence


def build(
    checkout: Checkout,
    findings: Findings,
    origin: Origin,
    evidence: dict,
    root: Checkout | None = None,
) -> Draft:
    """The draft document. `root` is the whole repository when `checkout` is a subfolder."""
    package = choose_package(findings)
    variables = select_variables(findings)
    argument_settings = list(findings.arguments.values())
    repository: dict[str, Any] = {
        "url": f"https://github.com/{origin.owner}/{origin.name}",
        "source": "github",
    }
    if origin.subdirectory:
        repository["subfolder"] = origin.subdirectory
    name = findings.name if findings.name and "/" in findings.name else ""
    document: dict[str, Any] = {
        "$schema": SCHEMA,
        "name": name or registry_name(origin.owner, origin.name, origin.subdirectory),
        "description": short_description(findings.description)
        or f"MCP server from {origin.owner}/{origin.name}",
        "version": (package.version if package and package.version else findings.version)
        or "0.0.0",
        "repository": repository,
        "packages": [],
    }
    if findings.title:
        document["title"] = findings.title
    chosen_transport = transport_of(findings, package)
    source_recipe = recipe.derive(
        root or checkout, origin.subdirectory if root else "", findings, chosen_transport
    )
    if package and package.registry in ("npm", "pypi"):
        document["packages"].append(
            {
                "registryType": package.registry,
                "identifier": package.identifier,
                "version": package.version,
                "runtimeHint": package.runtime_hint
                or ("npx" if package.registry == "npm" else "uvx"),
                "transport": {"type": chosen_transport},
                "packageArguments": [package_argument(setting) for setting in argument_settings],
                "environmentVariables": [environment_variable(setting) for setting in variables],
            }
        )
    document["_meta"] = {
        META_KEY: {
            "analyserVersion": ANALYSER_VERSION,
            "commit": origin.commit,
            "ref": origin.ref,
            "deployable": "package"
            if document["packages"]
            else source_verdict(source_recipe.as_meta(), findings.build),
            # How to build and run it from source, derived from its manifests (analysis.recipe).
            "source": source_recipe.as_meta(),
            "package": {
                "source": package.source.as_dict() if package else None,
                "executables": list(package.executables) if package else [],
                "verified": False,
            },
            "description": {
                "source": findings.description_source.as_dict()
                if findings.description_source
                else None
            },
            "transports": {
                kind: [source.as_dict() for source in found[:5]]
                for kind, found in findings.transports.items()
            },
            "sources": {
                "environmentVariables": sources_by_name(variables),
                "packageArguments": sources_by_name(argument_settings),
            },
            "build": findings.build,
            "clientConfigs": findings.client_configs,
            "excludedVariables": excluded_variables(findings, variables),
            # A repository published nowhere still has settings; they wait here for a build
            # from source, since server.json keeps them only inside a package.
            "unpublished": None
            if document["packages"]
            else {
                "environmentVariables": [environment_variable(s) for s in variables],
                "packageArguments": [package_argument(s) for s in argument_settings],
            },
            "tools": {"verified": False},
            "claude": {"used": False},
            "warnings": list(findings.warnings),
        }
    }
    readme_path = checkout.top_level("README.md", "README.markdown", "README.rst", "README")
    draft_evidence = {
        "readme": (checkout.text(readme_path) or "")[:README_EVIDENCE_CHARS] if readme_path else "",
        "files": {},
        "variables": evidence,
    }
    return Draft(document=document, findings=findings, evidence=draft_evidence)


def source_verdict(source: dict, build_facts: dict) -> str:
    """How a repository that no registry publishes could still run."""
    if source.get("runnable"):
        return "source"
    if "docker" in build_facts and not ({"node", "python"} & set(build_facts)):
        return "docker-only"
    return "unknown"


def analyse_folder(checkout: Checkout, origin: Origin, root: Checkout | None = None) -> Draft:
    """Layers 1 and 2 over a folder: the draft document, before registry, Claude, introspection."""
    findings = read_manifests_step(checkout)
    evidence = scan_step(checkout, findings)
    return build(checkout, findings, origin, evidence, root)
