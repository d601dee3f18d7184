"""The web pages benchmark runs end to end at a tiny scale; no timing is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.urls import URLPattern, get_resolver

from bench import pages

TINY = pages.Scale(
    deployments=3,
    calls_24h=20,
    calls_older=10,
    events=10,
    tokens=5,
    credentials=2,
    audit_events=30,
    failed_analyses=2,
    source_every=2,
    build_log_lines=20,
    stderr_log_bytes=4096,
)
REQUESTS = 2
PAGES_ASKED_FOR = {
    "dashboard",
    "deployment-detail",
    "activity",
    "analysis-new",
    "analysis-detail",
    "analysis-deploy",
    "github-token",
}
CONTEXT = {
    "command": "python -m bench --only pages",
    "date": "2026-01-01 00:00 UTC",
    "machine": {"nproc": 2, "cpu": "test", "memory": "1 MiB", "kernel": "test"},
    "versions": {"python": "3", "catwalk": "test"},
}


@pytest.fixture(scope="module")
def measurement() -> pages.Measurement:
    return pages.measure(TINY, requests=REQUESTS, warmup=1)


def test_every_page_asked_for_answers_both_users_and_is_timed(measurement):
    assert measurement.failures == {}
    for user in (pages.BUSY, pages.BASELINE):
        timed = {page.name: page for page in measurement.pages if page.user == user}
        assert set(timed) >= PAGES_ASKED_FOR
        for page in timed.values():
            assert page.status == 200, page.name
            assert len(page.wall_ms) == len(page.cpu_ms) == REQUESTS
            assert page.queries > 0
            assert page.bytes > 0


def test_a_page_that_answers_htmx_with_a_fragment_is_timed_both_ways(measurement):
    names = {page.name for page in measurement.pages if page.user == pages.BUSY}
    assert {"analysis-detail", "analysis-detail (htmx)"} <= names
    # The JSON download is no document, so there is no fragment of it to time.
    assert "analysis-server-json (htmx)" not in names


def test_every_route_of_a_deployment_or_analysis_is_measured_or_said_why_not(measurement):
    routes = {
        str(entry.pattern)
        for entry in get_resolver().url_patterns
        if isinstance(entry, URLPattern)
        and {"deployment_id", "analysis_id"} & set(entry.pattern.regex.groupindex)
    }
    measured = {page.route for page in measurement.pages}
    assert routes <= measured | set(measurement.skipped)
    assert "deployments/<uuid:deployment_id>/" in measured
    assert measurement.skipped.get("deployments/<uuid:deployment_id>/redeploy/") == "POST only"
    # A deployment's OAuth protected-resource metadata is a plain GET: measured, not skipped.
    assert ".well-known/oauth-protected-resource/mcp/<uuid:deployment_id>" in measured
    assert "oauth/token/" in measurement.skipped


def test_the_database_holds_the_history_the_scale_asks_for(measurement):
    users_deployments = TINY.deployments + 1  # the baseline user has one
    calls = users_deployments * (TINY.calls_24h + TINY.calls_older)
    assert measurement.rows["Deployment"] == users_deployments
    assert measurement.rows["ToolCall"] == calls
    assert measurement.rows["DeploymentEvent"] == users_deployments * TINY.events
    assert measurement.rows["AccessToken"] == users_deployments * TINY.tokens
    assert measurement.database.startswith(("SQLite", "PostgreSQL"))


def test_the_table_replaces_the_pages_section_of_the_docs(measurement, tmp_path: Path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# B\n\n{pages.BEGIN_MARKER}\nstale numbers\n{pages.END_MARKER}\n")
    pages.update_docs(docs, pages.render(measurement, CONTEXT))
    published = docs.read_text()
    assert "stale numbers" not in published
    assert "| deployment-detail | `/deployments/<uuid:deployment_id>/` | 200 |" in published
    assert "**Slowest page** for the user with 3 deployments" in published
    assert "Production settings (`DEBUG=False`)" in published
