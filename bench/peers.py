"""Pinned third-party programs the benchmark runs, installed into ``bench/.peers/`` (git-ignored).

The manifests live in ``bench/peers/`` (package.json + package-lock.json for npm, a frozen
requirements.txt for mcp-proxy's own virtualenv). Nothing here touches the project's own
dependencies. npm's and pip's default caches are used, so a reinstall is mostly offline. An
install is redone only when its manifest changes (a stamp holds the manifest's hash).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
MANIFESTS = BENCH_DIR / "peers"
PEERS = BENCH_DIR / ".peers"
NODE_MODULES = PEERS / "node_modules"
PEER_VENV = PEERS / "venv"

SERVER_EVERYTHING_ENTRY = (
    NODE_MODULES / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
)
SUPERGATEWAY_ENTRY = NODE_MODULES / "supergateway" / "dist" / "index.js"
MCP_PROXY = PEER_VENV / "bin" / "mcp-proxy"


def _digest(*paths: Path) -> str:
    sha = hashlib.sha256()
    for path in paths:
        sha.update(path.read_bytes())
    return sha.hexdigest()


def _up_to_date(stamp: Path, digest: str) -> bool:
    return stamp.is_file() and stamp.read_text() == digest


def ensure_node_peers() -> None:
    """server-everything and supergateway at the versions in bench/peers/package-lock.json."""
    manifests = [MANIFESTS / "package.json", MANIFESTS / "package-lock.json"]
    stamp = PEERS / ".node-installed"
    digest = _digest(*manifests)
    if _up_to_date(stamp, digest) and SERVER_EVERYTHING_ENTRY.is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is required to install the benchmark's Node peers")
    PEERS.mkdir(exist_ok=True)
    for manifest in manifests:
        shutil.copyfile(manifest, PEERS / manifest.name)
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"],
        cwd=PEERS,
        check=True,
    )
    stamp.write_text(digest)


def ensure_python_peers() -> None:
    """mcp-proxy in its own virtualenv, at the versions in bench/peers/requirements.txt."""
    requirements = MANIFESTS / "requirements.txt"
    stamp = PEERS / ".python-installed"
    digest = _digest(requirements)
    if _up_to_date(stamp, digest) and MCP_PROXY.is_file():
        return
    PEERS.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
    subprocess.run(
        [
            str(PEER_VENV / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "-r",
            str(requirements),
        ],
        check=True,
    )
    stamp.write_text(digest)


def node_package_version(name: str) -> str:
    return json.loads((NODE_MODULES / name / "package.json").read_text())["version"]


def python_package_version(name: str) -> str:
    for line in (MANIFESTS / "requirements.txt").read_text().splitlines():
        if line.lower().startswith(f"{name.lower()}=="):
            return line.split("==", 1)[1]
    raise LookupError(f"{name} is not pinned in bench/peers/requirements.txt")
