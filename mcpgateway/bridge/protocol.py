"""JSON-RPC and MCP protocol facts the bridge needs, kept deliberately shallow.

The bridge never validates payloads against the MCP schema: it only looks at the
envelope (`jsonrpc`, `id`, `method`, `params._meta`) so that fields from newer
protocol revisions pass through untouched.
"""

from __future__ import annotations

import json
from typing import Any

# Revisions reachable through the `initialize` handshake, oldest first. The
# 2026-07-28 stateless revision is not relayed: stdio servers are all stateful.
SUPPORTED_VERSIONS: tuple[str, ...] = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]
# The Streamable HTTP spec: a request without MCP-Protocol-Version is 2025-03-26.
DEFAULT_HEADER_VERSION = "2025-03-26"
BATCHING_VERSION = "2025-03-26"
_VERSION_RANK = {version: rank for rank, version in enumerate(SUPPORTED_VERSIONS)}

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603
# Implementation-defined server errors (-32000..-32099).
SERVER_UNAVAILABLE = -32000
REQUEST_TIMEOUT = -32001
# -32002 is taken: MCP uses it for "resource not found".
SESSION_CAP_REACHED = -32005

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(message: Any) -> str:
    """Compact JSON text of one message; the only serialiser used on the hot path."""
    return _encode(message)


def error_message(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    """A JSON-RPC error response object."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def negotiate_version(requested: Any, server_version: str) -> str:
    """The version a client gets when a shared child already negotiated `server_version`.

    The child is the real server, so the client gets what the child would have
    given it: its own version when the child speaks that revision or a newer one,
    else the child's version (the client then decides whether it can continue).
    """
    server_rank = _VERSION_RANK.get(server_version)
    requested_rank = _VERSION_RANK.get(requested) if isinstance(requested, str) else None
    if server_rank is None:
        return requested if requested_rank is not None else LATEST_VERSION
    if requested_rank is None or requested_rank > server_rank:
        return server_version
    return requested


def is_valid_id(value: Any) -> bool:
    """MCP request ids are strings or integers (never null, never a bool)."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def classify(message: Any) -> str | None:
    """'request', 'notification' or 'response' for a well-formed envelope, else None."""
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return None
    method = message.get("method")
    if method is not None:
        if not isinstance(method, str) or not method:
            return None
        params = message.get("params")
        if params is not None and not isinstance(params, dict):
            return None
        if "id" in message:
            return "request" if is_valid_id(message["id"]) else None
        return "notification"
    if "id" in message and ("result" in message) != ("error" in message):
        if "error" in message and not isinstance(message["error"], dict):
            return None
        return "response"
    return None
