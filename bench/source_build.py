"""A build from source, cold and cached: what a second deploy of the same commit saves.

Each fixture repository of `deployments/tests/source_repos/` is published in the local GitHub
stand-in, analysed, and built with `deployments.builds.ensure_build` — cold (fetch, install with
its package manager from the real registries, build, in the sandbox) — then asked for again
with the same key (repository, folder, commit, recipe), as a second deploy does. Wall time by
`time.perf_counter`; CPU as this process's own plus its reaped children's (every build step is a
child: the sandbox launcher and all it starts). A throwaway database and data folder are used.
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import report

REPOS = Path(__file__).resolve().parents[1] / "deployments" / "tests" / "source_repos"
SHAPES = ("plain-javascript", "typescript-build", "python-requirements", "python-http")
CACHED_REPEATS = 5
BEGIN_MARKER = "<!-- bench:source-build:begin -->"
END_MARKER = "<!-- bench:source-build:end -->"


@dataclass
class Row:
    repository: str
    manager: str
    cold_s: float
    cold_cpu_s: float
    cached_ms: float
    size_mib: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _files(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "node_modules" not in path.parts
    }


def measure(shapes: tuple[str, ...] = SHAPES, repeats: int = CACHED_REPEATS) -> list[Row]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catwalk.settings")
    import django

    django.setup()
    from django.db import connection
    from django.test.utils import override_settings

    from analysis import services as analysis_services
    from analysis.serverjson import meta
    from analysis.tests.github_standin import GitHubStandin
    from analysis.tests.registry_standin import RegistryStandin
    from deployments import builds

    github, registry = GitHubStandin(), RegistryStandin()
    database = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    rows: list[Row] = []
    try:
        with (
            tempfile.TemporaryDirectory(prefix="catwalk-bench-build-") as data,
            override_settings(
                DATA_DIR=Path(data),
                GITHUB_API_URL=github.api_url,
                GITHUB_TOKEN="",
                NPM_REGISTRY_URL=registry.npm_url,
                PYPI_URL=registry.pypi_url,
            ),
        ):
            for shape in shapes:
                folder = REPOS / shape
                if not folder.is_dir():
                    continue
                sha = github.add_repository("bench", shape, _files(folder))
                document, _ = analysis_services.analyse(
                    f"https://github.com/bench/{shape}",
                    analysis_services.Options(use_claude=False, introspect=False),
                )
                recipe = meta(document)["source"]
                started, cpu = time.perf_counter(), _cpu_seconds()
                build = builds.ensure_build(f"bench/{shape}", "", sha, recipe)
                cold_s, cold_cpu = time.perf_counter() - started, _cpu_seconds() - cpu
                cached = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    again = builds.ensure_build(f"bench/{shape}", "", sha, recipe)
                    cached.append((time.perf_counter() - started) * 1000)
                    assert again.pk == build.pk
                rows.append(
                    Row(
                        repository=shape,
                        manager=recipe["packageManager"],
                        cold_s=cold_s,
                        cold_cpu_s=cold_cpu,
                        cached_ms=statistics.median(cached),
                        size_mib=build.size_bytes / 2**20,
                    )
                )
    finally:
        connection.creation.destroy_test_db(database, verbosity=0)
        github.close()
        registry.close()
    return rows


def render(rows: list[Row], context: Mapping[str, Any]) -> str:
    lines = [
        "| Repository | Package manager | Cold build s | Cold build CPU s "
        "| Cached (second deploy) ms | Build MiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.repository} | {row.manager} | {row.cold_s:.1f} | {row.cold_cpu_s:.1f} "
            f"| {row.cached_ms:.1f} | {row.size_mib:.1f} |"
        )
    lines += ["", *report.provenance(context, ("python", "node", "catwalk"))]
    return "\n".join(lines)


def update_docs(path: Path, markdown: str) -> None:
    report.replace_section(path, BEGIN_MARKER, END_MARKER, markdown)
