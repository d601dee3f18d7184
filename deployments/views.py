from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from deployments.forms import GitHubTokenForm
from deployments.github_tokens import remove_github_token, set_github_token
from deployments.models import AuditEvent, Deployment, GitHubToken

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


@login_required
@require_http_methods(["GET", "POST"])
def github_token(request: HttpRequest) -> HttpResponse:
    """The signed-in user's own GitHub token, for their private repositories: set, replace or
    remove it. Write-only: the page shows its last characters, never the token."""
    form = GitHubTokenForm()
    if request.method == "POST":
        if request.POST.get("action") == "remove":
            if remove_github_token(request.user, actor=request.user):
                messages.success(request, "Your GitHub token is removed.")
            return redirect("github-token")
        form = GitHubTokenForm(request.POST)
        if form.is_valid():
            stored = set_github_token(request.user, form.cleaned_data["token"], actor=request.user)
            messages.success(request, f"Your GitHub token ending {stored.display_hint} is stored.")
            return redirect("github-token")
    stored = GitHubToken.objects.filter(user=request.user).only("hint", "updated_at").first()
    return render(
        request,
        "accounts/github_token.html",
        {"form": form, "stored": stored},
        status=400 if form.errors else 200,
    )
