"""Periodic clean-up, run by Celery beat."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from analysis.models import Analysis, AnalysisStateError, AnalysisStatus


def fail_stale_analyses() -> int:
    """Fail analyses that have been unfinished for longer than ANALYSIS_TIMEOUT_SECONDS.

    A worker that died mid-analysis would otherwise leave the page polling forever.
    """
    cutoff = timezone.now() - timedelta(seconds=settings.ANALYSIS_TIMEOUT_SECONDS)
    stale = Analysis.objects.filter(
        status__in=[AnalysisStatus.PENDING, AnalysisStatus.RUNNING], created_at__lt=cutoff
    )
    failed = 0
    for analysis in stale:
        try:
            analysis.fail(
                f"The analysis did not finish within {settings.ANALYSIS_TIMEOUT_SECONDS} seconds."
            )
        except AnalysisStateError:
            continue  # it finished while we looked
        failed += 1
    return failed
