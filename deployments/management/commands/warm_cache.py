"""manage.py warm_cache: fill the shared package caches that sandboxed servers start from."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from deployments.runtimes.base import PackageError
from deployments.runtimes.local import WarmError, warm_shared_cache
from deployments.runtimes.sandbox import SandboxUnavailable
from deployments.services import parse_package_spec


class Command(BaseCommand):
    help = (
        "Download npm or PyPI packages into the shared caches, which every sandboxed server "
        "reads (read-only, under a writable layer of its own) so its first start need not "
        "download them. Operator only: whatever is cached here, every deployment may run."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "packages",
            nargs="+",
            metavar="PACKAGE",
            help="npm:NAME[@VERSION] or pypi:NAME[==VERSION]",
        )

    def handle(self, *args, **options) -> None:
        try:
            specs = [parse_package_spec(package) for package in options["packages"]]
        except PackageError as exc:
            raise CommandError(str(exc)) from None
        for spec in specs:
            self.stderr.write(f"Caching {spec.registry}:{spec.name}…")
            try:
                warm_shared_cache(spec.registry, spec.name, spec.version)
            except (SandboxUnavailable, WarmError, PackageError) as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"cached {spec.registry}:{spec.name}")
