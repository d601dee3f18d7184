"""The redeploy and rollback actions: POST only, the owner's only, and a clear message when the
deployment cannot do it."""

from __future__ import annotations

import pytest

from catwalk.testing import make_deployment
from deployments.models import BuildStatus, PackageRegistry, SourceBuild

pytestmark = pytest.mark.django_db


@pytest.fixture
def source_deployment(owner):
    build = SourceBuild.objects.create(
        repository="acme/weather-mcp",
        commit_sha="a" * 40,
        recipe={},
        recipe_hash="r",
        status=BuildStatus.SUCCEEDED,
    )
    return make_deployment(
        owner,
        package_registry=PackageRegistry.SOURCE,
        package_name="acme/weather-mcp",
        package_version="a" * 12,
        source_build=build,
    )


@pytest.mark.parametrize("action", ["redeploy", "rollback"])
def test_only_the_owner_may_post_it(source_deployment, stranger_client, owner_client, action):
    url = f"/deployments/{source_deployment.pk}/{action}/"

    assert stranger_client.post(url).status_code == 404
    assert owner_client.get(url).status_code == 405


def test_a_package_deployment_cannot_be_redeployed_from_source(owner, owner_client):
    deployment = make_deployment(owner)

    response = owner_client.post(f"/deployments/{deployment.pk}/redeploy/", follow=True)

    assert b"Only deployments built from source can be redeployed" in response.content
    deployment.refresh_from_db()
    assert deployment.next_build is None


def test_a_rollback_needs_a_previous_version(source_deployment, owner_client):
    response = owner_client.post(f"/deployments/{source_deployment.pk}/rollback/", follow=True)

    assert b"There is no previous version to roll back to." in response.content
    source_deployment.refresh_from_db()
    assert source_deployment.next_build is None


def test_a_rollback_records_the_previous_build_as_the_next(
    source_deployment, owner_client, settings, tmp_path
):
    settings.DATA_DIR = tmp_path
    previous = SourceBuild.objects.create(
        repository="acme/weather-mcp",
        commit_sha="b" * 40,
        recipe={},
        recipe_hash="r",
        status=BuildStatus.SUCCEEDED,
    )
    (tmp_path / "builds" / str(previous.pk) / "app").mkdir(parents=True)
    source_deployment.previous_build = previous
    source_deployment.save()

    response = owner_client.post(f"/deployments/{source_deployment.pk}/rollback/", follow=True)

    assert b"Rolling back to commit bbbbbbbbbbbb." in response.content
    source_deployment.refresh_from_db()
    assert source_deployment.next_build == previous
    second = owner_client.post(f"/deployments/{source_deployment.pk}/rollback/", follow=True)
    assert b"A redeploy is already under way." in second.content
