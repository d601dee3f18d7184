"""Layer 1: what the repository's own manifests declare, one module per kind of file.

Each reader takes the checkout and the findings, adds what its file states, and raises
`ManifestError` for a file it cannot parse; the caller turns that into a warning and goes on,
so one broken manifest never hides what the others say.
"""

from __future__ import annotations

from collections.abc import Callable

from analysis.checkout import Checkout
from analysis.findings import Findings
from analysis.manifests import (
    dockerfile,
    dotenv,
    package_json,
    python_project,
    readme,
    server_json,
    smithery,
)
from analysis.manifests.common import ManifestError

Reader = Callable[[Checkout, Findings], None]

# Most authoritative first: where two manifests disagree about a fact, the earlier one's stands.
READERS: tuple[tuple[str, Reader], ...] = (
    ("server.json", server_json.read),
    ("smithery.yaml", smithery.read),
    ("package.json", package_json.read),
    ("pyproject.toml / setup.py", python_project.read),
    (".env example", dotenv.read),
    ("README", readme.read),
    ("Dockerfile", dockerfile.read),
)


def read_manifests(checkout: Checkout, findings: Findings) -> None:
    for label, reader in READERS:
        try:
            reader(checkout, findings)
        except ManifestError as exc:
            findings.warn(f"{label}: {exc}")


__all__ = ["ManifestError", "read_manifests"]
