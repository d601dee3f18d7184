"""A local stand-in for Fly.io on 127.0.0.1: the Machines API, the logs API and Fly's proxy.

One Starlette app on uvicorn, in a background thread with its own event loop, serves three
surfaces under `base_url`:

- `{base}/v1` — the Machines API (FLY_API_URL), Bearer (or `FlyV1`) token checked: apps
  (POST, GET, DELETE), machines (create, get, list with `metadata.KEY=VALUE`, `state`, `region`
  and `include_deleted` filters, update with `current_version`, start, stop, wait with a 408 on
  timeout, delete with `force`, events; `config.mounts` with at most one volume), volumes
  (create, list, get, delete; one attached to a machine cannot be deleted; an app's volumes go
  with it), app secrets (set/unset in bulk with a version; listing gives names and digests only)
  and ip_assignments. Errors are Fly's `{"error", "status"}`.
- `{base}/api/v1/apps/{app}/logs` — the logs API (FLY_LOGS_API_URL), paged with `next_token`.
- `{base}/proxy/{app}/…` — Fly's proxy, standing for `http://<app>.flycast` (FLY_RELAY_URL is
  `relay_url(app)`): it forwards method, path, query, headers and body to a started machine of the
  app and streams the answer back unbuffered (SSE works). A stopped machine with an `autostart`
  service is started first and the request waits until it answers, as Fly's proxy does.

Machines really run: starting one launches `runner_command` (by default `python -m
mcpgateway.runner` with this interpreter, cwd = the project root) in its own process group, with
the environment Fly would give (config env, the app's latest secrets, FLY_*) plus
CATWALK_RUNNER_LISTEN/ROOT/SANDBOX_UID; a mounted volume is a local directory that outlives its
boots (see below). A machine is `started` once its health check path (the config's first http
check, else /healthz) answers at all, whatever its status. Its stdout and stderr lines become
the app's logs. A process that exits on its own is restarted per the restart policy; stop sends
the stop signal and SIGKILL after the stop timeout; a started machine with an `autostop`
service and nothing in flight (an open stream counts) for `idle_stop_seconds` is stopped.

Tests steer it with faults (`fail_next`, `never_start`, `delete_app_behind_the_back`) and read it
through `requests` (every request with its parsed JSON body), `calls` (a counter per method and
route template) and lookups (`apps`, `machines`, `volumes`, `volume_path`, `logs`, `secrets`,
`boot_env`, `launched_pids`).
`close()` (or leaving the `with` block) stops every process and the server thread.

Where it deliberately differs from Fly:
- All machines share this host: each boot listens on its own free port on 127.0.0.1 (given in
  CATWALK_RUNNER_LISTEN) instead of 0.0.0.0:<internal_port> in its own VM; image and init.cmd are
  recorded but not used; guest sizes are not enforced; every machine of every region is local.
- A boot gets a fresh, empty CATWALK_RUNNER_ROOT (as a Fly machine gets a fresh root filesystem);
  the environment starts from PATH and LANG of this host plus PYTHONUNBUFFERED, as the image sets.
- A volume is a directory on this host (`volume_path`), made at the first boot that mounts it and
  kept across stops, restarts and updates until the volume or its app is deleted; its size,
  encryption and zone are recorded, not enforced. Nothing is mounted at the mount path: instead
  every `config.env` value that is the mount path or starts with `<mount path>/` reaches the
  process with that part replaced by the directory (`/data/builds` → `<directory>/builds`).
  A machine that mounts a volume takes the volume's region, whatever region it asked for.
- `started` means the health check path answers (with any status: a crashed server's bridge
  answers 503), not just that the process runs, so tests can rely on a started machine
  answering; the checks themselves are not reported.
- No rate limits, leases, suspend, volume snapshots or extension, or public IPs unless a test
  injects them with `fail_next`; a proxied request body is read whole before it is forwarded
  (answers stream).
- Proxy failures: an unknown app, an app without a `private_v6` address, or no machine that can
  serve within `proxy_start_timeout` → 503; a machine that cannot be reached → 502.
- Starting a machine that is already starting or started is a no-op answered with its
  `previous_state`; a process that exits non-zero after its restarts are used up leaves the
  machine `failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RUNNER_COMMAND = (sys.executable, "-m", "mcpgateway.runner")
DEFAULT_TOKEN = "fly-standin-token"

STATES = {
    "created", "starting", "started", "stopping", "stopped", "suspending", "suspended",
    "replacing", "updating", "destroying", "destroyed", "failed", "launch_failed",
}  # fmt: skip
STARTABLE = {"created", "stopped", "failed"}
RUNNING = {"starting", "started"}
RESTART_POLICIES = {"no", "always", "on-failure"}
DEFAULT_MAX_RETRIES = 10
MAX_WAIT_SECONDS = 60
LOG_PAGE_SIZE = 100
APP_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
VOLUME_NAME = re.compile(r"^[a-z0-9_]{1,30}$")
VOLUME_ID = re.compile(r"^vol_[a-z0-9]{16,20}$")
REGION = re.compile(r"^[a-z]{3}$")
MAX_VOLUME_GB = 500
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
}  # fmt: skip
STATUS_NAMES = {
    400: "invalid_argument", 401: "unauthenticated", 403: "unauthorized", 404: "not_found",
    408: "deadline_exceeded", 409: "conflict", 412: "failed_precondition", 422: "invalid_argument",
    429: "rate_limited", 500: "internal", 502: "bad_gateway", 503: "unavailable",
    504: "deadline_exceeded",
}  # fmt: skip


class FlyError(Exception):
    """An API error, answered as Fly does: `{"error": message, "status": status}`."""

    def __init__(self, status_code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = {"error": message, "status": status or STATUS_NAMES.get(status_code, "unknown")}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, self.status_code)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    body: Any  # the parsed JSON body; None when empty; the raw text when it is not JSON


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    remaining: int
    message: str | None
    after: bool

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and self.pattern.search(path) is not None

    def response(self) -> JSONResponse:
        message = self.message or f"injected failure ({self.status})"
        return FlyError(self.status, message).response()


@dataclass(eq=False)
class _Boot:
    """One run of a machine's process."""

    process: asyncio.subprocess.Process
    port: int
    env: dict[str, str]
    stopping: bool = False
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    pumps: list[asyncio.Task] = field(default_factory=list)


@dataclass(eq=False)
class _Machine:
    id: str
    app: str
    name: str
    region: str
    config: dict
    private_ip: str
    public_ip: str
    sandbox_uid: int
    instance_id: str = ""
    state: str = "created"
    created_at: str = ""
    updated_at: str = ""
    events: list[dict] = field(default_factory=list)
    boot: _Boot | None = None
    last_env: dict[str, str] | None = None
    retries: int = 0
    inflight: int = 0
    idle_since: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(eq=False)
class _Volume:
    id: str
    name: str
    region: str
    zone: str
    size_gb: int
    encrypted: bool
    created_at: str
    attached_machine_id: str | None = None


@dataclass(eq=False)
class _App:
    name: str
    org_slug: str
    network: str
    id: str
    machines: dict[str, _Machine] = field(default_factory=dict)
    volumes: dict[str, _Volume] = field(default_factory=dict)
    secrets: dict[str, tuple[str, str]] = field(default_factory=dict)  # name → (value, created)
    secrets_version: int = 0
    ips: list[dict] = field(default_factory=list)
    logs: list[dict] = field(default_factory=list)


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _instance_id() -> str:
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    return "01" + "".join(secrets.choice(alphabet) for _ in range(24))


def _volume_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "vol_" + "".join(secrets.choice(alphabet) for _ in range(16))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_duration(value: Any, what: str) -> float:
    """Seconds from Fly's duration forms: "10s", "500ms", "1m30s", or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str) and value and DURATION_PART.sub("", value) == "":
        return sum(float(n) * DURATION_UNITS[unit] for n, unit in DURATION_PART.findall(value))
    raise FlyError(400, f'invalid {what}: {value!r} (use a duration such as "10s")')


def _require_object(body: Any, what: str = "request body") -> dict:
    if not isinstance(body, dict):
        raise FlyError(400, f"{what} must be a JSON object")
    return body


def _string_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise FlyError(400, f"{what} must be an object of strings")
    return value


def _validate_config(config: Any) -> dict:
    """The machine config as Fly would store it; bad input is a 400 naming the field."""
    config = _require_object(config, "config")
    if not isinstance(config.get("image"), str) or not config["image"]:
        raise FlyError(400, "config.image is required")
    _string_map(config.get("env"), "config.env")
    _string_map(config.get("metadata"), "config.metadata")
    restart = config.get("restart") or {}
    if not isinstance(restart, dict) or restart.get("policy", "on-failure") not in RESTART_POLICIES:
        raise FlyError(400, "config.restart.policy must be one of no, always, on-failure")
    memory = (config.get("guest") or {}).get("memory_mb")
    if memory is not None and (not isinstance(memory, int) or memory <= 0 or memory % 256):
        raise FlyError(400, "config.guest.memory_mb must be a positive multiple of 256")
    stop_config = config.get("stop_config") or {}
    if "timeout" in stop_config:
        parse_duration(stop_config["timeout"], "config.stop_config.timeout")
    if "signal" in stop_config:
        _signal(stop_config["signal"])
    services = config.get("services") or []
    if not isinstance(services, list) or not all(isinstance(s, dict) for s in services):
        raise FlyError(400, "config.services must be a list of objects")
    stored = json.loads(json.dumps(config))
    for service in stored.get("services") or []:
        # Fly echoes autostop "off"/"stop" back as booleans.
        if service.get("autostop") in ("off", "stop"):
            service["autostop"] = service["autostop"] == "stop"
    return stored


def _mount(config: dict) -> dict | None:
    """The config's one mount (`{"volume", "path"}`), or None; its shape is checked."""
    mounts = config.get("mounts")
    if mounts is None or mounts == []:
        return None
    if not isinstance(mounts, list) or len(mounts) != 1 or not isinstance(mounts[0], dict):
        raise FlyError(422, "config.mounts must be a list of at most one {volume, path} object")
    mount = mounts[0]
    if not isinstance(mount.get("volume"), str) or not mount["volume"]:
        raise FlyError(422, "config.mounts[0].volume must be a volume id")
    path = mount.get("path")
    parts = path.strip("/").split("/") if isinstance(path, str) else []
    if not isinstance(path, str) or not path.startswith("/") or not path.strip("/"):
        raise FlyError(422, f"config.mounts[0].path must be absolute and not /: {path!r}")
    if any(part in ("", ".", "..") for part in parts):
        raise FlyError(422, f"config.mounts[0].path must be a plain absolute path: {path!r}")
    return mount


def _on_volume(value: str, mount_path: str, local: Path) -> str:
    """`value` with the mount path at its start replaced by the volume's local directory."""
    mount_path = mount_path.rstrip("/")
    if value == mount_path or value.startswith(mount_path + "/"):
        return str(local) + value[len(mount_path) :]
    return value


def _signal(name: Any) -> signal.Signals:
    try:
        return signal.Signals[name] if isinstance(name, str) else signal.Signals(name)
    except (KeyError, ValueError):
        raise FlyError(400, f"unknown signal {name!r}") from None


def _autostarts(machine: _Machine) -> bool:
    return any(s.get("autostart") for s in machine.config.get("services") or [])


def _autostops(machine: _Machine) -> bool:
    return any(s.get("autostop") in (True, "stop", "suspend") for s in _services(machine))


def _services(machine: _Machine) -> list[dict]:
    return machine.config.get("services") or []


def _health_path(machine: _Machine) -> str:
    for check in (machine.config.get("checks") or {}).values():
        if isinstance(check, dict) and check.get("type") == "http" and check.get("path"):
            return check["path"]
    return "/healthz"


class FlyStandin:
    """Fly.io on 127.0.0.1 for tests; see the module docstring. Use as a context manager."""

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        runner_command: Iterable[str] = DEFAULT_RUNNER_COMMAND,
        project_root: Path = PROJECT_ROOT,
        idle_stop_seconds: float = 300.0,
        proxy_start_timeout: float = 60.0,
        unsandboxed: bool = False,
        region: str = "iad",
        org_slug: str = "personal",
        foreign_apps: Iterable[str] = (),
        sandbox_uid_base: int | None = None,
    ) -> None:
        self.token = token
        self.runner_command = list(runner_command)
        self.project_root = Path(project_root)
        self.idle_stop_seconds = idle_stop_seconds
        self.proxy_start_timeout = proxy_start_timeout
        self.unsandboxed = unsandboxed
        self.region = region
        self.org_slug = org_slug
        self.foreign_apps = set(foreign_apps)
        if sandbox_uid_base is None:
            # Parallel test workers on one host each take uids of their own.
            worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
            sandbox_uid_base = 20_000 + 100_000 * (int(worker) if worker.isdigit() else 0)
        self._sandbox_uids = iter(range(sandbox_uid_base, sandbox_uid_base + 100_000))
        self._root = Path(tempfile.mkdtemp(prefix="fly-standin-"))
        self._apps: dict[str, _App] = {}
        self._faults: list[_Fault] = []
        self._never_start: set[str] = set()
        self._requests: list[RecordedRequest] = []
        self._calls: Counter[tuple[str, str]] = Counter()
        self._launched_pids: list[int] = []
        self._tasks: set[asyncio.Task] = set()
        self._boots: set[_Boot] = set()
        self._closing = False
        self._closed = False

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(128)
        self._port = self._socket.getsockname()[1]
        self._server = uvicorn.Server(
            uvicorn.Config(
                self._asgi_app(),
                log_config=None,
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=2,
            )
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        ready = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve(ready)), name="fly-standin", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout=30):
            raise RuntimeError("the Fly stand-in's server thread did not start")

    # ---- addresses -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_url(self) -> str:
        """FLY_API_URL: the Machines API base (Fly's https://api.machines.dev/v1)."""
        return f"{self.base_url}/v1"

    @property
    def logs_api_url(self) -> str:
        """FLY_LOGS_API_URL: the logs API base (Fly's https://api.fly.io/api/v1)."""
        return f"{self.base_url}/api/v1"

    @property
    def proxy_url(self) -> str:
        return f"{self.base_url}/proxy"

    def relay_url(self, app: str) -> str:
        """The app's address through the proxy (Fly's http://<app>.flycast)."""
        return f"{self.proxy_url}/{app}"

    # ---- faults ----------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_pattern: str,
        status: int,
        count: int = 1,
        body: str | None = None,
        *,
        after: bool = False,
    ) -> None:
        """Answer the next `count` requests whose method matches (or "*") and whose path matches
        the regex (searched) with `status` in Fly's error shape, `body` being its message.
        With `after=True` the request is carried out first (an ambiguous create: the machine
        exists, the client saw an error)."""
        if not 400 <= status <= 599 or count < 1:
            raise ValueError("fail_next needs an error status (4xx/5xx) and a count of at least 1")
        fault = _Fault(method.upper(), re.compile(path_pattern), status, count, body, after)
        self._call(lambda: self._faults.append(fault))

    def never_start(self, app: str, enabled: bool = True) -> None:
        """The app's machines stay `starting` from now on (wait → 408; an event says why); the
        app need not exist yet."""

        def mark() -> None:
            if enabled:
                self._never_start.add(app)
            else:
                self._never_start.discard(app)

        self._call(mark)

    def delete_app_behind_the_back(self, app: str) -> None:
        """The app vanishes as if someone deleted it in Fly's dashboard: machines killed, gone."""
        self._call_async(self._delete_app(self._app(app), source="dashboard"))

    # ---- lookups ---------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, on all three surfaces, in order."""
        return self._call(lambda: list(self._requests))

    @property
    def calls(self) -> Counter[tuple[str, str]]:
        """Requests per (method, route template), e.g. ("POST", "/v1/apps/{app}/machines")."""
        return self._call(lambda: Counter(self._calls))

    @property
    def launched_pids(self) -> list[int]:
        """The process id of every machine process ever launched."""
        return self._call(lambda: list(self._launched_pids))

    def apps(self) -> list[str]:
        return self._call(lambda: sorted(self._apps))

    def machines(self, app: str) -> list[dict]:
        """The app's machines as the API shows them, destroyed ones included."""
        return self._call(lambda: [self._machine_json(m) for m in self._app(app).machines.values()])

    def volumes(self, app: str) -> list[dict]:
        """The app's volumes as the API shows them."""
        return self._call(lambda: [self._volume_json(v) for v in self._app(app).volumes.values()])

    def volume_path(self, volume_id: str) -> Path:
        """The local directory holding the volume's data: made at the first boot that mounts it,
        removed with the volume (or its app)."""
        if not VOLUME_ID.match(volume_id):
            raise ValueError(f"not a volume id: {volume_id!r}")
        return self._root / "volumes" / volume_id

    def logs(self, app: str) -> list[str]:
        """The app's log messages (its machines' stdout and stderr lines), oldest first."""
        return self._call(lambda: [e["attributes"]["message"] for e in self._app(app).logs])

    def secrets(self, app: str) -> dict[str, str]:
        """The app's secret values (the API never shows them)."""
        return self._call(lambda: {k: v for k, (v, _) in self._app(app).secrets.items()})

    def boot_env(self, app: str, machine_id: str) -> dict[str, str] | None:
        """The environment the machine's latest boot was given, or None if it never booted."""
        return self._call(lambda: self._machine(self._app(app), machine_id).last_env)

    # ---- lifecycle of the stand-in ---------------------------------------------------------

    def close(self) -> None:
        """Stop every machine process, then the server and its thread; remove the scratch root."""
        if self._closed:
            return
        self._closed = True
        if self._loop is not None and self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call_async(self._shutdown(), timeout=60)
            self._server.should_exit = True
            self._thread.join(timeout=30)
        self._socket.close()
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> FlyStandin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._http = httpx.AsyncClient(
            trust_env=False,
            timeout=httpx.Timeout(connect=5.0, read=None, write=30.0, pool=10.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
        )
        self._spawn(self._autostop_loop())
        ready.set()
        try:
            await self._server.serve(sockets=[self._socket])
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        self._closing = True  # no new boots from here on
        boots = list(self._boots)
        for boot in boots:
            boot.stopping = True
            self._kill_tree(boot)
        await asyncio.gather(*(boot.exited.wait() for boot in boots))
        for app in self._apps.values():
            for machine in app.machines.values():
                machine.boot = None
                if machine.state in RUNNING | {"stopping"}:
                    self._set_state(machine, "stopped")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if not self._http.is_closed:
            await self._http.aclose()

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the server's loop (where all state lives) and return its result."""

        async def run() -> Any:
            return fn()

        return self._call_async(run())

    def _call_async(self, coro: Awaitable[Any], timeout: float = 60) -> Any:
        loop = self._loop
        if loop is None or loop.is_closed() or not self._thread.is_alive():
            return asyncio.run(coro)  # the server is gone; nothing else touches the state
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- HTTP plumbing ---------------------------------------------------------------------

    def _asgi_app(self) -> Starlette:
        api = [
            ("POST", "/v1/apps", self._create_app),
            ("GET", "/v1/apps/{app}", self._get_app),
            ("DELETE", "/v1/apps/{app}", self._delete_app_route),
            ("POST", "/v1/apps/{app}/machines", self._create_machine),
            ("GET", "/v1/apps/{app}/machines", self._list_machines),
            ("GET", "/v1/apps/{app}/machines/{machine}", self._get_machine),
            ("POST", "/v1/apps/{app}/machines/{machine}", self._update_machine),
            ("DELETE", "/v1/apps/{app}/machines/{machine}", self._destroy_machine),
            ("POST", "/v1/apps/{app}/machines/{machine}/start", self._start_machine),
            ("POST", "/v1/apps/{app}/machines/{machine}/stop", self._stop_machine),
            ("GET", "/v1/apps/{app}/machines/{machine}/wait", self._wait_machine),
            ("GET", "/v1/apps/{app}/machines/{machine}/events", self._machine_events),
            ("POST", "/v1/apps/{app}/volumes", self._create_volume),
            ("GET", "/v1/apps/{app}/volumes", self._list_volumes),
            ("GET", "/v1/apps/{app}/volumes/{volume}", self._get_volume),
            ("DELETE", "/v1/apps/{app}/volumes/{volume}", self._delete_volume),
            ("POST", "/v1/apps/{app}/secrets", self._set_secrets),
            ("GET", "/v1/apps/{app}/secrets", self._list_secrets),
            ("GET", "/v1/apps/{app}/ip_assignments", self._list_ips),
            ("POST", "/v1/apps/{app}/ip_assignments", self._assign_ip),
            ("DELETE", "/v1/apps/{app}/ip_assignments/{ip}", self._delete_ip),
            ("GET", "/api/v1/apps/{app}/logs", self._get_logs),
        ]
        routes: list = [
            Route(path, self._endpoint(method, path, fn), methods=[method])
            for method, path, fn in api
        ]
        routes.append(Mount("/proxy", app=self._proxy))

        async def http_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)
            return FlyError(exc.status_code, exc.detail).response()

        return Starlette(routes=routes, exception_handlers={HTTPException: http_error})

    def _endpoint(self, method: str, template: str, handler: Callable) -> Callable:
        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            body, valid = self._record(request, raw, (method, template))
            if not self._authorized(request):
                return FlyError(401, "You must be authenticated to view this.").response()
            if not valid:
                return FlyError(400, "the request body is not valid JSON").response()
            fault = self._take_fault(method, request.url.path)
            if fault and not fault.after:
                return fault.response()
            try:
                status, payload = await handler(request, body)
                response = (
                    Response(status_code=status)
                    if payload is None
                    else JSONResponse(payload, status)
                )
            except FlyError as exc:
                response = exc.response()
            if fault:
                response = fault.response()
            response.headers["fly-request-id"] = secrets.token_hex(10)
            return response

        return endpoint

    def _record(self, request: Request, raw: bytes, route: tuple[str, str]) -> tuple[Any, bool]:
        try:
            body, valid = (json.loads(raw) if raw.strip() else None), True
        except ValueError:
            body, valid = raw.decode(errors="replace"), False
        self._requests.append(
            RecordedRequest(request.method, request.url.path, request.url.query, body)
        )
        self._calls[route] += 1
        return body, valid

    def _authorized(self, request: Request) -> bool:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        return scheme in ("Bearer", "FlyV1") and secrets.compare_digest(
            credentials.strip().encode(), self.token.encode()
        )

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.matches(method, path):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None

    # ---- lookups inside the loop -------------------------------------------------------------

    def _app(self, name: str) -> _App:
        app = self._apps.get(name)
        if app is None:
            raise FlyError(404, f"app not found: {name}")
        return app

    def _machine(self, app: _App, machine_id: str) -> _Machine:
        machine = app.machines.get(machine_id)
        if machine is None:
            raise FlyError(404, f"machine not found: {machine_id}")
        return machine

    def _volume(self, app: _App, volume_id: str) -> _Volume:
        volume = app.volumes.get(volume_id)
        if volume is None:
            raise FlyError(404, f"volume not found: {volume_id}")
        return volume

    def _live_machine(self, request: Request) -> _Machine:
        app = self._app(request.path_params["app"])
        machine = self._machine(app, request.path_params["machine"])
        if machine.state == "destroyed":
            raise FlyError(404, f"machine not found: {machine.id} (destroyed)")
        return machine

    def _app_json(self, app: _App) -> dict:
        live = [m for m in app.machines.values() if m.state != "destroyed"]
        return {
            "id": app.id,
            "name": app.name,
            "status": "deployed" if live else "pending",
            "organization": {"name": app.org_slug, "slug": app.org_slug},
            "network": app.network,
            "machine_count": len(live),
        }

    def _machine_json(self, machine: _Machine) -> dict:
        image = machine.config.get("image", "")
        registry, _, rest = image.partition("/") if "/" in image else ("", "", image)
        repository, _, tag = rest.partition(":")
        healthy = machine.state == "started"
        return {
            "id": machine.id,
            "name": machine.name,
            "state": machine.state,
            "region": machine.region,
            "instance_id": machine.instance_id,
            "version": machine.instance_id,
            "private_ip": machine.private_ip,
            "config": machine.config,
            "image_ref": {
                "registry": registry,
                "repository": repository,
                "tag": tag or "latest",
                "digest": "sha256:" + hashlib.sha256(image.encode()).hexdigest(),
                "labels": {},
            },
            "created_at": machine.created_at,
            "updated_at": machine.updated_at,
            "events": list(reversed(machine.events)),
            "checks": [
                {
                    "name": name,
                    "status": "passing" if healthy else "critical",
                    "output": "200 OK" if healthy else "the machine is not started",
                    "updated_at": machine.updated_at,
                }
                for name in machine.config.get("checks") or {}
            ],
            "host_status": "ok",
        }

    def _volume_json(self, volume: _Volume, state: str = "created") -> dict:
        return {
            "id": volume.id,
            "name": volume.name,
            "state": state,
            "size_gb": volume.size_gb,
            "region": volume.region,
            "zone": volume.zone,
            "encrypted": volume.encrypted,
            "created_at": volume.created_at,
            "attached_machine_id": volume.attached_machine_id,
            "attached_alloc_id": None,
        }

    # ---- apps ------------------------------------------------------------------------------

    async def _create_app(self, request: Request, body: Any) -> tuple[int, Any]:
        body = _require_object(body)
        name = body.get("app_name") or body.get("name")
        if not isinstance(name, str) or not APP_NAME.match(name):
            raise FlyError(400, "app_name must be 3-63 lowercase letters, digits and dashes")
        if name in self._apps or name in self.foreign_apps:
            raise FlyError(422, "Name has already been taken", "name_taken")
        org = body.get("org_slug") or self.org_slug
        if org != self.org_slug:
            raise FlyError(404, f"organization not found: {org}")
        network = body.get("network") or ""
        self._apps[name] = app = _App(name, org, network, secrets.token_hex(8))
        return 201, self._app_json(app)

    async def _get_app(self, request: Request, body: Any) -> tuple[int, Any]:
        name = request.path_params["app"]
        if name in self.foreign_apps:
            raise FlyError(403, "unauthorized: this app belongs to another organization")
        return 200, self._app_json(self._app(name))

    async def _delete_app_route(self, request: Request, body: Any) -> tuple[int, Any]:
        await self._delete_app(self._app(request.path_params["app"]), source="user")
        return 202, None

    async def _delete_app(self, app: _App, source: str) -> None:
        if self._apps.get(app.name) is app:
            del self._apps[app.name]
        for machine in app.machines.values():
            await self._kill(machine)
            self._event(machine, "destroy", "destroyed", source)
            self._set_state(machine, "destroyed")
        for volume in list(app.volumes.values()):
            self._drop_volume(app, volume)

    # ---- machines --------------------------------------------------------------------------

    async def _create_machine(self, request: Request, body: Any) -> tuple[int, Any]:
        app = self._app(request.path_params["app"])
        body = _require_object(body)
        config = _validate_config(body.get("config"))
        self._check_secrets_version(app, body.get("min_secrets_version"))
        volume = self._mounted_volume(app, config, None)
        machine_id = secrets.token_hex(7)
        now = _now_iso()
        index = len(app.machines) + 1
        machine = _Machine(
            id=machine_id,
            app=app.name,
            name=body.get("name") or f"{app.name}-{machine_id[:6]}",
            region=volume.region if volume else body.get("region") or self.region,
            config=config,
            private_ip=f"fdaa:0:1:a7b:{index:x}:{machine_id[:4]}:{machine_id[4:8]}:2",
            public_ip=f"2a09:8280:1::{index:x}",
            sandbox_uid=next(self._sandbox_uids),
            instance_id=_instance_id(),
            created_at=now,
            updated_at=now,
        )
        app.machines[machine_id] = machine
        if volume is not None:
            volume.attached_machine_id = machine_id
        self._event(machine, "launch", "created", "user")
        answer = self._machine_json(machine)
        if not body.get("skip_launch"):
            async with machine.lock:
                await self._start(machine, "user")
        return 200, answer

    async def _list_machines(self, request: Request, body: Any) -> tuple[int, Any]:
        app = self._app(request.path_params["app"])
        query = request.query_params
        include_deleted = query.get("include_deleted", "").lower() in ("1", "true")
        wanted_metadata = {
            key.removeprefix("metadata."): value
            for key, value in query.multi_items()
            if key.startswith("metadata.")
        }
        found = []
        for machine in app.machines.values():
            metadata = machine.config.get("metadata") or {}
            if machine.state == "destroyed" and not include_deleted:
                continue
            if any(metadata.get(k) != v for k, v in wanted_metadata.items()):
                continue
            if query.get("state") and machine.state not in query["state"].split(","):
                continue
            if query.get("region") and machine.region != query["region"]:
                continue
            found.append(self._machine_json(machine))
        return 200, found

    async def _get_machine(self, request: Request, body: Any) -> tuple[int, Any]:
        app = self._app(request.path_params["app"])
        return 200, self._machine_json(self._machine(app, request.path_params["machine"]))

    async def _update_machine(self, request: Request, body: Any) -> tuple[int, Any]:
        machine = self._live_machine(request)
        body = _require_object(body)
        config = _validate_config(body.get("config"))
        current = body.get("current_version")
        if current and current != machine.instance_id:
            raise FlyError(
                412,
                f"machine version {current} is not the current version {machine.instance_id}",
            )
        app = self._apps[machine.app]
        self._check_secrets_version(app, body.get("min_secrets_version"))
        volume = self._mounted_volume(app, config, machine.id)
        if volume is not None:
            volume.attached_machine_id = machine.id  # taken now; what it had is let go once stopped
        async with machine.lock:
            await self._stop(machine, source="user")
            self._detach(app, machine, keep=volume)
            if volume is not None:
                machine.region = volume.region
            machine.config = config
            machine.instance_id = _instance_id()
            self._event(machine, "update", "completed", "user")
            if body.get("skip_launch"):
                self._set_state(machine, "stopped")
            else:
                await self._start(machine, "user")
        return 200, self._machine_json(machine)

    async def _start_machine(self, request: Request, body: Any) -> tuple[int, Any]:
        machine = self._live_machine(request)
        async with machine.lock:
            previous = machine.state
            await self._start(machine, "user")
        return 200, {"previous_state": previous, "migrated": False, "new_host": ""}

    async def _stop_machine(self, request: Request, body: Any) -> tuple[int, Any]:
        machine = self._live_machine(request)
        body = _require_object(body or {})
        sig = _signal(body["signal"]) if body.get("signal") else None
        timeout = parse_duration(body["timeout"], "timeout") if "timeout" in body else None
        async with machine.lock:
            await self._stop(machine, source="user", sig=sig, timeout=timeout)
        return 200, {"ok": True}

    async def _wait_machine(self, request: Request, body: Any) -> tuple[int, Any]:
        app = self._app(request.path_params["app"])
        machine = self._machine(app, request.path_params["machine"])
        states = set(request.query_params.getlist("state") or ["started"])
        if not states <= STATES:
            raise FlyError(400, f"invalid state: {', '.join(sorted(states - STATES))}")
        try:
            timeout = int(request.query_params.get("timeout", MAX_WAIT_SECONDS))
        except ValueError:
            raise FlyError(400, "timeout must be a whole number of seconds") from None
        if not 1 <= timeout <= MAX_WAIT_SECONDS:
            raise FlyError(400, f"timeout must be between 1 and {MAX_WAIT_SECONDS} seconds")
        if not await self._wait_state(machine, states, timeout):
            raise FlyError(
                408,
                f"deadline_exceeded: machine {machine.id} did not reach "
                f"{'/'.join(sorted(states))} within {timeout}s (it is {machine.state})",
            )
        return 200, {"ok": True, "state": machine.state}

    async def _destroy_machine(self, request: Request, body: Any) -> tuple[int, Any]:
        machine = self._live_machine(request)
        force = request.query_params.get("force", "").lower() in ("1", "true")
        async with machine.lock:
            if machine.state in RUNNING and not force:
                raise FlyError(
                    412,
                    f"unable to destroy machine, not currently stopped (it is {machine.state})",
                )
            self._event(machine, "destroy", "destroying", "user")
            await self._kill(machine)
            self._set_state(machine, "destroyed")
            self._detach(self._apps[machine.app], machine)
        return 200, {"ok": True}

    async def _machine_events(self, request: Request, body: Any) -> tuple[int, Any]:
        app = self._app(request.path_params["app"])
        machine = self._machine(app, request.path_params["machine"])
        return 200, list(reversed(machine.events))

    def _check_secrets_version(self, app: _App, version: Any) -> None:
        if version is None:
            return
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise FlyError(400, "min_secrets_version must be a non-negative integer")
        if version > app.secrets_version:
            raise FlyError(
                422,
                f"min_secrets_version {version} is newer than the app's secrets "
                f"(version {app.secrets_version})",
            )

    def _mounted_volume(self, app: _App, config: dict, machine_id: str | None) -> _Volume | None:
        """The volume the config mounts, if any: it must be the app's and free for this machine."""
        mount = _mount(config)
        if mount is None:
            return None
        volume = app.volumes.get(mount["volume"])
        if volume is None:
            raise FlyError(422, f"volume not found in app {app.name}: {mount['volume']}")
        if volume.attached_machine_id not in (None, machine_id):
            raise FlyError(
                422,
                f"volume {volume.id} is already attached to machine {volume.attached_machine_id}",
            )
        return volume

    @staticmethod
    def _detach(app: _App, machine: _Machine, keep: _Volume | None = None) -> None:
        for volume in app.volumes.values():
            if volume.attached_machine_id == machine.id and volume is not keep:
                volume.attached_machine_id = None

    # ---- volumes ---------------------------------------------------------------------------

    async def _create_volume(self, request: Request, body: Any) -> tuple[int, Any]:
        app = self._app(request.path_params["app"])
        body = _require_object(body)
        name, size, region = body.get("name"), body.get("size_gb"), body.get("region")
        encrypted = body.get("encrypted", True)
        if not isinstance(name, str) or not VOLUME_NAME.match(name):
            raise FlyError(
                400,
                f"invalid volume name {name!r}: use at most 30 lowercase letters, digits and _",
            )
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_VOLUME_GB:
            raise FlyError(400, f"size_gb must be a whole number from 1 to {MAX_VOLUME_GB}")
        if region is not None and not (isinstance(region, str) and REGION.match(region)):
            raise FlyError(400, f"invalid region: {region!r}")
        if not isinstance(encrypted, bool):
            raise FlyError(400, "encrypted must be true or false")
        volume = _Volume(
            id=_volume_id(),
            name=name,
            region=region or self.region,
            zone=secrets.token_hex(2),
            size_gb=size,
            encrypted=encrypted,
            created_at=_now_iso(),
        )
        app.volumes[volume.id] = volume
        return 200, self._volume_json(volume)

    async def _list_volumes(self, request: Request, body: Any) -> tuple[int, Any]:
        app = self._app(request.path_params["app"])
        return 200, [self._volume_json(v) for v in app.volumes.values()]

    async def _get_volume(self, request: Request, body: Any) -> tuple[int, Any]:
        app = self._app(request.path_params["app"])
        return 200, self._volume_json(self._volume(app, request.path_params["volume"]))

    async def _delete_volume(self, request: Request, body: Any) -> tuple[int, Any]:
        app = self._app(request.path_params["app"])
        volume = self._volume(app, request.path_params["volume"])
        if volume.attached_machine_id is not None:
            raise FlyError(
                422,
                f"volume {volume.id} is attached to machine {volume.attached_machine_id}: "
                "destroy the machine first",
            )
        self._drop_volume(app, volume)
        return 200, self._volume_json(volume, state="destroyed")

    def _drop_volume(self, app: _App, volume: _Volume) -> None:
        app.volumes.pop(volume.id, None)
        shutil.rmtree(self.volume_path(volume.id), ignore_errors=True)

    # ---- secrets, IPs, logs ----------------------------------------------------------------

    async def _set_secrets(self, request: Request, body: Any) -> tuple[int, Any]:
        app = self._app(request.path_params["app"])
        values = _require_object(_require_object(body).get("values"), "values")
        for name, value in values.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise FlyError(400, f"invalid secret name: {name!r}")
            if value is not None and not isinstance(value, str):
                raise FlyError(400, f"secret {name}: value must be a string or null")
        for name, value in values.items():
            if value is None:
                app.secrets.pop(name, None)
            else:
                app.secrets[name] = (value, _now_iso())
        app.secrets_version += 1
        return 200, {"secrets": self._secret_list(app), "version": app.secrets_version}

    async def _list_secrets(self, request: Request, body: Any) -> tuple[int, Any]:
        return 200, {"secrets": self._secret_list(self._app(request.path_params["app"]))}

    @staticmethod
    def _secret_list(app: _App) -> list[dict]:
        return [
            {
                "name": name,
                "digest": hashlib.sha256(value.encode()).hexdigest()[:16],
                "created_at": created,
            }
            for name, (value, created) in sorted(app.secrets.items())
        ]

    async def _list_ips(self, request: Request, body: Any) -> tuple[int, Any]:
        return 200, {"ips": self._app(request.path_params["app"]).ips}

    async def _assign_ip(self, request: Request, body: Any) -> tuple[int, Any]:
        app = self._app(request.path_params["app"])
        body = _require_object(body)
        if body.get("type") != "private_v6":
            raise FlyError(400, "the stand-in allocates only type private_v6 (Flycast) addresses")
        address = f"fdaa:0:{secrets.token_hex(2)}:0:1::{len(app.ips) + 2:x}"
        ip = {
            "ip": address,
            "region": "global",
            "service_name": body.get("service_name") or "",
            "shared": False,
            "created_at": _now_iso(),
            "egress": False,
            "network": {"name": body.get("network") or app.network, "org_slug": app.org_slug},
        }
        app.ips.append(ip)
        return 200, dict(ip)

    async def _delete_ip(self, request: Request, body: Any) -> tuple[int, Any]:
        app = self._app(request.path_params["app"])
        address = request.path_params["ip"]
        kept = [ip for ip in app.ips if ip["ip"] != address]
        if len(kept) == len(app.ips):
            raise FlyError(404, f"ip assignment not found: {address}")
        app.ips = kept
        return 200, None

    async def _get_logs(self, request: Request, body: Any) -> tuple[int, Any]:
        app = self._app(request.path_params["app"])
        token = request.query_params.get("next_token") or "0"
        if not token.isdigit():
            raise FlyError(400, "invalid next_token")
        start = min(int(token), len(app.logs))
        instance = request.query_params.get("instance")
        region = request.query_params.get("region")
        page = app.logs[start : start + LOG_PAGE_SIZE]
        data = [
            entry
            for entry in page
            if (not instance or entry["attributes"]["instance"] == instance)
            and (not region or entry["attributes"]["region"] == region)
        ]
        return 200, {"data": data, "meta": {"next_token": str(start + len(page))}}

    # ---- machine lifecycle (always on the loop, under machine.lock) -------------------------

    def _set_state(self, machine: _Machine, state: str) -> None:
        machine.state = state
        machine.updated_at = _now_iso()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _event(
        self, machine: _Machine, kind: str, status: str, source: str, request: dict | None = None
    ) -> None:
        event = {
            "id": _instance_id(),
            "type": kind,
            "status": status,
            "source": source,
            "timestamp": int(time.time() * 1000),
        }
        if request is not None:
            event["request"] = request
        machine.events.append(event)

    async def _wait_state(self, machine: _Machine, states: set[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while machine.state not in states:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    async def _start(self, machine: _Machine, source: str) -> None:
        if machine.state not in STARTABLE:
            return
        machine.retries = 0
        self._event(machine, "start", "requested", source)
        await self._boot(machine)

    async def _boot(self, machine: _Machine) -> None:
        app = self._apps[machine.app]
        if self._closing:
            return
        self._set_state(machine, "starting")
        if app.name in self._never_start:
            self._event(
                machine,
                "start",
                "pending",
                "flyd",
                {"reason": "no host can place this machine (the stand-in's never_start is set)"},
            )
            return
        port = _free_port()
        root = self._root / machine.id
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        config_env = dict(machine.config.get("env") or {})
        mount = _mount(machine.config)
        if mount is not None:
            local = self.volume_path(mount["volume"])
            local.mkdir(parents=True, exist_ok=True)
            config_env = {k: _on_volume(v, mount["path"], local) for k, v in config_env.items()}
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            **config_env,
            **{name: value for name, (value, _) in app.secrets.items()},
            "FLY_APP_NAME": app.name,
            "FLY_MACHINE_ID": machine.id,
            "FLY_ALLOC_ID": machine.id,
            "FLY_REGION": machine.region,
            "FLY_PUBLIC_IP": machine.public_ip,
            "FLY_PRIVATE_IP": machine.private_ip,
            "FLY_IMAGE_REF": machine.config.get("image", ""),
            "FLY_MACHINE_VERSION": machine.instance_id,
            "CATWALK_RUNNER_LISTEN": f"tcp:127.0.0.1:{port}",
            "CATWALK_RUNNER_ROOT": str(root),
            "CATWALK_RUNNER_SANDBOX_UID": str(machine.sandbox_uid),
        }
        if self.unsandboxed:
            env["CATWALK_UNSAFE_NO_SANDBOX"] = "1"
        machine.last_env = env
        try:
            process = await asyncio.create_subprocess_exec(
                *self.runner_command,
                cwd=self.project_root,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                limit=1 << 20,
            )
        except OSError as exc:
            self._event(machine, "launch", "failed", "flyd", {"error": str(exc)})
            self._set_state(machine, "failed")
            return
        self._launched_pids.append(process.pid)
        boot = _Boot(process, port, env)
        machine.boot = boot
        self._boots.add(boot)
        assert process.stdout is not None and process.stderr is not None
        boot.pumps = [
            self._spawn(self._pump(app, machine, process.stdout)),
            self._spawn(self._pump(app, machine, process.stderr)),
        ]
        self._spawn(self._probe(machine, boot))
        self._spawn(self._watch(machine, boot))

    async def _pump(self, app: _App, machine: _Machine, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line over the limit: its start was dropped, go on
                continue
            if not line:
                return
            app.logs.append(
                {
                    "id": _instance_id(),
                    "type": "logs",
                    "attributes": {
                        "timestamp": _now_iso(),
                        "message": line.decode(errors="replace").rstrip("\r\n"),
                        "level": "info",
                        "instance": machine.id,
                        "region": machine.region,
                        "meta": {},
                    },
                }
            )

    async def _probe(self, machine: _Machine, boot: _Boot) -> None:
        url = f"http://127.0.0.1:{boot.port}{_health_path(machine)}"
        while machine.boot is boot and machine.state == "starting" and not boot.exited.is_set():
            with contextlib.suppress(httpx.HTTPError):
                # Any answer: the machine's process runs (a failing check is reported apart).
                if (await self._http.get(url, timeout=2.0)).status_code:
                    if machine.boot is boot and machine.state == "starting":
                        machine.idle_since = time.monotonic()
                        self._set_state(machine, "started")
                        self._event(machine, "start", "started", "flyd")
                    return
            await asyncio.sleep(0.05)

    async def _watch(self, machine: _Machine, boot: _Boot) -> None:
        code = await boot.process.wait()
        self._kill_group(boot)  # the VM is gone: so is everything it ran
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*boot.pumps), 5)
        for pump in boot.pumps:
            pump.cancel()
        restarting = self._will_restart(machine, code) and not boot.stopping
        exit_code, sig = (code, -1) if code >= 0 else (128 - code, -code)
        self._event(
            machine,
            "exit",
            "stopped",
            "flyd",
            {
                "exit_event": {
                    "exit_code": exit_code,
                    "guest_exit_code": exit_code,
                    "guest_signal": sig,
                    "signal": sig,
                    "oom_killed": False,
                    "requested_stop": boot.stopping,
                    "restarting": restarting,
                    "exited_at": _now_iso(),
                }
            },
        )
        boot.exited.set()
        self._boots.discard(boot)
        if boot.stopping:
            return
        async with machine.lock:
            if machine.boot is not boot or boot.stopping:
                return
            machine.boot = None
            if restarting:
                machine.retries += 1
                self._event(machine, "restart", "restarting", "flyd")
                await self._boot(machine)
            else:
                failed = code != 0 and self._restart_policy(machine)[0] != "no"
                self._set_state(machine, "failed" if failed else "stopped")

    def _restart_policy(self, machine: _Machine) -> tuple[str, int]:
        restart = machine.config.get("restart") or {}
        return restart.get("policy", "on-failure"), restart.get("max_retries", DEFAULT_MAX_RETRIES)

    def _will_restart(self, machine: _Machine, code: int) -> bool:
        policy, max_retries = self._restart_policy(machine)
        wanted = policy == "always" or (policy == "on-failure" and code != 0)
        return wanted and machine.retries < max_retries

    async def _stop(
        self,
        machine: _Machine,
        source: str,
        sig: signal.Signals | None = None,
        timeout: float | None = None,
    ) -> None:
        """Stop a starting or started machine: its stop signal, SIGKILL after the timeout."""
        if machine.state not in RUNNING:
            return
        stop_config = machine.config.get("stop_config") or {}
        sig = sig or _signal(stop_config.get("signal", "SIGINT"))
        if timeout is None:
            timeout = parse_duration(stop_config.get("timeout", "5s"), "stop timeout")
        self._set_state(machine, "stopping")
        self._event(machine, "stop", "stopping", source)
        boot, machine.boot = machine.boot, None
        if boot is not None:
            boot.stopping = True
            with contextlib.suppress(ProcessLookupError):
                boot.process.send_signal(sig)
            try:
                await asyncio.wait_for(boot.exited.wait(), timeout)
            except TimeoutError:
                self._kill_tree(boot)
                await boot.exited.wait()
        self._set_state(machine, "stopped")

    async def _kill(self, machine: _Machine) -> None:
        """Kill a machine's process at once (destroy --force, app deletion, teardown)."""
        boot, machine.boot = machine.boot, None
        if boot is not None:
            boot.stopping = True
            self._kill_tree(boot)
            await boot.exited.wait()
        if machine.state in RUNNING | {"stopping"}:
            self._set_state(machine, "stopped")

    @staticmethod
    def _kill_tree(boot: _Boot) -> None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(boot.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.kill()
        with contextlib.suppress(ProcessLookupError):
            boot.process.kill()
        FlyStandin._kill_group(boot)

    @staticmethod
    def _kill_group(boot: _Boot) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(boot.process.pid, signal.SIGKILL)

    async def _autostop_loop(self) -> None:
        interval = max(0.05, min(0.5, self.idle_stop_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            for app in list(self._apps.values()):
                for machine in list(app.machines.values()):
                    if self._idle(app, machine) and not machine.lock.locked():
                        self._spawn(self._autostop(app, machine))

    def _idle(self, app: _App, machine: _Machine) -> bool:
        if machine.state != "started" or machine.inflight or not _autostops(machine):
            return False
        keep = max((s.get("min_machines_running") or 0 for s in _services(machine)), default=0)
        started = sum(1 for m in app.machines.values() if m.state == "started")
        return started > keep and time.monotonic() - machine.idle_since >= self.idle_stop_seconds

    async def _autostop(self, app: _App, machine: _Machine) -> None:
        async with machine.lock:
            if self._idle(app, machine):
                await self._stop(machine, source="proxy")

    # ---- the proxy -------------------------------------------------------------------------

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        raw_path = scope.get("raw_path") or scope["path"].encode()
        match = re.fullmatch(rb"/proxy/([^/]+)(/.*)?", raw_path.split(b"?", 1)[0])
        body = await request.body()
        self._record(request, body, (request.method, "/proxy/{app}/{path}"))
        fault = self._take_fault(request.method, request.url.path)
        if match is None:
            response: Response = FlyError(404, "no app in the proxy path").response()
        elif fault:
            response = fault.response()
        else:
            app_name, rest = match.group(1).decode(), (match.group(2) or b"/").decode()
            try:
                machine = await self._route(app_name)
            except FlyError as exc:
                response = exc.response()
            else:
                await self._forward(machine, request, rest, body, scope, receive, send)
                return
        await response(scope, receive, send)

    async def _route(self, app_name: str) -> _Machine:
        """A started machine of the app, starting one if needed; claims it (in flight)."""
        app = self._apps.get(app_name)
        if app is None or not any(ip["ip"].startswith("fdaa:") for ip in app.ips):
            raise FlyError(503, f"no flycast address for app {app_name}")
        deadline = time.monotonic() + self.proxy_start_timeout
        while True:
            if self._apps.get(app_name) is not app:
                raise FlyError(503, f"app {app_name} is gone")
            machines = [m for m in app.machines.values() if m.state != "destroyed"]
            started = [m for m in machines if m.state == "started" and m.boot is not None]
            if started:
                machine = min(started, key=lambda m: m.inflight)
                machine.inflight += 1
                return machine
            if not any(m.state in RUNNING for m in machines):
                wakeable = [m for m in machines if m.state in STARTABLE and _autostarts(m)]
                if wakeable:
                    self._spawn(self._proxy_start(wakeable[0]))
                elif not any(m.state == "stopping" and _autostarts(m) for m in machines):
                    raise FlyError(503, f"no machine of app {app_name} can serve the request")
            changed = self._changed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FlyError(503, f"no machine of app {app_name} started in time")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    async def _proxy_start(self, machine: _Machine) -> None:
        async with machine.lock:
            await self._start(machine, "proxy")

    async def _forward(
        self,
        machine: _Machine,
        request: Request,
        path: str,
        body: bytes,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        try:
            boot = machine.boot
            assert boot is not None
            client = request.client.host if request.client else "127.0.0.1"
            headers = [(k, v) for k, v in request.headers.items() if k not in HOP_BY_HOP]
            headers += [
                ("fly-client-ip", client),
                ("x-forwarded-for", client),
                ("x-forwarded-proto", "http"),
                ("fly-forwarded-port", "80"),
                ("fly-region", machine.region),
                ("fly-request-id", secrets.token_hex(10)),
                ("via", "1.1 fly.io"),
            ]
            query = scope.get("query_string", b"").decode()
            url = f"http://127.0.0.1:{boot.port}{path}" + (f"?{query}" if query else "")
            outgoing = self._http.build_request(request.method, url, headers=headers, content=body)
            try:
                upstream = await self._http.send(outgoing, stream=True)
            except httpx.HTTPError as exc:
                await FlyError(502, f"could not reach machine {machine.id}: {exc}").response()(
                    scope, receive, send
                )
                return
            relay = self._relay(upstream)
            try:
                response = StreamingResponse(relay, upstream.status_code)
                response.raw_headers = [
                    (name.lower(), value)
                    for name, value in upstream.headers.raw
                    if name.lower().decode() not in HOP_BY_HOP
                ] + [(b"via", b"1.1 fly.io")]
                await response(scope, receive, send)
            finally:
                await relay.aclose()
                await upstream.aclose()
        finally:
            machine.inflight -= 1
            machine.idle_since = time.monotonic()

    @staticmethod
    async def _relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
        # A machine that goes away mid-answer ends the stream (Fly's proxy cuts it too).
        with contextlib.suppress(httpx.HTTPError):
            async for chunk in upstream.aiter_raw():
                yield chunk
