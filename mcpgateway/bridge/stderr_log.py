"""A bounded log of the child's stderr (and of anything it wrongly prints on stdout).

Lines are kept in memory for `/logs` and `last_error`, and optionally appended to a
file that is rotated once (`PATH` → `PATH.1`) so the pair never exceeds about
`max_file_bytes`, and/or echoed to a stream (the bridge's own stderr inside a Fly
Machine, whose output is the machine's log). Writes are synchronous: they are small
appends to a local file or pipe, cheaper than handing them to a thread.
"""

from __future__ import annotations

import collections
import contextlib
import os
from pathlib import Path
from typing import BinaryIO

MAX_LINE_CHARS = 8192


class StderrLog:
    """Keeps the tail of a child's stderr in memory and in a rotated file."""

    def __init__(
        self,
        path: Path | None,
        *,
        max_file_bytes: int = 1024 * 1024,
        memory_lines: int = 1000,
        echo: BinaryIO | None = None,
    ) -> None:
        self._path = path
        self._echo = echo
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
        encoded = (line + "\n").encode("utf-8", "replace")
        if self._echo is not None:
            with contextlib.suppress(OSError, ValueError):
                self._echo.write(encoded)
                self._echo.flush()
        if self._file is None:
            return
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
