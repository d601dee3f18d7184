from django.conf import settings
from django.http import HttpRequest


def catwalk(request: HttpRequest) -> dict:
    return {"signup_open": settings.SIGNUP_OPEN}
