"""The local runtime: each deployment is a bridge process on this host, owned by the supervisor.

Web requests never spawn processes: `apply()` and `wake()` only change the database (and nudge
the supervisor so it need not wait for its next poll). `manage.py supervise`
(`deployments/supervisor.py`) reconciles, using the paths and the launch specification built
here.

Per deployment, under `DATA_DIR/run/<id>/`: `bridge.sock` (the bridge's HTTP socket; in a short
private folder under /tmp when DATA_DIR is too deep for the 108-byte unix socket limit),
`bridge.pid`, `bridge.log` (the bridge's own output), `stderr.log` (the MCP server's stderr,
rotated by the bridge to `stderr.log.1`), `sandbox.json` (the sandbox launcher's profile) and the
server's `home/`, `work/` and `tmp/`. Sandboxed, the server never sees these: its home, work
folder and /tmp are SANDBOX_HOME, SANDBOX_WORK and /tmp on its own size-limited tmpfs (mounted on
`sandbox/` in the launcher's private mount namespace); unsandboxed it writes to them directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import psutil
from django.conf import settings
from django.db import transaction

from analysis.recipe import Recipe
from deployments.models import Deployment, PackageRegistry, ProcessModel, SourceBuild, Status
from deployments.runtimes import sandbox
from deployments.runtimes.base import (
    Endpoint,
    PackageError,
    Runtime,
    bridge_secret,
    deployment_command,
    register,
    validate_package,
)
from mcpgateway import sandbox_profile
from mcpgateway.runner_source import APP_MOUNT, IN_FOLDER

# sun_path holds 108 bytes including the terminating NUL.
SOCKET_PATH_MAX = 107
BRIDGE_MODULE = "mcpgateway.bridge"
SECRET_HEADER = "X-Catwalk-Bridge-Secret"  # noqa: S105 - a header name
# The bridge's redeploy route (mcpgateway/bridge/app.py), which the gateway never forwards to.
SWITCH_PATH = "/catwalk/switch"


def run_root() -> Path:
    return settings.DATA_DIR / "run"


def cache_root() -> Path:
    return settings.DATA_DIR / "cache"


def builds_root() -> Path:
    return settings.DATA_DIR / "builds"


def build_app_folder(build_id: object) -> Path:
    """Where a source build's repository tree (and its dependencies) lives on the host."""
    return builds_root() / str(build_id) / "app"


# Relays a source build that serves Streamable HTTP to the bridge's stdio (in its sandbox).
HTTP_CHILD = Path(settings.BASE_DIR) / "mcpgateway" / "http_child.py"


def source_entry(recipe: Recipe, app: str) -> list[str]:
    """A source build's server command, with the build at `app`."""
    if recipe.ecosystem == "node":
        return ["node", f"{app}/{recipe.entry['file']}"]
    venv = f"{app}/{recipe.folder}/.venv".replace("//", "/")
    python = f"{venv}/bin/python"
    kind, value = next(iter(recipe.entry.items()))
    if kind == "script":
        return [python, f"{venv}/bin/{value}"]
    if kind == "module":
        return [python, "-m", value]
    return [python, f"{app}/{recipe.folder}/{value}".replace("//", "/")]


def source_folder(recipe: Recipe, app: str) -> str:
    return f"{app}/{recipe.folder}".rstrip("/")


def short_socket_dir() -> Path:
    """A private folder for sockets whose path under DATA_DIR would be too long."""
    digest = hashlib.sha256(str(settings.DATA_DIR).encode()).hexdigest()[:12]
    # /tmp itself, not $TMPDIR: the point is a short path. ensure_private_dir refuses a folder
    # someone else planted there.
    return Path("/tmp") / f"catwalk-{digest}"  # noqa: S108


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (mode 0700) or check that an existing one is ours and private."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise PermissionError(
            f"{path} must be a directory owned by uid {os.geteuid()} with mode 0700"
        )
    return path


def _socket_path(preferred: Path, short_name: str) -> Path:
    if len(os.fsencode(preferred)) <= SOCKET_PATH_MAX:
        return preferred
    return short_socket_dir() / short_name


@dataclass(frozen=True)
class RunPaths:
    """Where one deployment's bridge keeps its files."""

    root: Path
    socket: Path
    pidfile: Path
    bridge_log: Path
    stderr_log: Path
    home: Path
    work: Path
    tmp: Path
    sandbox_area: Path
    sandbox_profile: Path
    sandbox_environment: Path

    def prepare(self) -> None:
        ensure_private_dir(run_root())
        ensure_private_dir(self.root)
        for folder in (self.home, self.work, self.tmp):
            folder.mkdir(mode=0o700, exist_ok=True)
        ensure_private_dir(self.socket.parent)

    def remove(self) -> None:
        """Delete everything of this deployment (its bridge must be gone)."""
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()


def run_paths(deployment_id: object) -> RunPaths:
    root = run_root() / str(deployment_id)
    hex_id = str(deployment_id).replace("-", "")
    return RunPaths(
        root=root,
        socket=_socket_path(root / "bridge.sock", f"{hex_id}.sock"),
        pidfile=root / "bridge.pid",
        bridge_log=root / "bridge.log",
        stderr_log=root / "stderr.log",
        home=root / "home",
        work=root / "work",
        tmp=root / "tmp",
        sandbox_area=root / "sandbox",
        sandbox_profile=root / "sandbox.json",
        sandbox_environment=root / "sandbox.env",
    )


def nudge_path() -> Path:
    """The datagram socket the supervisor listens on to start a pass at once."""
    return _socket_path(run_root() / "supervisor.nudge", "supervisor.nudge")


def nudge_supervisor() -> None:
    """Tell a running supervisor to reconcile now; does nothing when none listens."""
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
    ):
        sock.setblocking(False)
        sock.sendto(b"!", os.fsencode(nudge_path()))


# --- The bridge's identity on disk -------------------------------------------------------------


@dataclass(frozen=True)
class PidRecord:
    """A bridge as the supervisor started it: the start time and socket rule out pid reuse.

    `restart_requested_at` is the deployment's restart request as it stood when the bridge
    started (the bridge serves the credentials of that moment): a request other than that one
    is still to be carried out. The request's own value, not a clock reading of the bridge,
    so two clocks never need to agree.
    """

    pid: int
    create_time: float
    socket: str
    restart_requested_at: datetime | None = None

    def write(self, path: Path) -> None:
        data = asdict(self)
        if self.restart_requested_at is not None:
            data["restart_requested_at"] = self.restart_requested_at.isoformat()
        staging = path.with_name(path.name + ".tmp")
        staging.write_text(json.dumps(data))
        os.replace(staging, path)

    @classmethod
    def read(cls, path: Path) -> PidRecord | None:
        try:
            data = json.loads(path.read_text())
            restart = data.get("restart_requested_at")
            return cls(
                int(data["pid"]),
                float(data["create_time"]),
                str(data["socket"]),
                datetime.fromisoformat(restart) if restart else None,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def find_process(self) -> psutil.Process | None:
        """The live process this record describes, or None if it is gone or was replaced."""
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.create_time) > 0.01:
                return None
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            cmdline = process.cmdline()
        except psutil.Error:
            return None
        if BRIDGE_MODULE not in cmdline or f"unix:{self.socket}" not in cmdline:
            return None
        return process


# --- What the bridge runs as -------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start a deployment's bridge; a sandbox launcher wraps this."""

    argv: list[str]
    env: dict[str, str]
    cwd: str


# Where a sandboxed server finds its home and work folders, the same for every deployment and
# unrelated to Catwalk's own paths.
SANDBOX_HOME = "/home/server"
SANDBOX_WORK = "/srv/server"
# The sandbox's writable folders (launcher profile's `binds`), all on its own tmpfs.
SANDBOX_BINDS = {"home": SANDBOX_HOME, "work": SANDBOX_WORK, "tmp": "/tmp"}  # noqa: S108
# Package cache -> where a sandboxed server finds it (its own layer over the shared one).
SANDBOX_CACHES = {"npm": f"{SANDBOX_HOME}/.npm", "uv": f"{SANDBOX_HOME}/.cache/uv"}


# `manage.py warm_cache` leaves this in a shared cache it has filled and opened to every uid.
SHARED_CACHE_MARKER = ".catwalk-shared"


def shared_caches() -> dict[str, str]:
    """Shared package caches ready to be layered (read-only) under sandboxed servers' own.

    Only caches `warm_cache` prepared: a cache npm or uv filled as root would be unwritable
    through the overlay for a server's uid, and npm refuses to run at all.
    """
    return {
        str(cache_root() / name): path
        for name, path in SANDBOX_CACHES.items()
        if (cache_root() / name / SHARED_CACHE_MARKER).is_file()
    }


class WarmError(Exception):
    """A package could not be put into the shared caches; the message says why."""


WARM_TIMEOUT_SECONDS = 600


def warm_shared_cache(registry: str, name: str, version: str) -> None:
    """Download a package into the shared caches that sandboxed servers read, and open them.

    Runs in the sandbox like any server, as a uid of its own (one below SANDBOX_UID_BASE), with
    the shared caches bound writable and nothing of the package's own code run: npm with
    install scripts off and `true` as the command, uv installing wheels only (no builds) into
    a throwaway folder. Then every file is made writable through the overlay for every
    deployment's uid (each writes to its own layer, never here) and the cache is marked ready.
    Raises SandboxUnavailable, PackageError (a bad name) or WarmError.
    """
    validate_package(registry, name, version)
    check = sandbox.check()
    if not check.enabled:
        raise sandbox.SandboxUnavailable(sandbox.refusal(check.problem))
    # Private, so no one on the host can reach the caches that every deployment's uid may write
    # through its overlay (their files are opened to all uids below).
    root = ensure_private_dir(cache_root())
    shared = {name_: root / name_ for name_ in SANDBOX_CACHES}
    for folder in shared.values():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SHARED_CACHE_MARKER).unlink(missing_ok=True)  # not ready while it changes
    bin_dir = os.path.dirname(sys.executable)
    if registry == "npm":
        command = [
            shutil.which("npm") or "npm",
            "exec",
            "--yes",
            f"--package={name}@{version or 'latest'}",
            "--",
            "true",
        ]
    else:
        command = [
            os.path.join(bin_dir, "uv"),
            "pip",
            "install",
            "--no-build",
            "--quiet",
            "--target",
            "/tmp/warm",  # noqa: S108 - the sandbox's own /tmp
            f"{name}=={version}" if version else name,
        ]
    environment = {**sandboxed_package_environment(), "npm_config_ignore_scripts": "true"}
    with tempfile.TemporaryDirectory(prefix="warm-", dir=ensure_private_dir(run_root())) as folder:
        sandboxed = sandbox.prepare(
            command,
            environment=environment,
            environment_file=Path(folder) / "env",
            profile_file=Path(folder) / "sandbox.json",
            name="warm-cache",
            uid=settings.SANDBOX_UID_BASE - 1,
            area=Path(folder) / "sandbox",
            binds=SANDBOX_BINDS,
            caches={},
            shared_writable={str(shared[n]): target for n, target in SANDBOX_CACHES.items()},
        )
        for folder_ in shared.values():
            _open_to_all(folder_)
        try:
            result = subprocess.run(
                sandboxed,
                env=sandbox.ROOT_ENVIRONMENT,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=WARM_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise WarmError(f"{name} did not download within {WARM_TIMEOUT_SECONDS} s") from None
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip().splitlines()[-15:]
        raise WarmError(
            f"{name} could not be cached (status {result.returncode}):\n" + "\n".join(output)
        )
    for folder in shared.values():
        _open_to_all(folder)
        (folder / SHARED_CACHE_MARKER).touch()


def _open_to_all(folder: Path) -> None:
    """Every file readable and writable, every folder enterable, by any uid.

    Only through a deployment's overlay, whose writes land in its own layer: the folder lies in
    Catwalk's data folder, which no one else on the host can enter.
    """
    for path, _, files in os.walk(folder):
        os.chmod(path, 0o777)  # noqa: S103 - see above
        for entry in files:
            file = os.path.join(path, entry)
            if not os.path.islink(file):
                mode = os.stat(file).st_mode
                os.chmod(file, 0o777 if mode & 0o111 else 0o666)


def package_environment(*, home: str, tmp: str, npm_cache: str, uv_cache: str) -> dict[str, str]:
    """What an MCP server or a package download runs with, before any credential: a PATH with
    npx and uvx, its folders and package caches, and the host's TLS and proxy settings."""
    environment = sandbox_profile.package_environment(
        home=home, tmp=tmp, npm_cache=npm_cache, uv_cache=uv_cache
    )
    for name in settings.LOCAL_PASSTHROUGH_ENV:
        if name in os.environ:
            environment[name] = os.environ[name]
    return environment


def sandboxed_package_environment() -> dict[str, str]:
    """`package_environment` inside the sandbox: its own home, /tmp and cache layers."""
    return package_environment(
        home=SANDBOX_HOME,
        tmp="/tmp",  # noqa: S108 - the sandbox's own
        npm_cache=SANDBOX_CACHES["npm"],
        uv_cache=SANDBOX_CACHES["uv"],
    )


def child_environment(
    deployment: Deployment, paths: RunPaths, *, sandboxed: bool = False
) -> dict[str, str]:
    """The MCP server's whole environment: nothing of Catwalk's own, plus its credentials.

    Of the supervisor's environment only the host's TLS and proxy settings pass
    (`LOCAL_PASSTHROUGH_ENV`).

    Raises DecryptionError when a credential cannot be decrypted. Sandboxed, the npm and uv
    caches are the deployment's own, layered over the shared ones (read-only); unsandboxed they
    are the shared ones.
    """
    if sandboxed:
        environment = sandboxed_package_environment()
    else:
        environment = package_environment(
            home=str(paths.home),
            tmp=str(paths.tmp),
            npm_cache=str(cache_root() / "npm"),
            uv_cache=str(cache_root() / "uv"),
        )
    for name, value in deployment.credential_environment().items():
        # The bridge consumes (and strips) its own CATWALK_BRIDGE_* variables.
        if not name.startswith("CATWALK_BRIDGE_"):
            environment[name] = value
    return environment


def session_settings(deployment: Deployment) -> tuple[int, float]:
    """The session cap and idle timeout (seconds) of a deployment's bridge.

    `runtime_settings` may carry `max_sessions` and `session_idle_timeout_seconds`; otherwise
    the settings' defaults apply, with a much lower cap in isolated mode, where every session
    is a process of its own.
    """
    isolated = deployment.process_model == ProcessModel.ISOLATED
    cap = deployment.runtime_settings.get(
        "max_sessions",
        settings.LOCAL_ISOLATED_MAX_SESSIONS if isolated else settings.LOCAL_MAX_SESSIONS,
    )
    idle = deployment.runtime_settings.get(
        "session_idle_timeout_seconds", settings.LOCAL_SESSION_IDLE_TIMEOUT_SECONDS
    )
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        raise PackageError(f"max_sessions must be a positive whole number, not {cap!r}")
    if not isinstance(idle, (int, float)) or isinstance(idle, bool) or idle <= 0:
        raise PackageError(f"session_idle_timeout_seconds must be positive, not {idle!r}")
    return cap, idle


def session_limits(deployment: Deployment) -> list[str]:
    """Bridge flags for the session cap and idle timeout (see `session_settings`)."""
    cap, idle = session_settings(deployment)
    return ["--max-sessions", str(cap), "--session-idle-timeout", str(idle)]


def source_recipe(build: SourceBuild | None) -> tuple[Recipe, int]:
    """A source build's recipe and id; PackageError when it cannot run (yet)."""
    if build is None or build.status != "succeeded":
        raise PackageError("the source build has not finished")
    try:
        recipe = Recipe.from_meta(build.recipe)
    except ValueError as exc:
        raise PackageError(f"the build recipe cannot be used: {exc}") from None
    if not build_app_folder(build.pk).is_dir():
        raise PackageError("the source build's files are missing; deploy again to rebuild")
    return recipe, build.pk


def server_command(
    deployment: Deployment,
    paths: RunPaths,
    check: sandbox.SandboxCheck,
    build: SourceBuild | None = None,
    profile_file: Path | None = None,
) -> list[str]:
    """The MCP server's command as its bridge runs it: sandboxed, through the launcher with its
    profile (written here, to `profile_file` or the deployment's own) and its environment file.

    `build` is the source build to run (default: the deployment's own). Raises PackageError,
    DecryptionError, or SandboxUnavailable.
    """
    caches = shared_caches()
    readonly: list[str] = []
    if deployment.package_registry == PackageRegistry.SOURCE:
        recipe, build_id = source_recipe(build or deployment.source_build)
        app = APP_MOUNT if check.enabled else str(build_app_folder(build_id))
        server = [*source_entry(recipe, app), *(deployment.entry_args or [])]
        if recipe.transport == "streamable-http":
            server = [
                sys.executable,
                "-I",
                str(HTTP_CHILD),
                f"--port-argument={recipe.port_argument}",
                f"--path={recipe.http_path}",
                "--",
                *server,
            ]
            readonly.append(str(HTTP_CHILD))
        # In its own folder whatever the bridge's working directory: a redeploy switches the
        # command of a running bridge.
        server = [*IN_FOLDER, source_folder(recipe, app), *server]
        if check.enabled:
            caches = {**caches, str(build_app_folder(build_id)): APP_MOUNT}
    else:
        server = deployment_command(
            deployment,
            uvx=os.path.join(os.path.dirname(sys.executable), "uvx"),
        )
    if not check.may_start:
        raise sandbox.SandboxUnavailable(sandbox.refusal(check.problem))
    paths.prepare()
    if not check.enabled:
        return server
    # The credentials never enter a root process's environment: the bridge and the launcher
    # run with a fixed one, and the launcher hands the server's to the server's uid.
    return sandbox.prepare(
        server,
        environment=child_environment(deployment, paths, sandboxed=True),
        environment_file=paths.sandbox_environment,
        profile_file=profile_file or paths.sandbox_profile,
        name=str(deployment.id),
        uid=deployment.ensure_sandbox_uid(),
        area=paths.sandbox_area,
        binds=SANDBOX_BINDS,
        caches=caches,
        extra_readonly=readonly,
        launches=(
            session_settings(deployment)[0]
            if deployment.process_model == ProcessModel.ISOLATED
            else 1
        ),
    )


def switch_command(deployment: Deployment) -> list[str]:
    """The command of the deployment's next build, for its running bridge to switch to."""
    paths = run_paths(deployment.id)
    return server_command(
        deployment,
        paths,
        sandbox.check(),
        build=deployment.next_build,
        profile_file=paths.root / f"sandbox-build-{deployment.next_build_id}.json",
    )


def launch_spec(deployment: Deployment) -> LaunchSpec:
    """The bridge command for a deployment.

    Raises PackageError, DecryptionError, or SandboxUnavailable when the sandbox cannot run and
    CATWALK_UNSAFE_NO_SANDBOX is not set. Sandboxed, writes the launcher's profile.
    """
    paths = run_paths(deployment.id)
    check = sandbox.check()
    server = server_command(deployment, paths, check)
    fatal: list[str] = []
    if check.enabled:
        fatal = [
            "--fatal-exit-status",
            str(sandbox.LIMIT_EXIT_STATUS),
            "--fatal-exit-status",
            str(sandbox.SETUP_EXIT_STATUS),
        ]
        environment = sandbox.ROOT_ENVIRONMENT
    else:
        environment = child_environment(deployment, paths, sandboxed=False)
    argv = [
        sys.executable,
        # No PYTHON* variable or user site: the bridge runs as root.
        "-E",
        "-s",
        "-m",
        BRIDGE_MODULE,
        "--listen",
        f"unix:{paths.socket}",
        "--mode",
        deployment.process_model,
        *session_limits(deployment),
        "--stderr-log",
        str(paths.stderr_log),
        "--cwd",
        str(paths.work),
        *fatal,
        "--",
        *server,
    ]
    env = dict(environment)
    env["CATWALK_BRIDGE_SECRET"] = bridge_secret(deployment.id)
    # The project folder as working directory is what makes `-m mcpgateway.bridge` importable,
    # without a PYTHONPATH that the MCP server would inherit.
    return LaunchSpec(argv=argv, env=env, cwd=str(settings.BASE_DIR))


def tail_lines(path: Path, count: int, chunk: int = 64 * 1024) -> list[str]:
    """The last `count` lines of a text file, reading only its end."""
    if count <= 0:
        return []
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            position = handle.tell()
            data = b""
            while position > 0 and data.count(b"\n") <= count:
                step = min(chunk, position)
                position -= step
                handle.seek(position)
                data = handle.read(step) + data
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[-count:]


@register
class LocalRuntime(Runtime):
    kind = "local"

    @classmethod
    def is_configured(cls) -> bool:
        return settings.LOCAL_RUNTIME_ENABLED

    def apply(self, deployment: Deployment) -> None:
        nudge_supervisor()

    def tear_down(self, deployment_id: uuid.UUID) -> None:
        # The supervisor stops the bridge of a deployment whose row is gone.
        nudge_supervisor()

    def wake(self, deployment: Deployment) -> None:
        with transaction.atomic():
            current = Deployment.objects.select_for_update().only("status").get(pk=deployment.pk)
            if current.status == Status.SLEEPING:
                deployment.move_to(Status.STARTING, "Waking up for a request.")
        nudge_supervisor()

    def endpoint(self, deployment: Deployment) -> Endpoint:
        return Endpoint(
            unix_socket=str(run_paths(deployment.id).socket),
            headers={SECRET_HEADER: bridge_secret(deployment.id)},
        )

    def logs(self, deployment: Deployment, lines: int = 200) -> list[str]:
        paths = run_paths(deployment.id)
        recent = tail_lines(paths.stderr_log, lines)
        if len(recent) < lines:
            rotated = paths.stderr_log.with_name(paths.stderr_log.name + ".1")
            recent = tail_lines(rotated, lines - len(recent)) + recent
        return recent
