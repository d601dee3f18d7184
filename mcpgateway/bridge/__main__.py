"""`python -m mcpgateway.bridge --listen … -- COMMAND ARG…`"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
import sys
from types import FrameType

import uvicorn

from .app import BridgeApp
from .config import BridgeConfig, Listen, parse_args
from .core import Bridge


class _Server(uvicorn.Server):
    """uvicorn's server, but a stop signal also ends every session at once.

    Otherwise uvicorn would wait for open SSE streams (which never end by
    themselves) until its graceful-shutdown timeout.
    """

    def __init__(self, config: uvicorn.Config, bridge: Bridge, unix_path: str | None) -> None:
        super().__init__(config)
        self._bridge = bridge
        self._unix_path = unix_path
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        # uvicorn re-raises the stop signal after serving, so clean up here.
        if self._unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._unix_path)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._bridge.begin_shutdown)


def bind(listen: Listen) -> socket.socket:
    """Bind the listening socket ourselves: a unix socket is created owner-only."""
    if listen.unix_path is not None:
        path = listen.unix_path
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        previous = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(previous)
    else:
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((listen.host, listen.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def describe_bound(sock: socket.socket, listen: Listen) -> str:
    if listen.unix_path is not None:
        return listen.describe()
    host, port = sock.getsockname()[:2]
    return Listen(host=host, port=port).describe()


def serve(config: BridgeConfig) -> None:
    bridge = Bridge(config)
    sock = bind(config.listen)
    server = _Server(
        uvicorn.Config(
            BridgeApp(bridge),
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            proxy_headers=False,
            log_level="warning",
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=5,
        ),
        bridge,
        config.listen.unix_path,
    )
    # The supervisor (and the tests) learn the real address from this line,
    # which matters for tcp port 0.
    print(
        f"catwalk-bridge listening on {describe_bound(sock, config.listen)}",
        file=sys.stderr,
        flush=True,
    )
    server.run(sockets=[sock])


def _stopped(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(sys.argv[1:] if argv is None else argv, dict(os.environ))
    # A stop asked for with SIGTERM (the supervisor's, Fly's) ends with status 0, not "killed by
    # SIGTERM": uvicorn puts this handler back after its graceful shutdown and re-raises the
    # signal to it. Before uvicorn takes over, it stops the bridge at once, as the default would.
    signal.signal(signal.SIGTERM, _stopped)
    serve(config)


if __name__ == "__main__":
    main()
