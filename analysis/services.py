"""Running an analysis: from a pasted URL to a stored, reviewed server.json.

`request_analysis` validates the URL and queues the work; `run_analysis` (the Celery task's one
call) fetches the commit, reuses a cached result for the same commit and layers when there is
one, and otherwise runs the layers in order, recording each step on the row the page polls:

1. manifests and 2. source scans (`pipeline`), then the registry check (the package must exist
at that version, and belong to this repository), 3. Claude (optional), 4. introspection (the
runtime starts the package and lists what it offers). `analyse` is the same work without a
database, for `manage.py analyze`.

Introspection and the user's GitHub token belong to the deployments app, which depends on this
one; they are reached through the `ANALYSIS_INTROSPECTOR` and `ANALYSIS_GITHUB_TOKEN_PROVIDER`
settings (dotted paths), so the arrow keeps pointing one way.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils.module_loading import import_string

from analysis import llm
from analysis.checkout import Checkout
from analysis.github import GitHubClient, GitHubError, RepoRef, parse_repository_url
from analysis.models import Analysis, AnalysisStatus, AnalysisStep, Repository
from analysis.pipeline import (
    ANALYSER_VERSION,
    Draft,
    Origin,
    build,
    read_manifests_step,
    scan_step,
    source_verdict,
)
from analysis.registry import (
    RegistryClient,
    RegistryError,
    normalise_repository_url,
    reachable_repository,
    validate_name,
)
from analysis.serverjson import InvalidDocument, entry_command, meta, package_of, validate

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    use_claude: bool = True
    introspect: bool = True
    # A draft deployment whose stored credentials the introspection runs with (a preflight).
    preflight_deployment: str = ""

    @property
    def variant(self) -> str:
        parts = ["static"]
        if self.use_claude and llm.enabled():
            parts.append("claude")
        if self.introspect:
            parts.append("preflight" if self.preflight_deployment else "introspection")
        return "+".join(parts)


class AnalysisFailed(Exception):
    """The analysis cannot go on; the message is for the user."""


def _noop(step: str) -> None:
    return None


# --- Without a database: `manage.py analyze` and the task share this -------------------------


def analyse(
    url: str,
    options: Options = Options(),
    *,
    github_token: str = "",
    owner_id: int | None = None,
    progress: Progress = _noop,
) -> tuple[dict[str, Any], str]:
    """Analyse the repository a URL points at; returns (server.json, commit SHA).

    Raises InvalidRepositoryURL, GitHubError or AnalysisFailed.
    """
    return analyse_reference(
        parse_repository_url(url),
        options,
        github_token=github_token,
        owner_id=owner_id,
        progress=progress,
    )


def analyse_reference(
    reference: RepoRef,
    options: Options = Options(),
    *,
    github_token: str = "",
    owner_id: int | None = None,
    progress: Progress = _noop,
) -> tuple[dict[str, Any], str]:
    """`analyse` for a parsed reference (its ref empty: the default branch)."""
    with GitHubClient(reference, user_token=github_token or None) as client:
        progress(AnalysisStep.FETCHING)
        sha = client.commit_sha(reference.ref or client.repository().default_branch)
        document = analyse_commit(client, reference, sha, options, owner_id, progress)
    return document, sha


def analyse_commit(
    client: GitHubClient,
    reference: RepoRef,
    sha: str,
    options: Options,
    owner_id: int | None,
    progress: Progress,
) -> dict[str, Any]:
    timings: dict[str, float] = {}
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="catwalk-analysis-"))
    try:
        folder = client.download(sha, work / "tree", reference.subdirectory)
        timings["fetch"] = time.monotonic() - started
        progress(AnalysisStep.MANIFESTS)
        step = time.monotonic()
        origin = Origin(reference.owner, reference.name, reference.subdirectory, sha, reference.ref)
        checkout = Checkout(folder)
        findings = read_manifests_step(checkout)
        timings["manifests"] = time.monotonic() - step
        progress(AnalysisStep.SCANNING)
        step = time.monotonic()
        evidence = scan_step(checkout, findings)
        draft = build(checkout, findings, origin, evidence, Checkout(work / "tree"))
        timings["scanning"] = time.monotonic() - step
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(AnalysisStep.REGISTRY)
    step = time.monotonic()
    check_registry(draft, reference)
    timings["registry"] = time.monotonic() - step
    if options.use_claude and llm.enabled():
        progress(AnalysisStep.CLAUDE)
        step = time.monotonic()
        ask_claude(draft)
        timings["claude"] = time.monotonic() - step
    if options.introspect and package_of(draft.document):
        progress(AnalysisStep.INTROSPECTING)
        step = time.monotonic()
        introspect(draft.document, owner_id, options.preflight_deployment)
        timings["introspection"] = time.monotonic() - step
    meta(draft.document)["timings"] = {key: round(value, 3) for key, value in timings.items()}
    try:
        validate(draft.document)
    except InvalidDocument as exc:
        raise AnalysisFailed(f"The analysis produced an invalid server.json: {exc}") from exc
    return draft.document


def check_registry(draft: Draft, reference: RepoRef) -> None:
    """Keep the package only if it is published, at a version that exists, by this repository.

    A repository ahead of its last release gets the latest published version, with a warning;
    a package name that the registry attributes to another repository is dropped, so a
    look-alike can never be what runs.
    """
    document = draft.document
    package = package_of(document)
    findings = meta(document)
    if package is None:
        _explain_unpublished(findings)
        return
    registry, identifier, version = (
        package["registryType"],
        package["identifier"],
        package["version"],
    )
    try:
        validate_name(registry, identifier, version)
        with RegistryClient() as client:
            published = client.lookup(registry, identifier, version)
            if published is None and version:
                published = client.lookup(registry, identifier)
    except RegistryError as exc:
        findings["warnings"].append(f"The package could not be checked: {exc}")
        return
    if published is None:
        _unpublish(document, f"{identifier} is not published on {_label(registry)}.")
        return
    if published.repository_url and not reachable_repository(
        published, reference.owner, reference.name
    ):
        _unpublish(
            document,
            f"{_label(registry)}'s {identifier} comes from {published.repository_url}, "
            f"not this repository, so it is not used.",
        )
        return
    if published.version != version:
        if version:
            findings["warnings"].append(
                f"The repository is at version {version}, which is not published; the latest "
                f"published version {published.version} is used."
            )
        package["version"] = published.version
        document["version"] = published.version
    if not published.repository_url:
        findings["warnings"].append(
            f"{_label(registry)} does not say which repository {identifier} comes from."
        )
    findings["package"]["verified"] = True
    findings["package"]["registry"] = {
        "latest": published.latest,
        "repository": normalise_repository_url(published.repository_url),
    }
    if published.executables:
        findings["package"]["executables"] = list(published.executables)


def _unpublish(document: dict[str, Any], reason: str) -> None:
    findings = meta(document)
    package = document["packages"].pop(0)
    findings["warnings"].append(reason)
    findings["deployable"] = source_verdict(findings["source"], findings.get("build") or {})
    findings["unpublished"] = {
        "environmentVariables": package.get("environmentVariables", []),
        "packageArguments": package.get("packageArguments", []),
    }
    _explain_unpublished(findings)


def _explain_unpublished(findings: dict[str, Any]) -> None:
    verdict = findings.get("deployable")
    if verdict == "source":
        findings["warnings"].append(
            "No published package runs this server: it is built from source at this commit "
            "(the recipe is under source)."
        )
    else:
        reason = findings.get("source", {}).get("reason") or "Catwalk cannot tell how to run it."
        findings["warnings"].append(f"This server cannot be deployed yet: {reason}")


def _label(registry: str) -> str:
    return {"npm": "npm", "pypi": "PyPI"}.get(registry, registry)


def ask_claude(draft: Draft) -> None:
    findings = meta(draft.document)
    try:
        advice = llm.ask_claude(draft.document, draft.evidence)
    except llm.ClaudeUnavailable as exc:
        findings["warnings"].append(str(exc))
        findings["claude"] = {"used": False, "error": str(exc)}
        return
    findings["warnings"].extend(llm.apply_advice(draft.document, advice))


def introspect(document: dict[str, Any], owner_id: int | None, deployment_id: str) -> None:
    """Start the package in the runtime (no credentials, or a draft deployment's) and record
    what it offers under `_meta`."""
    introspector = import_string(settings.ANALYSIS_INTROSPECTOR)
    package = {**package_of(document), "entry": entry_command(document)}
    result = introspector(package, owner_id=owner_id, deployment_id=deployment_id)
    findings = meta(document)
    findings["tools"] = result
    if deployment_id and result.get("suspectCredentials"):
        names = ", ".join(result["suspectCredentials"])
        findings["warnings"].append(
            f"The server did not start with the stored credentials; check {names}."
        )
    elif result.get("needsCredentials"):
        findings["warnings"].append(
            "The server needs its credentials before it lists its tools; they are checked "
            "when you deploy it."
        )
    elif not result.get("verified") and result.get("error"):
        findings["warnings"].append(f"Starting the server failed: {result['error']}")


# --- With the database: what the page and the Celery task use ---------------------------------


def request_analysis(user, url: str, options: Options = Options()) -> Analysis:
    """Queue an analysis of `url` for `user`. Raises InvalidRepositoryURL before any request."""
    from analysis import tasks  # the task module imports this one

    reference = parse_repository_url(url)
    with transaction.atomic():
        repository = Repository.objects.filter(
            owner__iexact=reference.owner, name__iexact=reference.name
        ).first() or Repository.objects.create(owner=reference.owner, name=reference.name)
        analysis = Analysis.objects.create(
            repository=repository,
            requested_by=user,
            ref=reference.ref,
            subdirectory=reference.subdirectory,
            analyser_version=ANALYSER_VERSION,
            variant=options.variant,
        )
        tasks.run_analysis.delay_on_commit(
            analysis.pk,
            use_claude=options.use_claude,
            introspect=options.introspect,
            deployment_id=options.preflight_deployment,
        )
    return analysis


def run_analysis(analysis_id: int, options: Options = Options()) -> Analysis:
    """Run a queued analysis to its end; the row says how it went (never raises for the user's
    input or GitHub's answers)."""
    analysis = Analysis.objects.select_related("repository", "requested_by").get(pk=analysis_id)
    if analysis.status != AnalysisStatus.PENDING:
        return analysis  # a duplicate delivery of the task
    analysis.start()
    try:
        _run(analysis, options)
    except (GitHubError, AnalysisFailed) as exc:
        analysis.fail(str(exc))
    except Exception:
        logger.exception("analysis %s failed", analysis.pk)
        analysis.fail("The analysis failed unexpectedly; it has been logged. Try again later.")
    return analysis


def _run(analysis: Analysis, options: Options) -> None:
    repository = analysis.repository
    reference = RepoRef(repository.owner, repository.name, analysis.ref, analysis.subdirectory)
    token = _github_token(analysis.requested_by)
    with GitHubClient(reference, user_token=token or None) as client:
        analysis.reach(AnalysisStep.FETCHING)
        info = client.repository()
        sha = client.commit_sha(reference.ref or info.default_branch)
        Repository.objects.filter(pk=repository.pk).update(
            default_branch=info.default_branch, private=info.private
        )
        previous = _previous(analysis, exclude_sha=sha)
        cached = None if options.preflight_deployment else _cached(analysis, sha)
        if cached is not None:
            document = dict(cached.result)
            meta(document)["cachedFrom"] = cached.pk
        else:
            document = analyse_commit(
                client, reference, sha, options, analysis.requested_by_id, analysis.reach
            )
    if previous is not None:
        meta(document)["previousCommit"] = previous.commit_sha
    analysis.succeed(document, sha, meta(document).get("timings", {}), cached_from=cached)


def _cached(analysis: Analysis, sha: str) -> Analysis | None:
    """A finished analysis of the same commit, folder, analyser version and layers."""
    return (
        Analysis.objects.filter(
            repository=analysis.repository,
            subdirectory=analysis.subdirectory,
            commit_sha=sha,
            analyser_version=ANALYSER_VERSION,
            variant=analysis.variant,
            status=AnalysisStatus.SUCCEEDED,
            cached_from__isnull=True,
        )
        .exclude(pk=analysis.pk)
        .order_by("-finished_at")
        .first()
    )


def _previous(analysis: Analysis, exclude_sha: str) -> Analysis | None:
    """The latest earlier analysis of the same folder at another commit: a newer one exists."""
    return (
        Analysis.objects.filter(
            repository=analysis.repository,
            subdirectory=analysis.subdirectory,
            status=AnalysisStatus.SUCCEEDED,
        )
        .exclude(commit_sha=exclude_sha)
        .exclude(pk=analysis.pk)
        .order_by("-finished_at")
        .first()
    )


def _github_token(user) -> str:
    provider = import_string(settings.ANALYSIS_GITHUB_TOKEN_PROVIDER)
    return provider(user)
