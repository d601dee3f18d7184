"""`python -m server_pkg`: the server over stdio, on mcp 1.x's FastMCP."""

from mcp.server.fastmcp import FastMCP

server = FastMCP("server-pkg")


@server.tool()
def echo(message: str) -> str:
    """Return the message."""
    return message


@server.tool()
def add(a: float, b: float) -> str:
    """Add two numbers."""
    return f"{a + b:g}"


if __name__ == "__main__":
    server.run()
