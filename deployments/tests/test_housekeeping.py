"""Periodic clean-up: abandoned builds fail so nothing waits for them forever, and the
playground's expired tokens go once no call in the history needs them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from catwalk.testing import make_deployment, make_token, make_user
from deployments.housekeeping import fail_abandoned_builds, prune_playground_tokens
from deployments.models import AccessToken, BuildStatus, SourceBuild, TokenPurpose, ToolCall

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


def test_expired_playground_tokens_go_once_no_logged_call_refers_to_them():
    deployment = make_deployment(make_user())
    now = timezone.now()

    def token(expired_minutes_ago: int, purpose: str = TokenPurpose.PLAYGROUND) -> AccessToken:
        expires_at = now - timedelta(minutes=expired_minutes_ago)
        return make_token(deployment, "t", expires_at=expires_at, purpose=purpose)[0]

    unused = token(expired_minutes_ago=61)
    called = token(expired_minutes_ago=61)
    ToolCall.objects.create(
        deployment=deployment,
        token=called,
        method="tools/call",
        started_at=now - timedelta(minutes=65),
        duration_ms=1,
        outcome="ok",
    )
    just_expired = token(expired_minutes_ago=59)
    owners_own = token(expired_minutes_ago=600, purpose=TokenPurpose.CLIENT)

    assert prune_playground_tokens() == 1

    remaining = set(AccessToken.objects.values_list("pk", flat=True))
    assert unused.pk not in remaining
    assert {called.pk, just_expired.pk, owners_own.pk} <= remaining
