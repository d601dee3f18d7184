"""A tiny MCP server: echo and add."""
