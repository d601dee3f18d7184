"""One MCP server child process speaking newline-delimited JSON-RPC on stdio.

The child is spawned from a plain argv, so a sandbox launcher can later be a prefix
of the command without changes here. It runs in its own session (and so its own
process group): stopping it signals the whole group, which also reaches the
grandchildren that launchers such as `npx` or `uvx` spawn.

Pipes are driven by an `asyncio.SubprocessProtocol` rather than stream readers:
stdout lines are split and dispatched synchronously in the data callback, which
costs no task switch per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import cast

from .stderr_log import MAX_LINE_CHARS, StderrLog

# A single JSON-RPC message larger than this is dropped (and logged) rather than
# buffered without bound.
MAX_STDOUT_LINE_BYTES = 64 * 1024 * 1024
STOP_GRACE_SECONDS = 2.0


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment minus the bridge's own `CATWALK_BRIDGE_*` settings."""
    return {key: value for key, value in environ.items() if not key.startswith("CATWALK_BRIDGE_")}


class ChildStartError(Exception):
    """The command could not be executed at all."""


class _Protocol(asyncio.SubprocessProtocol):
    def __init__(self, child: ChildProcess) -> None:
        self._child = child
        self._pending = bytearray()
        self._discarding = False
        # Per child: in isolated mode many children share one log, and their
        # partial lines must not be glued together.
        self._stderr_pending = bytearray()

    def _stderr_received(self, data: bytes) -> None:
        self._stderr_pending += data
        if b"\n" not in data:
            if len(self._stderr_pending) > MAX_LINE_CHARS:
                self._flush_stderr()
            return
        *lines, rest = self._stderr_pending.split(b"\n")
        self._stderr_pending = bytearray(rest)
        for line in lines:
            self._child.stderr_log.write(line.decode("utf-8", "replace"))

    def _flush_stderr(self) -> None:
        if self._stderr_pending:
            self._child.stderr_log.write(self._stderr_pending.decode("utf-8", "replace"))
            self._stderr_pending.clear()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 2:
            self._stderr_received(data)
            return
        start = 0
        end = len(data)
        while start < end:
            newline = data.find(b"\n", start)
            if newline < 0:
                self._buffer(data[start:])
                return
            if self._discarding:
                self._discarding = False
            elif self._pending:
                self._pending += data[start:newline]
                line = bytes(self._pending)
                self._pending.clear()
                self._child.on_line(line)
            elif newline > start:
                self._child.on_line(data[start:newline])
            start = newline + 1

    def _buffer(self, chunk: bytes) -> None:
        if self._discarding:
            return
        self._pending += chunk
        if len(self._pending) > MAX_STDOUT_LINE_BYTES:
            self._pending.clear()
            self._discarding = True
            self._child.stderr_log.write(
                f"[bridge] dropped a stdout message larger than {MAX_STDOUT_LINE_BYTES} bytes"
            )

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            if self._pending and not self._discarding:
                self._child.on_line(bytes(self._pending))
            self._pending.clear()
            self._child.on_gone("stdout closed")
        elif fd == 2:
            self._flush_stderr()

    def process_exited(self) -> None:
        self._child.on_process_exited()

    def pause_writing(self) -> None:
        self._child.pause_writing()

    def resume_writing(self) -> None:
        self._child.resume_writing()


class ChildProcess:
    """A spawned MCP server: write lines to it, receive its lines through `on_message`."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | None,
        stderr_log: StderrLog,
        on_message: Callable[[bytes], None],
        on_exit: Callable[[str], None],
    ) -> None:
        self._argv = list(argv)
        self._env = dict(env)
        self._cwd = cwd
        self.stderr_log = stderr_log
        self._on_message = on_message
        self._on_exit = on_exit
        self._transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._exited = asyncio.get_running_loop().create_future()
        self._gone = False
        self._write_ready: asyncio.Future[None] | None = None
        self.pid: int | None = None

    async def start(self) -> None:
        """Spawn the process; raises ChildStartError if the command cannot run."""
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.subprocess_exec(
                lambda: _Protocol(self),
                *self._argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise ChildStartError(f"cannot start {self._argv[0]!r}: {exc}") from exc
        self._transport = transport
        self.pid = transport.get_pid()
        self._stdin = cast(asyncio.WriteTransport, transport.get_pipe_transport(0))

    @property
    def exit_status(self) -> int | None:
        """The process's exit status once it has exited (negative: killed by that signal)."""
        return self._exited.result() if self._exited.done() else None

    @property
    def alive(self) -> bool:
        """True until the child exited or closed its stdout."""
        return self._transport is not None and not self._gone

    def on_line(self, line: bytes) -> None:
        if not self._gone:
            self._on_message(line)

    def on_gone(self, reason: str) -> None:
        if self._gone:
            return
        self._gone = True
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)
        self._on_exit(reason)

    def on_process_exited(self) -> None:
        assert self._transport is not None
        code = self._transport.get_returncode()
        if not self._exited.done():
            self._exited.set_result(code)
        # Let output already in the pipe be dispatched before declaring the child
        # gone, so a response written just before exit still reaches its caller.
        asyncio.get_running_loop().call_later(
            0.05, self.on_gone, f"process exited with status {code}"
        )

    def pause_writing(self) -> None:
        if self._write_ready is None or self._write_ready.done():
            self._write_ready = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)

    def write(self, data: bytes) -> None:
        """Queue one encoded line (with its newline) for the child's stdin."""
        if self._stdin is not None and not self._gone and not self._stdin.is_closing():
            self._stdin.write(data)

    async def drain(self) -> None:
        """Wait while the child's stdin pipe is full."""
        waiter = self._write_ready
        if waiter is not None and not waiter.done():
            await waiter

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Close stdin, SIGTERM the process group, SIGKILL it after `grace`; always reaps."""
        if self._transport is None:
            return
        pgid = self.pid
        try:
            if self._stdin is not None and not self._stdin.is_closing():
                self._stdin.close()
            if not self._exited.done():
                _signal_group(pgid, signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._exited), grace)
        finally:
            # Members of the group that survived the leader (or ignored SIGTERM)
            # must not outlive the child.
            _signal_group(pgid, signal.SIGKILL)
            if not self._exited.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._exited), grace)
            self._transport.close()
            self.on_gone("stopped")


def _signal_group(pgid: int | None, sig: signal.Signals) -> None:
    if pgid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
