"""A tiny MCP server: echo and add. Run with `python -m server_pkg`."""
