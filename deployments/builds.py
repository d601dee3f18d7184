"""Building repositories from source, at a pinned commit, in the sandbox.

A build is keyed by (repository, folder, commit, recipe): `ensure_build` reuses a finished one,
waits for one another worker is running, and otherwise builds. The repository's tarball at the
commit is extracted (safely, by the GitHub client) into `DATA_DIR/builds/<id>/app/`; each step
the recipe calls for (install, then the build script) runs in the sandbox as a build uid of its
own, with that folder bound at /srv/app and nothing else of the host writable — so install
scripts run, but only there. Steps have a time limit and the output a size limit; everything
they print goes to `build.log`, whose last lines explain a failure.

The commands come from `analysis.recipe.Recipe` fields, composed here from a fixed vocabulary;
the recipe is checked again when read back (`Recipe.from_meta`).

A finished build is made read-only to its deployments: root owns it, everyone may read it, and a
sandboxed server sees it at /srv/app through an overlay whose writes land in its own layer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from analysis.github import GitHubClient, GitHubError, RepoRef
from analysis.recipe import Recipe
from deployments.models import BuildStatus, SourceBuild
from deployments.runtimes import sandbox
from deployments.runtimes.local import (
    APP_MOUNT,
    IN_FOLDER,
    SANDBOX_BINDS,
    build_app_folder,
    builds_root,
    ensure_private_dir,
    package_environment,
    sandboxed_package_environment,
    shared_caches,
    tail_lines,
)
from mcpgateway import buildsteps

logger = logging.getLogger(__name__)

BUILD_UID_BELOW_BASE = 3
# Package managers that npx fetches where the host has only npm.
PNPM = "pnpm@9"
YARN = "yarn@1"
LOG_TAIL_LINES = 25
WAIT_POLL_SECONDS = 1.0


class BuildFailed(Exception):
    """The build could not be made; the message (with the log's last lines) is for the user."""


def build_folder(build: SourceBuild) -> Path:
    return builds_root() / str(build.pk)


def app_folder(build: SourceBuild) -> Path:
    return build_app_folder(build.pk)


def log_path(build: SourceBuild) -> Path:
    return build_folder(build) / "build.log"


def recipe_hash(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def build_uid() -> int:
    return settings.SANDBOX_UID_BASE - BUILD_UID_BELOW_BASE


def log_tail(build: SourceBuild, lines: int = LOG_TAIL_LINES) -> list[str]:
    # Only the end is read: a chatty install can log megabytes, and the deployment page shows
    # these lines on every view.
    try:
        return tail_lines(log_path(build), lines)
    except OSError:
        return []


# --- The commands a recipe calls for ----------------------------------------------------------


def steps(recipe: Recipe, uv: str = "") -> list[tuple[str, list[str], str]]:
    """(what, argv, folder relative to the repository root) for each build step; `uv` is the
    uv to run (default: this interpreter's)."""
    uv = uv or os.path.join(os.path.dirname(sys.executable), "uv")
    if recipe.ecosystem == "node":
        run = {
            "npm": ["npm"],
            "pnpm": ["npx", "--yes", PNPM],
            "yarn": ["npx", "--yes", YARN],
        }[recipe.manager]
        install = {
            "npm": ["ci"] if recipe.lockfile else ["install"],
            "pnpm": ["install", "--frozen-lockfile"] if recipe.lockfile else ["install"],
            "yarn": ["install", "--frozen-lockfile"] if recipe.lockfile else ["install"],
        }[recipe.manager]
        found = [("install dependencies", [*run, *install], recipe.root)]
        if recipe.build_script:
            found.append(("build", [*run, "run", "build"], recipe.folder))
        return found
    venv = [uv, "venv", "--quiet", ".venv"]
    pip = [uv, "pip", "install", "--python", ".venv/bin/python"]
    return {
        "sync": [("install dependencies", [uv, "sync", "--frozen", "--no-dev"], recipe.folder)],
        "project": [
            ("create the environment", venv, recipe.folder),
            ("install the project", [*pip, "."], recipe.folder),
        ],
        "requirements": [
            ("create the environment", venv, recipe.folder),
            ("install the requirements", [*pip, "-r", "requirements.txt"], recipe.folder),
        ],
    }[recipe.python_install]


# --- Building ---------------------------------------------------------------------------------


def claim(
    repository: str, subfolder: str, commit_sha: str, recipe: dict, *, user=None
) -> tuple[SourceBuild, bool]:
    """The build row for this key, and whether the caller must build it now (it is new, failed
    before, or was abandoned by a worker that died). Raises BuildFailed for an unusable recipe."""
    try:
        Recipe.from_meta(recipe)
    except ValueError as exc:
        raise BuildFailed(f"The build recipe cannot be used: {exc}.") from None
    key = {
        "repository": repository,
        "subfolder": subfolder,
        "commit_sha": commit_sha,
        "recipe_hash": recipe_hash(recipe),
    }
    with transaction.atomic():
        build, created = SourceBuild.objects.select_for_update().get_or_create(
            **key, defaults={"recipe": recipe, "requested_by": user, "started_at": timezone.now()}
        )
        if build.status == BuildStatus.SUCCEEDED and app_folder(build).is_dir():
            return build, False
        if build.status == BuildStatus.BUILDING and not created and not _abandoned(build):
            return build, False  # another worker is building it
        SourceBuild.objects.filter(pk=build.pk).update(
            status=BuildStatus.BUILDING, error="", started_at=timezone.now(), finished_at=None
        )
    build.refresh_from_db()
    return build, True


def _abandoned(build: SourceBuild) -> bool:
    age = (timezone.now() - (build.started_at or build.created_at)).total_seconds()
    return age > settings.BUILD_TIMEOUT_SECONDS * 2


def pin(
    repository: str, subfolder: str, commit_sha: str, recipe: dict, *, user=None
) -> SourceBuild:
    """The build row for this key, for a runtime that builds in the deployment's own machine
    (nothing runs here). An existing row is reused; one whose build here failed is marked as
    built elsewhere again, since this host's failure says nothing of the machine's build.
    Raises BuildFailed for an unusable recipe."""
    try:
        Recipe.from_meta(recipe)
    except ValueError as exc:
        raise BuildFailed(f"The build recipe cannot be used: {exc}.") from None
    build, _ = SourceBuild.objects.get_or_create(
        repository=repository,
        subfolder=subfolder,
        commit_sha=commit_sha,
        recipe_hash=recipe_hash(recipe),
        defaults={"recipe": recipe, "requested_by": user, "status": BuildStatus.ELSEWHERE},
    )
    if build.status == BuildStatus.FAILED:
        SourceBuild.objects.filter(pk=build.pk, status=BuildStatus.FAILED).update(
            status=BuildStatus.ELSEWHERE, error=""
        )
        build.refresh_from_db()
    return build


def ensure_build(
    repository: str,
    subfolder: str,
    commit_sha: str,
    recipe: dict,
    *,
    github_token: str = "",
    user=None,
) -> SourceBuild:
    """The finished build for this key, building it here if needed (or waiting for the worker
    that is). Raises BuildFailed."""
    build, mine = claim(repository, subfolder, commit_sha, recipe, user=user)
    if mine:
        run_build(build, Recipe.from_meta(recipe), github_token)
    deadline = time.monotonic() + settings.BUILD_TIMEOUT_SECONDS * 2
    while build.status == BuildStatus.BUILDING:  # another worker's: wait for its outcome
        if time.monotonic() > deadline:
            raise BuildFailed("Another build of this commit did not finish in time.")
        time.sleep(WAIT_POLL_SECONDS)
        build.refresh_from_db()
    if build.status == BuildStatus.FAILED:
        raise BuildFailed(build.error)
    return build


def build_claimed(build_id: int, github_token: str = "") -> SourceBuild:
    """Run a build that `claim` handed to the caller (the Celery task's one call)."""
    build = SourceBuild.objects.get(pk=build_id)
    if build.status == BuildStatus.BUILDING:
        try:
            recipe = Recipe.from_meta(build.recipe)
        except ValueError as exc:
            SourceBuild.objects.filter(pk=build.pk).update(
                status=BuildStatus.FAILED, error=str(exc), finished_at=timezone.now()
            )
        else:
            run_build(build, recipe, github_token)
        build.refresh_from_db()
    return build


def run_build(build: SourceBuild, recipe: Recipe, github_token: str = "") -> None:
    """Fetch and build; the row ends succeeded or failed (with the log's last lines)."""
    folder = build_folder(build)
    shutil.rmtree(folder, ignore_errors=True)
    ensure_private_dir(builds_root())
    folder.mkdir(mode=0o755)
    log_path(build).touch(mode=0o644)
    owner, _, name = build.repository.partition("/")
    try:
        if settings.FLY_JOBS:
            # Nothing of a repository's runs on the platform's own machines: a source
            # deployment on Fly is built by its own machine.
            raise BuildFailed(
                "Builds from source do not run on this Catwalk's own machines: it runs untrusted "
                "code only in Fly machines (FLY_JOBS). Deploy it on Fly.io Machines, where the "
                "deployment's machine builds it."
            )
        with GitHubClient(RepoRef(owner, name), user_token=github_token or None) as client:
            client.download(build.commit_sha, app_folder(build))
        _log(build, f"Fetched {build.repository} at {build.commit_sha}.")
        for what, argv, where in steps(recipe):
            _log(build, f"$ {' '.join(argv)}    ({what}, in /{where})")
            _run_step(build, argv, where)
        size = buildsteps.size(app_folder(build))
        buildsteps.seal(app_folder(build))
    except (BuildFailed, GitHubError) as exc:
        tail = "\n".join(log_tail(build))
        message = str(exc) + (f"\n\nLast lines of the build log:\n{tail}" if tail else "")
        _log(build, f"Build failed: {exc}")
        SourceBuild.objects.filter(pk=build.pk).update(
            status=BuildStatus.FAILED, error=message, finished_at=timezone.now()
        )
        build.refresh_from_db()
        shutil.rmtree(app_folder(build), ignore_errors=True)
        return
    _log(build, f"Built: {size >> 20} MiB.")
    SourceBuild.objects.filter(pk=build.pk).update(
        status=BuildStatus.SUCCEEDED, size_bytes=size, finished_at=timezone.now()
    )
    build.refresh_from_db()


def _run_step(build: SourceBuild, argv: list[str], where: str) -> None:
    app = app_folder(build)
    check = sandbox.check()
    if not check.may_start:
        raise BuildFailed(sandbox.refusal(check.problem))
    with tempfile.TemporaryDirectory(prefix="build-", dir=build_folder(build)) as scratch:
        scratch_path = Path(scratch)
        if check.enabled:
            buildsteps.own(app, build_uid())
            command = sandbox.prepare(
                [*IN_FOLDER, f"{APP_MOUNT}/{where}", *argv],
                environment=_environment(sandboxed=True),
                environment_file=scratch_path / "env",
                profile_file=scratch_path / "sandbox.json",
                name=f"build-{build.pk}",
                uid=build_uid(),
                area=scratch_path / "sandbox",
                binds=SANDBOX_BINDS,
                caches=shared_caches(),
                shared_writable={str(app): APP_MOUNT},
            )
            environment, cwd = sandbox.ROOT_ENVIRONMENT, str(scratch_path)
        else:
            for name in ("home", "tmp"):
                (scratch_path / name).mkdir()
            command = argv
            environment = _environment(sandboxed=False, scratch=scratch_path)
            cwd = str(app / where)
        with open(log_path(build), "ab") as log:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            _supervise(build, process, app)


def _supervise(build: SourceBuild, process: subprocess.Popen, app: Path) -> None:
    try:
        buildsteps.supervise(
            process,
            app,
            timeout_seconds=settings.BUILD_TIMEOUT_SECONDS,
            max_mb=settings.BUILD_MAX_MB,
        )
    except buildsteps.StepFailed as exc:
        raise BuildFailed(str(exc)) from None


def _environment(*, sandboxed: bool, scratch: Path | None = None) -> dict[str, str]:
    if sandboxed:
        environment = sandboxed_package_environment()
    else:
        assert scratch is not None
        environment = package_environment(
            home=str(scratch / "home"),
            tmp=str(scratch / "tmp"),
            npm_cache=str(scratch / "home" / ".npm"),
            uv_cache=str(scratch / "home" / ".cache" / "uv"),
        )
    # The host's package environment (with its pass-through variables) and the build's own.
    environment.update(buildsteps.BUILD_VARIABLES)
    return environment


def _log(build: SourceBuild, line: str) -> None:
    with open(log_path(build), "a") as log:
        log.write(f"[catwalk] {line}\n")
