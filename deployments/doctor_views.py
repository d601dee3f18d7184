"""The connector doctor's button on a deployment's page (see deployments/doctor.py).

Async, as the playground's views are: the doctor waits on HTTP answers from the gateway and the
OAuth endpoints, which may be served by this very process, and holds no thread meanwhile.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import aget_object_or_404, render
from django.views.decorators.http import require_POST

from deployments.doctor import diagnose
from deployments.models import Deployment
from deployments.views import HtmxHttpRequest

PAGE = "deployments/doctor.html"
RESULT = "deployments/_doctor.html#result"


async def _aget_deployment_for_user(request: HttpRequest, deployment_id) -> Deployment:
    """The deployment if the signed-in user owns it; 404 otherwise, so ids leak nothing."""
    return await aget_object_or_404(Deployment, pk=deployment_id, owner=await request.auser())


@login_required
@require_POST
async def check_connectors(request: HtmxHttpRequest, deployment_id) -> HttpResponse:
    """Run the doctor as the owner. htmx gets the steps for the section's live region; a browser
    without JavaScript gets a page with the section and its steps."""
    deployment = await _aget_deployment_for_user(request, deployment_id)
    diagnosis = await diagnose(deployment, await request.auser())
    context = {"deployment": deployment, "diagnosis": diagnosis}
    template = RESULT if request.htmx else PAGE
    return await sync_to_async(render)(request, template, context)
