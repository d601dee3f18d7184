"""The local runtime's side of the sandbox: is it available, and what a deployment gets in it.

The launcher itself is `mcpgateway/sandbox.py` (standard library only, no project imports);
this module checks the host can run it and fills in its profile from the settings, through
`mcpgateway/sandbox_profile.py`, which the Fly runner shares. See docs/security.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

# The profile's standard-library half: a leaf module that imports nothing of the project. The
# local runtime, source builds and introspection use LAUNCHER and ROOT_ENVIRONMENT from here.
from mcpgateway import sandbox_profile
from mcpgateway.sandbox_profile import LAUNCHER as LAUNCHER
from mcpgateway.sandbox_profile import ROOT_ENVIRONMENT as ROOT_ENVIRONMENT
from mcpgateway.sandbox_profile import (
    host_networks,
    write_environment,
    write_profile,
)
from mcpgateway.sandbox_profile import launcher_command as wrap

# The launcher's exit statuses (mcpgateway/sandbox.py): a server stopped because it blew a
# limit, and a sandbox that could not be built. The bridge restarts neither.
LIMIT_EXIT_STATUS = 125
SETUP_EXIT_STATUS = 126
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
    return sandbox_profile.find_tools(settings.SANDBOX_TOOLS_PATH)


def check() -> SandboxCheck:
    """Whether deployments run sandboxed here; never raises."""
    if settings.UNSAFE_NO_SANDBOX:
        return SandboxCheck(enabled=False, problem="CATWALK_UNSAFE_NO_SANDBOX is set")
    problems = sandbox_profile.problems(settings.SANDBOX_TOOLS_PATH, "the supervisor")
    return SandboxCheck(enabled=not problems, problem="; ".join(problems))


def refusal(problem: str) -> str:
    """What the page and the log say when a deployment cannot start without a sandbox."""
    return (
        f"Not started: MCP servers run only inside the sandbox, and it cannot run here "
        f"({problem}). Install bubblewrap, slirp4netns and nftables (`make run` does on "
        f"Debian), or set CATWALK_UNSAFE_NO_SANDBOX=1 to run servers unsandboxed as Catwalk's "
        f"own user on a machine you trust."
    )


def readonly_paths() -> list[str]:
    """Host folders a server may read: the interpreters, node, and the operator's extras."""
    return sandbox_profile.readonly_paths(settings.SANDBOX_READONLY_PATHS)


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
    return sandbox_profile.build_profile(
        name=name,
        uid=uid,
        area=area,
        binds=binds,
        caches=caches,
        shared_writable=shared_writable or {},
        environment_file=environment_file,
        tools=tools,
        limits=sandbox_profile.Limits(
            memory_bytes=settings.SANDBOX_MEMORY_MB << 20,
            cpus=settings.SANDBOX_CPU_PERCENT / 100,
            processes=settings.SANDBOX_MAX_PROCESSES,
            open_files=settings.SANDBOX_MAX_OPEN_FILES,
            disk_bytes=settings.SANDBOX_DISK_MB << 20,
        ),
        launches=launches,
        readonly=[*readonly_paths(), *(extra_readonly or [])],
        hidden=[str(settings.DATA_DIR)],
        blocked=[*host_networks(), *settings.SANDBOX_BLOCKED_NETWORKS],
        cgroup_root=settings.SANDBOX_CGROUP_ROOT,
    )


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
