"""How long the repository analysis's static layers take, on the analysis corpus's servers.

Acceptance target: static analysis of a typical repository under 2 s. For every server of the
corpus (`analysis/corpus/servers`), its repository (the merged one for monorepo members, built
from the real npm/PyPI package by `analysis.corpus.fixtures`) is published in the local GitHub
stand-in and read back through the real `GitHubClient`, as an analysis reads it:

- *fetch+extract*: commit lookup, tarball download over loopback and the checked extraction;
- *static*: `analyse_folder` (layer 1 manifests, layer 2 source scans, the draft document) on
  the extracted folder, the member's subfolder for a monorepo. The first run on each folder is
  the *cold* one (a fresh `Checkout`, nothing read yet by Python; the OS page cache holds the
  files just extracted, as in a real analysis, which reads them right after extracting). Then
  `repeats` more runs, each with a fresh `Checkout`, interleaved across servers so that drift
  hits them alike: median and max are reported.

Wall time by `time.perf_counter`, CPU by `time.process_time`: the analysis runs in this one
process, so its CPU time is the whole cost. The stand-in serves from threads of this process,
so it is shut down before the static runs and does not count in their CPU.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import report
from bench.proctree import machine_busy_seconds

if TYPE_CHECKING:
    from analysis.github import RepoRef

REPEATS = 5
TARGET_MS = 2_000.0
BEGIN_MARKER = "<!-- bench:analysis-static:begin -->"
END_MARKER = "<!-- bench:analysis-static:end -->"


@dataclass(frozen=True)
class Server:
    """One analysis to time: what it is called and the repository (folder) holding it."""

    name: str
    ref: RepoRef


@dataclass
class Row:
    server: str
    files: int  # files the analysis lists in its folder (dependencies and caches left out)
    bytes: int  # their total size
    fetch_extract_ms: float
    cold_ms: float
    cold_cpu_ms: float
    warm_ms: list[float] = field(default_factory=list)
    warm_cpu_ms: list[float] = field(default_factory=list)

    @property
    def static_median_ms(self) -> float:
        return statistics.median(self.warm_ms)

    @property
    def static_max_ms(self) -> float:
        return max(self.warm_ms)

    @property
    def cpu_median_ms(self) -> float:
        return statistics.median(self.warm_cpu_ms)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "static_median_ms": self.static_median_ms,
            "static_max_ms": self.static_max_ms,
            "cpu_median_ms": self.cpu_median_ms,
        }


@dataclass
class Measurement:
    rows: list[Row]
    repeats: int
    # CPU used by other processes during the static runs, as a share of the whole machine.
    other_load_percent: float


def _setup_django() -> None:
    # The client reads GITHUB_API_URL and the extraction limits from settings; no database.
    # The analysis modules are imported inside the functions, after this: the harness imports
    # this module before Django is set up, and runs without this section too.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catwalk.settings")
    import django

    django.setup()


def corpus() -> tuple[dict[tuple[str, str], dict[str, bytes]], list[Server]]:
    """The corpus's repositories (packages downloaded once into the cache) and its servers."""
    _setup_django()
    from analysis.corpus import fixtures

    entries = fixtures.load_corpus()
    servers = [Server(entry.slug, entry.ref) for entry in entries]
    return fixtures.repositories(entries), servers


def _fetch_all(
    repositories: Mapping[tuple[str, str], Mapping[str, bytes]],
    servers: Sequence[Server],
    work: Path,
) -> list[tuple[Server, Path, str, float]]:
    """Each server's folder downloaded by the real client from the stand-in: (server, folder,
    commit, fetch+extract ms). Every server downloads its whole repository, as its analysis does."""
    from django.test.utils import override_settings

    from analysis.github import GitHubClient
    from analysis.tests.github_standin import GitHubStandin

    standin = GitHubStandin()
    try:
        # A URL naming a branch (…/tree/BRANCH/folder) names the repository's default one.
        branches = {(s.ref.owner, s.ref.name): s.ref.ref for s in servers if s.ref.ref}
        for (owner, name), files in repositories.items():
            branch = branches.get((owner, name), "main")
            standin.add_repository(owner, name, dict(files), default_branch=branch)
        fetched = []
        with override_settings(GITHUB_API_URL=standin.api_url, GITHUB_TOKEN=""):
            for index, server in enumerate(servers):
                started = time.perf_counter()
                with GitHubClient(server.ref) as client:
                    sha = client.commit_sha(server.ref.ref or client.repository().default_branch)
                    folder = client.download(sha, work / str(index), server.ref.subdirectory)
                fetched.append((server, folder, sha, (time.perf_counter() - started) * 1e3))
        return fetched
    finally:
        standin.close()


def _timed_analysis(server: Server, folder: Path, commit: str) -> tuple[float, float]:
    """One static analysis with a fresh Checkout: (wall ms, CPU ms)."""
    from analysis.checkout import Checkout
    from analysis.pipeline import Origin, analyse_folder

    ref = server.ref
    origin = Origin(ref.owner, ref.name, ref.subdirectory, commit=commit, ref=ref.ref)
    wall, cpu = time.perf_counter(), time.process_time()
    analyse_folder(Checkout(folder), origin)
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


def measure(
    repositories: Mapping[tuple[str, str], Mapping[str, bytes]],
    servers: Sequence[Server],
    repeats: int = REPEATS,
) -> Measurement:
    _setup_django()
    from analysis.checkout import Checkout

    with tempfile.TemporaryDirectory(prefix="catwalk-bench-analysis-") as work:
        fetched = _fetch_all(repositories, servers, Path(work))
        rows = []
        busy, own, wall = machine_busy_seconds(), time.process_time(), time.perf_counter()
        for server, folder, sha, fetch_ms in fetched:
            cold_ms, cold_cpu_ms = _timed_analysis(server, folder, sha)
            listed = Checkout(folder).files
            size = sum((folder / path).stat().st_size for path in listed)
            rows.append(Row(server.name, len(listed), size, fetch_ms, cold_ms, cold_cpu_ms))
        for _ in range(repeats):
            for row, (server, folder, sha, _fetch_ms) in zip(rows, fetched, strict=True):
                wall_ms, cpu_ms = _timed_analysis(server, folder, sha)
                row.warm_ms.append(wall_ms)
                row.warm_cpu_ms.append(cpu_ms)
        others = machine_busy_seconds() - busy - (time.process_time() - own)
        capacity = (time.perf_counter() - wall) * (os.cpu_count() or 1)
    other_load = min(100.0, max(0.0, others / capacity * 100)) if capacity else 0.0
    return Measurement(rows, repeats, other_load)


def _verdict(ms: float) -> str:
    return "under" if ms < TARGET_MS else "**over**"


def render(measurement: Measurement, context: Mapping[str, Any]) -> str:
    rows = measurement.rows
    lines = [
        "| Server | Files | KiB | fetch+extract ms | static cold ms | static median ms "
        "| static max ms | CPU ms (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.server} | {row.files} | {row.bytes / 1024:,.0f} | {row.fetch_extract_ms:.1f} "
            f"| {row.cold_ms:.1f} | {row.static_median_ms:.1f} | {row.static_max_ms:.1f} "
            f"| {row.cpu_median_ms:.1f} |"
        )
    typical = statistics.median(row.static_median_ms for row in rows)
    typical_cold = statistics.median(row.cold_ms for row in rows)
    typical_cpu = statistics.median(row.cpu_median_ms for row in rows)
    typical_fetch = statistics.median(row.fetch_extract_ms for row in rows)
    slowest = max(rows, key=lambda row: max(row.static_max_ms, row.cold_ms))
    slowest_ms = max(slowest.static_max_ms, slowest.cold_ms)
    lines += [
        "",
        f"- **Typical repository** (median over the {len(rows)} servers): static analysis "
        f"**{typical:.0f} ms** ({typical_cold:.0f} ms cold, {typical_cpu:.0f} ms CPU), "
        f"{_verdict(typical)} the {TARGET_MS:,.0f} ms target; fetch+extract from the loopback "
        f"stand-in {typical_fetch:.0f} ms.",
        f"- **Slowest**: {slowest.server}, {slowest_ms:.0f} ms at worst "
        f"({slowest.files} files, {slowest.bytes / 1024:,.0f} KiB), {_verdict(slowest_ms)} the "
        f"{TARGET_MS:,.0f} ms target.",
        f"- Static: one cold run then {measurement.repeats} more per server, each with a fresh "
        "`Checkout`; the OS page cache is warm in every run (the files were just extracted, as "
        "in a real analysis). Other processes used "
        f"{measurement.other_load_percent:.0f}% of the machine meanwhile.",
        *report.provenance(context),
    ]
    return "\n".join(lines)


def update_docs(path: Path, markdown: str) -> None:
    report.replace_section(path, BEGIN_MARKER, END_MARKER, markdown)
