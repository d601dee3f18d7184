from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from catwalk.views import healthz


class HealthCheckMiddleware:
    """Answers /healthz before host validation and HTTPS redirects.

    Platform health checks (Fly's included) reach a machine by its private address, which is
    rightly absent from ALLOWED_HOSTS; the check must still get its answer.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info == "/healthz" and request.method in ("GET", "HEAD"):
            return healthz(request)
        return self.get_response(request)
