"""`python manage.py mcp_token create|list|revoke`: a deployment's access tokens."""

from __future__ import annotations

import uuid

from django.core.management.base import BaseCommand, CommandError, CommandParser

from deployments import services
from deployments.models import AccessToken, Deployment


def _days(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ValueError(value)
    return int(value)


def _when(moment) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


class Command(BaseCommand):
    help = "Create (the token is printed once), list or revoke a deployment's access tokens."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="Issue a token and print it once.")
        create.add_argument("deployment_id")
        create.add_argument("--label", required=True)
        create.add_argument(
            "--expires-in", type=_days, metavar="DAYS", help="Expire after DAYS days (whole, ≥ 1)."
        )
        listing = actions.add_parser("list", help="List tokens (prefix, label, dates, state).")
        listing.add_argument("deployment_id")
        revoke = actions.add_parser("revoke", help="Revoke a token by id, prefix or value.")
        revoke.add_argument("token")

    def handle(self, *args, action: str, **options) -> None:
        if action == "create":
            deployment = self._deployment(options["deployment_id"])
            try:
                _, token = services.issue_token(deployment, options["label"], options["expires_in"])
            except services.DeploymentError as exc:
                raise CommandError(f"--label/--expires-in: {exc}") from exc
            self.stdout.write(token)
        elif action == "list":
            deployment = self._deployment(options["deployment_id"])
            self.stdout.write("ID\tPREFIX\tLABEL\tCREATED\tEXPIRES\tLAST USED\tSTATE")
            for token in deployment.access_tokens.all():
                self.stdout.write(
                    "\t".join(
                        [
                            str(token.pk),
                            token.prefix,
                            token.label,
                            _when(token.created_at),
                            _when(token.expires_at),
                            _when(token.last_used_at),
                            _state(token),
                        ]
                    )
                )
        else:
            try:
                token = services.find_token(options["token"])
            except services.TokenNotFound as exc:
                raise CommandError(str(exc)) from None
            token.revoke()
            self.stdout.write(f"Revoked token {token.pk} ({token.prefix}…) of {token.deployment}.")

    @staticmethod
    def _deployment(reference: str) -> Deployment:
        try:
            return Deployment.objects.get(pk=uuid.UUID(reference))
        except (ValueError, Deployment.DoesNotExist):
            raise CommandError(f"no deployment with id {reference!r}") from None


def _state(token: AccessToken) -> str:
    if token.revoked_at is not None:
        return "revoked"
    return "active" if token.is_active else "expired"
