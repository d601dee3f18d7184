"""Safe extraction of a GitHub-shaped source tarball (one top folder), standard library only.

Used by the analysis's GitHub client (analysis/github.py) and by the Fly runner, which fetches
a repository at a pinned commit to build it inside its machine (mcpgateway/runner.py). The
tarball is untrusted input:

- Limits are checked against every header in a first pass, before anything is written, so a
  refused archive leaves no files behind.
- Symbolic and hard links are skipped, never created: an MCP server's build does not need them
  from the archive, and skipping them closes the whole family of link-based escapes (several
  were found in `tarfile`'s own `data` filter in 2025) whatever the Python patch level.
- Device files and FIFOs are refused. Paths are checked by `tarfile.data_filter`, which also
  drops ownership and unsafe mode bits; it is run on every entry in the first pass as well.
- The decompressed stream is read forward only and capped, so a header that declares a huge
  extended-header block or loops back on itself cannot exhaust memory or hang the process.
"""

from __future__ import annotations

import gzip
import logging
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

# Room for the tar headers, extended headers and padding of the allowed number of files.
HEADER_ALLOWANCE_PER_FILE = 4_096


class ArchiveError(Exception):
    """The archive was refused; the message says why, for the user."""


class TooLarge(ArchiveError):
    pass


class Unsafe(ArchiveError):
    pass


@dataclass(frozen=True)
class Limits:
    max_tarball_bytes: int
    max_files: int
    max_file_bytes: int
    max_total_bytes: int


def size_text(count: int) -> str:
    return f"{count / (1024 * 1024):.0f} MiB" if count >= 1024 * 1024 else f"{count} bytes"


class _ForwardReader:
    """The decompressed tar stream, readable forward only and up to `cap` bytes.

    `tarfile` trusts sizes from headers: an extended header may declare gigabytes (read into
    memory at once) and a negative size makes it seek backwards forever. Both are refused here.
    """

    def __init__(self, raw: IO[bytes], cap: int) -> None:
        self._raw = raw
        self._cap = cap
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        if size < 0 or self._position + size > self._cap:
            raise TooLarge("The archive unpacks to more data than Catwalk accepts.")
        data = self._raw.read(size)
        self._position += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self._position + offset
        if whence not in (0, 1) or target < self._position:
            raise Unsafe("The archive is malformed (it points backwards).")
        if target > self._cap:
            raise TooLarge("The archive unpacks to more data than Catwalk accepts.")
        self._position = self._raw.seek(target)
        return self._position

    def tell(self) -> int:
        return self._position

    def rewind(self) -> None:
        self._position = self._raw.seek(0)


def extract(tarball: IO[bytes], destination: Path, limits: Limits) -> None:
    """Extract a GitHub-shaped gzip tarball into `destination`, its top folder stripped.

    Raises TooLarge or Unsafe before anything is written when a header breaks the limits.
    """
    cap = limits.max_total_bytes + HEADER_ALLOWANCE_PER_FILE * (limits.max_files + 16)
    try:
        with gzip.GzipFile(fileobj=tarball, mode="rb") as unzipped:
            stream = _ForwardReader(unzipped, cap)
            with tarfile.open(fileobj=stream, mode="r:") as archive:
                plan = _plan(archive, destination, limits)
                stream.rewind()
                archive.extractall(destination, members=plan, filter="data")
    except tarfile.FilterError as exc:
        raise Unsafe(f"The archive was refused: {exc}.") from None
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise Unsafe(f"The download is not a readable tarball ({exc}).") from None


def _plan(archive: tarfile.TarFile, destination: Path, limits: Limits) -> list[tarfile.TarInfo]:
    """Check every header against the limits; the entries to extract, top folder stripped."""
    plan: list[tarfile.TarInfo] = []
    top: str | None = None
    count = total = skipped_links = 0
    for member in archive:
        count += 1
        if count > limits.max_files:
            raise TooLarge(f"The archive has more than {limits.max_files} files.")
        if top is None:
            top = member.name.split("/", 1)[0]
            if top in {"", ".", ".."}:
                raise Unsafe("The archive does not have GitHub's single top-level folder.")
        if member.name.rstrip("/") == top:
            continue
        if not member.name.startswith(top + "/"):
            raise Unsafe(f"The archive has an entry outside its top folder: {member.name!r}")
        if member.issym() or member.islnk():
            skipped_links += 1
            continue
        if member.isreg():
            if member.size > limits.max_file_bytes:
                raise TooLarge(
                    f"{member.name.split('/', 1)[1]!r} is larger than the "
                    f"{size_text(limits.max_file_bytes)} Catwalk accepts for one file."
                )
            total += member.size
            if total > limits.max_total_bytes:
                raise TooLarge(
                    f"The archive unpacks to more than {size_text(limits.max_total_bytes)}."
                )
        elif not member.isdir():
            raise Unsafe(f"The archive contains a device file or FIFO: {member.name!r}")
        stripped = member.replace(name=member.name[len(top) + 1 :], deep=False)
        tarfile.data_filter(stripped, str(destination))
        plan.append(stripped)
    if top is None:
        raise Unsafe("The archive is empty.")
    if skipped_links:
        logger.info("skipped %d links while extracting into %s", skipped_links, destination)
    return plan
