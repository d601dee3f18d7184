"""The fixture repositories in `source_repos/`, served by the GitHub stand-in; host snapshots.

Each folder under `source_repos/` is one repository (tiny but real MCP servers, plus a broken
and a hostile one) as it would be committed: manifests and lockfiles, no `node_modules`,
`dist` or virtual environment.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from analysis.tests.github_standin import GitHubStandin

SOURCE_REPOS = Path(__file__).resolve().parent / "source_repos"
OWNER = "acme"
# What a build leaves in a fixture folder when someone builds one by hand: never served.
NOT_COMMITTED = {"node_modules", "dist", ".venv", "__pycache__", "escape-report.json"}


def repository_files(shape: str) -> dict[str, bytes]:
    """The files of `source_repos/<shape>` as {relative path: content}."""
    root = SOURCE_REPOS / shape
    if not root.is_dir():
        raise FileNotFoundError(f"no fixture repository {shape!r} in {SOURCE_REPOS}")
    files = {}
    for folder, folders, names in os.walk(root):
        folders[:] = sorted(f for f in folders if f not in NOT_COMMITTED)
        for name in sorted(names):
            if name in NOT_COMMITTED or name.endswith(".pyc"):
                continue
            path = Path(folder, name)
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    return files


def publish(
    github: GitHubStandin, shape: str, extra: dict[str, bytes] | None = None
) -> tuple[str, str]:
    """Serve the fixture as `acme/<shape>` (plus `extra` files); returns (full name, commit)."""
    sha = github.add_repository(OWNER, shape, {**repository_files(shape), **(extra or {})})
    return f"{OWNER}/{shape}", sha


# --- What a host path looks like, to show a build changed nothing outside its folder ---------

Entry = tuple[int, int, int, int, int, str] | None


def describe(path: Path) -> Entry:
    """(mode, uid, gid, size, mtime_ns, sha256 of a regular file's content) or None if absent."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    digest = ""
    if stat.S_ISREG(info.st_mode):
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            digest = f"unreadable: {exc.errno}"
    return (info.st_mode, info.st_uid, info.st_gid, info.st_size, info.st_mtime_ns, digest)


def snapshot(*roots: Path, skip: tuple[Path, ...] = ()) -> dict[str, Entry]:
    """Every path under `roots` (the roots themselves included), except under `skip`."""
    found: dict[str, Entry] = {}
    skipped = {str(path) for path in skip}
    for root in roots:
        found[str(root)] = describe(root)
        if not root.is_dir() or root.is_symlink() or str(root) in skipped:
            continue
        for folder, folders, names in os.walk(root):
            folders[:] = [f for f in folders if os.path.join(folder, f) not in skipped]
            for name in folders + names:
                path = Path(folder, name)
                found[str(path)] = describe(path)
    return found
