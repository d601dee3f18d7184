from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from analysis.models import Analysis


def _get_analysis_for_user(request: HttpRequest, analysis_id: int) -> Analysis:
    return get_object_or_404(
        Analysis.objects.select_related("repository"), pk=analysis_id, requested_by=request.user
    )


@login_required
def analysis_detail(request: HttpRequest, analysis_id: int) -> HttpResponse:
    analysis = _get_analysis_for_user(request, analysis_id)
    return render(request, "analysis/detail.html", {"analysis": analysis})
