"""A repository whose server speaks only Streamable HTTP is built from source and served: the
relay in its sandbox gives it a port and passes the bridge's stdio to its HTTP endpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis import services as analysis_services
from analysis.serverjson import meta
from deployments import builds, services
from deployments.models import Deployment, Status
from deployments.tests.conftest import call_tool, endpoint_of

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
REPOSITORY = Path(__file__).parent / "source_repos" / "python-http"


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_an_http_only_server_built_from_source_serves_through_the_gateway(
    supervisor, owner, github
):
    sha = github.add_repository("acme", "http-only", files_of(REPOSITORY))
    document, analysed = analysis_services.analyse(
        "https://github.com/acme/http-only",
        analysis_services.Options(use_claude=False, introspect=False),
    )
    recipe = meta(document)["source"]
    build = builds.ensure_build("acme/http-only", "", sha, recipe, user=owner)

    assert analysed == sha
    assert (recipe["transport"], recipe["entry"], recipe["pythonInstall"]) == (
        "streamable-http",
        {"file": "server.py"},
        "requirements",
    )
    deployment, _ = services.create_deployment(
        owner, services.source_package(build), source_build=build, issued_to="tests"
    )
    services.wait_until_ready(deployment, timeout=180)

    assert Deployment.objects.get(pk=deployment.pk).status == Status.RUNNING
    assert call_tool(endpoint_of(deployment), "echo", {"message": "over http"}) == "over http"
