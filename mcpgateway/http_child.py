"""Serve an MCP server that speaks only Streamable HTTP to a bridge that speaks stdio.

The bridge runs every server as a stdio child. A server built from source that serves
Streamable HTTP instead (the analysis finds its transport) runs behind this relay, in the same
sandbox: the relay picks a free port, starts the server with it (as `PORT` in its environment,
or as `--port N` when the recipe says the server takes an argument), waits until the port
accepts connections, then passes JSON-RPC messages between its own stdin/stdout and the
server's endpoint with the MCP SDK's two transports — one HTTP session for the bridge's one
stdio stream. The server's stdout goes to stderr, which the bridge keeps as the server's log.

It imports nothing of the project (the sandbox shows it this file and the interpreter's
packages only): `python -I http_child.py [--port-argument=--port] [--path /mcp] -- COMMAND…`.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

import anyio
from mcp.client.streamable_http import streamable_http_client
from mcp.server.stdio import stdio_server

START_TIMEOUT_SECONDS = 120.0
STOP_GRACE_SECONDS = 5.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, server: subprocess.Popen, timeout: float) -> None:
    """Return once the server accepts connections; exit like it if it dies first."""
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            print(f"catwalk-http: the server exited ({server.returncode})", file=sys.stderr)
            sys.exit(server.returncode or 1)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                print(f"catwalk-http: nothing listens on port {port}", file=sys.stderr)
                stop(server)
                sys.exit(1)
            time.sleep(0.1)


async def relay(url: str) -> None:
    """Pass messages both ways until either side ends."""
    async with (
        streamable_http_client(url) as (from_server, to_server),
        stdio_server() as (from_bridge, to_bridge),
        anyio.create_task_group() as group,
    ):

        async def forward(source, sink) -> None:
            async for message in source:
                if not isinstance(message, Exception):
                    await sink.send(message)
            group.cancel_scope.cancel()

        group.start_soon(forward, from_bridge, to_server)
        group.start_soon(forward, from_server, to_bridge)


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="http_child")
    parser.add_argument("--port-argument", default="", help="e.g. --port; else PORT is set")
    parser.add_argument("--path", default="/mcp")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("the server's command is missing")
    port = free_port()
    if args.port_argument:
        command = [*command, args.port_argument, str(port)]
    server = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr,
        env={**os.environ, "PORT": str(port)},
    )
    signal.signal(signal.SIGTERM, lambda *_: (stop(server), sys.exit(0)))
    wait_for_port(port, server, START_TIMEOUT_SECONDS)
    try:
        anyio.run(relay, f"http://127.0.0.1:{port}{args.path}")
    finally:
        stop(server)


if __name__ == "__main__":
    main()
