"""The local runtime's side of the sandbox: is it available, and what a deployment gets in it.

The launcher itself is `mcpgateway/sandbox.py` (standard library only, no project imports);
this module checks the host can run it and writes the profile it reads. See docs/security.md.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
from django.conf import settings

# Program -> the Debian package that provides it, for the message when one is missing.
REQUIRED_TOOLS = {
    "bwrap": "bubblewrap",
    "slirp4netns": "slirp4netns",
    "setpriv": "util-linux",
    "nft": "nftables",
    "mount": "mount",
}
# The launcher runs by path (it imports nothing, and deployments never import mcpgateway).
LAUNCHER = Path(settings.BASE_DIR) / "mcpgateway" / "sandbox.py"
# The launcher's exit statuses (mcpgateway/sandbox.py): a server stopped because it blew a
# limit, and a sandbox that could not be built. The bridge restarts neither.
LIMIT_EXIT_STATUS = 125
SETUP_EXIT_STATUS = 126
# All the environment root processes get (the bridge, the launcher and its helpers): a server's
# own variables reach only the server (`write_environment`).
ROOT_ENVIRONMENT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
# How the launcher's line saying which limit was blown begins, in the server's stderr.
LIMIT_MESSAGE_PREFIX = "catwalk-sandbox: stopped: "


class SandboxUnavailable(Exception):
    """This host cannot sandbox MCP servers; the message says why and what to do."""


@dataclass(frozen=True)
class SandboxCheck:
    enabled: bool  # servers run sandboxed
    problem: str  # why the sandbox cannot run here ("" when it can)

    @property
    def may_start(self) -> bool:
        """Deployments may start: sandboxed, or unsandboxed because the operator said so."""
        return self.enabled or settings.UNSAFE_NO_SANDBOX


def find_tools() -> tuple[dict[str, str], list[str]]:
    found, missing = {}, []
    for program, package in REQUIRED_TOOLS.items():
        path = shutil.which(program, path=settings.SANDBOX_TOOLS_PATH)
        if path is None:
            missing.append(f"{program} (Debian package {package})")
        else:
            found[program] = path
    return found, missing


def check() -> SandboxCheck:
    """Whether deployments run sandboxed here; never raises."""
    if settings.UNSAFE_NO_SANDBOX:
        return SandboxCheck(enabled=False, problem="CATWALK_UNSAFE_NO_SANDBOX is set")
    problems = []
    if sys.platform != "linux":
        problems.append(f"the sandbox needs Linux, this is {sys.platform}")
    elif os.geteuid() != 0:
        problems.append(
            "the supervisor must run as root to give each server its own uid "
            f"(it runs as uid {os.geteuid()})"
        )
    _, missing = find_tools()
    if missing:
        problems.append("missing " + ", ".join(missing))
    return SandboxCheck(enabled=not problems, problem="; ".join(problems))


def refusal(problem: str) -> str:
    """What the page and the log say when a deployment cannot start without a sandbox."""
    return (
        f"Not started: MCP servers run only inside the sandbox, and it cannot run here "
        f"({problem}). Install bubblewrap, slirp4netns and nftables (`make run` does on "
        f"Debian), or set CATWALK_UNSAFE_NO_SANDBOX=1 to run servers unsandboxed as Catwalk's "
        f"own user on a machine you trust."
    )


def host_networks() -> list[str]:
    """The host's own IPv4 addresses and the networks it is attached to."""
    networks: set[str] = set()
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family != socket.AF_INET or not address.address:
                continue
            networks.add(f"{address.address}/32")
            if address.netmask:
                interface = ipaddress.ip_interface(f"{address.address}/{address.netmask}")
                networks.add(str(interface.network))
    return sorted(networks)


def readonly_paths() -> list[str]:
    """Host folders a server may read: the interpreters, node, and the operator's extras."""
    paths = [sys.base_prefix, sys.prefix]
    node = shutil.which("node")
    if node:
        paths.append(str(Path(node).resolve().parent.parent))
    paths.extend(settings.SANDBOX_READONLY_PATHS)
    # /usr is always there; anything below it needs no bind of its own.
    return [p for p in dict.fromkeys(paths) if not (p + "/").startswith("/usr/")]


def profile(
    *,
    name: str,
    uid: int,
    area: Path,
    binds: dict[str, str],
    caches: dict[str, str],
    environment_file: Path,
    launches: int = 1,
    shared_writable: dict[str, str] | None = None,
    extra_readonly: list[str] | None = None,
) -> dict:
    """The launcher's profile for one deployment (see mcpgateway/sandbox.py).

    `launches`: how many sandboxes of it may run at once (isolated mode: one per session).
    """
    tools, missing = find_tools()
    if missing:
        raise SandboxUnavailable("missing " + ", ".join(missing))
    return {
        "name": name,
        "uid": uid,
        "gid": uid,
        "writable": {
            "mount": str(area),
            "size_bytes": settings.SANDBOX_DISK_MB << 20,
            "binds": binds,
        },
        "readonly": [*readonly_paths(), *(extra_readonly or [])],
        "hidden": [str(settings.DATA_DIR)],
        "caches": [{"shared": shared, "target": target} for shared, target in caches.items()],
        "shared_writable": [
            {"source": source, "target": target}
            for source, target in (shared_writable or {}).items()
        ],
        "limits": {
            "memory_bytes": settings.SANDBOX_MEMORY_MB << 20,
            "cpus": settings.SANDBOX_CPU_PERCENT / 100,
            "pids": settings.SANDBOX_MAX_PROCESSES,
            "uid_processes": settings.SANDBOX_MAX_PROCESSES * launches,
            "open_files": settings.SANDBOX_MAX_OPEN_FILES,
        },
        "blocked": sorted({*host_networks(), *settings.SANDBOX_BLOCKED_NETWORKS}),
        "cgroup_root": settings.SANDBOX_CGROUP_ROOT,
        "tools": tools,
        "environment_file": str(environment_file),
    }


def write_profile(path: Path, data: dict) -> None:
    staging = path.with_name(path.name + ".tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1)
    os.replace(staging, path)


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def write_environment(path: Path, environment: dict[str, str]) -> None:
    """The server's environment for the launcher: `NAME='value'` lines (0600).

    Read by a shell inside the sandbox, as the server's uid, just before the server starts; the
    quoting makes every value literal.
    """
    lines = []
    for name, value in environment.items():
        if not ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not an environment variable name")
        lines.append(f"{name}={shlex.quote(value)}\n")
    staging = path.with_name(path.name + ".tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("".join(lines))
    os.replace(staging, path)


def wrap(command: list[str], profile_path: Path) -> list[str]:
    """The command the bridge runs: the launcher, then the server's own command."""
    launcher = [sys.executable, "-I", "-S", str(LAUNCHER), "--profile", str(profile_path)]
    return [*launcher, "--", *command]


def prepare(
    command: list[str],
    *,
    environment: dict[str, str],
    environment_file: Path,
    profile_file: Path,
    **profile_options,
) -> list[str]:
    """Write the server's environment and the launcher's profile (`profile`'s options); returns
    the command that runs `command` in the sandbox."""
    write_environment(environment_file, environment)
    write_profile(profile_file, profile(environment_file=environment_file, **profile_options))
    return wrap(command, profile_file)
