"""`python -m echo_service`: the server over stdio, on mcp 1.x's FastMCP; it needs ECHO_API_KEY."""

import os
import sys

from mcp.server.fastmcp import FastMCP

server = FastMCP("echo-service")


@server.tool()
def echo(message: str) -> str:
    """Return the message."""
    return message


@server.tool()
def add(a: float, b: float) -> str:
    """Add two numbers."""
    return f"{a + b:g}"


if __name__ == "__main__":
    if not os.environ.get("ECHO_API_KEY"):
        sys.exit("echo-service: set ECHO_API_KEY to the service's API key")
    server.run()
