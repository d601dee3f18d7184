from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_POST, require_safe
from django_htmx.middleware import HtmxDetails

from analysis.models import Analysis, AnalysisStatus
from analysis.serverjson import entry_command, meta, package_of
from deployments import builds, redeploy, tasks
from deployments.builds import BuildFailed
from deployments.charts import latency_chart
from deployments.forms import (
    EXTRA_FIELD,
    CredentialForm,
    CredentialUpdateForm,
    DeleteForm,
    DeployForm,
    GitHubTokenForm,
    TokenForm,
    environment_variables,
)
from deployments.github_tokens import remove_github_token, set_github_token
from deployments.models import (
    AuditEvent,
    Deployment,
    DesiredState,
    GitHubToken,
    PackageRegistry,
    SourceBuild,
    Status,
    TokenPurpose,
    ToolCall,
)
from deployments.runtimes.base import (
    PackageError,
    get_runtime,
    package_command,
    runtimes_for,
    validate_image_package,
)
from deployments.services import (
    DeploymentError,
    PackageSpec,
    TokenNotFound,
    create_deployment,
    create_token,
    default_name,
    delete_deployment,
    image_package,
    remove_credential,
    restart_deployment,
    revoke_token,
    set_credential,
    source_package,
    start_deployment,
    stop_deployment,
    unique_name,
)
from deployments.snippets import client_snippets

ACTIVITY_EVENTS = 200
FIRST_TOKEN_LABEL = "created with the deployment"  # noqa: S105 - a label, not a secret
EVENTS_LISTED = 30
CALLS_LISTED = 50
TOKENS_LISTED = 50
LOG_LINES = 100
FAILURE_STDERR_LINES = 20
# How often the page asks for the status again: soon while it is changing (or about to: its
# owner asked for the other state), now and then while it is settled but could still change on
# its own (a crash, going to sleep), never when only the owner can change it.
CHANGING_SECONDS, SETTLED_SECONDS = 2, 10
SETTLED = {
    DesiredState.RUNNING: {Status.RUNNING: SETTLED_SECONDS, Status.SLEEPING: SETTLED_SECONDS},
    DesiredState.STOPPED: {Status.STOPPED: None, Status.FAILED: None},
}


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _get_deployment_for_user(request: HttpRequest, deployment_id) -> Deployment:
    """The deployment if the signed-in user owns it; 404 otherwise, so ids leak nothing."""
    return get_object_or_404(Deployment, pk=deployment_id, owner=request.user)


@login_required
@require_safe
def dashboard(request: HtmxHttpRequest) -> HttpResponse:
    since = timezone.now() - timezone.timedelta(hours=24)
    # A subquery per deployment reads only the last day's entries of the (deployment,
    # started_at) index; a filtered Count over the join read every call kept (30 days' worth).
    calls_24h = (
        ToolCall.objects.filter(deployment=OuterRef("pk"), started_at__gte=since)
        .order_by()
        .values("deployment")
        .annotate(count=Count("*"))
        .values("count")
    )
    deployments = (
        Deployment.objects.filter(owner=request.user)
        .annotate(calls_24h=Coalesce(Subquery(calls_24h), 0))
        .order_by("name")
    )
    template = "deployments/dashboard.html#rows" if request.htmx else "deployments/dashboard.html"
    return render(request, template, {"deployments": deployments})


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


def _new_token_key(deployment: Deployment) -> str:
    """Where the session keeps a token made on the page until the page shows it once."""
    return f"deployments:new-token:{deployment.pk}"


@login_required
@require_safe
def deployment_detail(request: HtmxHttpRequest, deployment_id) -> HttpResponse:
    return _detail_page(request, _get_deployment_for_user(request, deployment_id))


def _detail_page(
    request: HttpRequest,
    deployment: Deployment,
    credential_form: CredentialUpdateForm | None = None,
    token_form: TokenForm | None = None,
) -> HttpResponse:
    """The deployment's page; a form given back with errors is shown in place, with 400."""
    first_token = request.session.pop(_first_token_key(deployment), None)
    new_token = request.session.pop(_new_token_key(deployment), None)
    shown_token = first_token or (new_token or {}).get("token", "")
    build = deployment.source_build
    context = {
        "deployment": deployment,
        "build": build,
        "build_log": "\n".join(builds.log_tail(build, 40)) if build else "",
        # Where the deployment's machine builds it (Fly), nothing here switches versions.
        "builds_in_place": get_runtime(deployment.runtime).builds_in_place,
        "first_token": first_token,
        "new_token": new_token,
        "snippets": client_snippets(deployment.name, deployment.endpoint_url, shown_token),
        "credentials": deployment.credentials.only("name", "is_secret", "updated_at"),
        "credential_form": credential_form or CredentialUpdateForm(),
        "token_form": token_form or TokenForm(),
        "tokens": _listed_tokens(deployment),
        **_status_context(deployment),
        **_calls_context(deployment),
        **_logs_context(deployment),
    }
    failed = any(form is not None and form.errors for form in (credential_form, token_form))
    response = render(request, "deployments/detail.html", context, status=400 if failed else 200)
    if shown_token:
        add_never_cache_headers(response)  # no copy of the token in any cache
    return response


def _listed_tokens(deployment: Deployment):
    """The owner's own tokens; the playground's short-lived ones are the page's business."""
    return deployment.access_tokens.filter(purpose=TokenPurpose.CLIENT)[:TOKENS_LISTED]


def _status_context(deployment: Deployment) -> dict:
    failing = deployment.status in (Status.CRASHED, Status.FAILED)
    return {
        "events": deployment.events.select_related("actor")[:EVENTS_LISTED],
        "poll_seconds": _poll_seconds(deployment),
        "stderr_tail": "\n".join(_logs(deployment, FAILURE_STDERR_LINES)) if failing else "",
        "runtime_problem": get_runtime(deployment.runtime).problem(deployment),
    }


def _poll_seconds(deployment: Deployment) -> int | None:
    if deployment.status == Status.FAILED:
        return None  # the supervisor gave up: only the owner's next action changes it
    return SETTLED[deployment.desired_state].get(deployment.status, CHANGING_SECONDS)


def _logs(deployment: Deployment, lines: int) -> list[str]:
    try:
        return get_runtime(deployment.runtime).logs(deployment, lines)
    except OSError:
        return []


def _is_live(deployment: Deployment) -> bool:
    """Whether its calls and logs may change on their own: while it is wanted running (a page
    opened while it still starts must see the calls that follow)."""
    return deployment.desired_state == DesiredState.RUNNING


def _logs_context(deployment: Deployment) -> dict:
    return {
        "log_text": "\n".join(_logs(deployment, LOG_LINES)),
        "logs_live": _is_live(deployment),
    }


def _calls_context(deployment: Deployment) -> dict:
    calls = list(deployment.tool_calls.select_related("token", "oauth_client")[:CALLS_LISTED])
    return {
        "calls": calls,
        "latency": latency_chart(calls),
        "calls_live": _is_live(deployment),
    }


LIVE_PARTS = {"status": _status_context, "calls": _calls_context, "logs": _logs_context}


@login_required
@require_safe
def deployment_part(request: HttpRequest, deployment_id, part: str) -> HttpResponse:
    """One live part of the page (the status with its history, the recent calls, the logs),
    which the page asks for again while it may change."""
    deployment = _get_deployment_for_user(request, deployment_id)
    context = {"deployment": deployment, **LIVE_PARTS[part](deployment)}
    return render(request, f"deployments/detail.html#{part}", context)


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
        if spec.registry == PackageRegistry.OCI:
            validate_image_package(spec.name, spec.version, "", [])  # its own entrypoint
        else:
            package_command(spec.registry, spec.name, spec.version, command)
    except PackageError as exc:
        return f"Catwalk cannot run this package: {exc}."
    if spec.registry == PackageRegistry.OCI and not runtimes_for(spec.registry):
        return (
            "Catwalk cannot run this package: OCI image packages run on the Fly runtime, "
            "which this Catwalk does not have."
        )
    return ""


def _package_spec(package: dict) -> PackageSpec:
    spec = PackageSpec(
        str(package.get("registryType", "")),
        str(package.get("identifier", "")),
        str(package.get("version") or ""),
    )
    if spec.registry == PackageRegistry.OCI:
        with contextlib.suppress(PackageError):  # refused, with the reason, where it is checked
            return image_package(spec.name, spec.version)
    return spec


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
    deploy_form = DeployForm(
        data,
        initial={"name": unique_name(owner, default_name(base_name))},
        registry=spec.registry if spec else PackageRegistry.SOURCE,
    )
    credential_form = CredentialForm(variables=variables, data=data)
    if data is not None:
        if all([deploy_form.is_valid(), credential_form.is_valid()]):
            secret_names = {v.get("name") for v in variables if v.get("isSecret")}
            secret_names |= set(credential_form.cleaned_data[EXTRA_FIELD])  # treated as secrets
            try:
                runtime = deploy_form.cleaned_data["runtime"]
                build = None if spec else _claim_build(analysis, owner, runtime)
                deployment, token = create_deployment(
                    owner,
                    spec or source_package(build),
                    source_build=build,
                    name=deploy_form.cleaned_data["name"],
                    environment=credential_form.environment(),
                    process_model=deploy_form.cleaned_data["process_model"],
                    entry_command=(
                        entry_command(document)
                        if spec and spec.registry != PackageRegistry.OCI
                        else ""
                    ),
                    analysis=analysis,
                    secret_names=secret_names,
                    runtime=runtime,
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


def _claim_build(analysis: Analysis, owner, runtime: str) -> SourceBuild:
    """The build of the analysed commit: reused when there is one, else queued for a worker
    (or left to the deployment's machine, on a runtime that builds there)."""
    key = (analysis.repository.full_name, analysis.subdirectory, analysis.commit_sha)
    recipe = meta(analysis.result)["source"]
    if runtime and get_runtime(runtime).builds_in_place:
        return builds.pin(*key, recipe, user=owner)
    build, mine = builds.claim(*key, recipe, user=owner)
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

    def start_building() -> SourceBuild:
        build, mine = redeploy.redeploy(deployment, actor=request.user)
        if mine:
            tasks.build_source.delay_on_commit(build.pk)
        return build

    return _act(
        request,
        deployment,
        start_building,
        lambda build: f"Building commit {build.commit_sha[:12]}; it takes over once it answers.",
    )


@login_required
@require_POST
def rollback_deployment(request: HttpRequest, deployment_id) -> HttpResponse:
    """Switch back to the version served before the last redeploy."""
    deployment = _get_deployment_for_user(request, deployment_id)
    return _act(
        request,
        deployment,
        partial(redeploy.rollback, deployment, actor=request.user),
        lambda build: f"Rolling back to commit {build.commit_sha[:12]}.",
    )


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


def _back_to(deployment: Deployment, anchor: str = "") -> HttpResponse:
    """Redirect (303: the POST is done) to the deployment's page, at a section."""
    response = redirect(reverse("deployment-detail", args=[deployment.pk]) + anchor)
    response.status_code = 303
    return response


def _act(
    request: HttpRequest,
    deployment: Deployment,
    action: Callable[[], Any],
    done: str | Callable[[Any], str],
    anchor: str = "",
) -> HttpResponse:
    """Run one action on the deployment; say it is done (`done`, or `done` of what the action
    returned), or why it was refused, on its page."""
    try:
        result = action()
    except DeploymentError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, done(result) if callable(done) else done)
    return _back_to(deployment, anchor)


@login_required
@require_POST
def start_deployment_view(request: HttpRequest, deployment_id) -> HttpResponse:
    deployment = _get_deployment_for_user(request, deployment_id)
    start = partial(start_deployment, deployment, actor=request.user)
    return _act(request, deployment, start, f"Starting {deployment.name}.")


@login_required
@require_POST
def stop_deployment_view(request: HttpRequest, deployment_id) -> HttpResponse:
    deployment = _get_deployment_for_user(request, deployment_id)
    stop_deployment(deployment, actor=request.user)
    messages.success(
        request, f"Stopping {deployment.name}; its endpoint refuses calls until started."
    )
    return _back_to(deployment)


@login_required
@require_POST
def restart_deployment_view(request: HttpRequest, deployment_id) -> HttpResponse:
    deployment = _get_deployment_for_user(request, deployment_id)
    restart = partial(restart_deployment, deployment, actor=request.user)
    return _act(request, deployment, restart, f"Restarting {deployment.name}.")


@login_required
@require_http_methods(["GET", "POST"])
def delete_deployment_view(request: HttpRequest, deployment_id) -> HttpResponse:
    """GET asks for confirmation; POST deletes the deployment, its tokens and credentials."""
    deployment = _get_deployment_for_user(request, deployment_id)
    form = DeleteForm(deployment.name, request.POST if request.method == "POST" else None)
    if form.is_bound and form.is_valid():
        name = deployment.name
        delete_deployment(deployment, actor=request.user)
        messages.success(request, f"{name} is deleted; its endpoint and tokens no longer work.")
        response = redirect("dashboard")
        response.status_code = 303
        return response
    context = {"deployment": deployment, "form": form}
    return render(request, "deployments/delete.html", context, status=400 if form.errors else 200)


@login_required
@require_POST
def create_token_view(request: HttpRequest, deployment_id) -> HttpResponse:
    """A new access token, shown once on the page the browser is sent back to."""
    deployment = _get_deployment_for_user(request, deployment_id)
    form = TokenForm(request.POST)
    if form.is_valid():
        try:
            token, plaintext = create_token(
                deployment, form.cleaned_data["label"], actor=request.user
            )
        except DeploymentError as exc:
            form.add_error("label", str(exc))
        else:
            request.session[_new_token_key(deployment)] = {"token": plaintext, "label": token.label}
            return _back_to(deployment, "#tokens")
    return _detail_page(request, deployment, token_form=form)


@login_required
@require_POST
def revoke_token_view(request: HttpRequest, deployment_id, token_id: int) -> HttpResponse:
    deployment = _get_deployment_for_user(request, deployment_id)
    try:
        token = revoke_token(deployment, token_id, actor=request.user)
    except TokenNotFound as exc:
        raise Http404("No such token for this deployment.") from exc
    messages.success(request, f"Token “{token.label}” ({token.prefix}…) is revoked.")
    return _back_to(deployment, "#tokens")


@login_required
@require_POST
def set_credential_view(request: HttpRequest, deployment_id) -> HttpResponse:
    """Add or replace one credential. Write-only: the old value is never shown or sent."""
    deployment = _get_deployment_for_user(request, deployment_id)
    form = CredentialUpdateForm(request.POST)
    if form.is_valid():
        name = form.cleaned_data["name"]
        try:
            set_credential(deployment, name, form.cleaned_data["value"], actor=request.user)
        except DeploymentError as exc:
            form.add_error(None, str(exc))
        else:
            restarting = deployment.desired_state == DesiredState.RUNNING
            messages.success(
                request,
                f"{name} is stored" + ("; the server restarts to use it." if restarting else "."),
            )
            return _back_to(deployment, "#credentials")
    return _detail_page(request, deployment, credential_form=form)


@login_required
@require_POST
def remove_credential_view(request: HttpRequest, deployment_id, name: str) -> HttpResponse:
    deployment = _get_deployment_for_user(request, deployment_id)
    remove = partial(remove_credential, deployment, name, actor=request.user)
    return _act(request, deployment, remove, f"{name} is removed.", "#credentials")
