"""Periodic clean-up: abandoned builds fail so nothing waits for them forever."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from deployments.housekeeping import fail_abandoned_builds
from deployments.models import BuildStatus, SourceBuild

pytestmark = pytest.mark.django_db


def make_build(commit: str, status: str, started_minutes_ago: int) -> SourceBuild:
    return SourceBuild.objects.create(
        repository="acme/weather-mcp",
        commit_sha=commit * 40,
        recipe={},
        recipe_hash=commit,
        status=status,
        started_at=timezone.now() - timedelta(minutes=started_minutes_ago),
    )


def test_only_builds_building_past_twice_the_step_limit_are_failed(settings):
    settings.BUILD_TIMEOUT_SECONDS = 600
    abandoned = make_build("a", BuildStatus.BUILDING, started_minutes_ago=21)
    running = make_build("b", BuildStatus.BUILDING, started_minutes_ago=19)
    finished = make_build("c", BuildStatus.SUCCEEDED, started_minutes_ago=60)

    assert fail_abandoned_builds() == 1

    abandoned.refresh_from_db()
    assert abandoned.status == BuildStatus.FAILED
    assert "abandoned" in abandoned.error
    assert SourceBuild.objects.get(pk=running.pk).status == BuildStatus.BUILDING
    assert SourceBuild.objects.get(pk=finished.pk).status == BuildStatus.SUCCEEDED
