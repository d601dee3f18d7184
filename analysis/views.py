from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_safe
from django_htmx.middleware import HtmxDetails

from analysis.forms import AnalysisRequestForm
from analysis.github import InvalidRepositoryURL
from analysis.models import Analysis, AnalysisStatus, AnalysisStep
from analysis.serverjson import META_KEY
from analysis.services import request_analysis

RECENT_ANALYSES = 10
REGISTRY_LABELS = {"npm": "npm", "pypi": "PyPI", "oci": "a container registry"}
VERDICTS = {
    "source": "No published package: Catwalk builds it from source at this commit.",
    "docker-only": "No published package: the repository ships only a Dockerfile.",
    "unknown": "No published package, and Catwalk could not tell how to run it.",
}


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _get_analysis_for_user(request: HttpRequest, analysis_id: int) -> Analysis:
    """The analysis if the signed-in user asked for it; 404 otherwise, so ids leak nothing."""
    return get_object_or_404(
        Analysis.objects.select_related("repository"), pk=analysis_id, requested_by=request.user
    )


@login_required
@require_http_methods(["GET", "POST"])
def analysis_new(request: HttpRequest) -> HttpResponse:
    form = AnalysisRequestForm(request.POST if request.method == "POST" else None)
    if form.is_bound and form.is_valid():
        try:
            analysis = request_analysis(request.user, form.cleaned_data["url"], form.options())
        except InvalidRepositoryURL as exc:
            form.add_error("url", str(exc))
        else:
            response = redirect("analysis-detail", analysis_id=analysis.pk)
            response.status_code = 303  # the POST is done: the browser GETs the analysis page
            return response
    recent = Analysis.objects.filter(requested_by=request.user).select_related("repository")
    return render(
        request,
        "analysis/new.html",
        {"form": form, "recent": recent[:RECENT_ANALYSES]},
        status=400 if form.errors else 200,
    )


@login_required
@require_safe
def analysis_detail(request: HtmxHttpRequest, analysis_id: int) -> HttpResponse:
    analysis = _get_analysis_for_user(request, analysis_id)
    context = {"analysis": analysis, "steps": _steps(analysis)}
    if request.htmx:
        response = render(request, "analysis/detail.html#progress", context)
        if analysis.is_finished:
            # The result (or the error) and the header's status change too: reload the page.
            response["HX-Refresh"] = "true"
        return response
    context["source_url"] = _source_url(analysis)
    layers = set(analysis.variant.split("+")) if analysis.variant else {"introspection"}
    context["retry_introspect"] = bool(layers & {"introspection", "preflight"})
    if analysis.status == AnalysisStatus.SUCCEEDED and analysis.result:
        context["report"] = _report(analysis.result)
        context["raw"] = json.dumps(analysis.result, indent=2, ensure_ascii=False)
    return render(request, "analysis/detail.html", context)


@login_required
@require_safe
def analysis_server_json(request: HttpRequest, analysis_id: int) -> HttpResponse:
    analysis = _get_analysis_for_user(request, analysis_id)
    if analysis.status != AnalysisStatus.SUCCEEDED or not analysis.result:
        raise Http404("This analysis has no server.json.")
    response = JsonResponse(analysis.result, json_dumps_params={"indent": 2})
    response["Content-Disposition"] = 'attachment; filename="server.json"'
    return response


def _source_url(analysis: Analysis) -> str:
    """The URL the analysis was asked for, to ask again."""
    url = analysis.repository.html_url
    if analysis.ref:
        url += f"/tree/{analysis.ref}"
        if analysis.subdirectory:
            url += f"/{analysis.subdirectory}"
    return url


def _steps(analysis: Analysis) -> list[dict[str, Any]]:
    """Each step reached, its duration, and which one is under way (none once finished)."""
    labels = dict(AnalysisStep.choices)
    reached = list(analysis.progress or [])
    if not reached and not analysis.is_finished:
        return [{"label": labels[AnalysisStep.QUEUED], "seconds": None, "current": True}]
    steps = []
    for index, entry in enumerate(reached):
        last = index == len(reached) - 1
        seconds = entry.get("seconds")
        if last and seconds is None and analysis.finished_at:
            began = datetime.fromisoformat(entry["at"])
            seconds = round((analysis.finished_at - began).total_seconds(), 3)
        steps.append(
            {
                "label": labels.get(entry.get("step"), entry.get("step")),
                "seconds": seconds,
                "current": last and not analysis.is_finished,
                "failed": last and analysis.status == AnalysisStatus.FAILED,
            }
        )
    return steps


MANAGER_COMMANDS = {
    "npm": "npm ci",
    "pnpm": "pnpm install --frozen-lockfile",
    "yarn": "yarn install --frozen-lockfile",
}
PYTHON_INSTALLS = {
    "sync": "uv sync --frozen",
    "project": "uv pip install . (into its own .venv)",
    "requirements": "uv pip install -r requirements.txt (into its own .venv)",
}


def _recipe(source: dict[str, Any]) -> dict[str, Any] | None:
    """The build-from-source recipe in words, for the page."""
    if not source.get("runnable"):
        return None
    if source.get("ecosystem") == "node":
        install = MANAGER_COMMANDS.get(source.get("packageManager", ""), "")
        if not source.get("lockfile"):
            install = f"{source.get('packageManager', 'npm')} install"
        build = f"{source.get('packageManager')} run build" if source.get("buildScript") else ""
        entry = f"node {(source.get('entry') or {}).get('file', '')}"
    else:
        install = PYTHON_INSTALLS.get(source.get("pythonInstall", ""), "")
        build = ""
        kind, value = next(iter((source.get("entry") or {"": ""}).items()))
        entry = {"script": value, "module": f"python -m {value}", "file": f"python {value}"}.get(
            kind, ""
        )
    return {
        "ecosystem": "Node.js" if source.get("ecosystem") == "node" else "Python",
        "root": source.get("root") or "",
        "install": install,
        "build": build,
        "entry": entry,
        "transport": source.get("transport") or "stdio",
    }


def _report(document: dict[str, Any]) -> dict[str, Any]:
    """What the page explains, from the server.json and Catwalk's findings under `_meta`
    (templates cannot reach `_meta` or its `dev.catwalk/analysis` key themselves)."""
    findings = (document.get("_meta") or {}).get(META_KEY) or {}
    packages = document.get("packages") or []
    package = packages[0] if packages else None
    found = findings.get("package") or {}
    unpublished = findings.get("unpublished") or {}
    settings_from = package or unpublished
    sources = findings.get("sources") or {}
    tools = findings.get("tools") or {}
    stderr = tools.get("stderrTail") or []
    registry = package.get("registryType", "") if package else ""
    return {
        "document": document,
        "package": package,
        "registry_label": REGISTRY_LABELS.get(registry, registry),
        "verified": bool(found.get("verified")),
        "package_source": found.get("source"),
        "published": found.get("registry") or {},
        "executables": found.get("executables") or [],
        "verdict": VERDICTS.get(findings.get("deployable", "unknown"), VERDICTS["unknown"]),
        "build": sorted(findings.get("build") or {}),
        "recipe": _recipe(findings.get("source") or {}),
        "description_source": (findings.get("description") or {}).get("source"),
        "variables": _with_sources(
            settings_from.get("environmentVariables") or [],
            sources.get("environmentVariables") or {},
        ),
        "arguments": _with_sources(
            settings_from.get("packageArguments") or [], sources.get("packageArguments") or {}
        ),
        "excluded": findings.get("excludedVariables") or [],
        "tools": tools,
        "tool_list": [_tool(tool) for tool in tools.get("tools") or [] if isinstance(tool, dict)],
        "stderr": stderr if isinstance(stderr, str) else "\n".join(map(str, stderr)),
        "claude": findings.get("claude") or {},
        "warnings": findings.get("warnings") or [],
        "previous_commit": findings.get("previousCommit") or "",
    }


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool's name, description and parameter names (its input schema's properties)."""
    schema = tool.get("inputSchema")
    properties = schema.get("properties") if isinstance(schema, dict) else None
    return {
        "name": tool.get("name", ""),
        "description": tool.get("description") or "",
        "parameters": [str(name) for name in properties] if isinstance(properties, dict) else [],
    }


def _with_sources(
    entries: list[dict[str, Any]], sources: dict[str, list[dict[str, str]]]
) -> list[dict[str, Any]]:
    rows = []
    for entry in entries:
        name = entry.get("name") or entry.get("valueHint") or ""
        rows.append({"name": name, "entry": entry, "sources": sources.get(name) or []})
    return rows
