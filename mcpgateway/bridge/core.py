"""The bridge's state: its child process(es), its sessions and their life cycles."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Coroutine
from typing import Any

from . import protocol
from .child import ChildStartError, child_environment
from .config import BridgeConfig
from .sessions import Session, SessionRegistry
from .stderr_log import StderrLog
from .upstream import Upstream, UpstreamGone

# Crash-loop policy for the shared child: this many failures within the window
# and the bridge stops retrying (status "crashed") until it is restarted itself.
CRASH_LOOP_FAILURES = 5
CRASH_LOOP_WINDOW_SECONDS = 60.0
FIRST_BACKOFF_SECONDS = 0.25
MAX_BACKOFF_SECONDS = 10.0
# How long a child may take to answer its first initialize: launchers such as npx
# may download the server first, so this is independent of --request-timeout.
STARTUP_TIMEOUT_SECONDS = 120.0
# How long a client's initialize waits for a (re)starting shared child.
READY_WAIT_SECONDS = 30.0
LAST_ERROR_LINES = 20

BRIDGE_CLIENT_CAPABILITIES: dict[str, Any] = {
    "sampling": {},
    "elicitation": {"form": {}, "url": {}},
    "roots": {"listChanged": True},
}
BRIDGE_CLIENT_INFO = {"name": "catwalk-bridge", "version": "1.0"}


class SwitchFailed(Exception):
    """The new command did not start and answer; the old one keeps serving."""


class Refusal(Exception):
    """A session cannot be opened; carries the HTTP status and JSON-RPC error to send."""

    def __init__(self, http_status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message


class Bridge:
    """Owns the child process(es) and the sessions; knows nothing about HTTP."""

    def __init__(self, config: BridgeConfig, environ: dict[str, str] | None = None) -> None:
        self.config = config
        self.shared = config.mode == "shared"
        self.env = child_environment(os.environ if environ is None else environ)
        self.stderr_log = StderrLog(
            config.stderr_log, echo=sys.stderr.buffer if config.stderr_echo else None
        )
        self.sessions = SessionRegistry()
        self.status = "starting" if self.shared else "ok"
        self.restarts = 0
        self.last_error: str | None = None
        self.started_at = time.monotonic()
        self.upstream: Upstream | None = None
        self._init_result: dict[str, Any] = {}
        self._child_version = protocol.LATEST_VERSION
        self._ready: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._isolated_children: set[Upstream] = set()
        self._pending_spawns = 0
        self._stopping = False
        # The command new children run: the configured one, until a switch replaces it.
        self.command = list(config.command)
        self._switched = asyncio.Event()
        self._switching = False
        self._draining: set[Upstream] = set()

    # -- life cycle ------------------------------------------------------------

    async def startup(self) -> None:
        self._ready = asyncio.Event()
        if self.shared:
            self._spawn(self._supervise_shared())
        self._spawn(self._reap_idle_sessions())

    def begin_shutdown(self) -> None:
        """End every session now so that open streams close and the server can stop."""
        self._stopping = True
        for session in self.sessions:
            self.end_session(session, "the bridge is shutting down")

    async def shutdown(self) -> None:
        self.begin_shutdown()
        children = [*self._isolated_children, *self._draining]
        if self.upstream is not None:
            children.append(self.upstream)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(child.stop() for child in children), return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.stderr_log.close()

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def health(self) -> dict[str, Any]:
        upstream = self.upstream
        return {
            "status": self.status,
            "mode": self.config.mode,
            "child_pid": upstream.pid if upstream is not None and not upstream.dead else None,
            "restarts": self.restarts,
            "sessions": len(self.sessions),
            "draining": sum(len(upstream.sessions) for upstream in self._draining),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "last_error": self.last_error,
        }

    def _new_upstream(self) -> Upstream:
        return Upstream(
            self.command,
            env=self.env,
            cwd=self.config.cwd,
            stderr_log=self.stderr_log,
            request_timeout=self.config.request_timeout,
            on_dead=self._on_upstream_dead,
        )

    def _stderr_tail(self, fallback: str) -> str:
        lines = self.stderr_log.tail(LAST_ERROR_LINES)
        return "\n".join([fallback, *lines]) if lines else fallback

    # -- shared mode -----------------------------------------------------------

    async def _supervise_shared(self) -> None:
        assert self._ready is not None
        failures: list[float] = []
        while not self._stopping:
            upstream = self._new_upstream()
            self.upstream = upstream
            try:
                started = await self._start_shared(upstream)
            except Exception as exc:  # a bug here must not leave the bridge "starting" forever
                upstream.dead_reason = f"bridge error while starting the MCP server: {exc!r}"
                started = False
            if started:
                self.status = "ok"
                self._ready.set()
                # A switch hands the watch over to the new child, which then is `self.upstream`.
                while True:
                    await _first(upstream.died.wait(), self._switched.wait())
                    if not self._switched.is_set():
                        break
                    self._switched.clear()
                    upstream = self.upstream
                self._ready.clear()
            if self._stopping:
                return
            for session in list(upstream.sessions):
                self.end_session(session, "the MCP server process exited")
            await upstream.stop()
            self.last_error = self._stderr_tail(upstream.dead_reason or "the MCP server failed")
            if upstream.child.exit_status in self.config.fatal_exit_statuses:
                self.status = "crashed"
                return
            now = time.monotonic()
            failures = [t for t in failures if now - t < CRASH_LOOP_WINDOW_SECONDS] + [now]
            if len(failures) >= CRASH_LOOP_FAILURES:
                self.status = "crashed"
                return
            self.status = "restarting"
            self.restarts += 1
            await asyncio.sleep(
                min(FIRST_BACKOFF_SECONDS * 2 ** (len(failures) - 1), MAX_BACKOFF_SECONDS)
            )

    async def _start_shared(self, upstream: Upstream) -> bool:
        result = await self._initialize_child(upstream)
        if result is None:
            return False
        self._adopt(upstream, result)
        upstream.notify("notifications/initialized")
        return True

    def _adopt(self, upstream: Upstream, result: dict[str, Any]) -> None:
        version = result.get("protocolVersion")
        self._child_version = version if isinstance(version, str) else protocol.LATEST_VERSION
        self._init_result = result

    async def _initialize_child(self, upstream: Upstream) -> dict[str, Any] | None:
        """Start a child and initialize it; its initialize result, or None (with the reason in
        `upstream.dead_reason`)."""
        try:
            await upstream.start()
            response = await upstream.request(
                "initialize",
                {
                    "protocolVersion": protocol.LATEST_VERSION,
                    "capabilities": BRIDGE_CLIENT_CAPABILITIES,
                    "clientInfo": BRIDGE_CLIENT_INFO,
                },
                STARTUP_TIMEOUT_SECONDS,
            )
        except ChildStartError as exc:
            upstream.dead_reason = str(exc)
            return None
        except UpstreamGone as exc:
            upstream.dead_reason = f"exited during initialize ({exc})"
            return None
        except TimeoutError:
            upstream.dead_reason = "did not answer initialize in time"
            return None
        result = response.get("result")
        if not isinstance(result, dict):
            upstream.dead_reason = f"initialize failed: {protocol.dumps(response.get('error'))}"
            return None
        return result

    def shared_initialize_result(self, requested: Any) -> tuple[str, dict[str, Any]]:
        """The negotiated version and the initialize result a new client gets."""
        version = protocol.negotiate_version(requested, self._child_version)
        return version, {**self._init_result, "protocolVersion": version}

    async def _shared_upstream(self) -> Upstream:
        assert self._ready is not None
        if self.status == "crashed":
            raise Refusal(
                503,
                protocol.SERVER_UNAVAILABLE,
                f"the MCP server keeps crashing: {self.last_error or 'unknown error'}",
            )
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), READY_WAIT_SECONDS)
            except TimeoutError:
                raise Refusal(
                    503, protocol.SERVER_UNAVAILABLE, "the MCP server is not ready"
                ) from None
        upstream = self.upstream
        assert upstream is not None
        return upstream

    # -- switching to a new version (a redeploy) ---------------------------------

    async def switch(self, command: list[str], grace: float) -> None:
        """Serve new sessions from `command` once it starts and answers `tools/list`; sessions
        already open finish on the old child, which stops when its last one ends or `grace`
        seconds pass. Raises SwitchFailed (and changes nothing) when the new one fails."""
        if self._switching:
            raise SwitchFailed("another switch is under way")
        if self._stopping:
            raise SwitchFailed("the bridge is shutting down")
        self._switching = True
        candidate = Upstream(
            command,
            env=self.env,
            cwd=self.config.cwd,
            stderr_log=self.stderr_log,
            request_timeout=self.config.request_timeout,
            on_dead=self._on_upstream_dead,
        )
        try:
            result = await self._initialize_child(candidate)
            if result is None:
                problem = candidate.dead_reason or "the new version failed to start"
            else:
                problem = await self._tools_problem(candidate)
            if problem:
                raise SwitchFailed(self._stderr_tail(problem))
            assert result is not None
            self.command = list(command)
            if not self.shared:
                # Isolated sessions each start their own child: new ones run the new command.
                self._spawn(candidate.stop())
                return
            old = self.upstream
            self._adopt(candidate, result)
            self.upstream = candidate
            self._switched.set()
            if old is not None:
                self._draining.add(old)
                self._spawn(self._drain(old, grace))
        except BaseException:
            self._spawn(candidate.stop())
            raise
        finally:
            self._switching = False

    async def _tools_problem(self, upstream: Upstream) -> str:
        """Why the child does not answer `tools/list`, or ''."""
        upstream.notify("notifications/initialized")
        try:
            response = await upstream.request("tools/list", {}, STARTUP_TIMEOUT_SECONDS)
        except UpstreamGone as exc:
            return f"exited before answering tools/list ({exc})"
        except TimeoutError:
            return "did not answer tools/list in time"
        if "error" in response:
            return f"tools/list failed: {protocol.dumps(response['error'])}"
        return ""

    async def _drain(self, old: Upstream, grace: float) -> None:
        """Let the old child finish its sessions, then stop it."""
        deadline = time.monotonic() + grace
        while old.sessions and not old.dead and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for session in list(old.sessions):
            self.end_session(session, "the deployment was replaced by a new version")
        await old.stop()
        self._draining.discard(old)

    # -- sessions --------------------------------------------------------------

    def _make_room(self) -> None:
        if len(self.sessions) + self._pending_spawns < self.config.max_sessions:
            return
        if not self.shared:
            raise Refusal(
                503,
                protocol.SESSION_CAP_REACHED,
                f"session cap reached ({self.config.max_sessions} sessions); try again later",
            )
        while len(self.sessions) >= self.config.max_sessions:
            oldest = self.sessions.least_recently_used()
            if oldest is None:
                return
            self.end_session(oldest, "evicted: session cap reached")

    def _register(self, session: Session) -> None:
        session.upstream.sessions.add(session)
        self.sessions.add(session)

    async def open_session(
        self, principal: str, message: dict[str, Any] | None, *, legacy: bool = False
    ) -> tuple[Session | None, dict[str, Any]]:
        """Open a session for an `initialize` (or a legacy /sse connection when message is None).

        Returns the session (None when the child refused the initialize) and the
        initialize response for the client. Raises Refusal.
        """
        if self._stopping:
            raise Refusal(503, protocol.SERVER_UNAVAILABLE, "the bridge is shutting down")
        params = (message or {}).get("params") or {}
        if self.shared:
            upstream = await self._shared_upstream()
            self._make_room()
            version, result = self.shared_initialize_result(params.get("protocolVersion"))
            session = Session(principal, version, upstream, legacy=legacy)
            self._register(session)
            response = {"jsonrpc": "2.0", "id": (message or {}).get("id"), "result": result}
            return session, response
        self._make_room()
        self._pending_spawns += 1
        try:
            return await self._open_isolated(principal, message, legacy)
        finally:
            self._pending_spawns -= 1

    async def _open_isolated(
        self, principal: str, message: dict[str, Any] | None, legacy: bool
    ) -> tuple[Session | None, dict[str, Any]]:
        upstream = self._new_upstream()
        self._isolated_children.add(upstream)
        try:
            await upstream.start()
            response: dict[str, Any] = {}
            if message is not None:
                response = await upstream.request(
                    "initialize", message.get("params"), STARTUP_TIMEOUT_SECONDS
                )
                response["id"] = message["id"]
        except ChildStartError as exc:
            self.last_error = str(exc)
            self._discard_isolated(upstream)
            raise Refusal(503, protocol.SERVER_UNAVAILABLE, str(exc)) from None
        except UpstreamGone as exc:
            self.last_error = self._stderr_tail(str(exc))
            self._discard_isolated(upstream)
            raise Refusal(
                503, protocol.SERVER_UNAVAILABLE, f"the MCP server exited during initialize: {exc}"
            ) from None
        except TimeoutError:
            self._discard_isolated(upstream)
            raise Refusal(
                504, protocol.REQUEST_TIMEOUT, "the MCP server did not answer initialize in time"
            ) from None
        except BaseException:
            self._discard_isolated(upstream)
            raise
        result = response.get("result")
        if message is not None and not isinstance(result, dict):
            self._discard_isolated(upstream)
            return None, response
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        if version not in protocol.SUPPORTED_VERSIONS:
            version = protocol.LATEST_VERSION
        session = Session(principal, version, upstream, legacy=legacy)
        if self._stopping or upstream.dead:
            self._discard_isolated(upstream)
            raise Refusal(503, protocol.SERVER_UNAVAILABLE, "the MCP server exited")
        self._register(session)
        return session, response

    def _discard_isolated(self, upstream: Upstream) -> None:
        self._isolated_children.discard(upstream)
        self._spawn(upstream.stop())

    def end_session(self, session: Session, reason: str) -> None:
        """End a session: its calls are cancelled, its stream closed, an isolated child stopped."""
        if not self.sessions.remove(session):
            return
        session.closed = True
        session.upstream.detach_session(session, reason)
        session.stream.close()
        if not self.shared:
            self._discard_isolated(session.upstream)

    def _on_upstream_dead(self, upstream: Upstream, reason: str) -> None:
        if self.shared:
            return  # the supervisor wakes up on `upstream.died`
        if upstream in self._isolated_children:
            self.last_error = self._stderr_tail(f"an MCP server process ended: {reason}")
        for session in list(upstream.sessions):
            self.end_session(session, f"the MCP server process ended: {reason}")

    async def _reap_idle_sessions(self) -> None:
        timeout = self.config.session_idle_timeout
        interval = min(max(timeout / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            for session in self.sessions.idle_since(time.monotonic() - timeout):
                self.end_session(session, "idle timeout")


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Return when the first of `waits` finishes; cancel the others."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
