"""A server that speaks only Streamable HTTP, on the port its environment names."""

import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("http-only")


@server.tool()
def echo(message: str) -> str:
    """Say the message back."""
    return message


if __name__ == "__main__":
    server.run(transport="streamable-http", host="127.0.0.1", port=int(os.environ["PORT"]))
