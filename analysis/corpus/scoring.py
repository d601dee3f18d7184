"""Scoring the analyser against the corpus: package spec per server, environment variables
as recall and precision over every (server, variable) pair, and per server.

`score_corpus` runs the real analysis (the GitHub client, the registry client, the layers)
against local stand-ins that serve the corpus repositories and packages, without Claude and
without starting servers: the score is what the static layers alone achieve.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from analysis.corpus.fixtures import CorpusEntry, load_corpus, served
from analysis.serverjson import package_of

PACKAGE_KEYS = ("registryType", "identifier", "version", "transport", "runtimeHint")


@dataclass
class ServerScore:
    slug: str
    package_expected: dict[str, str]
    package_found: dict[str, str]
    expected: set[str]
    found: set[str]
    secrets_expected: set[str] = field(default_factory=set)
    secrets_found: set[str] = field(default_factory=set)
    options_expected: set[str] = field(default_factory=set)
    options_found: set[str] = field(default_factory=set)
    positional_expected: int = 0
    positional_found: int = 0
    seconds: float = 0.0
    error: str = ""

    @property
    def package_right(self) -> bool:
        return not self.error and self.package_found == self.package_expected

    @property
    def true_positives(self) -> int:
        return len(self.found & self.expected)

    @property
    def missed(self) -> set[str]:
        return self.expected - self.found

    @property
    def extra(self) -> set[str]:
        return self.found - self.expected


@dataclass
class CorpusScore:
    servers: list[ServerScore]

    def _sum(self, attribute: str) -> int:
        return sum(len(getattr(server, attribute)) for server in self.servers)

    @property
    def recall(self) -> float:
        expected = self._sum("expected")
        return sum(s.true_positives for s in self.servers) / expected if expected else 1.0

    @property
    def precision(self) -> float:
        found = self._sum("found")
        return sum(s.true_positives for s in self.servers) / found if found else 1.0

    @property
    def packages_right(self) -> int:
        return sum(server.package_right for server in self.servers)

    @property
    def macro_recall(self) -> float:
        values = [s.true_positives / len(s.expected) for s in self.servers if s.expected]
        return sum(values) / len(values) if values else 1.0

    @property
    def macro_precision(self) -> float:
        values = [s.true_positives / len(s.found) for s in self.servers if s.found]
        return sum(values) / len(values) if values else 1.0

    @property
    def secret_recall(self) -> float:
        expected = sum(len(s.secrets_expected) for s in self.servers)
        hits = sum(len(s.secrets_expected & s.secrets_found) for s in self.servers)
        return hits / expected if expected else 1.0

    @property
    def option_recall(self) -> float:
        expected = sum(len(s.options_expected) for s in self.servers)
        hits = sum(len(s.options_expected & s.options_found) for s in self.servers)
        return hits / expected if expected else 1.0

    @property
    def option_precision(self) -> float:
        found = sum(len(s.options_found) for s in self.servers)
        hits = sum(len(s.options_expected & s.options_found) for s in self.servers)
        return hits / found if found else 1.0

    @property
    def positional_servers(self) -> tuple[int, int]:
        """(servers expecting a positional argument, of which the analysis found one)."""
        expecting = [s for s in self.servers if s.positional_expected]
        return len(expecting), sum(1 for s in expecting if s.positional_found)

    @property
    def secret_precision(self) -> float:
        """Of the expected variables marked secret, how many the documentation calls secret."""
        marked = sum(len(s.secrets_found & s.expected) for s in self.servers)
        hits = sum(len(s.secrets_expected & s.secrets_found) for s in self.servers)
        return hits / marked if marked else 1.0


def score_document(entry: CorpusEntry, document: dict[str, Any], seconds: float) -> ServerScore:
    expected = entry.expected
    package = package_of(document) or {}
    found_package = {key: package.get(key) for key in PACKAGE_KEYS}
    found_package["transport"] = (package.get("transport") or {}).get("type")
    variables = package.get("environmentVariables") or []
    return ServerScore(
        slug=entry.slug,
        package_expected={key: expected["package"][key] for key in PACKAGE_KEYS},
        package_found=found_package,
        expected={item["name"] for item in expected["environmentVariables"]},
        found={item["name"] for item in variables},
        secrets_expected={v["name"] for v in expected["environmentVariables"] if v["isSecret"]},
        secrets_found={v["name"] for v in variables if v.get("isSecret")},
        options_expected={a["name"] for a in expected["packageArguments"] if a["type"] == "named"},
        options_found={
            a["name"] for a in package.get("packageArguments") or [] if a["type"] == "named"
        },
        positional_expected=sum(
            1 for a in expected["packageArguments"] if a["type"] == "positional"
        ),
        positional_found=sum(
            1 for a in package.get("packageArguments") or [] if a["type"] == "positional"
        ),
        seconds=seconds,
    )


def score_corpus(entries: Iterable[CorpusEntry] | None = None) -> CorpusScore:
    """Analyse every corpus entry, served by local stand-ins of GitHub and the registries."""
    from analysis import services  # needs Django's settings

    entries = list(entries if entries is not None else load_corpus())
    with served(entries):
        return CorpusScore([_score_entry(services, entry) for entry in entries])


def _score_entry(services, entry: CorpusEntry) -> ServerScore:
    started = time.perf_counter()
    try:
        document, _ = services.analyse(
            entry.repository, services.Options(use_claude=False, introspect=False)
        )
    except Exception as exc:  # a failed entry is scored, not fatal
        return ServerScore(
            slug=entry.slug,
            package_expected={k: entry.expected["package"][k] for k in PACKAGE_KEYS},
            package_found={},
            expected={v["name"] for v in entry.expected["environmentVariables"]},
            found=set(),
            error=f"{type(exc).__name__}: {exc}",
        )
    return score_document(entry, document, time.perf_counter() - started)


def markdown(score: CorpusScore, command: str) -> str:
    """The score table for docs/analysis-accuracy.md."""
    lines = [
        "# Analysis accuracy",
        "",
        "The analyser scored against the hand-written expected results of the corpus",
        "(`analysis/corpus/servers/`), static layers only: no Claude, no introspection. Each",
        "repository is served by the GitHub API stand-in and each package by the registry",
        "stand-in; the real clients and layers run unchanged. Produced by:",
        "",
        f"    {command}",
        "",
        "## Totals",
        "",
        "| Measure | Result |",
        "|---|---|",
        f"| Package spec right (registry, identifier, version, transport, runtime) "
        f"| {score.packages_right} / {len(score.servers)} |",
        f"| Environment variables, recall over all pairs | {score.recall:.1%} |",
        f"| Environment variables, precision over all pairs | {score.precision:.1%} |",
        f"| Recall, mean per server | {score.macro_recall:.1%} |",
        f"| Precision, mean per server | {score.macro_precision:.1%} |",
        f"| Secrets marked secret (of all expected secrets) | {score.secret_recall:.1%} |",
        f"| Variables marked secret that are secrets | {score.secret_precision:.1%} |",
        f"| Command-line options (named arguments), recall | {score.option_recall:.1%} |",
        f"| Command-line options (named arguments), precision | {score.option_precision:.1%} |",
        f"| Servers with a positional argument where one was found "
        f"| {score.positional_servers[1]} / {score.positional_servers[0]} |",
        "",
        "## Per server",
        "",
        "| Server | Package | Expected | Found | Right | Missed | Extra | Seconds |",
        "|---|---|---:|---:|---:|---|---|---:|",
    ]
    for server in score.servers:
        package = "right" if server.package_right else _package_problem(server)
        lines.append(
            f"| {server.slug} | {package} | {len(server.expected)} | {len(server.found)} "
            f"| {server.true_positives} | {_names(server.missed)} | {_names(server.extra)} "
            f"| {server.seconds:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _package_problem(server: ServerScore) -> str:
    if server.error:
        return f"failed: {server.error}"
    wrong = [
        f"{key} {server.package_found.get(key)!r}"
        for key, value in server.package_expected.items()
        if server.package_found.get(key) != value
    ]
    return "wrong " + ", ".join(wrong)


def _names(names: set[str]) -> str:
    return ", ".join(f"`{name}`" for name in sorted(names)) or "-"
