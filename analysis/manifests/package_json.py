"""`package.json`: an npm package's name, version, executables, and MCP registry name."""

from __future__ import annotations

import json

from analysis.checkout import Checkout
from analysis.findings import MANIFEST, Findings, PackageCandidate, Source, plain_executables
from analysis.manifests.common import ManifestError, text_value

MCP_SDKS = ("@modelcontextprotocol/sdk", "fastmcp", "mcp-framework", "@modelcontextprotocol/server")


def read(checkout: Checkout, findings: Findings) -> None:
    path = checkout.top_level("package.json")
    if path is None:
        return
    try:
        manifest = json.loads(checkout.text(path) or "")
    except ValueError as exc:
        raise ManifestError(f"not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise ManifestError("not a JSON object")
    source = Source(MANIFEST, path)
    name = text_value(manifest.get("name"), 214)
    version = text_value(manifest.get("version"), 100)
    findings.name = findings.name or text_value(manifest.get("mcpName"), 200)
    findings.describe(text_value(manifest.get("description")), source)
    findings.version = findings.version or version
    executables = _executables(manifest.get("bin"), name)
    dependencies = {
        key
        for field in ("dependencies", "devDependencies", "peerDependencies")
        if isinstance(manifest.get(field), dict)
        for key in manifest[field]
    }
    scripts = manifest.get("scripts") if isinstance(manifest.get("scripts"), dict) else {}
    findings.build.setdefault(
        "node",
        {
            "manifest": path,
            "packageManager": _package_manager(checkout, manifest),
            "buildScript": "build" in scripts,
            "bin": list(executables),
            "main": text_value(manifest.get("main"), 300),
            "usesMcpSdk": any(sdk in dependencies for sdk in MCP_SDKS),
        },
    )
    if manifest.get("private") is True:
        findings.warn(f"{path} is marked private: it is not published to npm.")
        return
    if name and version:
        findings.packages.append(
            PackageCandidate(
                registry="npm",
                identifier=name,
                version=version,
                source=source,
                executables=executables,
                runtime_hint="npx",
            )
        )


def _executables(value: object, name: str) -> tuple[str, ...]:
    if isinstance(value, str) and value:
        return plain_executables([name.rsplit("/", 1)[-1]])
    if isinstance(value, dict):
        return plain_executables(list(value))
    return ()


def _package_manager(checkout: Checkout, manifest: dict) -> str:
    declared = text_value(manifest.get("packageManager"), 100).split("@", 1)[0]
    if declared in {"npm", "pnpm", "yarn", "bun"}:
        return declared
    for lockfile, manager in (
        ("pnpm-lock.yaml", "pnpm"),
        ("yarn.lock", "yarn"),
        ("bun.lockb", "bun"),
        ("package-lock.json", "npm"),
    ):
        if checkout.top_level(lockfile):
            return manager
    return "npm"
