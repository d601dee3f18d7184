"""`Dockerfile`: what the image sets up. Its ENV lines are mostly defaults for the image itself
(NODE_ENV, PATH), so they only corroborate names other layers find; EXPOSE hints at HTTP."""

from __future__ import annotations

import re

from analysis.checkout import Checkout
from analysis.findings import DOCUMENTATION, Findings, Source

_ENV = re.compile(r"^\s*ENV\s+(?P<rest>.+)$", re.IGNORECASE | re.MULTILINE)
_ASSIGNMENT = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)=")
_ENTRY = re.compile(r"^\s*(?:ENTRYPOINT|CMD)\s+(?P<command>.+)$", re.IGNORECASE | re.MULTILINE)


def read(checkout: Checkout, findings: Findings) -> None:
    path = checkout.top_level("Dockerfile")
    if path is None:
        return
    text = checkout.text(path) or ""
    for match in _ENV.finditer(text):
        rest = match.group("rest")
        names = _ASSIGNMENT.findall(rest) or rest.split()[:1]
        for name in names:
            findings.mention(name, Source(DOCUMENTATION, path, "ENV"))
    entries = [match.group("command").strip()[:300] for match in _ENTRY.finditer(text)]
    findings.build.setdefault(
        "docker", {"manifest": path, "entrypoint": entries[-1] if entries else ""}
    )
