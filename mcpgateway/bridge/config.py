"""Command-line configuration of the bridge."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

# `--stderr-log -`: the child's stderr goes to the bridge's own.
STDERR = Path("-")


@dataclass(frozen=True, slots=True)
class Listen:
    """Where the bridge accepts HTTP: a unix socket path or a TCP host and port."""

    unix_path: str | None = None
    host: str = ""
    port: int = 0

    def describe(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """Everything the bridge is told on its command line."""

    listen: Listen
    command: list[str]
    mode: str = "shared"
    max_sessions: int = 1000
    session_idle_timeout: float = 1800.0
    request_timeout: float = 300.0
    max_body_bytes: int = 4 * 1024 * 1024
    stderr_log: Path | None = None
    # The child's stderr lines also go to the bridge's own stderr (`--stderr-log -`).
    stderr_echo: bool = False
    cwd: str | None = None
    # A shared child exiting with one of these is not restarted: the bridge reports "crashed".
    fatal_exit_statuses: frozenset[int] = frozenset()
    secret: str | None = field(default=None, repr=False)


def parse_listen(value: str) -> Listen:
    """Parse `unix:PATH` or `tcp:HOST:PORT` (IPv6 hosts in brackets)."""
    scheme, _, rest = value.partition(":")
    if scheme == "unix" and rest:
        return Listen(unix_path=rest)
    if scheme == "tcp":
        host, _, port = rest.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if host and port.isdigit() and int(port) < 65536:
            return Listen(host=host, port=int(port))
    raise argparse.ArgumentTypeError(f"expected unix:PATH or tcp:HOST:PORT, got {value!r}")


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mcpgateway.bridge",
        description="Serve one stdio MCP server as MCP Streamable HTTP (and legacy HTTP+SSE).",
    )
    parser.add_argument(
        "--listen", required=True, type=parse_listen, metavar="unix:PATH|tcp:HOST:PORT"
    )
    parser.add_argument("--mode", choices=("shared", "isolated"), default="shared")
    parser.add_argument("--max-sessions", type=_positive_int, default=1000)
    parser.add_argument(
        "--session-idle-timeout", type=_positive_float, default=1800.0, metavar="SECONDS"
    )
    parser.add_argument("--request-timeout", type=_positive_float, default=300.0, metavar="SECONDS")
    parser.add_argument(
        "--max-body-bytes", type=_positive_int, default=4 * 1024 * 1024, metavar="N"
    )
    parser.add_argument(
        "--stderr-log",
        type=Path,
        default=None,
        metavar="PATH",
        help="keep the MCP server's stderr in PATH (rotated once); `-`: the bridge's own stderr",
    )
    parser.add_argument("--cwd", default=None, metavar="DIR")
    parser.add_argument(
        "--fatal-exit-status",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="a child exiting with this status is not restarted (repeatable)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ARG...")
    return parser


def parse_args(argv: list[str], environ: dict[str, str]) -> BridgeConfig:
    """Build the configuration; exits with a usage error on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("the MCP server command is missing (put it after --)")
    if args.cwd is not None and not Path(args.cwd).is_dir():
        parser.error(f"--cwd {args.cwd!r} is not a directory")
    return BridgeConfig(
        listen=args.listen,
        command=command,
        mode=args.mode,
        max_sessions=args.max_sessions,
        session_idle_timeout=args.session_idle_timeout,
        request_timeout=args.request_timeout,
        max_body_bytes=args.max_body_bytes,
        stderr_log=None if args.stderr_log == STDERR else args.stderr_log,
        stderr_echo=args.stderr_log == STDERR,
        cwd=args.cwd,
        fatal_exit_statuses=frozenset(args.fatal_exit_status),
        secret=environ.get("CATWALK_BRIDGE_SECRET") or None,
    )
