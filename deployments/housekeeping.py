"""Periodic clean-up, run by Celery beat."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from deployments.models import AccessToken, BuildStatus, SourceBuild, TokenPurpose, ToolCall

# Long enough for the call log, which writes about once a second, to have written every call
# made before a token expired.
PLAYGROUND_TOKEN_GRACE = timedelta(hours=1)


def prune_tool_calls() -> int:
    """Delete tool-call log rows older than TOOL_CALL_RETENTION_DAYS; returns how many."""
    cutoff = timezone.now() - timedelta(days=settings.TOOL_CALL_RETENTION_DAYS)
    deleted, _ = ToolCall.objects.filter(started_at__lt=cutoff).delete()
    return deleted


def prune_playground_tokens() -> int:
    """Delete the playground's tokens that expired over an hour ago and that no call in the
    history refers to (a call keeps its token until the call itself is pruned); returns how
    many tokens were deleted."""
    cutoff = timezone.now() - PLAYGROUND_TOKEN_GRACE
    stale = AccessToken.objects.filter(
        purpose=TokenPurpose.PLAYGROUND, expires_at__lt=cutoff, tool_calls__isnull=True
    )
    deleted, _ = stale.delete()
    return deleted


def fail_abandoned_builds() -> int:
    """Fail builds still marked building long after any step could have finished: their worker
    died. The deployments waiting for them then fail too (the supervisor sees the failed build)
    instead of waiting forever; deploying again claims a fresh build."""
    cutoff = timezone.now() - timedelta(seconds=settings.BUILD_TIMEOUT_SECONDS * 2)
    return SourceBuild.objects.filter(status=BuildStatus.BUILDING, started_at__lt=cutoff).update(
        status=BuildStatus.FAILED,
        error="The build was abandoned (its worker stopped); deploy again to rebuild.",
        finished_at=timezone.now(),
    )
