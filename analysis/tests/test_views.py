"""The analysis pages: asking for an analysis, watching it, reading what it found.

An analysis is visible to the user who asked for it only. No analysis runs here: a request only
queues one (the Celery task is scheduled on commit, which the test transaction never reaches).
"""

from __future__ import annotations

import json

import pytest
from django.utils import timezone
from django.utils.html import escape

from analysis.models import Analysis, AnalysisStatus, AnalysisStep
from analysis.serverjson import META_KEY
from catwalk.testing import make_analysis

pytestmark = pytest.mark.django_db

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def analysis(owner):
    return make_analysis(owner, owner="acme", name="weather-mcp")


def server_json(**findings) -> dict:
    """A realistic analysed server.json: an npm package with two variables, verified tools."""
    document = {
        "$schema": "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json",
        "name": "io.github.acme/weather-mcp",
        "description": "Weather forecasts for any city",
        "version": "1.4.0",
        "repository": {"url": "https://github.com/acme/weather-mcp", "source": "github"},
        "packages": [
            {
                "registryType": "npm",
                "identifier": "@acme/weather-mcp",
                "version": "1.4.0",
                "runtimeHint": "npx",
                "transport": {"type": "stdio"},
                "packageArguments": [
                    {
                        "type": "named",
                        "name": "--units",
                        "description": "Metric or imperial",
                        "isRequired": False,
                        "choices": ["metric", "imperial"],
                    }
                ],
                "environmentVariables": [
                    {
                        "name": "WEATHER_API_KEY",
                        "description": "Key for the weather service",
                        "isRequired": True,
                        "isSecret": True,
                    },
                    {
                        "name": "WEATHER_REGION",
                        "description": "Default region",
                        "isRequired": False,
                        "isSecret": False,
                        "default": "eu-west",
                    },
                ],
            }
        ],
    }
    document["_meta"] = {
        META_KEY: {
            "deployable": "package",
            "package": {
                "source": {"layer": "manifest", "file": "package.json", "detail": "name"},
                "executables": ["weather-mcp"],
                "verified": True,
                "registry": {
                    "latest": "1.4.0",
                    "repository": "https://github.com/acme/weather-mcp",
                },
            },
            "description": {"source": {"layer": "manifest", "file": "package.json", "detail": ""}},
            "transports": {"stdio": [{"layer": "static", "file": "src/index.ts", "detail": ""}]},
            "sources": {
                "environmentVariables": {
                    "WEATHER_API_KEY": [
                        {"layer": "static", "file": "src/config.ts", "detail": "process.env"},
                        {"layer": "documentation", "file": "README.md", "detail": ""},
                    ],
                    "WEATHER_REGION": [
                        {"layer": "static", "file": "src/region.ts", "detail": "process.env"}
                    ],
                },
                "packageArguments": {
                    "--units": [{"layer": "static", "file": "src/cli.ts", "detail": "yargs"}]
                },
            },
            "build": {"node": {"manager": "npm"}},
            "excludedVariables": [
                {"name": "NODE_ENV", "reason": "a variable of the runtime or the host"}
            ],
            "unpublished": None,
            "tools": {
                "verified": True,
                "serverInfo": {"name": "weather", "version": "1.4.0"},
                "tools": [
                    {
                        "name": "get_forecast",
                        "description": "Forecast for a city",
                        "inputSchema": {"type": "object", "properties": {"city": {}}},
                    }
                ],
                "resources": [{"uri": "weather://cities", "name": "Cities"}],
                "prompts": [{"name": "plan_trip", "description": "Plan a trip by the weather"}],
                "needsCredentials": False,
                "error": "",
                "stderrTail": [],
            },
            "claude": {"used": True, "model": "claude-test-model"},
            "warnings": ["The README names a variable the code never reads."],
            "timings": {"fetch": 0.5, "static": 0.2},
            **findings,
        }
    }
    return document


def finish(analysis: Analysis, result: dict, **fields) -> Analysis:
    started = timezone.now() - timezone.timedelta(seconds=5)
    Analysis.objects.filter(pk=analysis.pk).update(
        status=AnalysisStatus.SUCCEEDED,
        step=AnalysisStep.DONE,
        result=result,
        commit_sha=SHA,
        progress=[
            {"step": "fetching", "at": started.isoformat(), "seconds": 1.5},
            {"step": "manifests", "at": started.isoformat()},
        ],
        started_at=started,
        finished_at=timezone.now(),
        **fields,
    )
    analysis.refresh_from_db()
    return analysis


def running(analysis: Analysis) -> Analysis:
    now = timezone.now()
    Analysis.objects.filter(pk=analysis.pk).update(
        status=AnalysisStatus.RUNNING,
        step=AnalysisStep.SCANNING,
        started_at=now,
        progress=[
            {"step": "fetching", "at": now.isoformat(), "seconds": 1.5},
            {"step": "scanning", "at": now.isoformat()},
        ],
    )
    return analysis


def failed(analysis: Analysis, error: str) -> Analysis:
    Analysis.objects.filter(pk=analysis.pk).update(
        status=AnalysisStatus.FAILED,
        step=AnalysisStep.FAILED,
        error=error,
        finished_at=timezone.now(),
    )
    return analysis


# --- Who sees an analysis ---------------------------------------------------------------------


def test_owner_sees_their_analysis(owner_client, analysis):
    response = owner_client.get(f"/analyses/{analysis.pk}/")
    assert response.status_code == 200
    assert b"acme/weather-mcp" in response.content


def test_another_user_gets_404(stranger_client, analysis):
    assert stranger_client.get(f"/analyses/{analysis.pk}/").status_code == 404


def test_anonymous_visitors_are_sent_to_sign_in(anon_client, analysis):
    response = anon_client.get(f"/analyses/{analysis.pk}/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


# --- Asking for an analysis -------------------------------------------------------------------


def test_new_analysis_page_has_the_url_field_and_the_tools_checkbox(owner_client):
    response = owner_client.get("/analyses/new/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "GitHub repository URL" in html
    assert 'placeholder="https://github.com/OWNER/REPO"' in html
    assert "/tree/REF/FOLDER" in html
    assert "Start the server to list its tools" in html
    assert 'type="checkbox" name="introspect"' in html
    assert 'id="id_introspect" checked' in html


def test_new_analysis_page_lists_only_the_users_recent_analyses(owner, stranger, owner_client):
    make_analysis(owner, owner="acme", name="weather-mcp")
    make_analysis(stranger, owner="other", name="secret-server")
    html = owner_client.get("/analyses/new/").content.decode()
    assert "acme/weather-mcp" in html
    assert "other/secret-server" not in html


def test_anonymous_visitors_asking_for_an_analysis_are_sent_to_sign_in(anon_client):
    response = anon_client.get("/analyses/new/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://gitlab.com/a/b", "Only repositories on github.com are supported."),
        ("https://user:tok@github.com/a/b", "Remove the user name or token from the URL"),
        ("not a url", "The URL contains spaces or control characters."),
    ],
)
def test_a_bad_url_is_refused_inline_and_nothing_is_created(owner_client, url, message):
    response = owner_client.post("/analyses/new/", {"url": url, "introspect": "on"})
    assert response.status_code == 400
    assert escape(message) in response.content.decode()
    assert not Analysis.objects.exists()


def test_a_github_folder_url_queues_an_analysis_and_shows_it(owner, owner_client):
    response = owner_client.post(
        "/analyses/new/",
        {
            "url": "https://github.com/modelcontextprotocol/servers/tree/main/src/everything",
            "introspect": "on",
        },
    )
    analysis = Analysis.objects.get()
    assert response.status_code == 303
    assert response["Location"] == f"/analyses/{analysis.pk}/"
    assert analysis.requested_by == owner
    assert analysis.status == AnalysisStatus.PENDING
    assert analysis.repository.full_name == "modelcontextprotocol/servers"
    assert analysis.ref == "main"
    assert analysis.subdirectory == "src/everything"
    assert "introspection" in analysis.variant


def test_leaving_the_checkbox_off_asks_for_no_introspection(owner_client):
    owner_client.post("/analyses/new/", {"url": "https://github.com/acme/weather-mcp"})
    assert "introspection" not in Analysis.objects.get().variant


# --- Watching it run --------------------------------------------------------------------------


def test_a_running_analysis_polls_its_progress_fragment(owner_client, analysis):
    running(analysis)
    response = owner_client.get(f"/analyses/{analysis.pk}/", HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html and "<h1" not in html
    assert html.strip().startswith('<div id="analysis-progress"')
    assert 'hx-trigger="every 1s"' in html
    assert f'hx-get="/analyses/{analysis.pk}/"' in html
    assert 'hx-swap="outerHTML"' in html
    assert "Fetching the repository" in html and "1.5 s" in html
    assert 'aria-current="step">Scanning the source' in html
    assert "HX-Refresh" not in response


def test_the_full_page_wraps_the_progress_in_a_live_region(owner_client, analysis):
    running(analysis)
    html = owner_client.get(f"/analyses/{analysis.pk}/").content.decode()
    assert '<div aria-live="polite">' in html
    assert 'hx-trigger="every 1s"' in html


def test_a_pending_analysis_shows_it_waits_for_a_worker(owner_client, analysis):
    html = owner_client.get(f"/analyses/{analysis.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert "Waiting for a worker" in html
    assert 'hx-trigger="every 1s"' in html


def test_a_finished_analysis_stops_polling_and_reloads_the_page(owner_client, analysis):
    finish(analysis, server_json())
    response = owner_client.get(f"/analyses/{analysis.pk}/", HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert "hx-trigger" not in html and "hx-get" not in html
    assert "<h1" not in html
    assert response["HX-Refresh"] == "true"


def test_a_finished_page_does_not_poll(owner_client, analysis):
    finish(analysis, server_json())
    html = owner_client.get(f"/analyses/{analysis.pk}/").content.decode()
    assert "hx-trigger" not in html


def test_another_user_cannot_poll_an_analysis(stranger_client, analysis):
    response = stranger_client.get(f"/analyses/{analysis.pk}/", HTTP_HX_REQUEST="true")
    assert response.status_code == 404


# --- Reading the result -----------------------------------------------------------------------


def test_a_succeeded_analysis_explains_its_package(owner_client, analysis):
    finish(analysis, server_json())
    html = owner_client.get(f"/analyses/{analysis.pk}/").content.decode()
    assert "@acme/weather-mcp" in html
    assert "Verified on npm" in html
    assert "<code>npx</code>" in html
    assert "stdio" in html
    assert "package.json" in html
    assert f">{SHA[:7]}</code>" in html


def test_a_succeeded_analysis_lists_variables_with_where_they_were_found(owner_client, analysis):
    finish(analysis, server_json())
    html = owner_client.get(f"/analyses/{analysis.pk}/").content.decode()
    assert '<th scope="row"><code>WEATHER_API_KEY</code></th>' in html
    assert "Key for the weather service" in html
    assert "src/config.ts" in html and "process.env" in html
    assert "<code>eu-west</code>" in html
    assert "<code>--units</code>" in html and "<code>imperial</code>" in html
    assert "src/cli.ts" in html


def test_a_succeeded_analysis_shows_the_excluded_variables_with_reasons(owner_client, analysis):
    finish(analysis, server_json())
    html = owner_client.get(f"/analyses/{analysis.pk}/").content.decode()
    assert "1 variable left out" in html
    assert "NODE_ENV" in html and "a variable of the runtime or the host" in html


def test_a_succeeded_analysis_shows_the_verified_tools(owner_client, analysis):
    finish(analysis, server_json())
    html = owner_client.get(f"/analyses/{analysis.pk}/").content.decode()
    assert "Verified by starting the server" in html
    assert "<code>weather</code> version 1.4.0" in html
    assert "<code>get_forecast</code>" in html and "Forecast for a city" in html
    assert "(city)" in html
    assert "weather://cities" in html
    assert "plan_trip" in html


def test_a_succeeded_analysis_shows_claude_and_warnings(owner_client, analysis):
    finish(analysis, server_json())
    html = owner_client.get(f"/analyses/{analysis.pk}/").content.decode()
    assert "Used (claude-test-model)" in html
    assert "The README names a variable the code never reads." in html


def test_a_server_that_needs_credentials_says_so(owner_client, analysis):
    tools = {"verified": False, "needsCredentials": True, "error": "exited", "stderrTail": []}
    finish(analysis, server_json(tools=tools))
    html = owner_client.get(f"/analyses/{analysis.pk}/").content.decode()
    assert "needs its credentials before it lists its tools" in html


def test_a_server_that_failed_to_start_shows_its_error_output(owner_client, analysis):
    tools = {
        "verified": False,
        "needsCredentials": False,
        "error": "The server exited with status 1",
        "stderrTail": ["TypeError: boom", "    at main (index.js:3)"],
    }
    finish(analysis, server_json(tools=tools))
    html = owner_client.get(f"/analyses/{analysis.pk}/").content.decode()
    assert "Starting the server failed: The server exited with status 1" in html
    assert '<pre tabindex="0">TypeError: boom\n    at main (index.js:3)</pre>' in html


def test_a_repository_without_a_package_gives_its_verdict(owner_client, analysis):
    document = server_json(
        deployable="source",
        unpublished={
            "environmentVariables": [
                {"name": "LOCAL_TOKEN", "description": "", "isRequired": True, "isSecret": True}
            ],
            "packageArguments": [],
        },
        tools={"verified": False},
    )
    document["packages"] = []
    document["_meta"][META_KEY]["source"] = {
        "runnable": True,
        "ecosystem": "node",
        "packageManager": "pnpm",
        "root": "",
        "folder": "packages/server",
        "lockfile": "pnpm-lock.yaml",
        "buildScript": True,
        "entry": {"file": "packages/server/dist/cli.js"},
        "transport": "stdio",
    }
    finish(analysis, document)
    html = owner_client.get(f"/analyses/{analysis.pk}/").content.decode()
    assert "Catwalk builds it from source at this commit" in html
    assert "<code>pnpm install --frozen-lockfile</code>" in html
    assert "<code>pnpm run build</code>" in html
    assert "<code>node packages/server/dist/cli.js</code> over stdio" in html
    assert f'href="/analyses/{analysis.pk}/deploy/">Build and deploy' in html
    assert "LOCAL_TOKEN" in html
    assert "Not checked" in html


def test_a_newer_commit_and_a_cached_result_are_noted(owner, owner_client, analysis):
    earlier = finish(make_analysis(owner, owner="acme", name="weather-mcp"), server_json())
    finish(analysis, server_json(previousCommit="f" * 40), cached_from=earlier)
    html = owner_client.get(f"/analyses/{analysis.pk}/").content.decode()
    assert "A newer commit than the last analysis" in html and "fffffff" in html
    assert "Reused from a cached analysis" in html


def test_a_failed_analysis_shows_its_error_and_a_retry_form(owner_client, owner):
    analysis = make_analysis(
        owner, owner="acme", name="weather-mcp", ref="main", subdirectory="src/weather"
    )
    failed(analysis, "The repository acme/weather-mcp was not found.")
    html = owner_client.get(f"/analyses/{analysis.pk}/").content.decode()
    assert "The analysis failed" in html
    assert "The repository acme/weather-mcp was not found." in html
    assert 'action="/analyses/new/"' in html
    assert 'name="url" value="https://github.com/acme/weather-mcp/tree/main/src/weather"' in html
    assert "Try again" in html


def test_repository_text_is_escaped(owner_client, analysis):
    attack = "<script>alert(1)</script>"
    document = server_json(warnings=[attack])
    document["description"] = attack
    document["packages"][0]["environmentVariables"][0]["description"] = attack
    meta = document["_meta"][META_KEY]
    meta["tools"]["tools"][0]["description"] = attack
    meta["excludedVariables"][0]["reason"] = attack
    finish(analysis, document)
    html = owner_client.get(f"/analyses/{analysis.pk}/").content.decode()
    assert attack not in html
    assert escape(attack) in html


def test_failure_output_is_escaped(owner_client, analysis):
    failed(analysis, "<img src=x onerror=alert(1)>")
    html = owner_client.get(f"/analyses/{analysis.pk}/").content.decode()
    assert "<img src=x" not in html


# --- Downloading server.json ------------------------------------------------------------------


def test_the_owner_downloads_server_json(owner_client, analysis):
    document = server_json()
    finish(analysis, document)
    response = owner_client.get(f"/analyses/{analysis.pk}/server.json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"] == 'attachment; filename="server.json"'
    assert json.loads(response.content) == document


def test_the_page_links_to_the_download_and_shows_the_document(owner_client, analysis):
    finish(analysis, server_json())
    html = owner_client.get(f"/analyses/{analysis.pk}/").content.decode()
    assert f'href="/analyses/{analysis.pk}/server.json"' in html
    assert "&quot;identifier&quot;: &quot;@acme/weather-mcp&quot;" in html


def test_another_user_cannot_download_server_json(stranger_client, analysis):
    finish(analysis, server_json())
    assert stranger_client.get(f"/analyses/{analysis.pk}/server.json").status_code == 404


def test_an_unfinished_analysis_has_no_server_json(owner_client, analysis):
    running(analysis)
    assert owner_client.get(f"/analyses/{analysis.pk}/server.json").status_code == 404
