"""`manage.py analyze URL` prints the server.json the web app would store."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from analysis.tests.test_services import github, publish_weather, registry, weather_files  # noqa: F401

pytestmark = pytest.mark.django_db


def test_prints_the_server_json_and_the_steps(github, registry):  # noqa: F811
    github.add_repository("acme", "weather-mcp", weather_files())
    publish_weather(registry)
    out, err = io.StringIO(), io.StringIO()

    call_command(
        "analyze",
        "https://github.com/acme/weather-mcp",
        "--no-llm",
        "--no-introspect",
        stdout=out,
        stderr=err,
    )

    document = json.loads(out.getvalue())
    assert document["packages"][0]["identifier"] == "weather-mcp"
    assert "Fetching the repository" in err.getvalue()
    assert "Checking the package registry" in err.getvalue()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://gitlab.com/acme/weather-mcp", "github.com"),
        ("https://github.com/acme/absent", "not found"),
    ],
)
def test_a_bad_url_or_a_missing_repository_is_a_clear_error(github, registry, url, message):  # noqa: F811
    with pytest.raises(CommandError, match=message):
        call_command("analyze", url, "--no-llm", "--no-introspect", stdout=io.StringIO())
