"""The corpus's repositories, built from the servers' published packages at test time.

Each corpus entry names a package version; its files (an `npm pack` tarball or a PyPI sdist,
downloaded once into a cache) stand in for the repository at a commit, placed under the entry's
monorepo subfolder. Entries that share a GitHub repository (the reference servers) share one
stand-in repository holding all their subfolders. Nothing third-party is committed: the archives
live in the cache (`CATWALK_CORPUS_CACHE`, default `~/.cache/catwalk-corpus`), next to npm's and
pip's own caches, which the downloads also reuse.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from analysis.github import RepoRef, parse_repository_url

SERVERS = Path(__file__).resolve().parent / "servers"
# Files added on top of a package's own, written by hand from the server's documented facts:
# no corpus package ships a server.json, and the analyser must be scored reading one.
OVERLAYS = Path(__file__).resolve().parent / "overlays"
# Files a package may carry that are too big to matter for an analysis and slow every fixture.
MAX_FILE_BYTES = 2 * 1024 * 1024
DOWNLOAD_TIMEOUT_SECONDS = 300


class FixtureError(Exception):
    """A corpus package could not be fetched or read; the message says which and why."""


@dataclass(frozen=True)
class CorpusEntry:
    slug: str
    repository: str
    registry: str
    identifier: str
    version: str
    expected: dict
    notes: str

    @property
    def ref(self) -> RepoRef:
        return parse_repository_url(self.repository)


def load_corpus(folder: Path = SERVERS) -> list[CorpusEntry]:
    entries = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        source = data["source"]
        entries.append(
            CorpusEntry(
                slug=data["slug"],
                repository=data["repository"],
                registry=source["registry"],
                identifier=source["identifier"],
                version=source["version"],
                expected=data["expected"],
                notes=data["notes"],
            )
        )
    return entries


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "catwalk-corpus"
    folder = Path(os.environ.get("CATWALK_CORPUS_CACHE", default))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def package_archive(entry: CorpusEntry) -> Path:
    """The package's archive, downloaded into the cache on first use."""
    folder = cache_dir() / entry.registry / entry.slug / entry.version
    existing = sorted(folder.glob("*.tgz")) + sorted(folder.glob("*.tar.gz"))
    if existing:
        return existing[0]
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if entry.registry == "npm":
        command = [
            shutil.which("npm") or "npm",
            "pack",
            f"{entry.identifier}@{entry.version}",
            "--pack-destination",
            str(staging),
            "--silent",
        ]
    else:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            str(staging),
            f"{entry.identifier}=={entry.version}",
        ]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FixtureError(f"{entry.slug}: cannot download {entry.identifier}: {exc}") from exc
    archives = sorted(staging.glob("*.tgz")) + sorted(staging.glob("*.tar.gz"))
    if result.returncode != 0 or not archives:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise FixtureError(f"{entry.slug}: {' '.join(command[:3])} failed: {' '.join(detail)}")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder / archives[0].name


def package_files(entry: CorpusEntry) -> dict[str, bytes]:
    """The package's regular files, relative to its root (the archive's one top folder)."""
    files: dict[str, bytes] = {}
    with tarfile.open(package_archive(entry)) as archive:
        for member in archive.getmembers():
            if not member.isfile() or member.size > MAX_FILE_BYTES:
                continue
            _, _, relative = member.name.partition("/")
            if not relative or relative.startswith("/") or ".." in relative.split("/"):
                continue
            handle = archive.extractfile(member)
            if handle is not None:
                files[relative] = handle.read()
    if not files:
        raise FixtureError(f"{entry.slug}: the package archive holds no files")
    overlay = OVERLAYS / entry.slug
    if overlay.is_dir():
        for path in sorted(overlay.rglob("*")):
            if path.is_file():
                files[path.relative_to(overlay).as_posix()] = path.read_bytes()
    return files


def published_metadata(entry: CorpusEntry) -> dict:
    """What the registry says about the package, taken from the package itself: npm's
    `repository` and `bin` from package.json; PyPI's project URLs from PKG-INFO."""
    files = package_files(entry)
    if entry.registry == "npm":
        manifest = json.loads(files.get("package.json", b"{}"))
        return {key: manifest[key] for key in ("repository", "bin") if key in manifest}
    urls: dict[str, str] = {}
    home_page = ""
    for line in files.get("PKG-INFO", b"").decode("utf-8", "replace").splitlines():
        if line.startswith("Project-URL:"):
            label, _, url = line.removeprefix("Project-URL:").partition(",")
            urls[label.strip()] = url.strip()
        elif line.startswith("Home-page:"):
            home_page = line.removeprefix("Home-page:").strip()
        elif not line.strip():
            break  # the headers end where the description begins
    return {"project_urls": urls, "home_page": home_page}


def publish_packages(registry, entries: Iterable[CorpusEntry]) -> None:
    """Publish the entries' packages, at their versions, in a registry stand-in."""
    for entry in entries:
        metadata = published_metadata(entry)
        if entry.registry == "npm":
            registry.add_npm(entry.identifier, {entry.version: metadata})
        else:
            registry.add_pypi(
                entry.identifier,
                [entry.version],
                project_urls=metadata["project_urls"],
                home_page=metadata["home_page"],
            )


def repositories(entries: Iterable[CorpusEntry]) -> dict[tuple[str, str], dict[str, bytes]]:
    """(owner, name) -> the files of one stand-in repository, each package in its subfolder."""
    merged: dict[tuple[str, str], dict[str, bytes]] = defaultdict(dict)
    for entry in entries:
        ref = entry.ref
        prefix = f"{ref.subdirectory.strip('/')}/" if ref.subdirectory else ""
        for path, content in package_files(entry).items():
            merged[(ref.owner, ref.name)][prefix + path] = content
    return dict(merged)


def publish(standin, entries: Iterable[CorpusEntry]) -> dict[tuple[str, str], str]:
    """Add the entries' repositories to a GitHub stand-in; returns each one's commit SHA."""
    entries = list(entries)
    branches = {(e.ref.owner, e.ref.name): e.ref.ref for e in entries if e.ref.ref}
    return {
        (owner, name): standin.add_repository(
            owner, name, files, default_branch=branches.get((owner, name), "main")
        )
        for (owner, name), files in repositories(entries).items()
    }


@contextmanager
def served(entries: Iterable[CorpusEntry]) -> Iterator[tuple[object, object]]:
    """The entries' repositories and packages served by local GitHub and registry stand-ins,
    with the settings pointing at them; yields (github, registry)."""
    from django.test.utils import override_settings

    from analysis.tests.github_standin import GitHubStandin
    from analysis.tests.registry_standin import RegistryStandin

    entries = list(entries)
    github, registry = GitHubStandin(), RegistryStandin()
    try:
        publish(github, entries)
        publish_packages(registry, entries)
        with override_settings(
            GITHUB_API_URL=github.api_url,
            GITHUB_TOKEN="",
            NPM_REGISTRY_URL=registry.npm_url,
            PYPI_URL=registry.pypi_url,
        ):
            yield github, registry
    finally:
        github.close()
        registry.close()
