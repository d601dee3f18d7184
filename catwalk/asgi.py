"""ASGI entry point: the Django application for pages, admin and health checks."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catwalk.settings")

application = get_asgi_application()
