"""Benchmark harness for MCP relays (``make bench``). See docs/benchmarks.md for the method."""
