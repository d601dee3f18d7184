from __future__ import annotations

import logging

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect, JsonResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_safe

from catwalk import accounts

logger = logging.getLogger(__name__)


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for Fly's HTTP check: the database answers, and Redis when configured."""
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:
        logger.warning("health check: database unreachable: %s", exc)
        checks["database"] = "unreachable"
    if settings.REDIS_URL:
        import redis

        try:
            redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2).ping()
            checks["redis"] = "ok"
        except redis.RedisError as exc:
            logger.warning("health check: redis unreachable: %s", exc)
            checks["redis"] = "unreachable"
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unhealthy", "checks": checks},
        status=200 if healthy else 503,
    )


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if not settings.SIGNUP_OPEN:
        return render(request, "accounts/signup_closed.html", status=403)
    if request.user.is_authenticated:
        return redirect("dashboard")
    form = accounts.SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, f"Welcome to Catwalk, {user.username}.")
        return redirect("dashboard")
    return render(
        request,
        "accounts/form.html",
        {"form": form, "title": "Create your account", "submit": "Sign up"},
        status=400 if form.errors else 200,
    )


@login_required
@require_http_methods(["GET", "POST"])
def claim_admin(request: HttpRequest, token: str) -> HttpResponse:
    if not accounts.claim_token_is_valid(token):
        return render(request, "accounts/claim_admin.html", {"invalid": True}, status=404)
    if accounts.admin_exists():
        return render(request, "accounts/claim_admin.html", {"taken": True}, status=410)
    if request.method == "POST":
        if accounts.claim_admin(request.user):
            messages.success(request, "You are now Catwalk's administrator.")
            return redirect("admin:index")
        return render(request, "accounts/claim_admin.html", {"taken": True}, status=410)
    return render(request, "accounts/claim_admin.html", {})


@require_safe
def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico on pages that name no icon (JSON answers, errors)."""
    return HttpResponsePermanentRedirect(static("favicon.svg"))
