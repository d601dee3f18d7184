"""What gets benchmarked. An HTTP target is "a command that starts a server + a URL (+ headers)".

Adding a target is one entry in ``TARGETS``. The full gateway (daphne or uvicorn in front of a
bridge) fits once a launcher can bring up that stack on its own, e.g.::

    HttpTarget(
        name="catwalk-gateway-uvicorn",
        description="Catwalk gateway (uvicorn) → bridge",
        command=lambda port, server: [sys.executable, "-m", "bench.stacks.gateway",
                                      "--server", "uvicorn", "--port", str(port), "--", *server],
        path="/mcp/<deployment id the launcher seeds>",
        headers={"Authorization": "Bearer <token the launcher seeds>"},
    )

The launcher must keep every process it starts (gateway, bridge, upstream server) as its
descendants: CPU and memory are summed over the command's process tree, so the whole stack is
what gets charged.

Every target wraps the same upstream server command (server-everything run by ``node`` directly,
not through ``npx``, whose extra npm process would distort memory and cold start for everyone).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import peers

REPO = Path(__file__).resolve().parent.parent
NODE = "node"


def default_server_command() -> list[str]:
    return [NODE, str(peers.SERVER_EVERYTHING_ENTRY), "stdio"]


def _always_available() -> str | None:
    return None


def _nothing_to_install() -> None:
    return None


@dataclass(frozen=True)
class StdioTarget:
    """The floor: the harness itself speaks JSON-RPC lines on the server's stdin/stdout."""

    name: str
    description: str
    install: Callable[[], None] = _nothing_to_install
    unavailable: Callable[[], str | None] = _always_available
    version: Callable[[], str] = lambda: ""


@dataclass(frozen=True)
class HttpTarget:
    """A relay started as ``command(port, server_command)`` that serves MCP Streamable HTTP at
    ``http://127.0.0.1:{port}{path}``."""

    name: str
    description: str
    command: Callable[[int, Sequence[str]], list[str]]
    path: str = "/mcp"
    headers: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    install: Callable[[], None] = _nothing_to_install
    # A reason the target cannot run on this checkout (e.g. not written yet), or None.
    unavailable: Callable[[], str | None] = _always_available
    version: Callable[[], str] = lambda: ""
    # Part of a plain `make bench`; others run only when named with --targets.
    default: bool = True
    # The launcher prints a JSON line {"url": …, "token": …} on stdout once it serves; the
    # harness takes the path from the URL and sends the token as a bearer token.
    announces_endpoint: bool = False
    # False where a start means building a whole throwaway Catwalk (migrations, supervisor):
    # that time says nothing about a deployment's cold start, so it is not reported.
    cold_start_applies: bool = True


Target = StdioTarget | HttpTarget


def _bridge_unavailable() -> str | None:
    if not (REPO / "mcpgateway" / "bridge" / "__main__.py").is_file():
        return "mcpgateway/bridge/__main__.py does not exist yet"
    return None


def _bridge(mode: str) -> Callable[[int, Sequence[str]], list[str]]:
    def command(port: int, server: Sequence[str]) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mcpgateway.bridge",
            "--listen",
            f"tcp:127.0.0.1:{port}",
            "--mode",
            mode,
            "--",
            *server,
        ]

    return command


def _gateway(
    server_name: str, *, sandboxed: bool = True, use_redis: bool = False
) -> Callable[[int, Sequence[str]], list[str]]:
    def command(port: int, server: Sequence[str]) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mcpgateway.stack",
            "--port",
            str(port),
            "--server",
            server_name,
            # The upstream server's code lives in bench/.peers: readable inside the sandbox.
            "--readable",
            str(peers.PEERS),
            *([] if sandboxed else ["--unsandboxed"]),
            *(["--redis", REDIS_URL] if use_redis else []),
            "--",
            *server,
        ]

    return command


REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")


def _redis_unavailable() -> str | None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        return f"no Redis at {REDIS_URL} (BENCH_REDIS_URL): {exc}"
    return _bridge_unavailable()


def _supergateway(port: int, server: Sequence[str]) -> list[str]:
    # Logging off: every peer runs in its fastest documented configuration.
    return [
        NODE,
        str(peers.SUPERGATEWAY_ENTRY),
        "--stdio",
        shlex.join(server),
        "--outputTransport",
        "streamableHttp",
        "--stateful",
        "--port",
        str(port),
        "--logLevel",
        "none",
    ]


def _mcp_proxy(port: int, server: Sequence[str]) -> list[str]:
    return [
        str(peers.MCP_PROXY),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "WARNING",
        "--pass-environment",
        "--",
        *server,
    ]


def _install_node_and_python_peers() -> None:
    peers.ensure_node_peers()
    peers.ensure_python_peers()


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        StdioTarget(
            name="direct-stdio",
            description="direct stdio (floor)",
            install=peers.ensure_node_peers,
        ),
        HttpTarget(
            name="catwalk-bridge",
            description="Catwalk bridge --mode shared",
            command=_bridge("shared"),
            cwd=REPO,
            install=peers.ensure_node_peers,
            unavailable=_bridge_unavailable,
        ),
        HttpTarget(
            name="catwalk-bridge-isolated",
            description="Catwalk bridge --mode isolated",
            command=_bridge("isolated"),
            cwd=REPO,
            install=peers.ensure_node_peers,
            unavailable=_bridge_unavailable,
            default=False,
        ),
        *(
            HttpTarget(
                name=f"catwalk-gateway-{server}",
                description=f"Catwalk gateway ({server}) + bridge",
                command=_gateway(server),
                cwd=REPO,
                install=peers.ensure_node_peers,
                unavailable=_bridge_unavailable,
                announces_endpoint=True,
                cold_start_applies=False,
            )
            for server in ("uvicorn", "daphne")
        ),
        HttpTarget(
            name="catwalk-gateway-uvicorn-redis",
            description="Catwalk gateway (uvicorn) + bridge, limits counted in Redis",
            command=_gateway("uvicorn", use_redis=True),
            cwd=REPO,
            install=peers.ensure_node_peers,
            unavailable=_redis_unavailable,
            announces_endpoint=True,
            cold_start_applies=False,
            default=False,
        ),
        HttpTarget(
            name="catwalk-gateway-uvicorn-unsandboxed",
            description="Catwalk gateway (uvicorn) + bridge, server unsandboxed",
            command=_gateway("uvicorn", sandboxed=False),
            cwd=REPO,
            install=peers.ensure_node_peers,
            unavailable=_bridge_unavailable,
            announces_endpoint=True,
            cold_start_applies=False,
        ),
        HttpTarget(
            name="supergateway",
            description="supergateway --stateful",
            command=_supergateway,
            install=peers.ensure_node_peers,
            version=lambda: peers.node_package_version("supergateway"),
        ),
        HttpTarget(
            name="mcp-proxy",
            description="mcp-proxy (stateful)",
            command=_mcp_proxy,
            install=_install_node_and_python_peers,
            version=lambda: peers.python_package_version("mcp-proxy"),
        ),
    )
}


def default_target_names() -> list[str]:
    return [
        name
        for name, target in TARGETS.items()
        if isinstance(target, StdioTarget) or target.default
    ]
