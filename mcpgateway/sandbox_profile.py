"""The sandbox launcher's profile: what one MCP server gets inside `mcpgateway/sandbox.py`.

Standard library only, no project imports. The local runtime fills it in from Django settings
(`deployments/runtimes/sandbox.py`) and the Fly runner from its machine's environment
(`mcpgateway/runner.py`); both write it, and the server's environment, with the functions here.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# Program -> the Debian package that provides it, for the message when one is missing.
REQUIRED_TOOLS = {
    "bwrap": "bubblewrap",
    "slirp4netns": "slirp4netns",
    "setpriv": "util-linux",
    "nft": "nftables",
    "mount": "mount",
}
# Where the tools are looked for unless told otherwise.
DEFAULT_TOOLS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LAUNCHER = Path(__file__).resolve().with_name("sandbox.py")
# All the environment root processes get (the bridge, the launcher and its helpers): a server's
# own variables reach only the server (`write_environment`).
ROOT_ENVIRONMENT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# The kernel's IPv4 routing tables, which list every address of this host.
FIB_TRIE = "/proc/net/fib_trie"


@dataclass(frozen=True)
class Limits:
    """What one launch of a server may use."""

    memory_bytes: int
    cpus: float
    processes: int  # per launch (the pids cgroup)
    open_files: int
    disk_bytes: int  # its writable tmpfs: home, work folder and /tmp together


def find_tools(search_path: str) -> tuple[dict[str, str], list[str]]:
    """The sandbox's programs found on `search_path`, and a description of each missing one."""
    found, missing = {}, []
    for program, package in REQUIRED_TOOLS.items():
        path = shutil.which(program, path=search_path)
        if path is None:
            missing.append(f"{program} (Debian package {package})")
        else:
            found[program] = path
    return found, missing


def problems(search_path: str, process: str) -> list[str]:
    """Why the sandbox cannot run here (none when it can); `process` is what must be root."""
    found = []
    if sys.platform != "linux":
        found.append(f"the sandbox needs Linux, this is {sys.platform}")
    elif os.geteuid() != 0:
        found.append(
            f"{process} must run as root to give each server its own uid "
            f"(it runs as uid {os.geteuid()})"
        )
    _, missing = find_tools(search_path)
    if missing:
        found.append("missing " + ", ".join(missing))
    return found


def host_networks(fib_trie: str = FIB_TRIE) -> list[str]:
    """The host's own IPv4 addresses and the networks it is attached to.

    From the kernel's routing tables: a `host LOCAL` entry is an address of this host (or a
    local range such as 127.0.0.0/8), a `link UNICAST` entry a network on one of its links.
    """
    networks: set[str] = set()
    address = None
    with open(fib_trie) as table:
        for line in table:
            text = line.strip()
            if text.startswith("|-- "):
                address = text.removeprefix("|-- ")
            elif text.startswith("/") and address is not None:
                length, *kind = text[1:].split()
                if kind[:2] in (["host", "LOCAL"], ["link", "UNICAST"]):
                    network = ipaddress.ip_network(f"{address}/{length}", strict=False)
                    networks.add(str(network))
    return sorted(networks)


def readonly_paths(extra: Iterable[str] = ()) -> list[str]:
    """Host folders a server may read: the interpreters, node, and `extra`."""
    paths = [sys.base_prefix, sys.prefix]
    node = shutil.which("node")
    if node:
        paths.append(str(Path(node).resolve().parent.parent))
    paths.extend(extra)
    # /usr is always there; anything below it needs no bind of its own.
    return [p for p in dict.fromkeys(paths) if not (p + "/").startswith("/usr/")]


def build_profile(
    *,
    name: str,
    uid: int,
    area: Path,
    binds: Mapping[str, str],
    caches: Mapping[str, str],
    shared_writable: Mapping[str, str],
    environment_file: Path,
    tools: Mapping[str, str],
    limits: Limits,
    launches: int,
    readonly: Iterable[str],
    hidden: Iterable[str],
    blocked: Iterable[str],
    cgroup_root: str,
) -> dict:
    """The launcher's profile for one server (see mcpgateway/sandbox.py).

    `area`: where its writable tmpfs is mounted; `binds`: folder name there -> path in the
    sandbox; `caches`: shared cache -> path (each launch writes to its own layer over it);
    `shared_writable`: host folder -> path, bound writable; `launches`: how many sandboxes of
    it may run at once (isolated mode: one per session).
    """
    return {
        "name": name,
        "uid": uid,
        "gid": uid,
        "writable": {"mount": str(area), "size_bytes": limits.disk_bytes, "binds": dict(binds)},
        "readonly": list(readonly),
        "hidden": list(hidden),
        "caches": [{"shared": shared, "target": target} for shared, target in caches.items()],
        "shared_writable": [
            {"source": source, "target": target} for source, target in shared_writable.items()
        ],
        "limits": {
            "memory_bytes": limits.memory_bytes,
            "cpus": limits.cpus,
            "pids": limits.processes,
            "uid_processes": limits.processes * launches,
            "open_files": limits.open_files,
        },
        "blocked": sorted(set(blocked)),
        "cgroup_root": cgroup_root,
        "tools": dict(tools),
        "environment_file": str(environment_file),
    }


def _write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable by its owner only from the first byte."""
    staging = path.with_name(path.name + ".tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(staging, path)


def write_profile(path: Path, data: dict) -> None:
    _write_private(path, json.dumps(data, indent=1))


def write_environment(path: Path, environment: Mapping[str, str]) -> None:
    """The server's environment for the launcher: `NAME='value'` lines (0600).

    Read by a shell inside the sandbox, as the server's uid, just before the server starts; the
    quoting makes every value literal.
    """
    lines = []
    for name, value in environment.items():
        if not ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not an environment variable name")
        lines.append(f"{name}={shlex.quote(value)}\n")
    _write_private(path, "".join(lines))


def launcher_command(command: list[str], profile_path: Path) -> list[str]:
    """The command that runs `command` in the sandbox the profile at `profile_path` describes."""
    launcher = [sys.executable, "-I", "-S", str(LAUNCHER), "--profile", str(profile_path)]
    return [*launcher, "--", *command]


# --- What a server (or a package download) runs with, before any credential ------------------

SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def tool_path() -> str:
    """PATH for a server: this interpreter's bin folder (uv, uvx), node's folder, the system."""
    folders = [os.path.dirname(sys.executable)]
    node = shutil.which("node")
    if node:
        folders.append(os.path.dirname(node))
    folders.extend(SYSTEM_PATH)
    return os.pathsep.join(dict.fromkeys(folders))


def package_environment(*, home: str, tmp: str, npm_cache: str, uv_cache: str) -> dict[str, str]:
    """A PATH with npx and uvx, the server's folders and package caches; nothing else."""
    return {
        "PATH": tool_path(),
        "HOME": home,
        "TMPDIR": tmp,
        "LANG": "C.UTF-8",
        "npm_config_cache": npm_cache,
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
        "UV_CACHE_DIR": uv_cache,
        # uvx builds servers' environments with this interpreter, which the warm caches hold
        # wheels for (uv would otherwise pick whichever Python it finds first).
        "UV_PYTHON": sys.executable,
    }
