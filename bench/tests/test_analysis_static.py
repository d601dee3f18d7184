"""The static-analysis benchmark runs end to end on a tiny repository; no timing is asserted."""

import json
from pathlib import Path

from analysis.github import RepoRef
from bench import analysis_static

PACKAGE = {
    "name": "tiny-mcp",
    "version": "1.0.0",
    "bin": {"tiny-mcp": "index.js"},
    "dependencies": {"@modelcontextprotocol/sdk": "^1.0.0"},
}
INDEX = b"""
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
const key = process.env.TINY_API_KEY;
"""
CONTEXT = {
    "command": "python -m bench --only analysis",
    "date": "2026-01-01 00:00 UTC",
    "machine": {"nproc": 2, "cpu": "test", "memory": "1 MiB", "kernel": "test"},
    "versions": {"python": "3", "catwalk": "test"},
}


def test_a_monorepo_member_is_fetched_analysed_and_reported(tmp_path: Path) -> None:
    repositories = {
        ("acme", "tools"): {
            "servers/tiny/package.json": json.dumps(PACKAGE).encode(),
            "servers/tiny/index.js": INDEX,
            "README.md": b"# Tools\n",
        }
    }
    servers = [analysis_static.Server("tiny", RepoRef("acme", "tools", "main", "servers/tiny"))]

    measurement = analysis_static.measure(repositories, servers, repeats=2)

    [row] = measurement.rows
    assert set(row.as_dict()) == {
        "server",
        "files",
        "bytes",
        "fetch_extract_ms",
        "cold_ms",
        "cold_cpu_ms",
        "warm_ms",
        "warm_cpu_ms",
        "static_median_ms",
        "static_max_ms",
        "cpu_median_ms",
    }
    # Only the member's subfolder is analysed, not the repository's README.
    assert (row.server, row.files) == ("tiny", 2)
    assert len(row.warm_ms) == len(row.warm_cpu_ms) == 2

    docs = tmp_path / "benchmarks.md"
    begin, end = analysis_static.BEGIN_MARKER, analysis_static.END_MARKER
    docs.write_text(f"# B\n\n{begin}\nstale numbers\n{end}\n")
    analysis_static.update_docs(docs, analysis_static.render(measurement, CONTEXT))
    published = docs.read_text()
    assert "stale numbers" not in published
    assert "| tiny | 2 |" in published
    assert "**Typical repository**" in published
