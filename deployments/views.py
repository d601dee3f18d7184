from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone

from deployments.models import AuditEvent, Deployment

ACTIVITY_EVENTS = 200


def _get_deployment_for_user(request: HttpRequest, deployment_id) -> Deployment:
    """The deployment if the signed-in user owns it; 404 otherwise, so ids leak nothing."""
    return get_object_or_404(Deployment, pk=deployment_id, owner=request.user)


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    since = timezone.now() - timezone.timedelta(hours=24)
    deployments = (
        Deployment.objects.filter(owner=request.user)
        .annotate(calls_24h=Count("tool_calls", filter=Q(tool_calls__started_at__gte=since)))
        .order_by("name")
    )
    return render(request, "deployments/dashboard.html", {"deployments": deployments})


@login_required
def deployment_detail(request: HttpRequest, deployment_id) -> HttpResponse:
    deployment = _get_deployment_for_user(request, deployment_id)
    context = {
        "deployment": deployment,
        "events": deployment.events.select_related("actor")[:50],
        "credentials": deployment.credentials.only("name", "is_secret", "updated_at"),
        "tokens": deployment.access_tokens.all(),
        "calls": deployment.tool_calls.all()[:50],
    }
    return render(request, "deployments/detail.html", context)


@login_required
def activity(request: HttpRequest) -> HttpResponse:
    """The signed-in user's audit log."""
    events = AuditEvent.objects.filter(user=request.user).select_related("actor")
    return render(request, "accounts/activity.html", {"events": events[:ACTIVITY_EVENTS]})
