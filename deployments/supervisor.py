"""The local supervisor: makes this host's bridge processes match the database.

`python manage.py supervise` runs `Supervisor.run()`, a single-threaded reconcile loop over the
deployments of the `local` runtime. It polls cheaply (one query of a few columns per pass) and
is nudged by the web process through a datagram socket so a wake-up need not wait for the poll.

- Bridges are spawned in their own session with their output in files, so they outlive the
  supervisor's crash; a pidfile (pid, start time, socket) lets the next supervisor adopt them.
- Readiness is a real MCP exchange through the bridge (initialize + tools/list), run on a
  daemon thread so a slow first `npx` download never stalls the loop.
- Failures restart with exponential backoff; a deployment that fails to start
  `MAX_FAILED_STARTS` times in a row is marked failed instead of looping forever.
- A bridge started before its deployment's latest restart request (`restart_requested_at`,
  recorded in the pidfile at spawn) is stopped and a fresh one started, also after adoption.
- SIGTERM/SIGINT stop every bridge and exit; SIGUSR1 (or `--leave-running`) exits leaving
  them serving, for upgrades.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psutil
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from deployments import redeploy
from deployments.crypto import DecryptionError
from deployments.models import (
    TRANSITIONS,
    BuildStatus,
    Deployment,
    DesiredState,
    Status,
    TransitionError,
)
from deployments.runtimes import local, sandbox
from deployments.runtimes.base import (
    Endpoint,
    PackageError,
    ProbeError,
    crash_reason,
    list_tools,
)

log = logging.getLogger("catwalk.supervisor")

POLL_SECONDS = 0.5
HEALTH_INTERVAL_SECONDS = 2.0
HEALTH_TIMEOUT_SECONDS = 2.0
PROBE_TIMEOUT_SECONDS = 60.0
PROBE_RETRY_SECONDS = 1.0
STOP_GRACE_SECONDS = 10.0
FIRST_RESTART_DELAY_SECONDS = 1.0
MAX_RESTART_DELAY_SECONDS = 300.0
MAX_FAILED_STARTS = 5
# A bridge serving this long has recovered: its next failure starts the backoff afresh.
STABLE_AFTER_SECONDS = 60.0
# Consecutive unanswered health checks before a running bridge counts as hung.
UNHEALTHY_LIMIT = 5
LOCK_WAIT_SECONDS = 2.0
SHUTDOWN_DETAIL = "Stopped with the supervisor; it starts again when the supervisor does."

ROW_FIELDS = (
    "id",
    "name",
    "desired_state",
    "status",
    "status_changed_at",
    "last_active_at",
    "restart_requested_at",
    "source_build__status",
    "next_build_id",
    "next_build__status",
)


class SupervisorAlreadyRunning(Exception):
    """Another supervisor holds the lock of this data folder."""


def lock_path() -> Path:
    return local.run_root() / "supervisor.lock"


@contextlib.contextmanager
def instance_lock():
    """Hold the exclusive supervisor lock of this DATA_DIR, or raise SupervisorAlreadyRunning."""
    local.ensure_private_dir(local.run_root())
    path = lock_path()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # `supervisor_is_running()` holds a shared lock for an instant; wait that out.
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                    raise SupervisorAlreadyRunning(
                        f"another supervisor (pid {holder}) is already running for "
                        f"{settings.DATA_DIR}"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def supervisor_is_running() -> bool:
    """Whether a supervisor holds this DATA_DIR's lock (checked without disturbing it)."""
    try:
        fd = os.open(lock_path(), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class Probe:
    """An MCP readiness check of one endpoint, on a daemon thread."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.tools: list[str] | None = None
        self.error: str | None = None
        self._done = threading.Event()
        threading.Thread(target=self._run, args=(endpoint,), daemon=True).start()

    def _run(self, endpoint: Endpoint) -> None:
        try:
            self.tools = list_tools(endpoint, PROBE_TIMEOUT_SECONDS)
        except ProbeError as exc:
            self.error = str(exc)
        except Exception as exc:  # the loop must learn of any failure, not wait forever
            self.error = repr(exc)
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()


@dataclass
class ManagedBridge:
    """A bridge process this supervisor spawned or adopted."""

    deployment_id: uuid.UUID
    process: psutil.Process
    paths: local.RunPaths
    popen: subprocess.Popen[bytes] | None = None
    # The deployment's restart request when it started (see local.PidRecord).
    restart_requested_at: datetime | None = None
    started_at: float = field(default_factory=time.monotonic)
    ready_since: float | None = None
    probe: Probe | None = None
    next_probe_at: float = 0.0
    last_health_at: float = 0.0
    unhealthy: int = 0
    child: psutil.Process | None = None
    stop_reason: str | None = None
    stop_deadline: float = 0.0
    descendants: list[psutil.Process] = field(default_factory=list)
    _client: httpx.Client | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            return self.process.is_running() and self.process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def exit_description(self) -> str:
        code = self.popen.returncode if self.popen is not None else None
        if code is None:
            return "exited"
        if code < 0:
            return f"was killed by signal {-code}"
        return f"exited with status {code}"

    def health(self) -> dict[str, Any] | None:
        """The bridge's /healthz, or None when it does not answer."""
        if self._client is None:
            self._client = httpx.Client(
                transport=httpx.HTTPTransport(uds=str(self.paths.socket)),
                base_url="http://bridge",
                timeout=HEALTH_TIMEOUT_SECONDS,
            )
        try:
            response = self._client.get("/healthz")
            health = response.json()
        except (httpx.HTTPError, ValueError):
            return None
        if not isinstance(health, dict):
            return None
        self._note_child(health.get("child_pid"))
        return health

    def _note_child(self, pid: object) -> None:
        if not isinstance(pid, int) or (self.child is not None and self.child.pid == pid):
            return
        with contextlib.suppress(psutil.Error):
            self.child = psutil.Process(pid)

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(psutil.Error):
            self.process.send_signal(sig)

    def kill_leftovers(self) -> None:
        """SIGKILL whatever the bridge left behind: its server's process group, descendants."""
        if self.child is not None:
            with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
                if self.child.is_running():
                    # The server leads its own process group (the bridge made it so): this
                    # reaches the grandchildren npx and uvx spawn.
                    os.killpg(self.child.pid, signal.SIGKILL)
        for process in self.descendants:
            with contextlib.suppress(psutil.Error):
                process.kill()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.popen is not None:
            self.popen.poll()


@dataclass
class RestartPlan:
    failures: int = 0
    not_before: float = 0.0


class Supervisor:
    """Reconciles `local` deployments with bridge processes. See the module docstring."""

    def __init__(
        self,
        *,
        poll_seconds: float = POLL_SECONDS,
        idle_timeout_seconds: int | None = None,
        start_timeout_seconds: int | None = None,
        leave_running: bool = False,
    ) -> None:
        self.poll_seconds = poll_seconds
        self.idle_timeout = (
            settings.LOCAL_IDLE_TIMEOUT_SECONDS
            if idle_timeout_seconds is None
            else idle_timeout_seconds
        )
        self.start_timeout = (
            settings.LOCAL_START_TIMEOUT_SECONDS
            if start_timeout_seconds is None
            else start_timeout_seconds
        )
        self.leave_running = leave_running
        self.bridges: dict[uuid.UUID, ManagedBridge] = {}
        # Redeploys under way: a thread per deployment waits for its bridge to switch.
        self.switches: dict[uuid.UUID, threading.Thread] = {}
        self.restarts: dict[uuid.UUID, RestartPlan] = {}
        self._exit: str | None = None  # "stop" or "leave" once a signal arrived
        self._seen: set[uuid.UUID] = set()  # the deployments of the previous pass

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        """Supervise until SIGTERM/SIGINT (stop all bridges) or SIGUSR1 (leave them)."""
        with instance_lock():
            self._install_signal_handlers()
            with self._nudge_socket() as nudges:
                self._pass(self.adopt)
                log.info(
                    "supervising local deployments in %s (%d bridges adopted)",
                    local.run_root(),
                    len(self.bridges),
                )
                self._announce_sandbox()
                while self._exit is None:
                    self._pass(self.reconcile_once)
                    self._wait(nudges)
            if self._exit == "leave":
                log.info(
                    "exiting; %d bridges left running for the next supervisor", len(self.bridges)
                )
            else:
                self.stop_all()
                log.info("all bridges stopped; exiting")

    @staticmethod
    def _announce_sandbox() -> None:
        check = sandbox.check()
        if check.enabled:
            log.info("MCP servers run sandboxed (bubblewrap, slirp4netns, own uid each)")
        elif check.may_start:
            log.warning(
                "CATWALK_UNSAFE_NO_SANDBOX is set: MCP servers run UNSANDBOXED as uid %d, "
                "with access to everything this user can reach",
                os.geteuid(),
            )
        else:
            log.error("%s", sandbox.refusal(check.problem))

    def request_exit(self, leave_running: bool) -> None:
        self._exit = "leave" if leave_running else "stop"

    def _install_signal_handlers(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            self.request_exit(self.leave_running)

        def leave(signum: int, frame: FrameType | None) -> None:
            self.request_exit(True)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGUSR1, leave)

    @contextlib.contextmanager
    def _nudge_socket(self):
        path = local.nudge_path()
        local.ensure_private_dir(path.parent)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a previous supervisor's; we hold the lock, so it is stale
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(os.fsencode(path))
            sock.setblocking(False)
            yield sock
        finally:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _wait(self, nudges: socket.socket) -> None:
        readable, _, _ = select.select([nudges], [], [], self.poll_seconds)
        if readable:
            with contextlib.suppress(BlockingIOError):
                while nudges.recv(64):
                    pass

    def _pass(self, work) -> None:
        """One unit of work against the database, surviving a database outage."""
        close_old_connections()
        try:
            work()
        except DatabaseError as exc:
            log.warning("database unavailable, retrying: %s", exc)
            close_old_connections()

    # -- adoption --------------------------------------------------------------------------

    def adopt(self) -> None:
        """Take over the bridges a previous supervisor left running; clean up the rest."""
        root = local.run_root()
        if not root.is_dir():
            return
        known = {
            row["id"]: row
            for row in Deployment.objects.filter(runtime=local.LocalRuntime.kind).values(
                "id", "status"
            )
        }
        for folder in root.iterdir():
            try:
                deployment_id = uuid.UUID(folder.name)
            except ValueError:
                continue
            paths = local.run_paths(deployment_id)
            record = local.PidRecord.read(paths.pidfile)
            process = record.find_process() if record is not None else None
            if process is not None and record is not None and record.socket == str(paths.socket):
                bridge = ManagedBridge(
                    deployment_id, process, paths, restart_requested_at=record.restart_requested_at
                )
                if known.get(deployment_id, {}).get("status") == Status.RUNNING:
                    bridge.ready_since = time.monotonic()
                self.bridges[deployment_id] = bridge
                log.info("adopted bridge pid %d of %s", process.pid, deployment_id)
            elif deployment_id not in known:
                paths.remove()
            else:
                self._clean_files(paths)

    @staticmethod
    def _clean_files(paths: local.RunPaths) -> None:
        for stale in (paths.pidfile, paths.socket):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    # -- reconciling -----------------------------------------------------------------------

    def reconcile_once(self) -> None:
        rows = {
            row["id"]: row
            for row in Deployment.objects.filter(runtime=local.LocalRuntime.kind).values(
                *ROW_FIELDS
            )
        }
        for deployment_id, bridge in list(self.bridges.items()):
            if deployment_id not in rows and bridge.stop_reason is None:
                log.info("deployment %s was deleted; stopping its bridge", deployment_id)
                self._begin_stop(bridge, "delete")
        for deployment_id in self._seen - rows.keys() - self.bridges.keys():
            local.run_paths(deployment_id).remove()  # deleted while it had no bridge
        self._seen = set(rows)
        for bridge in list(self.bridges.values()):
            if bridge.stop_reason is not None:
                self._continue_stop(bridge)
        for row in rows.values():
            try:
                self._reconcile(row)
            except TransitionError as exc:
                # Someone else changed the status meanwhile; the next pass sees the new one.
                log.info("%s", exc)
            except DatabaseError:
                raise
            except Exception:
                log.exception("could not reconcile deployment %s (%s)", row["name"], row["id"])

    def _reconcile(self, row: dict[str, Any]) -> None:
        deployment_id, status = row["id"], row["status"]
        bridge = self.bridges.get(deployment_id)
        if bridge is not None and bridge.stop_reason is not None:
            return  # finish stopping before anything else
        if bridge is not None and not bridge.alive():
            self._on_unexpected_exit(row, bridge)
            return
        if row["desired_state"] == DesiredState.STOPPED:
            self._ensure_stopped(row, bridge)
            return
        if status == Status.FAILED:
            self.restarts.pop(deployment_id, None)
        if status in (Status.SLEEPING, Status.FAILED):
            if bridge is not None:
                self._begin_stop(bridge, "discard")
            self._advance_switch(row, serving=False)
            return
        if status == Status.STOPPING:
            self._move(row, Status.STOPPED, "Stopped.")
            return
        build = row["source_build__status"]
        if build == BuildStatus.BUILDING and status == Status.PENDING:
            return  # a source deployment starts once its build is done
        if build == BuildStatus.FAILED and status == Status.PENDING:
            self._move(row, Status.FAILED, "The build failed; its log says why.")
            return
        if bridge is not None and self._restart_due(row, bridge):
            self._move(row, Status.STARTING, "Restarting, as asked.")
            self._begin_stop(bridge, "restart")  # the next passes start a fresh one
            return
        if status in (Status.PENDING, Status.STOPPED):
            self._move(row, Status.STARTING, "Starting.")
        elif status == Status.CRASHED:
            if bridge is not None:
                self._begin_stop(bridge, "discard")
                return
            plan = self.restarts.get(deployment_id)
            if plan is not None and time.monotonic() < plan.not_before:
                return
            self._move(row, Status.STARTING, "Restarting.")
        elif status == Status.RUNNING:
            if bridge is None:
                self._move(row, Status.STARTING, "Its bridge was not running; starting it.")
            else:
                self._check_running(row, bridge)
                self._advance_switch(row, serving=True)
                return
        if bridge is None:
            self._spawn(row)
        else:
            self._check_starting(row, bridge)

    def _restart_due(self, row: dict[str, Any], bridge: ManagedBridge) -> bool:
        """Was a restart asked for since this bridge started? Not carried out while the bridge
        switches to a new build, which needs it: the restart follows the switch."""
        return (
            row["status"] in (Status.STARTING, Status.RUNNING)
            and row["restart_requested_at"] != bridge.restart_requested_at
            and row["id"] not in self.switches
        )

    # -- redeploys (deployments/redeploy.py) -------------------------------------------------

    def _advance_switch(self, row: dict[str, Any], *, serving: bool) -> None:
        """Move a deployment with a next build towards it: a failed build is given up; a
        finished one is switched to by the running bridge (in a thread, as starting it may take
        a while), or simply recorded when nothing runs."""
        build_id, build_status = row["next_build_id"], row["next_build__status"]
        if build_id is None or row["id"] in self.switches:
            return
        if build_status == BuildStatus.FAILED:
            redeploy.abandon_switch(row["id"], build_id, "the new build failed; its log says why.")
        elif build_status == BuildStatus.SUCCEEDED and not serving:
            redeploy.complete_switch(row["id"], build_id)
        elif build_status == BuildStatus.SUCCEEDED:
            thread = threading.Thread(target=self._switch, args=(row["id"], build_id), daemon=True)
            self.switches[row["id"]] = thread
            thread.start()

    def _switch(self, deployment_id: uuid.UUID, build_id: int) -> None:
        try:
            deployment = Deployment.objects.select_related("next_build").get(pk=deployment_id)
            command = local.switch_command(deployment)
            endpoint = local.LocalRuntime().endpoint(deployment)
            with endpoint.client(float(settings.LOCAL_START_TIMEOUT_SECONDS)) as client:
                response = client.post(
                    local.SWITCH_PATH,
                    json={"command": command, "grace": settings.LOCAL_SWITCH_GRACE_SECONDS},
                )
            if response.status_code == 200:
                redeploy.complete_switch(deployment_id, build_id)
                log.info("deployment %s switched to build %s", deployment_id, build_id)
            else:
                reason = response.json().get("error", response.text[:500])
                redeploy.abandon_switch(deployment_id, build_id, f"the new version: {reason}")
        except (PackageError, DecryptionError, sandbox.SandboxUnavailable) as exc:
            redeploy.abandon_switch(deployment_id, build_id, str(exc))
        except (httpx.HTTPError, ValueError) as exc:
            redeploy.abandon_switch(deployment_id, build_id, f"the bridge did not answer: {exc}")
        except Exception:
            log.exception("switching deployment %s failed", deployment_id)
            redeploy.abandon_switch(deployment_id, build_id, "an internal error; it is logged.")
        finally:
            close_old_connections()
            self.switches.pop(deployment_id, None)

    def _move(self, row: dict[str, Any], status: str, detail: str) -> None:
        deployment = Deployment(id=row["id"], status=row["status"])
        if deployment.move_to(status, detail):
            log.info("%s (%s): %s", row["name"], row["id"], detail.splitlines()[0])
        row["status"] = status

    # -- starting --------------------------------------------------------------------------

    def _spawn(self, row: dict[str, Any]) -> None:
        try:
            deployment = Deployment.objects.get(pk=row["id"])
        except Deployment.DoesNotExist:
            return  # deleted since this pass began
        try:
            spec = local.launch_spec(deployment)
        except (PackageError, DecryptionError) as exc:
            self._move(row, Status.FAILED, f"Cannot start: {exc}")
            return
        except sandbox.SandboxUnavailable as exc:
            log.error("%s (%s): %s", row["name"], row["id"], exc)
            self._move(row, Status.FAILED, str(exc))
            return
        paths = local.run_paths(deployment.id)  # prepared by launch_spec
        self._clean_files(paths)
        try:
            with open(paths.bridge_log, "ab") as output:
                popen = subprocess.Popen(
                    spec.argv,
                    env=spec.env,
                    cwd=spec.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=output,
                    start_new_session=True,
                )
            process = psutil.Process(popen.pid)
            local.PidRecord(
                popen.pid,
                process.create_time(),
                str(paths.socket),
                deployment.restart_requested_at,
            ).write(paths.pidfile)
        except (OSError, psutil.Error) as exc:
            self._record_failure(row, f"Cannot start the bridge: {exc}")
            return
        self.bridges[deployment.id] = ManagedBridge(
            deployment.id,
            process,
            paths,
            popen,
            restart_requested_at=deployment.restart_requested_at,
        )
        log.info("%s (%s): bridge started, pid %d", row["name"], row["id"], popen.pid)

    def _check_starting(self, row: dict[str, Any], bridge: ManagedBridge) -> None:
        now = time.monotonic()
        if now - bridge.started_at > self.start_timeout:
            self._fail(row, bridge, f"Not ready after {self.start_timeout} s.")
            return
        probe = bridge.probe
        if probe is None:
            if now < bridge.next_probe_at:
                return
            health = bridge.health()
            if health is None or health.get("status") in ("starting", "restarting"):
                return
            if health.get("status") == "crashed":
                self._fail(row, bridge, crash_reason(health))
                return
            endpoint = local.LocalRuntime().endpoint(Deployment(id=row["id"]))
            bridge.probe = Probe(endpoint)
            return
        if not probe.done:
            return
        bridge.probe = None
        if probe.tools is None:
            log.debug("%s: not ready yet: %s", row["name"], probe.error)
            bridge.next_probe_at = now + PROBE_RETRY_SECONDS
            return
        bridge.ready_since = now
        count = len(probe.tools)
        self._move(row, Status.RUNNING, f"Serving {count} tool{'s' if count != 1 else ''}.")

    # -- running ---------------------------------------------------------------------------

    def _check_running(self, row: dict[str, Any], bridge: ManagedBridge) -> None:
        if self._is_idle(row):
            self._move(row, Status.SLEEPING, "Idle; wakes on the next request.")
            self._begin_stop(bridge, "discard")
            return
        now = time.monotonic()
        if now - bridge.last_health_at < HEALTH_INTERVAL_SECONDS:
            return
        bridge.last_health_at = now
        health = bridge.health()
        if health is None:
            bridge.unhealthy += 1
            if bridge.unhealthy >= UNHEALTHY_LIMIT:
                self._fail(row, bridge, "The bridge stopped answering health checks.")
            return
        bridge.unhealthy = 0
        if health.get("status") == "crashed":
            self._fail(row, bridge, crash_reason(health))
        elif bridge.ready_since is not None and now - bridge.ready_since > STABLE_AFTER_SECONDS:
            self.restarts.pop(row["id"], None)

    def _is_idle(self, row: dict[str, Any]) -> bool:
        if self.idle_timeout <= 0:
            return False
        # Counted from the later of the last request and the start, so a deployment woken by a
        # request is not put back to sleep before the gateway records that request.
        since = max(filter(None, (row["last_active_at"], row["status_changed_at"])))
        return timezone.now() - since > timedelta(seconds=self.idle_timeout)

    # -- failures --------------------------------------------------------------------------

    def _fail(self, row: dict[str, Any], bridge: ManagedBridge, reason: str) -> None:
        self._begin_stop(bridge, "discard")
        self._record_failure(row, reason)

    def _on_unexpected_exit(self, row: dict[str, Any], bridge: ManagedBridge) -> None:
        self._forget(bridge)
        log.warning(
            "%s (%s): bridge pid %d %s",
            row["name"],
            row["id"],
            bridge.pid,
            bridge.exit_description(),
        )
        if row["status"] in (Status.STARTING, Status.RUNNING):
            tail = local.tail_lines(bridge.paths.bridge_log, 5)
            detail = f"The bridge {bridge.exit_description()}."
            self._record_failure(row, "\n".join([detail, *tail]))

    def _record_failure(self, row: dict[str, Any], reason: str) -> None:
        """Crashed with a backoff before the next start, or failed after too many."""
        plan = self.restarts.setdefault(row["id"], RestartPlan())
        plan.failures += 1
        if plan.failures >= MAX_FAILED_STARTS:
            self._move(row, Status.FAILED, f"Gave up after {plan.failures} failures. {reason}")
            return
        delay = min(
            FIRST_RESTART_DELAY_SECONDS * 2 ** (plan.failures - 1), MAX_RESTART_DELAY_SECONDS
        )
        plan.not_before = time.monotonic() + delay
        self._move(row, Status.CRASHED, f"{reason}\nRestarting in {delay:g} s.")

    # -- stopping --------------------------------------------------------------------------

    def _ensure_stopped(self, row: dict[str, Any], bridge: ManagedBridge | None) -> None:
        self.restarts.pop(row["id"], None)
        if bridge is not None:
            if Status.STOPPING in TRANSITIONS[row["status"]]:
                self._move(row, Status.STOPPING, "Stopping.")
            self._begin_stop(bridge, "stop")
            return
        if row["status"] == Status.STOPPED:
            return
        if Status.STOPPED not in TRANSITIONS[row["status"]]:
            self._move(row, Status.STOPPING, "Stopping.")
        self._move(row, Status.STOPPED, "Stopped.")

    def _begin_stop(self, bridge: ManagedBridge, reason: str) -> None:
        """SIGTERM a bridge; later passes wait for it, then SIGKILL what is left."""
        with contextlib.suppress(psutil.Error):
            bridge.descendants = bridge.process.children(recursive=True)
        bridge.stop_reason = reason
        bridge.stop_deadline = time.monotonic() + STOP_GRACE_SECONDS
        bridge.signal(signal.SIGTERM)

    def _continue_stop(self, bridge: ManagedBridge) -> bool:
        """Returns True once the bridge is gone and its stop has been settled."""
        if bridge.alive():
            if time.monotonic() < bridge.stop_deadline:
                return False
            log.warning("bridge pid %d ignored SIGTERM; killing it", bridge.pid)
            bridge.signal(signal.SIGKILL)
            if bridge.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    bridge.popen.wait(timeout=1)
            if bridge.alive():
                return False
        self._forget(bridge)
        deployment = Deployment(id=bridge.deployment_id)
        if bridge.stop_reason == "delete":
            bridge.paths.remove()
        elif bridge.stop_reason in ("stop", "shutdown"):
            detail = "Stopped." if bridge.stop_reason == "stop" else SHUTDOWN_DETAIL
            with contextlib.suppress(TransitionError, Deployment.DoesNotExist):
                deployment.move_to(Status.STOPPED, detail)
        return True

    def _forget(self, bridge: ManagedBridge) -> None:
        bridge.kill_leftovers()
        bridge.close()
        self._clean_files(bridge.paths)
        self.bridges.pop(bridge.deployment_id, None)

    def stop_all(self) -> None:
        """Stop every bridge (the supervisor is exiting); running ones are marked stopped."""
        for bridge in list(self.bridges.values()):
            if bridge.stop_reason is not None:
                continue
            reason = "discard"
            with contextlib.suppress(DatabaseError, TransitionError, Deployment.DoesNotExist):
                deployment = Deployment.objects.only("status").get(pk=bridge.deployment_id)
                if deployment.status in (Status.STARTING, Status.RUNNING):
                    deployment.move_to(Status.STOPPING, "The supervisor is shutting down.")
                    reason = "shutdown"
            self._begin_stop(bridge, reason)
        # Past the grace period every bridge has been SIGKILLed; one that still will not die
        # (stuck in the kernel) is left to the next supervisor, which finds it by its pidfile.
        deadline = time.monotonic() + STOP_GRACE_SECONDS + 5
        while self.bridges and time.monotonic() < deadline:
            for bridge in list(self.bridges.values()):
                try:
                    self._continue_stop(bridge)
                except DatabaseError as exc:
                    log.warning("cannot record that %s stopped: %s", bridge.deployment_id, exc)
                    self._forget(bridge)
            if self.bridges:
                time.sleep(0.05)
        for bridge in self.bridges.values():
            log.error("bridge pid %d of %s would not exit", bridge.pid, bridge.deployment_id)
