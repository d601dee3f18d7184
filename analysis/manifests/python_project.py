"""`pyproject.toml` (PEP 621, Poetry) or `setup.py`: a Python package's name, version, scripts."""

from __future__ import annotations

import re
import tomllib

from analysis.checkout import Checkout
from analysis.findings import MANIFEST, Findings, PackageCandidate, Source, plain_executables
from analysis.manifests.common import ManifestError, text_value

MCP_LIBRARIES = re.compile(r"^\s*(?:mcp|fastmcp|mcp-server)\b", re.IGNORECASE)
_SETUP_NAME = re.compile(r"\bname\s*=\s*['\"]([A-Za-z0-9._-]+)['\"]")
_SETUP_VERSION = re.compile(r"\bversion\s*=\s*['\"]([A-Za-z0-9.+!_-]+)['\"]")
_CONSOLE_SCRIPT = re.compile(
    r"['\"]\s*([A-Za-z0-9._-]+)\s*=\s*([A-Za-z0-9_.]+(?::[A-Za-z0-9_.]+)?)"
)


def read(checkout: Checkout, findings: Findings) -> None:
    path = checkout.top_level("pyproject.toml")
    # A pyproject.toml that only configures tools (black, ruff) leaves the package to setup.py.
    if path is not None and _read_pyproject(checkout, path, findings):
        return
    path = checkout.top_level("setup.py")
    if path is not None:
        _read_setup_py(checkout, path, findings)


def _read_pyproject(checkout: Checkout, path: str, findings: Findings) -> bool:
    """Read a project's metadata; False when the file declares no project name."""
    try:
        document = tomllib.loads(checkout.text(path) or "")
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"not valid TOML ({exc})") from None
    source = Source(MANIFEST, path)
    project = document.get("project") if isinstance(document.get("project"), dict) else {}
    poetry = (
        (document.get("tool") or {}).get("poetry")
        if isinstance(document.get("tool"), dict)
        else None
    )
    poetry = poetry if isinstance(poetry, dict) else {}
    name = text_value(project.get("name") or poetry.get("name"), 200)
    if not name:
        return False
    version = text_value(project.get("version") or poetry.get("version"), 100)
    findings.describe(text_value(project.get("description") or poetry.get("description")), source)
    findings.version = findings.version or version
    scripts = project.get("scripts") or poetry.get("scripts") or {}
    scripts = (
        {text_value(key, 100): text_value(value, 300) for key, value in scripts.items()}
        if isinstance(scripts, dict)
        else {}
    )
    dependencies = [
        text_value(item, 300) for item in project.get("dependencies") or [] if isinstance(item, str)
    ]
    findings.build.setdefault(
        "python",
        {
            "manifest": path,
            "scripts": scripts,
            "requirements": bool(checkout.top_level("requirements.txt")),
            "usesMcpSdk": any(MCP_LIBRARIES.match(item) for item in dependencies)
            or "mcp" in (poetry.get("dependencies") or {}),
        },
    )
    if name and version:
        findings.packages.append(
            PackageCandidate(
                registry="pypi",
                identifier=name,
                version=version,
                source=source,
                executables=plain_executables(list(scripts)),
                runtime_hint="uvx",
            )
        )
    elif name and "version" in (project.get("dynamic") or []):
        findings.warn(f"{path} sets its version dynamically; the published version is used.")
        findings.packages.append(
            PackageCandidate(
                registry="pypi",
                identifier=name,
                version="",
                source=source,
                executables=plain_executables(list(scripts)),
                runtime_hint="uvx",
            )
        )
    return True


def _read_setup_py(checkout: Checkout, path: str, findings: Findings) -> None:
    text = checkout.text(path) or ""
    name = _SETUP_NAME.search(text)
    version = _SETUP_VERSION.search(text)
    scripts = {}
    if "console_scripts" in text:
        block = text[text.index("console_scripts") :][:2_000]
        scripts = {match.group(1): match.group(2) for match in _CONSOLE_SCRIPT.finditer(block)}
    findings.build.setdefault(
        "python",
        {
            "manifest": path,
            "scripts": scripts,
            "requirements": bool(checkout.top_level("requirements.txt")),
            "usesMcpSdk": "mcp" in text,
        },
    )
    if name:
        findings.packages.append(
            PackageCandidate(
                registry="pypi",
                identifier=name.group(1),
                version=version.group(1) if version else "",
                source=Source(MANIFEST, path),
                executables=plain_executables(list(scripts)),
                runtime_hint="uvx",
            )
        )
