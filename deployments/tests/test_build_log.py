"""A source deployment's page shows the last lines of its build log, however long the log."""

from __future__ import annotations

import pytest

from catwalk.testing import make_deployment
from deployments.builds import log_path, log_tail
from deployments.models import BuildStatus, PackageRegistry, SourceBuild

pytestmark = pytest.mark.django_db


@pytest.fixture
def build(settings, tmp_path) -> SourceBuild:
    settings.DATA_DIR = tmp_path
    return SourceBuild.objects.create(
        repository="acme/weather-mcp",
        commit_sha="a" * 40,
        recipe={"ecosystem": "node"},
        recipe_hash="b" * 64,
        status=BuildStatus.SUCCEEDED,
    )


def write_log(build: SourceBuild, lines: int) -> None:
    path = log_path(build)
    path.parent.mkdir(parents=True)
    # Megabytes: many times the 64 KiB chunks the tail is read in.
    path.write_text(
        "".join(f"npm http fetch GET 200 package-{n:07d} {'.' * 40}\n" for n in range(lines))
    )


def test_the_tail_of_a_long_build_log_is_its_last_lines(build):
    write_log(build, 100_000)

    assert log_tail(build, 3) == [
        f"npm http fetch GET 200 package-{n:07d} {'.' * 40}" for n in (99_997, 99_998, 99_999)
    ]


def test_a_build_without_a_log_has_no_tail(build):
    assert log_tail(build, 3) == []


def test_the_deployment_page_shows_the_end_of_the_build_log(build, owner, owner_client):
    write_log(build, 100_000)
    deployment = make_deployment(
        owner, "weather", package_registry=PackageRegistry.SOURCE, source_build=build
    )

    response = owner_client.get(f"/deployments/{deployment.id}/")

    assert b"package-0099999" in response.content
    assert b"package-0000000" not in response.content
