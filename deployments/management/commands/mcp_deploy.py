"""`python manage.py mcp_deploy`: deploy a package on this host and print its endpoint and token."""

from __future__ import annotations

import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from analysis import services as analysis_services
from analysis.github import GitHubError, InvalidRepositoryURL, parse_repository_url
from analysis.models import AnalysisStep
from analysis.serverjson import meta
from deployments import builds, services
from deployments.github_tokens import github_token_for
from deployments.models import ProcessModel, Runtime, SourceBuild
from deployments.runtimes.base import PackageError, get_runtime
from deployments.supervisor import supervisor_is_running

DEFAULT_TIMEOUT_SECONDS = 300.0


def _assignment(value: str) -> tuple[str, str]:
    key, separator, content = value.partition("=")
    if not separator or not key:
        raise CommandError(f"--env {value!r}: expected NAME=VALUE")
    return key, content


class Command(BaseCommand):
    help = (
        "Create a local deployment of an npm or PyPI MCP server, or of a GitHub repository built "
        "from source, wait until it answers "
        'tools/list, and print {"id", "endpoint", "token"} as one JSON line. '
        "Needs a running supervisor (`manage.py supervise`, part of `make run`)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="Username of the owner.")
        what = parser.add_mutually_exclusive_group(required=True)
        what.add_argument(
            "--package",
            metavar="npm:NAME[@VERSION]|pypi:NAME[==VERSION]|oci:IMAGE[:TAG]",
            help="A published package to run (an OCI image runs on --runtime fly).",
        )
        what.add_argument(
            "--repo",
            metavar="https://github.com/OWNER/REPO[/tree/REF/FOLDER]",
            help="A repository to analyse, build at its current commit and run from source.",
        )
        parser.add_argument(
            "--env",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="A credential for the server's environment (repeatable); stored encrypted.",
        )
        parser.add_argument("--name", help="Deployment name (default: from the package name).")
        parser.add_argument(
            "--isolated",
            action="store_true",
            help="One server process per MCP session instead of one shared process.",
        )
        parser.add_argument(
            "--entry",
            default="",
            metavar="CMD",
            help="The package's executable to run, or an absolute path to run instead.",
        )
        parser.add_argument(
            "--arg",
            action="append",
            default=[],
            metavar="ARG",
            help="An argument for the server (repeatable; write --arg=-x for a dash).",
        )
        parser.add_argument(
            "--runtime",
            choices=[kind for kind, _ in Runtime.choices],
            default=Runtime.LOCAL,
            help="Where the server runs: this host (default) or Fly.io Machines (needs a worker).",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=DEFAULT_TIMEOUT_SECONDS,
            metavar="SECONDS",
            help=f"How long to wait for the server (default {DEFAULT_TIMEOUT_SECONDS:g}).",
        )

    def handle(self, *args, **options) -> None:
        try:
            owner = get_user_model().objects.get(username=options["user"])
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user named {options['user']!r}") from None
        environment = dict(_assignment(value) for value in options["env"])
        if len(environment) != len(options["env"]):
            raise CommandError("--env: a variable is given more than once")
        if options["timeout"] <= 0:
            raise CommandError("--timeout must be positive")
        if options["runtime"] == Runtime.LOCAL and not supervisor_is_running():
            raise CommandError(
                "no supervisor is running for this data folder: start "
                "`python manage.py supervise` (or `make run`) first"
            )
        build = None
        if options["repo"]:
            if options["entry"]:
                raise CommandError("--entry: a source deployment runs its build's entry point")
            build = self._build(owner, options["repo"], options["runtime"])
            package = services.source_package(build)
        else:
            try:
                package = services.parse_package_spec(options["package"])
            except PackageError as exc:
                raise CommandError(f"--package: {exc}") from None
        try:
            deployment, token = services.create_deployment(
                owner,
                package,
                source_build=build,
                name=options["name"],
                environment=environment,
                process_model=ProcessModel.ISOLATED if options["isolated"] else ProcessModel.SHARED,
                entry_command=options["entry"],
                entry_args=options["arg"],
                runtime=options["runtime"],
                issued_to="mcp_deploy",
            )
        except services.DeploymentError as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(f"Created {deployment.name} ({deployment.id}); waiting for it to start…")
        try:
            tools = services.wait_until_ready(deployment, options["timeout"])
        except services.DeploymentNotReady as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(f"Running with {len(tools)} tools.")
        self.stdout.write(
            json.dumps(
                {"id": str(deployment.id), "endpoint": deployment.endpoint_url, "token": token}
            )
        )

    def _build(self, owner, url: str, runtime: str) -> SourceBuild:
        """Analyse the repository, then build it at the analysed commit (or reuse that build);
        on a runtime that builds in the deployment's machine, only pin the commit."""
        token = github_token_for(owner)
        try:
            document, sha = analysis_services.analyse(
                url,
                analysis_services.Options(introspect=False),
                github_token=token,
                owner_id=owner.pk,
                progress=lambda step: self.stderr.write(f"{AnalysisStep(step).label}…"),
            )
        except (InvalidRepositoryURL, GitHubError, analysis_services.AnalysisFailed) as exc:
            raise CommandError(str(exc)) from None
        recipe = meta(document).get("source") or {}
        if not recipe.get("runnable"):
            raise CommandError(f"{url} cannot be built: {recipe.get('reason') or 'no recipe'}")
        reference = parse_repository_url(url)
        if get_runtime(runtime).builds_in_place:
            self.stderr.write(f"{reference.full_name} at {sha[:12]} is built in its machine.")
            try:
                return builds.pin(
                    reference.full_name, reference.subdirectory, sha, recipe, user=owner
                )
            except builds.BuildFailed as exc:
                raise CommandError(str(exc)) from None
        self.stderr.write(f"Building {reference.full_name} at {sha[:12]}…")
        try:
            build = builds.ensure_build(
                reference.full_name,
                reference.subdirectory,
                sha,
                recipe,
                github_token=token,
                user=owner,
            )
        except builds.BuildFailed as exc:
            raise CommandError(f"the build failed: {exc}") from None
        self.stderr.write(f"Built in {build.duration_seconds or 0:.1f} s (build {build.pk}).")
        return build
