"""Small factories shared by the test suites of every app."""

from __future__ import annotations

import itertools

from django.contrib.auth import get_user_model

from analysis.models import Analysis, Repository
from deployments.models import AccessToken, Credential, Deployment, PackageRegistry

_counter = itertools.count(1)
PASSWORD = "a-long-test-password-42"  # noqa: S105 - test accounts only


def make_user(username: str | None = None, **fields):
    username = username or f"user{next(_counter)}"
    fields.setdefault("email", f"{username}@example.com")
    return get_user_model().objects.create_user(username=username, password=PASSWORD, **fields)


def make_deployment(owner, name: str | None = None, **fields) -> Deployment:
    fields.setdefault("package_registry", PackageRegistry.NPM)
    fields.setdefault("package_name", "@modelcontextprotocol/server-everything")
    fields.setdefault("package_version", "2026.1.26")
    return Deployment.objects.create(owner=owner, name=name or f"server-{next(_counter)}", **fields)


def make_credential(deployment: Deployment, name: str, value: str) -> Credential:
    credential = Credential(deployment=deployment, name=name)
    credential.set_value(value)
    credential.save()
    return credential


def make_token(deployment: Deployment, label: str = "test", **fields) -> tuple[AccessToken, str]:
    return AccessToken.issue(deployment, label, **fields)


def make_analysis(user, owner: str = "acme", name: str = "mcp-server", **fields) -> Analysis:
    repository, _ = Repository.objects.get_or_create(owner=owner, name=name)
    fields.setdefault("analyser_version", "1")
    return Analysis.objects.create(repository=repository, requested_by=user, **fields)
