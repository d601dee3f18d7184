"""A whole Catwalk on loopback, for conformance runs, benchmarks, end-to-end and browser tests.

    python -m mcpgateway.stack --port 9000 [--server uvicorn|daphne] [--auth-proxy]
        [--isolated] [--package SPEC] -- COMMAND ARG…

Creates a throwaway data folder (SQLite, fresh keys), starts the supervisor, deploys COMMAND
through `manage.py mcp_deploy`, serves the ASGI application with the chosen server, and prints
one JSON line `{"url", "token", "id", "gateway"}`. With `--auth-proxy` the printed URL is a
small proxy on `--port` that adds the deployment's bearer token and maps `/mcp` to the
deployment's path, for clients that cannot send headers of their own (the official
conformance suite); everything else, Host and Origin included, passes through unchanged so the
gateway's own checks still apply. Runs until SIGTERM or SIGINT, then stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from mcpgateway.relay import Pool, RelayError

ROOT = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"host"}
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    def __init__(self, data_dir: Path, server: str, gateway_port: int) -> None:
        self.data_dir = data_dir
        self.server = server
        self.gateway_port = gateway_port
        self.processes: list[subprocess.Popen] = []
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CATWALK_", "DJANGO_"))},
            "CATWALK_DATA_DIR": str(data_dir),
            "DATABASE_URL": f"sqlite:///{data_dir / 'catwalk.sqlite3'}",
            # Production settings (DEBUG off records no queries and keeps no debug state), with
            # throwaway keys; plain HTTP, since everything stays on loopback.
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "CATWALK_ENCRYPTION_KEYS": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECURE_SSL_REDIRECT": "false",
            "EMAIL_URL": "consolemail://",
            # The conformance suite opens a session per scenario and never ends them; in
            # isolated mode each is a process, and the default cap (20) would refuse the rest.
            "LOCAL_ISOLATED_MAX_SESSIONS": "200",
            # Counted (so benchmarks pay for the counting) but never limiting.
            "RATE_LIMIT_REQUESTS_PER_MINUTE": "1000000000",
            "QUOTA_SESSIONS_PER_USER": "1000000",
            # The fixture server's code, readable inside the sandbox.
            "SANDBOX_READONLY_PATHS": str(ROOT / "mcpgateway"),
            # Its own copy of the static files (`prepare`), not the checkout's.
            "CATWALK_STATIC_ROOT": str(data_dir / "static"),
        }
        self.env.pop("REDIS_URL", None)

    def manage(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode:
            raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.data_dir / f"{name}.log").open("w")
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.processes.append(process)
        return process

    def start(self, deploy_args: list[str]) -> dict:
        """Prepare the data folder, start the supervisor, deploy with `mcp_deploy ARGS`, serve."""
        self.prepare()
        self.manage(
            "shell",
            "-c",
            "from django.contrib.auth import get_user_model;"
            "get_user_model().objects.create_user('stack', 'stack@example.com', 'x' * 20)",
        )
        self.start_supervisor()
        deployed = json.loads(
            self.manage("mcp_deploy", "--user", "stack", *deploy_args).strip().splitlines()[-1]
        )
        self.serve()
        return deployed

    def prepare(self) -> None:
        """Collect the static files, then create the database. With DEBUG off, static URLs
        come from the manifest `collectstatic` writes, and loading the URLs needs them."""
        self.manage("collectstatic", "--noinput", "-v0")
        self.manage("migrate", "--noinput", "-v0")

    def start_supervisor(self, *args: str) -> None:
        self.spawn("supervisor", [sys.executable, "manage.py", "supervise", *args])
        self.wait_for_supervisor()

    def start_worker(self) -> None:
        """A Celery worker on the data folder's filesystem broker (analyses, builds)."""
        self.spawn(
            "worker",
            [
                *(sys.executable, "-m", "celery", "-A", "catwalk", "worker"),
                *("--pool", "solo", "--loglevel", "INFO"),
                *("--without-gossip", "--without-mingle", "--without-heartbeat"),
            ],
        )

    def serve(self) -> None:
        """The ASGI application (Django and the gateway) on `gateway_port`."""
        if self.server == "daphne":
            argv = [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.gateway_port),
                "catwalk.asgi:application",
            ]
        else:
            argv = [
                sys.executable,
                "-m",
                "uvicorn",
                "catwalk.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.gateway_port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ]
        self.spawn(f"gateway-{self.server}", argv)
        wait_for_port(self.gateway_port)

    def wait_for_supervisor(self, timeout: float = 60) -> None:
        probe = "from deployments.supervisor import supervisor_is_running as r; print(r())"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.manage("shell", "-c", probe).strip().endswith("True"):
                return
            time.sleep(0.3)
        raise SystemExit("the supervisor did not start")

    def logs(self, last: int = 0) -> str:
        """What every process of the stack printed (its `last` lines), each under its name."""
        return "\n".join(
            f"----- {path.name} -----\n"
            + "\n".join(path.read_text(errors="replace").splitlines()[-last:])
            for path in sorted(self.data_dir.glob("*.log"))
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this child when the stack process dies, however it dies.

    uvicorn re-raises the SIGTERM it handled once it has shut down, which ends the stack
    process before any clean-up code of its own could run.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"nothing answered on port {port}")


class AuthProxy:
    """ASGI: adds the bearer token and maps /mcp[/sse|/messages] onto the deployment's path."""

    def __init__(self, gateway_port: int, deployment_path: str, token: str) -> None:
        self.gateway_port = gateway_port
        self.prefix = deployment_path
        self.authorization = f"Bearer {token}".encode()
        self.pool = Pool()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        path = self.prefix + path[len("/mcp") :] if path.startswith("/mcp") else path
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        headers = [
            (k, v) for k, v in scope["headers"] if k not in HOP_BY_HOP and k != b"authorization"
        ]
        headers.append((b"authorization", self.authorization))
        host = dict(scope["headers"]).get(b"host", b"127.0.0.1").decode("latin-1")
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            response = await self.pool.send(
                host="127.0.0.1",
                port=self.gateway_port,
                method=scope["method"],
                path=path,
                headers=headers,
                body=body,
                host_header=host,
            )
            await response.ready
        except RelayError as exc:
            await send({"type": "http.response.start", "status": 502, "headers": []})
            await send({"type": "http.response.body", "body": str(exc).encode()})
            return
        answer_headers = [(k, v) for k, v in response.headers if k not in HOP_BY_HOP]
        await send(
            {"type": "http.response.start", "status": response.status, "headers": answer_headers}
        )
        try:
            async for chunk in response.stream():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (RelayError, OSError):
            pass
        await send({"type": "http.response.body", "body": b""})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server", choices=["uvicorn", "daphne"], default="uvicorn")
    parser.add_argument("--auth-proxy", action="store_true")
    parser.add_argument("--isolated", action="store_true")
    parser.add_argument("--package", default="pypi:catwalk-fixture")
    parser.add_argument(
        "--readable",
        action="append",
        default=[],
        metavar="PATH",
        help="a folder the sandboxed server may read (its code, when outside the project)",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="use this Redis (rate limits and session counts shared across processes)",
    )
    parser.add_argument(
        "--unsandboxed",
        action="store_true",
        help="run the server without the sandbox (CATWALK_UNSAFE_NO_SANDBOX), for comparison",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    options = parser.parse_args()
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        parser.error("name the MCP server command after --")

    data_dir = Path(tempfile.mkdtemp(prefix="catwalk-stack-"))
    gateway_port = free_port() if options.auth_proxy else options.port
    stack = Stack(data_dir, options.server, gateway_port)
    if options.readable:
        readable = [stack.env["SANDBOX_READONLY_PATHS"], *map(os.path.abspath, options.readable)]
        stack.env["SANDBOX_READONLY_PATHS"] = ",".join(readable)
    if options.unsandboxed:
        stack.env["CATWALK_UNSAFE_NO_SANDBOX"] = "1"
    if options.redis:
        stack.env["REDIS_URL"] = options.redis
    # An absolute entry runs as it is, without fetching the (placeholder) package.
    deploy_args = [
        "--package",
        options.package,
        "--entry",
        shutil.which(command[0]) or command[0],
        "--env",
        f"PYTHONPATH={ROOT}",
    ]
    deploy_args += [f"--arg={arg}" for arg in command[1:]]
    if options.isolated:
        deploy_args.append("--isolated")
    try:
        deployed = stack.start(deploy_args)
        path = f"/mcp/{deployed['id']}"
        url = f"http://127.0.0.1:{options.port}" + ("/mcp" if options.auth_proxy else path)
        print(
            json.dumps(
                {**deployed, "url": url, "gateway": f"http://127.0.0.1:{gateway_port}{path}"}
            ),
            flush=True,
        )
        if options.auth_proxy:
            import uvicorn

            proxy = AuthProxy(gateway_port, path, deployed["token"])
            uvicorn.run(
                proxy,
                host="127.0.0.1",
                port=options.port,
                log_level="warning",
                loop="uvloop",
                http="httptools",
                access_log=False,
            )
        else:
            stop = asyncio.Event()

            async def wait() -> None:
                loop = asyncio.get_running_loop()
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(signum, stop.set)
                await stop.wait()

            asyncio.run(wait())
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
