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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from analysis.github import RepoRef, parse_repository_url

SERVERS = Path(__file__).resolve().parent / "servers"
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
    return files


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
    return {
        (owner, name): standin.add_repository(owner, name, files)
        for (owner, name), files in repositories(entries).items()
    }
