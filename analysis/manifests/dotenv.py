"""`.env.example` and its cousins: the variables the author expects a user to fill in."""

from __future__ import annotations

import re

from analysis.checkout import Checkout
from analysis.findings import MANIFEST, Findings, Source
from analysis.manifests.common import looks_secret

NAMES = (".env.example", ".env.sample", ".env.template", ".env.dist", "example.env", "sample.env")
_LINE = re.compile(r"^\s*(?:export\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=")


def read(checkout: Checkout, findings: Findings) -> None:
    path = checkout.top_level(*NAMES)
    if path is None:
        return
    comment: list[str] = []
    for number, line in enumerate((checkout.text(path) or "").splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        match = _LINE.match(line)
        if match:
            name = match.group("name")
            findings.variable(
                name,
                Source(MANIFEST, path, f"line {number}"),
                description=" ".join(part for part in comment if part)[:500],
                secret=True if looks_secret(name) else None,
            )
        comment = []
