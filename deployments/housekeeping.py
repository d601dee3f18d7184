"""Periodic clean-up, run by Celery beat."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from deployments.models import ToolCall


def prune_tool_calls() -> int:
    """Delete tool-call log rows older than TOOL_CALL_RETENTION_DAYS; returns how many."""
    cutoff = timezone.now() - timedelta(days=settings.TOOL_CALL_RETENTION_DAYS)
    deleted, _ = ToolCall.objects.filter(started_at__lt=cutoff).delete()
    return deleted
