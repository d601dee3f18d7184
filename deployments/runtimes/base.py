"""The runtime interface: how a deployment's desired state becomes running MCP servers.

A runtime makes the world match `Deployment.desired_state` (the local supervisor for this
host, Celery tasks for Fly), wakes a sleeping deployment for the gateway, and tells the gateway
where to relay a deployment's traffic. Adding a runtime is one new module listed in
`RUNTIME_MODULES` that decorates its class with `@register`.

Also here, because every runtime needs them: the command a package runs as (validated, an argv
list that never passes through a shell) and a readiness probe that speaks MCP to an endpoint.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import json
import re
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import path as os_path
from typing import TYPE_CHECKING, Any

import httpx
from django.conf import settings

from deployments.runtimes.sandbox import LIMIT_MESSAGE_PREFIX
from mcpgateway import oci

if TYPE_CHECKING:
    from deployments.models import Deployment

# Every runtime module, imported once on first use so that each registers itself.
RUNTIME_MODULES = ["deployments.runtimes.local", "deployments.runtimes.fly"]


@dataclass(frozen=True)
class Endpoint:
    """Where the gateway relays a deployment's MCP traffic, and with which internal headers.

    Exactly one of `unix_socket` and `base_url` is set. During a redeploy a deployment may
    briefly have two endpoints; `endpoint()` returns the one that takes new sessions.
    """

    unix_socket: str | None = None
    base_url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def client(self, timeout: float) -> httpx.Client:
        """A blocking HTTP client for this endpoint (probes and operators; not the hot path)."""
        if self.unix_socket is not None:
            return httpx.Client(
                transport=httpx.HTTPTransport(uds=self.unix_socket),
                base_url="http://bridge",
                headers=self.headers,
                timeout=timeout,
            )
        return httpx.Client(base_url=self.base_url or "", headers=self.headers, timeout=timeout)


class Runtime(ABC):
    kind: str
    # The package registries (PackageRegistry values) whose deployments it can run.
    registries: frozenset[str] = frozenset({"npm", "pypi", "source"})
    # Whether a request relayed to a sleeping deployment wakes it by itself (Fly's proxy
    # does), so the gateway relays at once instead of waiting for it to run.
    proxy_wakes: bool = False
    # Whether a source deployment is built in its own machine at first boot (Fly) rather than
    # by a worker on this host before it starts.
    builds_in_place: bool = False

    @classmethod
    def is_configured(cls) -> bool:
        """Whether new deployments may choose this runtime (its settings are in place)."""
        return True

    @abstractmethod
    def apply(self, deployment: Deployment) -> None:
        """Start moving the world toward the deployment's desired state. Never blocks long."""

    @abstractmethod
    def tear_down(self, deployment_id: uuid.UUID) -> None:
        """Start removing what ran the deployment whose row was just deleted. Never blocks long."""

    @abstractmethod
    def wake(self, deployment: Deployment) -> None:
        """Ask a sleeping deployment to start; the gateway then waits for `endpoint()` to answer."""

    @abstractmethod
    def endpoint(self, deployment: Deployment) -> Endpoint:
        """Where its bridge listens."""

    @abstractmethod
    def logs(self, deployment: Deployment, lines: int = 200) -> list[str]:
        """The last lines the MCP server wrote to stderr."""

    def problem(self, deployment: Deployment) -> str:
        """What keeps the runtime from acting on the deployment right now, for its owner ("")."""
        return ""


def bridge_secret(deployment_id: object) -> str:
    """The per-deployment secret a bridge demands in `X-Catwalk-Bridge-Secret`.

    Derived from SECRET_KEY so the gateway and the supervisor agree without storing it.
    """
    return hmac.new(
        settings.SECRET_KEY.encode(), f"bridge:{deployment_id}".encode(), hashlib.sha256
    ).hexdigest()


def crash_reason(health: dict[str, Any]) -> str:
    """Why a bridge reports its server "crashed" (its `/healthz`), in the owner's words."""
    last_error = health.get("last_error") or ""
    for line in reversed(last_error.splitlines()):
        if line.startswith(LIMIT_MESSAGE_PREFIX):
            limit = line.removeprefix(LIMIT_MESSAGE_PREFIX)
            return f"The MCP server was stopped by its sandbox: {limit}.\n{last_error}"
    return f"The MCP server keeps crashing: {last_error or 'no error output'}"


_registry: dict[str, type[Runtime]] = {}
_loaded = False
_load_lock = threading.Lock()


def register(runtime_class: type[Runtime]) -> type[Runtime]:
    _registry[runtime_class.kind] = runtime_class
    return runtime_class


def _load_runtime_modules() -> None:
    global _loaded
    with _load_lock:
        if not _loaded:
            for module in RUNTIME_MODULES:
                importlib.import_module(module)
            _loaded = True


def available_runtimes() -> list[str]:
    """The kinds new deployments may choose, in registration order."""
    if not _loaded:
        _load_runtime_modules()
    return [kind for kind, runtime in _registry.items() if runtime.is_configured()]


def runtimes_for(registry: str) -> list[str]:
    """The available kinds that can run packages of `registry`."""
    return [kind for kind in available_runtimes() if registry in _registry[kind].registries]


def get_runtime(kind: str) -> Runtime:
    if not _loaded:
        _load_runtime_modules()
    try:
        return _registry[kind]()
    except KeyError:
        known = ", ".join(sorted(_registry))
        raise LookupError(f"no runtime named {kind!r}; known: {known}") from None


# --- What a package runs as ------------------------------------------------------------------


class PackageError(ValueError):
    """A package name, version or entry command that must not reach a command line."""


# npm: lowercase URL-safe names, optionally scoped; legacy packages may have capitals.
# Versions are exact versions or dist-tags: ranges, URLs, `file:`/`git:` specs are refused so
# npx can only fetch the named package from the registry.
_NPM_NAME = re.compile(r"^(?:@[A-Za-z0-9][A-Za-z0-9._~-]*/)?[A-Za-z0-9][A-Za-z0-9._~-]*$")
_NPM_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]*$")
NPM_NAME_MAX = 214
# PyPI: PEP 508 names and PEP 440 versions (exact versions only, `==` is added here).
_PYPI_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
_PYPI_VERSION = re.compile(
    r"^(?:\d+!)?\d+(?:\.\d+)*(?:[-_.]?(?:a|b|c|rc|alpha|beta|pre|preview)[-_.]?\d*)?"
    r"(?:[-_.]?(?:post|rev|r)[-_.]?\d*)?(?:[-_.]?dev[-_.]?\d*)?(?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?$",
    re.IGNORECASE,
)
# A package's executable (npm bin, Python entry point): a plain name, never an option.
_EXECUTABLE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")
VERSION_MAX = 100


def validate_package(registry: str, name: str, version: str = "") -> None:
    """Raise PackageError unless `name` and `version` follow the registry's naming rules."""
    if registry == "npm":
        if len(name) > NPM_NAME_MAX or not _NPM_NAME.match(name):
            raise PackageError(f"{name!r} is not a valid npm package name")
        if version and (len(version) > VERSION_MAX or not _NPM_VERSION.match(version)):
            raise PackageError(
                f"{version!r} is not an npm version or dist-tag (ranges and URLs are refused)"
            )
    elif registry == "pypi":
        if not _PYPI_NAME.match(name):
            raise PackageError(f"{name!r} is not a valid PyPI project name")
        if version and (len(version) > VERSION_MAX or not _PYPI_VERSION.match(version)):
            raise PackageError(f"{version!r} is not a PEP 440 version")
    elif registry == "oci":
        image_reference(name, version)
    else:
        raise PackageError(f"{registry} packages cannot be run yet; use npm, PyPI or OCI")


def image_reference(name: str, version: str = "") -> oci.Reference:
    """An OCI package's image: `name` (registry/repository, perhaps with a tag or digest) at
    `version` (a tag, when the name has none). Raises PackageError."""
    try:
        if version.startswith("sha256:"):
            return oci.parse_reference(f"{name}@{version}")
        return oci.parse_reference(name, version)
    except oci.ImageError as exc:
        raise PackageError(str(exc)) from None


def validate_image_package(
    name: str, version: str, entry_command: str, entry_args
) -> oci.Reference:
    """An OCI package runs its image's entrypoint; `entry_args` replace the image's command
    (as `docker run IMAGE ARGS` does). Returns the image; raises PackageError."""
    image = image_reference(name, version)
    if entry_command:
        raise PackageError("an OCI image runs its own entrypoint; give arguments only")
    validate_entry("", entry_args)
    return image


def validate_entry(entry_command: str, entry_args: Sequence[object]) -> None:
    """An entry command is an executable name of the package or an absolute path.

    Absolute paths let an operator run a program of this host (tests, private builds); the
    package is then not fetched at all.
    """
    if entry_command and not (
        os_path.isabs(entry_command) or _EXECUTABLE_NAME.match(entry_command)
    ):
        raise PackageError(
            f"entry command {entry_command!r} must be an executable name or an absolute path"
        )
    if "\0" in entry_command:
        raise PackageError("entry command contains a NUL byte")
    for arg in entry_args:
        if not isinstance(arg, str) or "\0" in arg:
            raise PackageError(f"entry argument {arg!r} must be a string without NUL bytes")


def package_command(
    registry: str,
    name: str,
    version: str,
    entry_command: str = "",
    entry_args: Sequence[str] = (),
    *,
    npx: str = "npx",
    uvx: str = "uvx",
) -> list[str]:
    """The argv that runs a package's MCP server over stdio. Raises PackageError.

    npm: `npx -y -- NAME@VERSION ARGS` (or `--package=NAME@VERSION -- ENTRY ARGS`);
    PyPI: `uvx --from NAME==VERSION ENTRY ARGS`, the entry point defaulting to the name.
    An absolute entry command runs as it is.
    """
    validate_entry(entry_command, entry_args)
    args = list(entry_args)
    if os_path.isabs(entry_command):
        return [entry_command, *args]
    validate_package(registry, name, version)
    if registry == "oci":
        # Only the Fly runner runs an image (see mcpgateway/runner.py); nothing here does.
        raise PackageError("an OCI image is not a command Catwalk runs on this host")
    if registry == "npm":
        spec = f"{name}@{version or 'latest'}"
        if entry_command:
            return [npx, "-y", f"--package={spec}", "--", entry_command, *args]
        return [npx, "-y", "--", spec, *args]
    spec = f"{name}=={version}" if version else name
    return [uvx, "--from", spec, entry_command or name, *args]


def deployment_command(deployment: Deployment, *, npx: str = "npx", uvx: str = "uvx") -> list[str]:
    return package_command(
        deployment.package_registry,
        deployment.package_name,
        deployment.package_version,
        deployment.entry_command,
        deployment.entry_args or [],
        npx=npx,
        uvx=uvx,
    )


# --- Readiness: does the server behind an endpoint answer MCP? -------------------------------


class ProbeError(Exception):
    """The endpoint did not complete initialize + tools/list."""


PROBE_PROTOCOL_VERSION = "2025-06-18"
PROBE_PRINCIPAL = "catwalk-probe"
_MCP_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "X-Catwalk-Principal": PROBE_PRINCIPAL,
}


def initialize_request(client_name: str, request_id: int = 1) -> dict[str, Any]:
    """The `initialize` request Catwalk's own clients (probe, connector doctor) open with."""
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": PROBE_PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": client_name, "version": "1"},
        },
    }


def list_tools(endpoint: Endpoint, timeout: float = 30.0) -> list[str]:
    """Open an MCP session through the endpoint, list its tools, end the session.

    Returns the tool names (empty when the server has no tools capability). Raises ProbeError.
    """
    try:
        with endpoint.client(timeout) as client:
            response = client.post(
                "/mcp",
                headers=_MCP_HEADERS,
                json=initialize_request(PROBE_PRINCIPAL),
            )
            _reply(response, 1, "initialize")
            session = {
                "Mcp-Session-Id": response.headers.get("mcp-session-id", ""),
                "MCP-Protocol-Version": PROBE_PROTOCOL_VERSION,
                **_MCP_HEADERS,
            }
            try:
                client.post(
                    "/mcp",
                    headers=session,
                    json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                )
                listed = _reply(
                    client.post(
                        "/mcp",
                        headers=session,
                        json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                    ),
                    2,
                    "tools/list",
                )
            finally:
                if session["Mcp-Session-Id"]:
                    client.delete("/mcp", headers=session)
    except httpx.HTTPError as exc:
        raise ProbeError(f"cannot reach the server: {exc}") from exc
    except ValueError as exc:
        raise ProbeError(f"the answer is not JSON-RPC: {exc}") from exc
    tools = (listed.get("result") or {}).get("tools") or []
    return [tool.get("name", "") for tool in tools if isinstance(tool, dict)]


def _reply(response: httpx.Response, request_id: int, method: str) -> dict[str, Any]:
    """The JSON-RPC answer to `request_id` in a JSON or SSE response."""
    if response.status_code != 200:
        raise ProbeError(f"{method} got HTTP {response.status_code}: {response.text[:500]}")
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        messages = [
            json.loads(line[5:])
            for line in response.text.splitlines()
            if line.startswith("data:") and line[5:].strip()
        ]
    else:
        messages = [response.json()]
    for message in messages:
        if isinstance(message, dict) and message.get("id") == request_id:
            if method == "initialize" and "result" not in message:
                raise ProbeError(f"initialize failed: {json.dumps(message.get('error'))}")
            return message
    raise ProbeError(f"{method} got no answer")
