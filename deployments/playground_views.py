"""The playground on a deployment's page: its tools, a form for each, a call and its result.

The views are async: each awaits an MCP exchange with the gateway, which may be served by this
very process. The gateway does its database work in threads of its own (thread_sensitive=False),
so a request waiting here holds nothing the gateway needs. Rendering happens in a thread, as
templates read the session and the user synchronously.
"""

from __future__ import annotations

from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import aget_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_POST, require_safe
from django_htmx.middleware import HtmxDetails
from mcp_types import Tool

from deployments.models import Deployment, DesiredState, Status
from deployments.playground import (
    CallResult,
    PlaygroundError,
    ToolSession,
    connect,
    playground_token,
)
from deployments.playground_forms import ToolForm, tool_key

TEMPLATE = "deployments/playground.html"


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


@dataclass
class ToolEntry:
    """A tool as the playground shows it: its form and, once called, the result."""

    tool: Tool
    form: ToolForm
    key: str
    call_url: str
    result: CallResult | None = None


async def _aget_deployment_for_user(request: HttpRequest, deployment_id) -> Deployment:
    """The deployment if the signed-in user owns it; 404 otherwise, so ids leak nothing."""
    return await aget_object_or_404(Deployment, pk=deployment_id, owner=await request.auser())


def _state(deployment: Deployment, wake: bool) -> str:
    """What the playground can do now: "ready" to list the tools; "asleep" until asked to wake
    the server; "waiting" while it changes on its own (the fragment polls); "stopped" or
    "failed" until its owner acts."""
    if deployment.desired_state == DesiredState.STOPPED:
        return "stopped"
    if deployment.status == Status.RUNNING:
        return "ready"
    if deployment.status == Status.SLEEPING:
        return "ready" if wake else "asleep"
    if deployment.status == Status.FAILED:
        return "failed"
    return "waiting"


def _entry(deployment: Deployment, tool: Tool, data=None) -> ToolEntry:
    return ToolEntry(
        tool=tool,
        form=ToolForm(tool, data),
        key=tool_key(tool.name),
        call_url=reverse("deployment-playground-call", args=[deployment.pk, tool.name]),
    )


async def _render(
    request: HtmxHttpRequest, partial: str, context: dict, status: int = 200
) -> HttpResponse:
    """The fragment for htmx, else the whole page (which works without JavaScript)."""
    template = f"{TEMPLATE}#{partial}" if request.htmx else TEMPLATE
    return await sync_to_async(render)(request, template, context, status=status)


@login_required
@require_safe
async def playground(request: HtmxHttpRequest, deployment_id) -> HttpResponse:
    """The tools of a running deployment, each with a form generated from its input schema.
    A sleeping deployment is woken only when asked (`?wake=1`), not by opening its page."""
    deployment = await _aget_deployment_for_user(request, deployment_id)
    state = _state(deployment, wake=request.GET.get("wake") == "1")
    context = _context(deployment, state)
    if state == "ready":
        token = await playground_token(request.session, deployment, await request.auser())
        try:
            async with connect(deployment, token) as session:
                context["tools"] = [_entry(deployment, tool) for tool in await session.tools()]
        except PlaygroundError as exc:
            context["error"] = f"Could not list the tools: {exc}"
    return await _render(request, "playground", context)


def _context(deployment: Deployment, state: str) -> dict:
    return {
        "deployment": deployment,
        "state": state,
        "playground_url": reverse("deployment-playground", args=[deployment.pk]),
        "tools": None,  # not listed (yet)
    }


@login_required
@require_POST
async def playground_call(request: HtmxHttpRequest, deployment_id, tool_name: str) -> HttpResponse:
    """Check the arguments against the tool's schema and, if they fit, call the tool.

    The tool is looked up (and the call made) in one session, so the schema checked is the one
    the server has now. htmx gets the result for the tool's live region and, out of band, the
    form again (with its errors, if any); without JavaScript the whole page comes back. Every
    failure is shown as the call's result, never as an error page."""
    deployment = await _aget_deployment_for_user(request, deployment_id)
    stopped = deployment.desired_state == DesiredState.STOPPED
    context = _context(deployment, "stopped" if stopped else "ready")
    entry, status = None, 200
    if stopped:
        result = CallResult(failure=f"{deployment.name} is stopped: start it to call its tools.")
    else:
        token = await playground_token(request.session, deployment, await request.auser())
        try:
            async with connect(deployment, token) as session:
                entry, result = await _call(deployment, session, tool_name, request.POST)
                context["tools"] = [
                    entry if entry and tool.name == entry.tool.name else _entry(deployment, tool)
                    for tool in await session.tools()
                ]
        except PlaygroundError as exc:
            result = CallResult(failure=str(exc))
    if entry is None:
        context["error"] = result.failure
        status = 404 if context["tools"] is not None else 200
    elif entry.form.errors:
        status = 400
    if request.htmx:
        context.update(entry=entry, result=result)
        return await _render(request, "call", context)  # 200: htmx swaps only successes
    return await _render(request, "playground", context, status=status)


async def _call(
    deployment: Deployment, session: ToolSession, tool_name: str, data
) -> tuple[ToolEntry | None, CallResult | None]:
    tool = await session.tool(tool_name)
    if tool is None:
        failure = f"{deployment.name} offers no tool named “{tool_name}” now: reload the page."
        return None, CallResult(failure=failure)
    entry = _entry(deployment, tool, data)
    if entry.form.is_valid():
        entry.result = await session.call(tool.name, entry.form.arguments())
    return entry, entry.result
