from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_POST

from analysis.models import Analysis, AnalysisStatus
from analysis.serverjson import entry_command, meta, package_of
from deployments import builds, redeploy, tasks
from deployments.builds import BuildFailed
from deployments.forms import (
    EXTRA_FIELD,
    CredentialForm,
    DeployForm,
    GitHubTokenForm,
    environment_variables,
)
from deployments.github_tokens import remove_github_token, set_github_token
from deployments.models import AuditEvent, Deployment, GitHubToken, Runtime, SourceBuild
from deployments.runtimes.base import PackageError, package_command
from deployments.services import (
    DeploymentError,
    PackageSpec,
    create_deployment,
    default_name,
    source_package,
    unique_name,
)
from deployments.snippets import client_snippets

ACTIVITY_EVENTS = 200
FIRST_TOKEN_LABEL = "created with the deployment"  # noqa: S105 - a label, not a secret


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


def _get_analysis_for_user(request: HttpRequest, analysis_id: int) -> Analysis:
    """The analysis if the signed-in user asked for it; 404 otherwise, so ids leak nothing."""
    return get_object_or_404(
        Analysis.objects.select_related("repository", "requested_by"),
        pk=analysis_id,
        requested_by=request.user,
    )


def _first_token_key(deployment: Deployment) -> str:
    """Where the session keeps a new deployment's first token until its page shows it once."""
    return f"deployments:first-token:{deployment.pk}"


@login_required
def deployment_detail(request: HttpRequest, deployment_id) -> HttpResponse:
    deployment = _get_deployment_for_user(request, deployment_id)
    first_token = request.session.pop(_first_token_key(deployment), None)
    build = deployment.source_build
    context = {
        "deployment": deployment,
        "build": build,
        "build_log": "\n".join(builds.log_tail(build, 40)) if build else "",
        "first_token": first_token,
        "snippets": client_snippets(deployment.name, deployment.endpoint_url, first_token or ""),
        "events": deployment.events.select_related("actor")[:50],
        "credentials": deployment.credentials.only("name", "is_secret", "updated_at"),
        "tokens": deployment.access_tokens.all(),
        "calls": deployment.tool_calls.all()[:50],
    }
    response = render(request, "deployments/detail.html", context)
    if first_token:
        add_never_cache_headers(response)  # no copy of the token in any cache
    return response


def _why_not_deployable(analysis: Analysis) -> str:
    """Why the analysis cannot be deployed from this page, or "" when it can."""
    if analysis.status != AnalysisStatus.SUCCEEDED or not analysis.result:
        return "This analysis has not succeeded, so there is nothing to deploy yet."
    package = package_of(analysis.result)
    if package is None:
        source = meta(analysis.result).get("source") or {}
        if source.get("runnable"):
            return ""  # built from source at the analysed commit
        reason = source.get("reason") or "Catwalk cannot tell how to run it."
        return f"This analysis found no published package, and no way to build it: {reason}"
    spec = _package_spec(package)
    # entry_command only ever names a plain command the package installs, never a path.
    command = entry_command(analysis.result)
    try:
        package_command(spec.registry, spec.name, spec.version, command)
    except PackageError as exc:
        return f"Catwalk cannot run this package: {exc}."
    return ""


def _package_spec(package: dict) -> PackageSpec:
    return PackageSpec(
        str(package.get("registryType", "")),
        str(package.get("identifier", "")),
        str(package.get("version") or ""),
    )


@login_required
@require_http_methods(["GET", "POST"])
def deploy_analysis(request: HttpRequest, analysis_id: int) -> HttpResponse:
    """Configure and create a deployment of the package an analysis found: its name, process
    model and credentials. The first access token is shown once, on the deployment's page."""
    analysis = _get_analysis_for_user(request, analysis_id)
    problem = _why_not_deployable(analysis)
    if problem:
        context = {"analysis": analysis, "problem": problem}
        return render(request, "deployments/configure.html", context, status=400)
    # The signed-in user as a model instance (request.user is a lazy proxy).
    owner = analysis.requested_by
    document = analysis.result
    package = package_of(document)
    if package is None:
        spec = None
        variables = (meta(document).get("unpublished") or {}).get("environmentVariables") or []
        base_name = analysis.subdirectory.rstrip("/").rsplit("/", 1)[-1] or analysis.repository.name
    else:
        spec = _package_spec(package)
        variables = environment_variables(document)
        base_name = spec.name
    data = request.POST if request.method == "POST" else None
    deploy_form = DeployForm(data, initial={"name": unique_name(owner, default_name(base_name))})
    credential_form = CredentialForm(variables=variables, data=data)
    if data is not None:
        if all([deploy_form.is_valid(), credential_form.is_valid()]):
            secret_names = {v.get("name") for v in variables if v.get("isSecret")}
            secret_names |= set(credential_form.cleaned_data[EXTRA_FIELD])  # treated as secrets
            try:
                build = None if spec else _claim_build(analysis, owner)
                deployment, token = create_deployment(
                    owner,
                    spec or source_package(build),
                    source_build=build,
                    name=deploy_form.cleaned_data["name"],
                    environment=credential_form.environment(),
                    process_model=deploy_form.cleaned_data["process_model"],
                    entry_command=entry_command(document) if spec else "",
                    analysis=analysis,
                    secret_names=secret_names,
                    runtime=Runtime.LOCAL,
                    issued_to=FIRST_TOKEN_LABEL,
                )
            except (DeploymentError, BuildFailed) as exc:
                deploy_form.add_error(None, str(exc))
            else:
                request.session[_first_token_key(deployment)] = token
                response = redirect("deployment-detail", deployment_id=deployment.pk)
                response.status_code = 303  # the POST is done: the browser GETs the deployment
                return response
        _forget_extra_lines(credential_form)
    context = {
        "analysis": analysis,
        "package": package,
        "deploy_form": deploy_form,
        "credential_form": credential_form,
    }
    failed = bool(deploy_form.errors or credential_form.errors)
    return render(request, "deployments/configure.html", context, status=400 if failed else 200)


def _claim_build(analysis: Analysis, owner) -> SourceBuild:
    """The build of the analysed commit: reused when there is one, else queued for a worker."""
    build, mine = builds.claim(
        analysis.repository.full_name,
        analysis.subdirectory,
        analysis.commit_sha,
        meta(analysis.result)["source"],
        user=owner,
    )
    if mine:
        tasks.build_source.delay_on_commit(build.pk)
    return build


def _forget_extra_lines(form: CredentialForm) -> None:
    """The free-form lines are treated as secrets, so a page with errors does not send them
    back (secret fields are never rendered with their values either)."""
    form.data = form.data.copy()
    form.data[EXTRA_FIELD] = ""


@login_required
@require_POST
def redeploy_deployment(request: HttpRequest, deployment_id) -> HttpResponse:
    """Build the newest commit and switch to it once it answers (source deployments)."""
    deployment = _get_deployment_for_user(request, deployment_id)
    try:
        build, mine = redeploy.redeploy(deployment, actor=request.user)
    except DeploymentError as exc:
        messages.error(request, str(exc))
    else:
        if mine:
            tasks.build_source.delay_on_commit(build.pk)
        messages.success(
            request,
            f"Building commit {build.commit_sha[:12]}; it takes over once it answers.",
        )
    return redirect("deployment-detail", deployment_id=deployment.pk)


@login_required
@require_POST
def rollback_deployment(request: HttpRequest, deployment_id) -> HttpResponse:
    """Switch back to the version served before the last redeploy."""
    deployment = _get_deployment_for_user(request, deployment_id)
    try:
        build = redeploy.rollback(deployment, actor=request.user)
    except DeploymentError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Rolling back to commit {build.commit_sha[:12]}.")
    return redirect("deployment-detail", deployment_id=deployment.pk)


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
