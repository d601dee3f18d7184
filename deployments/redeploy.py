"""Redeploying a source deployment at a newer commit, and rolling back, without a failed call.

`redeploy` analyses the repository again, claims the build of its newest commit (reused when
there is one; otherwise the caller queues it) and records it as the deployment's next build;
`rollback` makes the previous build the next one. The supervisor does the rest: once the next
build is finished it asks the running bridge to switch (`/catwalk/switch`): the new version
starts beside the old one, and only when it answers `tools/list` do new sessions go to it, while
open sessions finish on the old one until they end or `LOCAL_SWITCH_GRACE_SECONDS` pass. Then
`complete_switch` records it; a build or a start that fails leaves the running version serving,
and `abandon_switch` says why.
"""

from __future__ import annotations

from django.db import transaction

from analysis import services as analysis_services
from analysis.github import RepoRef
from analysis.serverjson import meta
from deployments import builds
from deployments.github_tokens import github_token_for
from deployments.models import (
    BuildStatus,
    Deployment,
    DeploymentEvent,
    EventKind,
    PackageRegistry,
    SourceBuild,
)
from deployments.runtimes.base import get_runtime
from deployments.runtimes.local import build_app_folder, nudge_supervisor
from deployments.services import DeploymentError


def _source_deployment(deployment: Deployment) -> SourceBuild:
    if deployment.package_registry != PackageRegistry.SOURCE or deployment.source_build is None:
        raise DeploymentError("Only deployments built from source can be redeployed or rolled back")
    if get_runtime(deployment.runtime).builds_in_place:
        raise DeploymentError(
            "Redeploy and rollback are not available yet where a deployment builds in its own "
            "machine (Fly); deploy the new commit as a new deployment."
        )
    if deployment.next_build_id is not None:
        raise DeploymentError("A redeploy is already under way.")
    return deployment.source_build


def redeploy(deployment: Deployment, actor, ref: str = "") -> tuple[SourceBuild, bool]:
    """Make the newest commit of the deployment's repository folder (at `ref`, else its default
    branch) the next build, switched to when it is ready. Returns the build and whether the
    caller must have it built (`tasks.build_source`); a build of that commit is reused. Raises
    DeploymentError."""
    current = _source_deployment(deployment)
    owner, _, name = current.repository.partition("/")
    token = github_token_for(deployment.owner)
    try:
        document, sha = analysis_services.analyse_reference(
            RepoRef(owner, name, ref, current.subfolder),
            analysis_services.Options(use_claude=False, introspect=False),
            github_token=token,
        )
    except Exception as exc:  # GitHub and analysis errors carry a message for the user
        raise DeploymentError(f"The repository could not be analysed again: {exc}") from None
    if sha == current.commit_sha:
        raise DeploymentError(f"Already serving the newest commit, {sha[:12]}.")
    recipe = meta(document).get("source") or {}
    if not recipe.get("runnable"):
        raise DeploymentError(f"The newest commit cannot be built: {recipe.get('reason')}")
    try:
        build, mine = builds.claim(
            current.repository, current.subfolder, sha, recipe, user=deployment.owner
        )
    except builds.BuildFailed as exc:
        raise DeploymentError(str(exc)) from None
    _set_next(deployment, build, actor, f"Redeploying at commit {sha[:12]}.")
    return build, mine


def rollback(deployment: Deployment, actor) -> SourceBuild:
    """Switch back to the build served before the last switch. Raises DeploymentError."""
    _source_deployment(deployment)
    previous = deployment.previous_build
    if previous is None:
        raise DeploymentError("There is no previous version to roll back to.")
    if previous.status != BuildStatus.SUCCEEDED or not build_app_folder(previous.pk).is_dir():
        raise DeploymentError("The previous version's build is gone; redeploy that commit.")
    _set_next(deployment, previous, actor, f"Rolling back to commit {previous.commit_sha[:12]}.")
    return previous


def _set_next(deployment: Deployment, build: SourceBuild, actor, message: str) -> None:
    with transaction.atomic():
        updated = Deployment.objects.filter(pk=deployment.pk, next_build__isnull=True).update(
            next_build=build
        )
        if not updated:
            raise DeploymentError("A redeploy is already under way.")
        DeploymentEvent.objects.create(
            deployment=deployment, kind=EventKind.CONFIG, message=message, actor=actor
        )
        transaction.on_commit(nudge_supervisor)
    deployment.next_build = build


def complete_switch(deployment_id, build_id: int) -> None:
    """The running version is now `build_id`'s (the supervisor's switch succeeded)."""
    with transaction.atomic():
        # No join under FOR UPDATE: PostgreSQL refuses it on the nullable side of an outer join.
        deployment = Deployment.objects.select_for_update().get(pk=deployment_id)
        if deployment.next_build_id != build_id:
            return  # superseded meanwhile
        build = SourceBuild.objects.get(pk=build_id)
        deployment.previous_build_id = deployment.source_build_id
        deployment.source_build = build
        deployment.next_build = None
        deployment.package_version = build.commit_sha[:12]
        deployment.save(
            update_fields=["previous_build", "source_build", "next_build", "package_version"]
        )
        DeploymentEvent.objects.create(
            deployment=deployment,
            kind=EventKind.CONFIG,
            message=f"Now serving commit {build.commit_sha[:12]}; sessions already open finish "
            "on the previous version.",
        )


def abandon_switch(deployment_id, build_id: int, reason: str) -> None:
    """The next version will not be served; the running one goes on."""
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().get(pk=deployment_id)
        if deployment.next_build_id != build_id:
            return
        deployment.next_build = None
        deployment.save(update_fields=["next_build"])
        serving = deployment.source_build.commit_sha[:12] if deployment.source_build else "?"
        DeploymentEvent.objects.create(
            deployment=deployment,
            kind=EventKind.ERROR,
            message=f"The redeploy failed: {reason}\nStill serving commit {serving}.",
        )
