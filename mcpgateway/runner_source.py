"""Source deployments in the Fly runner: fetch the repository at its commit and build it, once.

A source deployment's machine is given `CATWALK_SOURCE` (JSON, set by the Fly runtime):

    {"archive": URL of the repository's tarball at the pinned commit,
     "steps": [{"what": ..., "argv": [...], "folder": relative folder}, ...],
     "folder": the server's folder, relative to the repository root,
     "http": null | {"port_argument": ..., "path": ...},
     "timeout_seconds": per step, "max_mb": the build's size limit,
     "archive_limits": optional {max_tarball_bytes, max_files, max_file_bytes, max_total_bytes}}

and a volume of its own mounted under `CATWALK_RUNNER_BUILDS` (default `/data/builds`). The
first boot downloads the archive (`mcpgateway.archive`: limits before anything is written,
links skipped), runs each step in the sandbox as a build uid of its own with only the build's
folder writable (install scripts run, but only there), and seals the result. The folder is
named by a digest of the spec and of the image the runner runs in (its Node and Python built
the native modules and virtual environments), so every later boot of the same spec on the same
image — a wake from autostop, a restart, a credential change — finds the build there and starts
at once; a new commit, recipe or image builds beside it and the old one is removed once the new
one is done. The build's home and temporary folders (npm's and uv's caches among them) are on
the volume too, not in the machine's memory, and are removed when the build ends.

While it builds, the runner answers `/healthz` itself (200, `"status": "starting"`, what it is
doing); a build that fails keeps answering 503 with `"status": "crashed"`, `"phase": "build"`
and the log's last lines, so the platform shows the reason rather than a machine that keeps
restarting. Everything the steps print also goes to stderr: Fly's logs.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from mcpgateway import archive, buildsteps

# Where a sandboxed server (or build step) of a source deployment finds its build, on a host
# and in a Fly machine alike, and the `sh -c` prefix that runs the rest of a command line in a
# folder.
APP_MOUNT = "/srv/app"
IN_FOLDER = ("/bin/sh", "-c", 'cd "$1" && shift && exec "$@"', "sh")
DEFAULT_BUILDS = "/data/builds"
BUILT_MARKER = ".catwalk-built"
LOG_TAIL_LINES = 25
DOWNLOAD_TIMEOUT_SECONDS = 60.0
# A download that trickles is stopped after this long in all.
DOWNLOAD_DEADLINE_SECONDS = 600.0
CHUNK_BYTES = 64 * 1024
# What a downloaded repository may hold, unless the spec says (the platform passes its own).
ARCHIVE_LIMITS = archive.Limits(
    max_tarball_bytes=200 << 20,
    max_files=50_000,
    max_file_bytes=50 << 20,
    max_total_bytes=500 << 20,
)


class SourceError(Exception):
    """The source spec is unusable, or the build failed; the message says why."""


@dataclass(frozen=True)
class Step:
    what: str
    argv: list[str]
    folder: str


@dataclass(frozen=True)
class SourceSpec:
    archive: str
    steps: list[Step]
    folder: str
    http: dict[str, str] | None
    timeout_seconds: float
    max_mb: int
    key: str
    limits: archive.Limits = ARCHIVE_LIMITS

    def app_path(self, app: str) -> Callable[[str], str]:
        """Rewrites the spec's `/srv/app` paths to `app` (for a server run without the sandbox,
        which sees the build where it is)."""

        def rewrite(arg: str) -> str:
            if arg == APP_MOUNT or arg.startswith(APP_MOUNT + "/"):
                return app + arg[len(APP_MOUNT) :]
            return arg

        return rewrite


def _relative(value: object, what: str) -> str:
    if not isinstance(value, str) or value.startswith("/") or "\0" in value:
        raise SourceError(f"CATWALK_SOURCE: {what} must be a relative folder")
    if ".." in value.split("/"):
        raise SourceError(f"CATWALK_SOURCE: {what} must stay inside the repository")
    return value.strip("/")


def _argv(value: object) -> list[str]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(a, str) and a and "\0" not in a for a in value)
    ):
        raise SourceError("CATWALK_SOURCE: each step's argv must be a non-empty list of strings")
    return value


def _limits(value: object) -> archive.Limits:
    if value is None:
        return ARCHIVE_LIMITS
    names = ("max_tarball_bytes", "max_files", "max_file_bytes", "max_total_bytes")
    if not isinstance(value, dict) or not all(
        isinstance(value.get(n), int) and not isinstance(value.get(n), bool) and value[n] > 0
        for n in names
    ):
        raise SourceError(f"CATWALK_SOURCE: archive_limits must give positive {', '.join(names)}")
    return archive.Limits(**{n: value[n] for n in names})


def parse_spec(text: str, image: str = "") -> SourceSpec:
    """The source spec from `CATWALK_SOURCE` for a runner in `image`; raises SourceError."""
    try:
        data = json.loads(text)
    except ValueError:
        raise SourceError("CATWALK_SOURCE is not valid JSON") from None
    if not isinstance(data, dict):
        raise SourceError("CATWALK_SOURCE must be a JSON object")
    url = data.get("archive")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise SourceError("CATWALK_SOURCE: archive must be an http(s) URL")
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list):
        raise SourceError("CATWALK_SOURCE: steps must be a list")
    steps = []
    for raw in raw_steps:
        if not isinstance(raw, dict):
            raise SourceError("CATWALK_SOURCE: each step must be an object")
        steps.append(
            Step(
                what=str(raw.get("what") or "build step"),
                argv=_argv(raw.get("argv")),
                folder=_relative(raw.get("folder", ""), "a step's folder"),
            )
        )
    http = data.get("http")
    if http is not None and not (
        isinstance(http, dict) and all(isinstance(v, str) for v in http.values())
    ):
        raise SourceError("CATWALK_SOURCE: http must be null or an object of strings")
    timeout, max_mb = data.get("timeout_seconds"), data.get("max_mb")
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise SourceError("CATWALK_SOURCE: timeout_seconds must be a positive number")
    if not isinstance(max_mb, int) or isinstance(max_mb, bool) or max_mb <= 0:
        raise SourceError("CATWALK_SOURCE: max_mb must be a positive whole number")
    keyed = {"spec": data, "image": image}
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:24]
    return SourceSpec(
        archive=url,
        steps=steps,
        folder=_relative(data.get("folder", ""), "folder"),
        http=http,
        timeout_seconds=float(timeout),
        max_mb=max_mb,
        key=key,
        limits=_limits(data.get("archive_limits")),
    )


def server_command(spec: SourceSpec, entry: list[str], http_child: list[str]) -> list[str]:
    """The server's argv: in its folder, behind the HTTP child for a Streamable HTTP server."""
    if spec.http is not None:
        entry = [
            *http_child,
            f"--port-argument={spec.http.get('port_argument', '')}",
            f"--path={spec.http.get('path', '/mcp')}",
            "--",
            *entry,
        ]
    folder = f"{APP_MOUNT}/{spec.folder}".rstrip("/")
    return [*IN_FOLDER, folder, *entry]


# --- the status the runner answers while it builds --------------------------------------------


class BuildProgress:
    """What `/healthz` says while the runner builds, and after a build failed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failed = False
        self.detail = "fetching the repository"
        self.error = ""

    def set(self, detail: str) -> None:
        with self._lock:
            self.detail = detail

    def fail(self, error: str) -> None:
        with self._lock:
            self.failed, self.error = True, error

    def health(self) -> tuple[int, dict]:
        with self._lock:
            if self.failed:
                body = {"status": "crashed", "phase": "build", "last_error": self.error}
                return 503, body
            return 200, {"status": "starting", "phase": "build", "detail": self.detail}


def serve_status(host: str, port: int, status: BuildProgress) -> ThreadingHTTPServer:
    """Answer /healthz (and 503 to everything else) on the bridge's address, in a thread."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            if self.path.split("?", 1)[0] == "/healthz":
                code, body = status.health()
            else:
                code = 503
                body = {"error": "the MCP server is being prepared; try again shortly"}
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            if code == 503 and body.get("status") != "crashed":
                self.send_header("retry-after", "10")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_HEAD = _answer

        def log_message(self, *_: object) -> None:
            return  # the proxy's checks would fill the log

    server_class = ThreadingHTTPServer
    if ":" in host:

        class IPv6Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        server_class = IPv6Server
    server = server_class((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="build-status", daemon=True).start()
    return server


# --- fetching and building --------------------------------------------------------------------


def fetch(url: str, destination: Path, limits: archive.Limits = ARCHIVE_LIMITS) -> None:
    """Download the tarball (following redirects, capped) and extract it into `destination`."""
    request = urllib.request.Request(url, headers={"User-Agent": "catwalk-runner"})  # noqa: S310
    with tempfile.TemporaryFile() as sink:
        try:
            with urllib.request.urlopen(  # noqa: S310 - the platform's own http(s) URL
                request, timeout=DOWNLOAD_TIMEOUT_SECONDS
            ) as response:
                received = 0
                deadline = time.monotonic() + DOWNLOAD_DEADLINE_SECONDS
                while chunk := response.read(CHUNK_BYTES):
                    if time.monotonic() > deadline:
                        raise SourceError("The download is too slow; try again later.")
                    received += len(chunk)
                    if received > limits.max_tarball_bytes:
                        raise SourceError(
                            f"The repository is larger than the "
                            f"{archive.size_text(limits.max_tarball_bytes)} Catwalk downloads."
                        )
                    sink.write(chunk)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 404):
                raise SourceError(
                    f"The repository's archive could not be downloaded (HTTP {exc.code}); "
                    "on Fly, Catwalk builds public repositories only."
                ) from None
            if exc.code in (403, 429):
                raise SourceError(
                    f"GitHub refused the download (HTTP {exc.code}): a rate limit, or a "
                    "repository that is not public; restart the deployment to try again."
                ) from None
            raise SourceError(f"The download failed (HTTP {exc.code}).") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise SourceError(f"The repository could not be downloaded: {exc}.") from None
        sink.seek(0)
        try:
            archive.extract(sink, destination, limits)
        except archive.ArchiveError as exc:
            raise SourceError(str(exc)) from None


@dataclass
class Builder:
    """Builds one spec into `builds/<key>/app`; steps run through `wrap` (the sandbox)."""

    spec: SourceSpec
    builds: Path
    # (argv, folder inside the app, the app, the scratch folder) -> (the command to run, its
    # environment, its cwd)
    wrap: Callable[[list[str], str, Path, Path], tuple[list[str], Mapping[str, str], str]]
    build_uid: int | None
    say: Callable[[str], None]
    status: BuildProgress

    def __post_init__(self) -> None:
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self.current: subprocess.Popen | None = None

    @property
    def folder(self) -> Path:
        return self.builds / self.spec.key

    @property
    def app(self) -> Path:
        return self.folder / "app"

    @property
    def scratch(self) -> Path:
        """The steps' home and temporary folders, on the volume: caches can be large."""
        return self.folder / "scratch"

    def built(self) -> bool:
        return (self.folder / BUILT_MARKER).is_file() and self.app.is_dir()

    def build(self) -> None:
        """Fetch and run the steps; raises SourceError with the log's last lines."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(mode=0o755, parents=True)
        self.app.mkdir(mode=0o755)
        try:
            self.status.set("fetching the repository")
            self.say(f"building from source: fetching {self.spec.archive}")
            fetch(self.spec.archive, self.app, self.spec.limits)
            for name in ("home", "tmp"):
                (self.scratch / name).mkdir(mode=0o700, parents=True)
                if self.build_uid is not None:
                    os.chown(self.scratch / name, self.build_uid, self.build_uid)
            for number, step in enumerate(self.spec.steps, 1):
                self.status.set(f"step {number} of {len(self.spec.steps)}: {step.what}")
                self.say(f"building from source: $ {' '.join(step.argv)}    ({step.what})")
                self._run(step)
            shutil.rmtree(self.scratch, ignore_errors=True)
            buildsteps.seal(self.app)
        except Exception as exc:  # every failure is the build's, for the user
            shutil.rmtree(self.folder, ignore_errors=True)
            known = isinstance(exc, SourceError | buildsteps.StepFailed)
            reason = str(exc) if known else f"{type(exc).__name__}: {exc}"
            tail = "\n".join(self.tail)
            raise SourceError(
                f"The build from source failed: {reason}"
                + (f"\n\nLast lines of the build log:\n{tail}" if tail else "")
            ) from None
        size = buildsteps.size(self.app)
        (self.folder / BUILT_MARKER).write_text(f"{size}\n")
        self.say(f"built from source: {size >> 20} MiB")
        self._remove_others()

    def _run(self, step: Step) -> None:
        if self.build_uid is not None:
            buildsteps.own(self.app, self.build_uid)
        command, environment, cwd = self.wrap(step.argv, step.folder, self.app, self.scratch)
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=dict(environment),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.current = process
        reader = threading.Thread(target=self._pump, args=(process,), daemon=True)
        reader.start()
        try:
            buildsteps.supervise(
                process,
                self.app,
                timeout_seconds=self.spec.timeout_seconds,
                max_mb=self.spec.max_mb,
            )
        finally:
            reader.join(timeout=5)
            self.current = None

    def _pump(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.tail.append(line)
            self.say(f"build: {line}")

    def stop(self) -> None:
        """Signal the running step's group, if any (the machine is being stopped): called from
        a signal handler, so it never waits."""
        if self.current is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.current.pid, signal.SIGTERM)

    def _remove_others(self) -> None:
        for entry in self.builds.iterdir():
            if entry.name != self.spec.key and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)


def build_once(builder: Builder, listen: tuple[str, int]) -> bool:
    """Build unless the spec's build is there, answering /healthz meanwhile. True once the build
    is ready; False after a failure (the status server then keeps answering until SIGTERM)."""
    if builder.built():
        return True
    status_server = serve_status(*listen, builder.status)

    def stop(*_: object) -> None:
        builder.stop()
        os._exit(0)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        builder.build()
    except SourceError as exc:
        builder.say(str(exc).replace("\n", " | "))
        builder.status.fail(str(exc))
        return False
    finally:
        signal.signal(signal.SIGTERM, previous if builder.status.failed is False else stop)
    status_server.shutdown()
    status_server.server_close()
    return True
