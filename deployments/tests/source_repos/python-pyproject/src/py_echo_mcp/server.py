"""The server, on the SDK's high-level MCPServer (FastMCP in mcp 1.x), over stdio."""

from mcp.server.mcpserver import MCPServer

server = MCPServer("py-echo-mcp")


@server.tool()
def echo(message: str) -> str:
    """Return the message."""
    return message


@server.tool()
def add(a: float, b: float) -> str:
    """Add two numbers."""
    return f"{a + b:g}"


def main() -> None:
    server.run()
