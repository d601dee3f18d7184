"""What an MCP package really offers: start it once, ask it over stdio, record the answers.

The analysis calls `introspect_package` with no credentials to learn a package's tools,
resources and prompts, its name and version, and whether it refuses to start without
credentials; `preflight` starts a draft deployment's own command with its stored credentials
before it goes live. Either way the server runs as a deployment's would on this host: in the
local runtime's sandbox (bare only when CATWALK_UNSAFE_NO_SANDBOX says so), with a package
environment that holds nothing of Catwalk's own. Whatever the server does, the outcome is an
`IntrospectionResult`, never an exception.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx2
from django.conf import settings
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, Implementation, PaginatedRequestParams
from pydantic import BaseModel

from analysis.findings import EXECUTABLE_NAME
from deployments.models import Deployment, PackageRegistry
from deployments.runtimes import fly, sandbox
from deployments.runtimes.base import Endpoint, package_command
from deployments.runtimes.fly_api import FlyError
from deployments.runtimes.local import (
    SANDBOX_BINDS,
    cache_root,
    ensure_private_dir,
    package_environment,
    run_root,
    sandboxed_package_environment,
    shared_caches,
    tail_lines,
)

# What is kept of an answer, so that a server cannot bloat the analysis or server.json.
MAX_ITEMS = 500  # per list (tools, resources, prompts)
MAX_PAGES = 100  # a server may hand out empty pages with a cursor forever
MAX_DESCRIPTION_CHARS = 2000
MAX_STDERR_LINE_CHARS = 1000
STDERR_TAIL_LINES = 30
# A credential complaint may sit above a long stack trace.
DIAGNOSIS_LINES = 200
# Introspected packages run as this many uids below SANDBOX_UID_BASE: none of a deployment's,
# and not warm_shared_cache's (one below), which may write the shared caches.
INTROSPECTION_UID_BELOW_BASE = 2
# The launcher names its cgroups `catwalk/<name>/<its pid>`: one fixed name keeps concurrent
# runs apart and lets each launch remove what a killed earlier one left behind.
SANDBOX_NAME = "introspect"
CLIENT_INFO = Implementation(name="catwalk-introspection", version="1")

TOOL_FIELDS = ("name", "description", "inputSchema")
RESOURCE_FIELDS = ("uri", "name", "description", "mimeType")
PROMPT_FIELDS = ("name", "description", "arguments")


@dataclass
class IntrospectionResult:
    """What a server said about itself, or why it said nothing (`error`, `stderr_tail`)."""

    ok: bool
    server_name: str = ""
    server_version: str = ""
    protocol_version: str = ""
    tools: list[dict[str, Any]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    # The server failed before listing and its output points at missing or bad credentials.
    needs_credentials: bool = False
    # Of the variables it was given, those its failure points at (see `credential_hints`).
    suspect_credentials: list[str] = field(default_factory=list)
    error: str = ""
    stderr_tail: list[str] = field(default_factory=list)

    def as_meta(self) -> dict[str, Any]:
        """The result for server.json's `_meta`, in MCP's camelCase."""
        return {
            "verified": self.ok,
            "serverInfo": {"name": self.server_name, "version": self.server_version},
            "protocolVersion": self.protocol_version,
            "tools": self.tools,
            "resources": self.resources,
            "prompts": self.prompts,
            "needsCredentials": self.needs_credentials,
            "suspectCredentials": self.suspect_credentials,
            "error": self.error,
            "stderrTail": self.stderr_tail,
        }


# --- Does a failure point at credentials? -----------------------------------------------------

CREDENTIAL_WORDING = re.compile(
    r"api[\s_-]?key|access[\s_-]?key|secret|(?<!unexpected )token|credential|password"
    r"|unauthori[sz]ed|forbidden|authenticat|\bauth\b|must be (?:set|provided)|\bnot set\b"
    r"|environment variable|\benv var",
    re.IGNORECASE,
)
AUTH_REFUSAL = re.compile(
    r"\b40[13]\b|unauthori[sz]ed|forbidden|authentication failed|bad credentials"
    r"|invalid[\s_-]+(?:api[\s_-]?key|key|token|credentials?)",
    re.IGNORECASE,
)


def _names(text: str, name: str) -> bool:
    """Whether `text` names the variable `name` (case-sensitive, as variable names are)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text) is not None


def credential_hints(
    text: str, secret_names: Collection[str], given: Collection[str] = ()
) -> tuple[bool, list[str]]:
    """Whether a failed server's output (its stderr and the error) asks for credentials, and
    which of the variables it was `given` it points at.

    It asks for credentials when it names one of `secret_names` or `given`, or uses wording
    like "API key", "token", "credential", "unauthorized", "must be set" or "environment
    variable". The suspects are the given variables it names; when it names none but reads like
    an authentication refusal (401, 403, "unauthorized", "invalid API key"), every given
    variable that is one of `secret_names`.
    """
    named = sorted(name for name in given if _names(text, name))
    needs = (
        bool(named)
        or any(_names(text, name) for name in secret_names)
        or CREDENTIAL_WORDING.search(text) is not None
    )
    if not named and AUTH_REFUSAL.search(text):
        named = sorted(name for name in given if name in secret_names)
    return needs, named


# --- Running and asking the server ------------------------------------------------------------


def introspection_uid() -> int:
    return settings.SANDBOX_UID_BASE - INTROSPECTION_UID_BELOW_BASE


def introspect_package(
    registry: str,
    identifier: str,
    version: str,
    *,
    entry: str = "",
    arguments: Sequence[str] = (),
    environment: Mapping[str, str] | None = None,
    secret_names: Collection[str] = (),
    timeout: float = 120.0,
    uid: int | None = None,
) -> IntrospectionResult:
    """Start a package's MCP server, list what it offers, stop it.

    `environment`: variables added to the package environment (credentials). `secret_names`:
    the variables holding secrets; their values are replaced by their names in the error and
    stderr, and a failure that names one means the server wants credentials. `uid`: the
    sandbox uid (`introspection_uid()` by default). The whole run, download included, gets `timeout`
    seconds. Blocks; call it from synchronous code (any thread), not from an event loop.
    Raises PackageError for an invalid package, name, version or entry.
    """
    if settings.FLY_JOBS:
        image = None
        if registry == PackageRegistry.OCI:
            # The job's runner pulls the image and runs its entrypoint with these arguments.
            image = fly.image_spec_for(identifier, version, entry, arguments)
            command = list(arguments)
        else:
            # The runner image has npx and uvx on its PATH.
            command = package_command(registry, identifier, version, entry, arguments)
        return _introspect_on_fly(command, dict(environment or {}), secret_names, timeout, image)
    command = package_command(
        registry,
        identifier,
        version,
        entry,
        arguments,
        uvx=os.path.join(os.path.dirname(sys.executable), "uvx"),
    )
    check = sandbox.check()
    if not check.may_start:
        return IntrospectionResult(ok=False, error=sandbox.refusal(check.problem))
    given = dict(environment or {})
    with tempfile.TemporaryDirectory(
        prefix="introspect-", dir=ensure_private_dir(run_root()), ignore_cleanup_errors=True
    ) as name:
        folder = Path(name)
        if check.enabled:
            try:
                argv = sandbox.prepare(
                    command,
                    environment={**sandboxed_package_environment(), **given},
                    environment_file=folder / "env",
                    profile_file=folder / "sandbox.json",
                    name=SANDBOX_NAME,
                    uid=introspection_uid() if uid is None else uid,
                    area=folder / "sandbox",
                    binds=SANDBOX_BINDS,
                    caches=shared_caches(),
                )
            except sandbox.SandboxUnavailable as exc:
                return IntrospectionResult(ok=False, error=sandbox.refusal(str(exc)))
            # The launcher and its helpers are root: the server's own variables reach only the
            # server, through the environment file.
            env, cwd = dict(sandbox.ROOT_ENVIRONMENT), folder
        else:
            argv = command
            for part in ("home", "work", "tmp"):
                (folder / part).mkdir()
            env = package_environment(
                home=str(folder / "home"),
                tmp=str(folder / "tmp"),
                npm_cache=str(cache_root() / "npm"),
                uv_cache=str(cache_root() / "uv"),
            )
            env.update(given)
            cwd = folder / "work"
        # The SDK adds HOME, LOGNAME, PATH, SHELL, TERM and USER of this process underneath
        # `env`; none is a secret, and bubblewrap clears them all for a sandboxed server.
        server = StdioServerParameters(
            command=argv[0],
            args=argv[1:],
            env=env,
            cwd=cwd,
            encoding_error_handler="replace",
        )
        stderr_path = folder / "stderr.log"
        with open(stderr_path, "w", encoding="utf-8") as errlog:
            connect = partial(stdio_client, server, errlog=errlog)
            result = anyio.run(partial(_converse, connect, timeout))
        stderr = tail_lines(stderr_path, DIAGNOSIS_LINES)
    return _diagnose(result, stderr, given, secret_names)


def _introspect_on_fly(
    command: list[str],
    given: dict[str, str],
    secret_names: Collection[str],
    timeout: float,
    image: dict | None = None,
) -> IntrospectionResult:
    """`introspect_package` in a short-lived Fly machine (`FLY_JOBS`): the worker runs nothing
    of the package's. Its stderr comes from Fly's logs."""
    started = time.monotonic()
    stderr: list[str] = []
    try:
        with fly.job_machine(command, given, timeout, image) as job:
            remaining = max(timeout - (time.monotonic() - started), 1.0)
            connect = partial(_http_streams, job.endpoint)
            result = anyio.run(partial(_converse, connect, remaining))
            stderr = job.server_log()[-DIAGNOSIS_LINES:]
    except (fly.JobError, FlyError) as exc:
        result = IntrospectionResult(
            ok=False, error=f"The server could not be started on Fly: {exc}"
        )
    return _diagnose(result, stderr, given, secret_names)


@contextlib.asynccontextmanager
async def _http_streams(endpoint: Endpoint):
    """The MCP SDK's Streamable HTTP transport to a bridge, as the (read, write) pair."""
    async with (
        httpx2.AsyncClient(headers=endpoint.headers, timeout=httpx2.Timeout(30, read=120)) as http,
        streamable_http_client(f"{endpoint.base_url}/mcp", http_client=http) as streams,
    ):
        yield streams


def _diagnose(
    result: IntrospectionResult,
    stderr: list[str],
    given: Mapping[str, str],
    secret_names: Collection[str],
) -> IntrospectionResult:
    """Redact secrets from what the server said, and tell whether it wants credentials."""
    secrets = {name: given[name] for name in secret_names if given.get(name)}
    stderr = [_redact(line, secrets)[:MAX_STDERR_LINE_CHARS] for line in stderr]
    result.error = _redact(result.error, secrets)
    result.stderr_tail = stderr[-STDERR_TAIL_LINES:]
    if not result.ok:
        limit = [line for line in stderr if line.startswith(sandbox.LIMIT_MESSAGE_PREFIX)]
        if limit:
            reason = limit[-1].removeprefix(sandbox.LIMIT_MESSAGE_PREFIX)
            result.error = f"The sandbox stopped the server: {reason}."
        result.needs_credentials, result.suspect_credentials = credential_hints(
            "\n".join([result.error, *stderr]), secret_names, given
        )
    return result


def preflight(deployment: Deployment, timeout: float = 120.0) -> IntrospectionResult:
    """Start a draft deployment's own command with its stored credentials, list what it offers.

    Sandboxed, it runs as the deployment's own uid. The suspects are among the deployment's
    credential names. Raises PackageError (an invalid package or entry) or DecryptionError.
    """
    environment = {
        name: value
        for name, value in deployment.credential_environment().items()
        # As for a deployed server: its bridge would consume (and strip) these.
        if not name.startswith("CATWALK_BRIDGE_")
    }
    secret_names = set(deployment.credentials.filter(is_secret=True).values_list("name", flat=True))
    return introspect_package(
        deployment.package_registry,
        deployment.package_name,
        deployment.package_version,
        entry=deployment.entry_command,
        arguments=deployment.entry_args or [],
        environment=environment,
        secret_names=secret_names,
        timeout=timeout,
        uid=deployment.ensure_sandbox_uid() if sandbox.check().enabled else None,
    )


async def _converse(
    connect: Callable[[], AbstractAsyncContextManager], timeout: float
) -> IntrospectionResult:
    """Initialize, then list whatever the server announced, over the streams `connect` opens.

    Over stdio the SDK stops the process tree as the transport closes (stdin closed, then
    SIGTERM to its process group, which the sandbox launcher forwards, then SIGKILL), even on
    timeout."""
    result = IntrospectionResult(ok=False)
    step = "start"
    try:
        with anyio.fail_after(timeout):
            async with (
                connect() as (read, write),
                ClientSession(read, write, client_info=CLIENT_INFO) as session,
            ):
                step = "initialize"
                initialized = await session.initialize()
                result.server_name = initialized.server_info.name
                result.server_version = initialized.server_info.version
                result.protocol_version = str(initialized.protocol_version)
                capabilities = initialized.capabilities
                if capabilities.tools is not None:
                    step = "tools/list"
                    tools = await _every_page(session.list_tools, "tools")
                    result.tools = [_entry(tool, TOOL_FIELDS) for tool in tools]
                if capabilities.resources is not None:
                    step = "resources/list"
                    resources = await _every_page(session.list_resources, "resources")
                    result.resources = [_entry(item, RESOURCE_FIELDS) for item in resources]
                if capabilities.prompts is not None:
                    step = "prompts/list"
                    prompts = await _every_page(session.list_prompts, "prompts")
                    result.prompts = [_entry(prompt, PROMPT_FIELDS) for prompt in prompts]
        result.ok = True
    except TimeoutError:
        result.error = f"The server did not answer within {timeout:g} s (waiting for {step})."
    except Exception as exc:  # whatever the server does is a result, never an exception
        result.error = _describe_failure(step, exc)
    return result


async def _every_page(fetch: Callable[..., Awaitable[Any]], attribute: str) -> list[BaseModel]:
    """A list method's items over every page (following nextCursor), within the bounds."""
    items: list[BaseModel] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        params = PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await fetch(params=params)
        items.extend(getattr(page, attribute))
        cursor = page.next_cursor
        if not cursor or len(items) >= MAX_ITEMS:
            break
    return items[:MAX_ITEMS]


def _entry(item: BaseModel, fields: tuple[str, ...]) -> dict[str, Any]:
    """The listed item as the server sent it (camelCase), only `fields`, descriptions cut."""
    data = item.model_dump(by_alias=True, mode="json", exclude_none=True)
    entry = {name: data[name] for name in fields if name in data}
    for part in (entry, *entry.get("arguments", ())):
        if isinstance(part.get("description"), str):
            part["description"] = part["description"][:MAX_DESCRIPTION_CHARS]
    return entry


def _describe_failure(step: str, exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]  # the SDK's task groups wrap what went wrong
    # A validation error lists every bad field of what may be a huge answer.
    detail = str(exc)[:MAX_STDERR_LINE_CHARS]
    if step == "start":
        return f"The server could not be started: {detail}"
    if isinstance(exc, MCPError):
        if exc.code == CONNECTION_CLOSED:
            return f"The server exited before answering {step}."
        return f"The server answered {step} with error {exc.code}: {exc.error.message}"
    return f"The server's answer to {step} is not valid MCP: {detail}"


def _redact(text: str, secrets: Mapping[str, str]) -> str:
    """`text` with each secret value replaced by its variable's name: what is kept may be shown,
    and an echoed bad key still points at its variable."""
    for name, value in sorted(secrets.items(), key=lambda item: -len(item[1])):
        text = text.replace(value, f"[{name}]")
    return text


def introspect_for_analysis(
    package: Mapping[str, Any], *, owner_id: int | None, deployment_id: str = ""
) -> dict[str, Any]:
    """The analysis's introspection layer (`ANALYSIS_INTROSPECTOR`): the package with no
    credentials, or, given a draft deployment of the same owner, a preflight with its stored
    ones. Returns the `_meta` record."""
    timeout = float(settings.ANALYSIS_INTROSPECTION_TIMEOUT_SECONDS)
    if deployment_id:
        deployment = Deployment.objects.filter(pk=deployment_id, owner_id=owner_id).first()
        if deployment is None:
            return IntrospectionResult(
                ok=False, error="The draft deployment was not found."
            ).as_meta()
        return preflight(deployment, timeout=timeout).as_meta()
    entry = str(package.get("entry") or "")
    if entry and not EXECUTABLE_NAME.match(entry):
        # Only ever a command the package installs: an analysis never runs a host program.
        return IntrospectionResult(
            ok=False, error=f"{entry!r} is not a command name the package could install."
        ).as_meta()
    secrets = [
        str(variable.get("name"))
        for variable in package.get("environmentVariables") or []
        if variable.get("isSecret")
    ]
    return introspect_package(
        str(package["registryType"]),
        str(package["identifier"]),
        str(package.get("version") or ""),
        entry=entry,
        secret_names=secrets,
        timeout=timeout,
    ).as_meta()
