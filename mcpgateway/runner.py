"""The Fly runner: what runs inside each Fly Machine of a deployment.

    python -m mcpgateway.runner

Reads the machine's environment, prepares the MCP server's folders and environment, and
replaces itself with the bridge (`python -m mcpgateway.bridge`), which serves the server as
Streamable HTTP; Fly's SIGTERM then reaches the bridge itself, which stops the server and exits
with status 0. Standard library only, no Django: the runner image carries `mcpgateway/` alone.

The machine's environment (set by the Fly runtime, `deployments/runtimes/fly.py`):

* `CATWALK_SERVER_COMMAND`: the server's argv, a JSON array of strings (required);
* `CATWALK_SOURCE` (source deployments): the repository's archive and build steps, built once
  into the volume at `CATWALK_RUNNER_BUILDS` (default `/data/builds`) before the bridge starts
  (`mcpgateway/runner_source.py`); the server then sees its build at /srv/app;
* `CATWALK_IMAGE` (OCI deployments): the image, JSON `{"reference", "registries", "max_bytes"}`,
  pulled once into the volume at `CATWALK_RUNNER_IMAGES` (the Fly runtime sets `/data/images`;
  without it, `images` in the runner's root, which a machine loses at every boot) before the
  bridge starts (`mcpgateway/oci.py`); the server is then the image's entrypoint, with
  `CATWALK_SERVER_COMMAND` (maybe `[]`) as the arguments that replace the image's command, run
  in the sandbox with the image's files as its root;
* `CATWALK_BRIDGE_MODE` (`shared` | `isolated`), `CATWALK_MAX_SESSIONS`,
  `CATWALK_SESSION_IDLE_TIMEOUT` (seconds), `CATWALK_DEPLOYMENT` (names the sandbox);
* app secrets: `CATWALK_BRIDGE_SECRET` (required: the bridge demands it on every route but
  `/healthz`) and `CATWALK_ENV_<NAME>`, each handed to the server as `<NAME>`;
* `CATWALK_RUNNER_LISTEN` (default `tcp:0.0.0.0:8080`), `CATWALK_RUNNER_ROOT` (default
  `/var/lib/catwalk-runner`), `CATWALK_RUNNER_SANDBOX_UID` (default 10000),
  `CATWALK_RUNNER_READONLY_PATHS` (host folders the sandboxed server may read besides /usr and
  the interpreters, `:`-separated), `CATWALK_UNSAFE_NO_SANDBOX=1` (run the server unsandboxed).

The server's environment is built from nothing: PATH (node, npx, uv, uvx, the system), HOME,
TMPDIR, LANG, npm and uv cache settings, and its credentials. Nothing of the machine's own
environment (FLY_*, CATWALK_*, the relay secret) reaches it.

The server runs in the same sandbox as on a Catwalk host (`mcpgateway/sandbox.py`), which
needs root and bubblewrap, slirp4netns, setpriv and nft. Without them the runner refuses to
start unless `CATWALK_UNSAFE_NO_SANDBOX=1`. A bad environment or a refusal is one line on
stderr and exit status 78 (EX_CONFIG), never a traceback. The server's stderr goes to the
bridge's stderr, which is this process's: Fly ships it as the machine's log.

Under the root folder: `server/{home,work,tmp}` (the unsandboxed server's folders; the bridge's
working directory), `cache/{npm,uv}` (package caches: the image's warm ones, layered under a
sandboxed server's own, or used directly unsandboxed), `sandbox/` (where the launcher mounts
the server's tmpfs), `sandbox.json` (its profile) and `sandbox.env` (the server's environment).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from mcpgateway import buildsteps, oci, runner_source, sandbox_profile
from mcpgateway.bridge.config import parse_listen
from mcpgateway.sandbox import LIMIT_EXIT_STATUS, SETUP_EXIT_STATUS

EX_CONFIG = 78
MESSAGE_PREFIX = "catwalk-runner:"
CREDENTIAL_PREFIX = "CATWALK_ENV_"
SECRET_VARIABLE = "CATWALK_BRIDGE_SECRET"  # noqa: S105 - a variable's name
DEFAULT_LISTEN = "tcp:0.0.0.0:8080"
DEFAULT_ROOT = "/var/lib/catwalk-runner"
DEFAULT_SANDBOX_UID = 10_000
DEFAULT_MAX_SESSIONS = 1000
DEFAULT_SESSION_IDLE_TIMEOUT = 1800.0
# The folder holding the `mcpgateway` package: the bridge runs with it as working directory,
# which makes `-m mcpgateway.bridge` importable without a PYTHONPATH.
PACKAGE_PARENT = Path(__file__).resolve().parent.parent
# Where a sandboxed server finds its folders, on its own tmpfs (as on a Catwalk host).
SANDBOX_HOME = "/home/server"
SANDBOX_WORK = "/srv/server"
SANDBOX_BINDS = {"home": SANDBOX_HOME, "work": SANDBOX_WORK, "tmp": "/tmp"}  # noqa: S108
SANDBOX_CACHES = {"npm": f"{SANDBOX_HOME}/.npm", "uv": f"{SANDBOX_HOME}/.cache/uv"}
# An image's server: its own files as the root, a home and /tmp on its tmpfs, and its working
# folder where the image says.
IMAGE_BINDS = {"home": SANDBOX_HOME, "tmp": "/tmp"}  # noqa: S108
IMAGE_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A Machine is one server's: its sandbox gets most of the memory (the bridge needs little) and
# at most half of that as its writable tmpfs, which is memory too.
MEMORY_SHARE = 0.75
MAX_PROCESSES = 256
MAX_OPEN_FILES = 4096
HTTP_CHILD = PACKAGE_PARENT / "mcpgateway" / "http_child.py"
# A name the launcher uses in a cgroup path.
SANDBOX_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z")
TRUE_WORDS, FALSE_WORDS = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


class ConfigError(Exception):
    """The runner cannot start as configured; the message says why."""


@dataclass(frozen=True)
class RunnerConfig:
    command: list[str]
    secret: str = field(repr=False)
    credentials: dict[str, str] = field(repr=False)
    listen: str = DEFAULT_LISTEN
    mode: str = "shared"
    max_sessions: int = DEFAULT_MAX_SESSIONS
    session_idle_timeout: float = DEFAULT_SESSION_IDLE_TIMEOUT
    root: Path = Path(DEFAULT_ROOT)
    sandbox_uid: int = DEFAULT_SANDBOX_UID
    sandbox_name: str = "server"
    readonly_paths: list[str] = field(default_factory=list)
    unsafe_no_sandbox: bool = False
    source: runner_source.SourceSpec | None = None
    builds: Path = Path(runner_source.DEFAULT_BUILDS)
    image: ImageSpec | None = None
    images: Path = Path(DEFAULT_ROOT) / "images"

    @property
    def build_uid(self) -> int:
        return self.sandbox_uid + 1

    def app_folder(self) -> Path | None:
        """Where a source deployment's build is (None for a package)."""
        return None if self.source is None else self.builds / self.source.key / "app"


def _server_command(text: str | None, *, arguments_only: bool = False) -> list[str]:
    """The server's argv; for an image, the arguments that replace its command (maybe none)."""
    if not text:
        if arguments_only:
            return []
        raise ConfigError("CATWALK_SERVER_COMMAND is not set (a JSON array: the server's argv)")
    try:
        command = json.loads(text)
    except ValueError:
        raise ConfigError("CATWALK_SERVER_COMMAND is not valid JSON") from None
    if (
        not isinstance(command, list)
        or not (command or arguments_only)
        or not all(isinstance(arg, str) and "\0" not in arg for arg in command)
        or (command and not command[0])
    ):
        raise ConfigError("CATWALK_SERVER_COMMAND must be a non-empty JSON array of strings")
    return command


@dataclass(frozen=True)
class ImageSpec:
    """An OCI deployment's image (`CATWALK_IMAGE`), pulled once into the volume."""

    reference: oci.Reference
    registries: dict[str, str]
    max_bytes: int


def parse_image_spec(text: str) -> ImageSpec:
    """`{"reference": IMAGE, "registries": {host: base URL}, "max_bytes": N}`; raises
    ConfigError."""
    try:
        data = json.loads(text)
        reference = oci.parse_reference(str(data["reference"]))
        registries = {str(k): str(v) for k, v in (data.get("registries") or {}).items()}
        max_bytes = int(data.get("max_bytes") or oci.Limits().max_unpacked_bytes)
    except oci.ImageError as exc:
        raise ConfigError(f"CATWALK_IMAGE: {exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError("CATWALK_IMAGE must be a JSON object naming the image") from None
    if not all(url.startswith(("http://", "https://")) for url in registries.values()):
        raise ConfigError("CATWALK_IMAGE: a registry's URL must be http(s)")
    if max_bytes <= 0:
        raise ConfigError("CATWALK_IMAGE: max_bytes must be positive")
    return ImageSpec(reference, registries, max_bytes)


def _whole_number(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        number = int(text)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {text!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, not {number}")
    return number


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        number = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {text!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise ConfigError(f"{name} must be a positive number of seconds, not {text!r}")
    return number


def _flag(environ: Mapping[str, str], name: str) -> bool:
    text = environ.get(name, "").strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ConfigError(f"{name} must be 1 or 0, not {text!r}")


def _credentials(environ: Mapping[str, str]) -> dict[str, str]:
    credentials = {}
    for variable, value in environ.items():
        if not variable.startswith(CREDENTIAL_PREFIX):
            continue
        name = variable.removeprefix(CREDENTIAL_PREFIX)
        if not sandbox_profile.ENV_NAME.match(name):
            raise ConfigError(f"{variable} does not name an environment variable")
        # The bridge consumes (and strips) its own CATWALK_BRIDGE_* variables.
        if not name.startswith("CATWALK_BRIDGE_"):
            credentials[name] = value
    return credentials


def read_config(environ: Mapping[str, str]) -> RunnerConfig:
    """The runner's configuration from the machine's environment; raises ConfigError."""
    image = None
    if environ.get("CATWALK_IMAGE", "").strip():
        if environ.get("CATWALK_SOURCE", "").strip():
            raise ConfigError("CATWALK_IMAGE and CATWALK_SOURCE cannot both be set")
        image = parse_image_spec(environ["CATWALK_IMAGE"])
    command = _server_command(
        environ.get("CATWALK_SERVER_COMMAND"), arguments_only=image is not None
    )
    secret = environ.get(SECRET_VARIABLE, "")
    if not secret:
        raise ConfigError(f"{SECRET_VARIABLE} is not set; the bridge must not serve without it")
    mode = environ.get("CATWALK_BRIDGE_MODE", "").strip() or "shared"
    if mode not in {"shared", "isolated"}:
        raise ConfigError(f"CATWALK_BRIDGE_MODE must be shared or isolated, not {mode!r}")
    listen = environ.get("CATWALK_RUNNER_LISTEN", "").strip() or DEFAULT_LISTEN
    try:
        parse_listen(listen)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"CATWALK_RUNNER_LISTEN: {exc}") from None
    root = Path(environ.get("CATWALK_RUNNER_ROOT", "").strip() or DEFAULT_ROOT)
    if not root.is_absolute():
        raise ConfigError(f"CATWALK_RUNNER_ROOT must be an absolute path, not {str(root)!r}")
    name = environ.get("CATWALK_DEPLOYMENT", "").strip() or "server"
    if not SANDBOX_NAME.match(name):
        raise ConfigError(f"CATWALK_DEPLOYMENT must be a deployment id, not {name!r}")
    readonly = [p for p in environ.get("CATWALK_RUNNER_READONLY_PATHS", "").split(":") if p]
    if not all(os.path.isabs(p) for p in readonly):
        raise ConfigError("CATWALK_RUNNER_READONLY_PATHS must hold absolute paths")
    source = None
    if environ.get("CATWALK_SOURCE", "").strip():
        try:
            # A build is the image's: its Node and Python made the native modules and venvs.
            runner_image = f"{environ.get('FLY_IMAGE_REF', '')} {sys.version}"
            source = runner_source.parse_spec(environ["CATWALK_SOURCE"], runner_image)
        except runner_source.SourceError as exc:
            raise ConfigError(str(exc)) from None
        if parse_listen(listen).unix_path is not None:
            raise ConfigError("a source deployment needs a tcp: CATWALK_RUNNER_LISTEN")
    builds = Path(environ.get("CATWALK_RUNNER_BUILDS", "").strip() or runner_source.DEFAULT_BUILDS)
    if not builds.is_absolute():
        raise ConfigError(f"CATWALK_RUNNER_BUILDS must be an absolute path, not {str(builds)!r}")
    # Without a volume (a job machine), the machine's own root filesystem, gone with it.
    images = Path(environ.get("CATWALK_RUNNER_IMAGES", "").strip() or root / "images")
    if not images.is_absolute():
        raise ConfigError(f"CATWALK_RUNNER_IMAGES must be an absolute path, not {str(images)!r}")
    unsafe = _flag(environ, "CATWALK_UNSAFE_NO_SANDBOX")
    if image is not None:
        if unsafe:
            raise ConfigError("an OCI image runs only in the sandbox, its files as the root")
        if parse_listen(listen).unix_path is not None:
            raise ConfigError("an OCI deployment needs a tcp: CATWALK_RUNNER_LISTEN")
    return RunnerConfig(
        command=command,
        secret=secret,
        credentials=_credentials(environ),
        listen=listen,
        mode=mode,
        max_sessions=_whole_number(
            environ, "CATWALK_MAX_SESSIONS", DEFAULT_MAX_SESSIONS, 1, 1_000_000
        ),
        session_idle_timeout=_seconds(
            environ, "CATWALK_SESSION_IDLE_TIMEOUT", DEFAULT_SESSION_IDLE_TIMEOUT
        ),
        root=root,
        sandbox_uid=_whole_number(
            environ, "CATWALK_RUNNER_SANDBOX_UID", DEFAULT_SANDBOX_UID, 1, 2**32 - 3
        ),
        sandbox_name=name,
        readonly_paths=readonly,
        unsafe_no_sandbox=unsafe,
        source=source,
        builds=builds,
        image=image,
        images=images,
    )


def server_environment(
    config: RunnerConfig, *, home: str, tmp: str, npm_cache: str, uv_cache: str
) -> dict[str, str]:
    """The server's whole environment: what npx and uvx need, and its credentials."""
    environment = sandbox_profile.package_environment(
        home=home, tmp=tmp, npm_cache=npm_cache, uv_cache=uv_cache
    )
    environment.update(config.credentials)
    return environment


def machine_limits() -> sandbox_profile.Limits:
    memory = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * MEMORY_SHARE)
    return sandbox_profile.Limits(
        memory_bytes=memory,
        cpus=float(os.cpu_count() or 1),
        processes=MAX_PROCESSES,
        open_files=MAX_OPEN_FILES,
        disk_bytes=memory // 2,
    )


@dataclass(frozen=True)
class Launch:
    """The bridge's command line and environment, and what the start line says."""

    argv: list[str]
    env: dict[str, str]
    description: str


@dataclass(frozen=True)
class Server:
    """How the bridge runs the server: its command, the bridge's environment, extra flags."""

    command: list[str]
    bridge_environment: dict[str, str]
    bridge_flags: list[str]
    description: str


def warm_caches(caches: dict[str, Path]) -> dict[str, str]:
    """The image's warm caches as layers, never written as root here: a sandboxed process's
    writes land in its own layer."""
    return {
        str(caches[name]): target
        for name, target in SANDBOX_CACHES.items()
        if caches[name].is_dir()
    }


def extra_readonly(config: RunnerConfig) -> list[str]:
    extra = list(config.readonly_paths)
    if config.source is not None and config.source.http is not None:
        extra.append(str(HTTP_CHILD))
    return extra


def hidden_paths(config: RunnerConfig) -> list[str]:
    return [str(config.root)] + ([str(config.builds)] if config.source is not None else [])


def server_argv(config: RunnerConfig, *, sandboxed: bool = True) -> list[str]:
    """The server's argv: the command as given, or a source deployment's entry in its build
    (at /srv/app in the sandbox, where it is without one)."""
    if config.source is None:
        return config.command
    http_child = [sys.executable, "-I", str(HTTP_CHILD)]
    command = runner_source.server_command(config.source, config.command, http_child)
    if sandboxed:
        return command
    rewrite = config.source.app_path(str(config.app_folder()))
    return [rewrite(arg) for arg in command]


def sandboxed(config: RunnerConfig, caches: dict[str, Path]) -> Server:
    """The server in the sandbox: writes its environment file and the launcher's profile."""
    problems = sandbox_profile.problems(sandbox_profile.DEFAULT_TOOLS_PATH, "the runner")
    if problems:
        raise ConfigError(
            f"refusing to start: MCP servers run only inside the sandbox, which cannot run "
            f"here ({'; '.join(problems)}); set CATWALK_UNSAFE_NO_SANDBOX=1 to run the "
            f"server unsandboxed"
        )
    tools, _ = sandbox_profile.find_tools(sandbox_profile.DEFAULT_TOOLS_PATH)
    environment_file, profile_file = config.root / "sandbox.env", config.root / "sandbox.json"
    sandbox_profile.write_environment(
        environment_file,
        server_environment(
            config,
            home=SANDBOX_HOME,
            tmp="/tmp",  # noqa: S108 - the sandbox's own
            npm_cache=SANDBOX_CACHES["npm"],
            uv_cache=SANDBOX_CACHES["uv"],
        ),
    )
    layers = warm_caches(caches)
    app = config.app_folder()
    if app is not None:
        # The build, read-only to the server: its writes land in a layer of its own.
        layers[str(app)] = runner_source.APP_MOUNT
    profile = sandbox_profile.build_profile(
        name=config.sandbox_name,
        uid=config.sandbox_uid,
        area=config.root / "sandbox",
        binds=SANDBOX_BINDS,
        caches=layers,
        shared_writable={},
        environment_file=environment_file,
        tools=tools,
        limits=machine_limits(),
        launches=config.max_sessions if config.mode == "isolated" else 1,
        readonly=sandbox_profile.readonly_paths(extra_readonly(config)),
        hidden=hidden_paths(config),
        blocked=sandbox_profile.host_networks(),
        cgroup_root="/sys/fs/cgroup",
    )
    sandbox_profile.write_profile(profile_file, profile)
    return Server(
        command=sandbox_profile.launcher_command(server_argv(config), profile_file),
        # The credentials never enter a root process's environment: the launcher hands the
        # server its own from the file.
        bridge_environment=dict(sandbox_profile.ROOT_ENVIRONMENT),
        # A blown limit or a sandbox that cannot be built: restarting would not help.
        bridge_flags=[
            f"--fatal-exit-status={status}" for status in (LIMIT_EXIT_STATUS, SETUP_EXIT_STATUS)
        ],
        description=f"sandboxed as uid {config.sandbox_uid}",
    )


def image_environment(config: RunnerConfig, image: oci.ImageConfig) -> dict[str, str]:
    """An image's server environment, as a container's: the image's variables, a home and
    temporary folder of its own, then its credentials over them."""
    environment = {"PATH": IMAGE_DEFAULT_PATH, **image.env}
    environment.update(HOME=SANDBOX_HOME, TMPDIR="/tmp")  # noqa: S108 - the sandbox's own
    environment.update(config.credentials)
    return environment


def image_sandboxed(config: RunnerConfig, pulled: oci.PulledImage) -> Server:
    """The image's entrypoint in the sandbox, with the image's files as its root."""
    problems = sandbox_profile.problems(sandbox_profile.DEFAULT_TOOLS_PATH, "the runner")
    if problems:
        raise ConfigError(
            f"refusing to start: an OCI image runs only inside the sandbox, which cannot run "
            f"here ({'; '.join(problems)})"
        )
    try:
        argv = pulled.config.argv(config.command)
    except oci.ImageError as exc:
        raise ConfigError(str(exc)) from None
    tools, _ = sandbox_profile.find_tools(sandbox_profile.DEFAULT_TOOLS_PATH)
    environment_file, profile_file = config.root / "sandbox.env", config.root / "sandbox.json"
    sandbox_profile.write_environment(environment_file, image_environment(config, pulled.config))
    profile = sandbox_profile.build_profile(
        name=config.sandbox_name,
        uid=config.sandbox_uid,
        area=config.root / "sandbox",
        binds=IMAGE_BINDS,
        caches={},
        shared_writable={},
        environment_file=environment_file,
        tools=tools,
        limits=machine_limits(),
        launches=config.max_sessions if config.mode == "isolated" else 1,
        readonly=[],
        hidden=[],
        blocked=sandbox_profile.host_networks(),
        cgroup_root="/sys/fs/cgroup",
    )
    profile["root"] = {"image": str(pulled.rootfs), "workdir": pulled.config.working_dir or "/"}
    sandbox_profile.write_profile(profile_file, profile)
    return Server(
        command=sandbox_profile.launcher_command(argv, profile_file),
        bridge_environment=dict(sandbox_profile.ROOT_ENVIRONMENT),
        bridge_flags=[
            f"--fatal-exit-status={status}" for status in (LIMIT_EXIT_STATUS, SETUP_EXIT_STATUS)
        ],
        description=f"of {pulled.digest}, sandboxed as uid {config.sandbox_uid}",
    )


def unsandboxed(config: RunnerConfig, folders: dict[str, Path], caches: dict[str, Path]) -> Server:
    """The server as the runner's own user, with its environment through the bridge's."""
    for folder in caches.values():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    environment = server_environment(
        config,
        home=str(folders["home"]),
        tmp=str(folders["tmp"]),
        npm_cache=str(caches["npm"]),
        uv_cache=str(caches["uv"]),
    )
    return Server(
        command=server_argv(config, sandboxed=False),
        bridge_environment=environment,
        bridge_flags=[],
        description="UNSANDBOXED (CATWALK_UNSAFE_NO_SANDBOX is set)",
    )


def prepare(config: RunnerConfig, pulled: oci.PulledImage | None = None) -> Launch:
    """Make the folders and the server's files; raises ConfigError or OSError. `pulled` is an
    OCI deployment's image."""
    config.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    config.root.chmod(0o700)
    folders = {name: config.root / "server" / name for name in ("home", "work", "tmp")}
    for folder in folders.values():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    caches = {name: config.root / "cache" / name for name in SANDBOX_CACHES}
    if pulled is not None:
        server = image_sandboxed(config, pulled)
    elif config.unsafe_no_sandbox:
        server = unsandboxed(config, folders, caches)
    else:
        server = sandboxed(config, caches)
    argv = [
        sys.executable,
        # No PYTHON* variable or user site: the bridge runs as root.
        "-E",
        "-s",
        "-m",
        "mcpgateway.bridge",
        f"--listen={config.listen}",
        f"--mode={config.mode}",
        f"--max-sessions={config.max_sessions}",
        f"--session-idle-timeout={config.session_idle_timeout}",
        "--stderr-log=-",
        f"--cwd={folders['work']}",
        *server.bridge_flags,
        "--",
        *server.command,
    ]
    environment = {**server.bridge_environment, SECRET_VARIABLE: config.secret}
    return Launch(argv=argv, env=environment, description=server.description)


def say(message: str) -> None:
    print(f"{MESSAGE_PREFIX} {message}", file=sys.stderr, flush=True)


def step_wrapper(config: RunnerConfig):
    """How a build step runs: in the sandbox as the build uid with only the build's folder
    writable (or, unsandboxed, in the folder itself)."""
    if config.unsafe_no_sandbox:

        def plain(argv: list[str], folder: str, app: Path, scratch: Path):
            home = scratch / "home"
            environment = buildsteps.build_environment(
                home=str(home),
                tmp=str(scratch / "tmp"),
                npm_cache=str(home / ".npm"),
                uv_cache=str(home / ".cache" / "uv"),
            )
            return argv, environment, str(app / folder)

        return plain
    problems = sandbox_profile.problems(sandbox_profile.DEFAULT_TOOLS_PATH, "the runner")
    if problems:
        raise ConfigError(f"refusing to build: the sandbox cannot run here ({'; '.join(problems)})")
    tools, _ = sandbox_profile.find_tools(sandbox_profile.DEFAULT_TOOLS_PATH)
    environment_file, profile_file = config.root / "build.env", config.root / "build.json"
    sandbox_profile.write_environment(
        environment_file,
        buildsteps.build_environment(
            home=SANDBOX_HOME,
            tmp="/tmp",  # noqa: S108 - the sandbox's own
            npm_cache=SANDBOX_CACHES["npm"],
            uv_cache=SANDBOX_CACHES["uv"],
        ),
    )

    def sandboxed_step(argv: list[str], folder: str, app: Path, scratch: Path):
        profile = sandbox_profile.build_profile(
            name=f"{config.sandbox_name}-build",
            uid=config.build_uid,
            area=config.root / "build-sandbox",
            binds={"work": SANDBOX_WORK},
            caches={},
            # The build, and its home and temporary folders (npm's and uv's caches), on the
            # volume rather than in the sandbox's tmpfs, which is memory.
            shared_writable={
                str(app): runner_source.APP_MOUNT,
                str(scratch / "home"): SANDBOX_HOME,
                str(scratch / "tmp"): "/tmp",  # noqa: S108 - the sandbox's own
            },
            environment_file=environment_file,
            tools=tools,
            limits=machine_limits(),
            launches=1,
            readonly=sandbox_profile.readonly_paths(config.readonly_paths),
            hidden=hidden_paths(config),
            blocked=sandbox_profile.host_networks(),
            cgroup_root="/sys/fs/cgroup",
        )
        sandbox_profile.write_profile(profile_file, profile)
        inside = f"{runner_source.APP_MOUNT}/{folder}".rstrip("/")
        command = sandbox_profile.launcher_command(
            [*runner_source.IN_FOLDER, inside, *argv], profile_file
        )
        return command, sandbox_profile.ROOT_ENVIRONMENT, str(config.root)

    return sandboxed_step


def build_source(config: RunnerConfig) -> None:
    """A source deployment's build, made once into the volume before the bridge starts. A build
    that fails keeps the machine answering /healthz with the reason until it is stopped."""
    assert config.source is not None
    config.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    config.builds.mkdir(mode=0o755, parents=True, exist_ok=True)
    builder = runner_source.Builder(
        spec=config.source,
        builds=config.builds,
        wrap=step_wrapper(config),
        build_uid=None if config.unsafe_no_sandbox else config.build_uid,
        say=say,
        status=runner_source.BuildProgress(),
    )
    listen = parse_listen(config.listen)
    if not runner_source.build_once(builder, (listen.host, listen.port)):
        while True:  # SIGTERM ends it (build_once's handler exits 0)
            signal.pause()


@dataclass
class ImagePull:
    """Pulls an OCI deployment's image into the volume, once; `build_once` runs it as it runs
    a source build, answering /healthz meanwhile."""

    spec: ImageSpec
    images: Path
    say: Callable[[str], None]
    status: runner_source.BuildProgress
    pulled: oci.PulledImage | None = None

    def built(self) -> bool:
        self.pulled = oci.cached(self.spec.reference, self.images)
        return self.pulled is not None

    def build(self) -> None:
        self.status.set(f"pulling {self.spec.reference}")
        self.say(f"pulling the image {self.spec.reference}")
        limits = oci.Limits(
            max_compressed_bytes=self.spec.max_bytes, max_unpacked_bytes=self.spec.max_bytes
        )
        registry = oci.Registry(self.spec.registries, limits=limits, say=self.say)
        try:
            self.pulled = oci.pull_once(self.spec.reference, self.images, registry)
        except oci.ImageError as exc:
            raise runner_source.SourceError(f"The image could not be pulled: {exc}") from None
        self.say(f"pulled {self.spec.reference} ({self.pulled.digest})")

    def stop(self) -> None:
        return  # nothing runs apart from this process, which exits


def pull_image(config: RunnerConfig) -> oci.PulledImage:
    """An OCI deployment's image, pulled unless the volume has it. A pull that fails keeps the
    machine answering /healthz with the reason until it is stopped."""
    assert config.image is not None
    config.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    config.images.mkdir(mode=0o755, parents=True, exist_ok=True)
    pull = ImagePull(config.image, config.images, say, runner_source.BuildProgress())
    listen = parse_listen(config.listen)
    if not runner_source.build_once(pull, (listen.host, listen.port)):
        while True:  # SIGTERM ends it (build_once's handler exits 0)
            signal.pause()
    assert pull.pulled is not None
    return pull.pulled


def main() -> NoReturn:
    try:
        config = read_config(os.environ)
        pulled = None
        if config.source is not None:
            build_source(config)
        elif config.image is not None:
            pulled = pull_image(config)
        launch = prepare(config, pulled)
    except ConfigError as exc:
        say(str(exc))
        sys.exit(EX_CONFIG)
    except (OSError, ValueError) as exc:
        say(f"cannot prepare the MCP server: {exc}")
        sys.exit(EX_CONFIG)
    say(f"starting the MCP server {launch.description}: {shlex.join(config.command)}")
    try:
        os.chdir(PACKAGE_PARENT)
        os.execve(sys.executable, launch.argv, launch.env)  # noqa: S606 - an argv, no shell
    except OSError as exc:
        say(f"cannot start the bridge: {exc}")
        sys.exit(EX_CONFIG)


if __name__ == "__main__":
    main()
