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
            r"\.add_argument\(\s*(?:['\"]-\w['\"]\s*,\s*)?['\"](?P<name>--[a-z0-9][A-Za-z0-9_-]*)['\"]"
            + _HELP
        ),
        re.compile(
            r"@click\.option\(\s*(?:['\"]-\w['\"]\s*,\s*)?['\"](?P<name>--[a-z0-9][A-Za-z0-9_-]*)['\"]"
            + _HELP
        ),
    ],
    "javascript": [
        re.compile(
            r"\.(?:option|requiredOption|addOption)\(\s*(?:new\s+Option\(\s*)?['\"`](?:-\w,?\s*)?(?P<name>--[a-z0-9][A-Za-z0-9_-]*)[^'\"`]*['\"`]"
            r"(?:\s*,\s*(?P<help>'[^'\n]{0,300}'|\"[^\"\n]{0,300}\"|`[^`\n]{0,300}`))?"
        ),
    ],
}
IGNORED = {"--help", "--version"}
# Hand-rolled argv parsing: `args[i] === "--port"`, `case "--host":`, `argv.includes("--x")`.
_ARGV_COMPARISON = re.compile(
    r"(?:===?|!==?|\bcase|includes\(|startsWith\(|\bin\s*\()\s*['\"`](?P<name>--[a-z0-9][A-Za-z0-9_-]*)"
    r"(?:=)?['\"`]"
)
# node:util `parseArgs({ options: { "read-only": { type: "boolean" } } })`.
_PARSE_ARGS = re.compile(r"parseArgs(?:\.call\([^,]*,)?\s*\(?\s*\{\s*options\s*:\s*\{")
_PARSE_ARGS_OPTION = re.compile(
    r"(?:\[\s*)?['\"]?(?P<name>[a-z][a-z0-9-]*)['\"]?(?:\s*\])?\s*:\s*\{\s*type\s*:"
)


def scan(checkout: Checkout, findings: Findings) -> None:
    for path, language in source_files(checkout):
        patterns = PATTERNS.get(language)
        text = checkout.text(path) if patterns else None
        if not text:
            continue
        hits = [
            (match.start(), match.group("name"))
            for match in _ARGV_COMPARISON.finditer(text)
            if "argv" in text
        ]
        if language == "javascript" and "parseArgs" in text:
            hits.extend(_parse_args_options(text))
        for offset, name in hits:
            if name not in IGNORED:
                line = text.count("\n", 0, offset) + 1
                findings.argument(name, Source(STATIC, path, f"line {line}"), required=False)
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


def _parse_args_options(text: str) -> list[tuple[int, str]]:
    hits = []
    for match in _PARSE_ARGS.finditer(text):
        body = text[match.end() : match.end() + 4_000]
        depth, end = 1, len(body)
        for index, char in enumerate(body):
            depth += {"{": 1, "}": -1}.get(char, 0)
            if depth == 0:
                end = index
                break
        for option in _PARSE_ARGS_OPTION.finditer(body[:end]):
            hits.append((match.end() + option.start(), f"--{option.group('name')}"))
    return hits
