"""ASGI entry point: `/mcp/…` goes to the MCP gateway, everything else to Django.

The gateway is a lean ASGI callable: MCP traffic never passes through Django's middleware
stack, which would cost more than the whole relay.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catwalk.settings")

django_application = get_asgi_application()

from catwalk.warmup import load_and_freeze  # noqa: E402 - needs the app registry ready
from mcpgateway.gateway import Gateway  # noqa: E402 - needs the app registry ready

gateway = Gateway()
# Every view imported and the heap frozen before the first request (catwalk/warmup.py).
load_and_freeze()


async def application(scope, receive, send):
    if scope["type"] == "http" and scope["path"].startswith("/mcp/"):
        return await gateway(scope, receive, send)
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    return await django_application(scope, receive, send)


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await gateway.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
