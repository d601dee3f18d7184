"""A tiny MCP server that needs an API key: echo and add. Run with `python -m echo_service`."""
