"""Command-line options the server defines: argparse and click in Python, commander and yargs
in JavaScript. Only long options are kept; help text becomes the description."""

from __future__ import annotations

import re

from analysis.checkout import Checkout
from analysis.findings import STATIC, Findings, Source
from analysis.scanners.sources import source_files

_HELP = r"(?:[^)]{0,400}?\bhelp\s*=\s*(?P<help>'[^'\n]{0,300}'|\"[^\"\n]{0,300}\"))?"
PATTERNS = {
    "python": [
        re.compile(
            r"\.add_argument\(\s*(?:['\"]-\w['\"]\s*,\s*)?['\"](?P<name>--[a-z0-9][a-z0-9-]*)['\"]"
            + _HELP
        ),
        re.compile(
            r"@click\.option\(\s*(?:['\"]-\w['\"]\s*,\s*)?['\"](?P<name>--[a-z0-9][a-z0-9-]*)['\"]"
            + _HELP
        ),
    ],
    "javascript": [
        re.compile(
            r"\.(?:option|requiredOption|addOption)\(\s*(?:new\s+Option\(\s*)?['\"`](?:-\w,?\s*)?(?P<name>--[a-z0-9][a-z0-9-]*)[^'\"`]*['\"`]"
            r"(?:\s*,\s*(?P<help>'[^'\n]{0,300}'|\"[^\"\n]{0,300}\"|`[^`\n]{0,300}`))?"
        ),
    ],
}
IGNORED = {"--help", "--version"}


def scan(checkout: Checkout, findings: Findings) -> None:
    for path, language in source_files(checkout):
        patterns = PATTERNS.get(language)
        text = checkout.text(path) if patterns else None
        if not text:
            continue
        for pattern in patterns:
            for match in pattern.finditer(text):
                name = match.group("name")
                if name in IGNORED:
                    continue
                help_text = (match.groupdict().get("help") or "")[1:-1]
                line = text.count("\n", 0, match.start()) + 1
                findings.argument(
                    name,
                    Source(STATIC, path, f"line {line}"),
                    description=" ".join(help_text.split())[:500],
                    required=False,
                )
