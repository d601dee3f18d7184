"""Which MCP transports the server's code sets up: stdio, Streamable HTTP, legacy SSE."""

from __future__ import annotations

import re

from analysis.checkout import Checkout
from analysis.findings import STATIC, Findings, Source
from analysis.scanners.sources import source_files

SIGNS: dict[str, re.Pattern[str]] = {
    "stdio": re.compile(
        r"\bStdioServerTransport\b|\bstdio_server\s*\(|transport\s*=\s*['\"]stdio['\"]"
        r"|\.run\(\s*\)|\.run_stdio_async\(|\bserve_stdio\b|ServeStdio\(|\bstdio\(\)"
        # A transport option whose choices or default name stdio.
        r"|['\"]stdio['\"]"
    ),
    "streamable-http": re.compile(
        r"\bStreamableHTTPServerTransport\b|\bstreamable_http_app\b|['\"]streamable-http['\"]"
        r"|transport\s*=\s*['\"]http['\"]|\bNewStreamableHTTPServer\b|\bStreamableHttpService\b"
    ),
    "sse": re.compile(
        r"\bSSEServerTransport\b|\bsse_app\b|transport\s*=\s*['\"]sse['\"]|\bNewSSEServer\b"
    ),
}
MCP_HINT = re.compile(r"modelcontextprotocol|\bmcp\b|FastMCP|McpServer", re.IGNORECASE)


def scan(checkout: Checkout, findings: Findings) -> None:
    for path, _ in source_files(checkout):
        text = checkout.text(path)
        if not text or not MCP_HINT.search(text):
            continue
        for kind, pattern in SIGNS.items():
            match = pattern.search(text)
            if match:
                line = text.count("\n", 0, match.start()) + 1
                findings.transport(kind, Source(STATIC, path, f"line {line}"))
