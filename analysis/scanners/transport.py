"""Which MCP transports the server's code sets up: stdio, Streamable HTTP, legacy SSE."""

from __future__ import annotations

from analysis.checkout import Checkout
from analysis.findings import STATIC, Findings, Source
from analysis.scanners.sources import source_files

# Literal signs, found with `str.find`: regular expressions over megabyte bundles cost far more.
SIGNS: dict[str, tuple[str, ...]] = {
    "stdio": (
        "StdioServerTransport",
        "stdio_server(",
        "run_stdio_async(",
        "serve_stdio",
        "ServeStdio(",
        "stdio()",
        ".run()",
        # A transport option whose choices or default name stdio.
        "'stdio'",
        '"stdio"',
    ),
    "streamable-http": (
        "StreamableHTTPServerTransport",
        "streamable_http_app",
        "'streamable-http'",
        '"streamable-http"',
        'transport="http"',
        "transport='http'",
        "NewStreamableHTTPServer",
        "StreamableHttpService",
    ),
    "sse": (
        "SSEServerTransport",
        "sse_app",
        'transport="sse"',
        "transport='sse'",
        "NewSSEServer",
    ),
}
MCP_HINTS = ("modelcontextprotocol", "FastMCP", "McpServer", "mcp")


def scan(checkout: Checkout, findings: Findings) -> None:
    for path, _ in source_files(checkout):
        text = checkout.text(path)
        if not text or not any(hint in text for hint in MCP_HINTS):
            continue
        for kind, signs in SIGNS.items():
            offsets = [offset for offset in (text.find(sign) for sign in signs) if offset >= 0]
            if offsets:
                line = text.count("\n", 0, min(offsets)) + 1
                findings.transport(kind, Source(STATIC, path, f"line {line}"))
