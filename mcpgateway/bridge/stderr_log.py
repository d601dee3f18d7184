"""A bounded log of the child's stderr (and of anything it wrongly prints on stdout).

Lines are kept in memory for `/logs` and `last_error`, and optionally appended to a
file that is rotated once (`PATH` → `PATH.1`) so the pair never exceeds about
`max_file_bytes`. Writes are synchronous: they are small appends to a local file,
cheaper than handing them to a thread.
"""

from __future__ import annotations

import collections
import contextlib
import os
from pathlib import Path

MAX_LINE_CHARS = 8192


class StderrLog:
    """Keeps the tail of a child's stderr in memory and in a rotated file."""

    def __init__(
        self,
        path: Path | None,
        *,
        max_file_bytes: int = 1024 * 1024,
        memory_lines: int = 1000,
    ) -> None:
        self._path = path
        self._rotate_at = max(max_file_bytes // 2, 1)
        self._lines: collections.deque[str] = collections.deque(maxlen=memory_lines)
        self._file = None
        self._file_size = 0
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._open()

    def _open(self) -> None:
        assert self._path is not None
        self._file = open(self._path, "ab")  # noqa: SIM115 - lives as long as the log
        self._file_size = self._file.tell()

    def write(self, line: str) -> None:
        """Record one line."""
        line = line.rstrip("\r\n")[:MAX_LINE_CHARS]
        self._lines.append(line)
        if self._file is None:
            return
        encoded = (line + "\n").encode("utf-8", "replace")
        try:
            self._file.write(encoded)
            self._file.flush()
        except OSError:
            return
        self._file_size += len(encoded)
        if self._file_size >= self._rotate_at:
            self._rotate()

    def _rotate(self) -> None:
        assert self._path is not None and self._file is not None
        self._file.close()
        with contextlib.suppress(OSError):
            os.replace(self._path, self._path.with_name(self._path.name + ".1"))
        self._open()

    def tail(self, count: int) -> list[str]:
        """The last `count` lines, oldest first."""
        if count <= 0:
            return []
        lines = list(self._lines)
        return lines[-count:]

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
