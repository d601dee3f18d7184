"""The extracted repository folder, read the way the analysis layers need it.

Files are listed once, sorted, without what is never the server's own code (dependencies,
build caches, VCS folders) and read at most once each, as text, within a size budget. The
folder came from an untrusted tarball: links were never extracted, and paths here never leave
the root.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path, PurePosixPath

# Folders never read: installed dependencies, VCS data, caches, virtual environments.
SKIPPED_FOLDERS = {
    ".git",
    ".hg",
    ".svn",
    "node_modules",
    "bower_components",
    ".venv",
    "venv",
    "__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".tox",
    ".next",
    ".turbo",
    ".cache",
    "site-packages",
    "vendor",
    "target",
}
TEXT_LIMIT_BYTES = 4 * 1024 * 1024
MAX_LISTED_FILES = 20_000
BINARY_SUFFIXES = {
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".webp",
    ".ico",
    ".pdf",
    ".zip",
    ".gz",
    ".tgz",
    ".whl",
    ".so",
    ".dylib",
    ".wasm",
    ".db",
    ".sqlite",
    ".woff",
    ".woff2",
    ".ttf",
    ".mp4",
    ".mp3",
    ".lock",
}


class Checkout:
    """A repository folder (or the monorepo member's subfolder) on disk."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._text: dict[str, str | None] = {}

    @cached_property
    def files(self) -> list[str]:
        """Relative POSIX paths of regular files, sorted, dependencies and caches left out."""
        found: list[str] = []
        for folder, folders, names in os.walk(self.root):
            folders[:] = sorted(name for name in folders if name not in SKIPPED_FOLDERS)
            relative = Path(folder).relative_to(self.root)
            for name in sorted(names):
                path = relative / name
                if (self.root / path).is_file() and not (self.root / path).is_symlink():
                    found.append(PurePosixPath(path).as_posix())
                    if len(found) >= MAX_LISTED_FILES:
                        return found
        return found

    def top_level(self, *names: str) -> str | None:
        """The first of `names` present at the root, matched case-insensitively."""
        present = {path.lower(): path for path in self.files if "/" not in path}
        for name in names:
            if name.lower() in present:
                return present[name.lower()]
        return None

    def text(self, path: str) -> str | None:
        """The file as text, or None when it is binary, too large or unreadable."""
        if path in self._text:
            return self._text[path]
        content: str | None = None
        if PurePosixPath(path).suffix.lower() not in BINARY_SUFFIXES:
            target = self.root / path
            try:
                if target.stat().st_size <= TEXT_LIMIT_BYTES:
                    raw = target.read_bytes()
                    if b"\0" not in raw[:8192]:
                        content = raw.decode("utf-8", errors="replace")
            except OSError:
                content = None
        self._text[path] = content
        return content

    def with_suffix(self, *suffixes: str) -> list[str]:
        return [path for path in self.files if path.lower().endswith(suffixes)]
