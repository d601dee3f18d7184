"""A user's own GitHub token: the only credential that reads their private repositories.

The platform's GITHUB_TOKEN never does that on a user's behalf. Every change is recorded in the
audit log here, the one place tokens are set or removed.
"""

from __future__ import annotations

import re

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from deployments import audit
from deployments.models import AuditAction, GitHubToken

MAX_TOKEN_LENGTH = 255
# Every token GitHub issues (ghp_, github_pat_, gho_, ..., or 40 hex characters) is longer;
# a shorter one would also be given away by its hint.
MIN_TOKEN_LENGTH = 20
_TOKEN_CHARACTERS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces


def validate_github_token(token: str) -> None:
    """Raises ValidationError unless `token` looks like something GitHub could have issued.

    Prefixes are typical (ghp_, github_pat_, gho_) but not required: GitHub adds new kinds.
    """
    if not token:
        raise ValidationError("Enter a token.", code="required")
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValidationError(
            "A GitHub token is at most %(limit)d characters.",
            code="max_length",
            params={"limit": MAX_TOKEN_LENGTH},
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValidationError("This is too short to be a GitHub token.", code="min_length")
    if not _TOKEN_CHARACTERS.fullmatch(token):
        raise ValidationError(
            "A GitHub token is letters, digits and punctuation, without spaces.", code="invalid"
        )


def github_token_for(user) -> str:
    """The user's own token, or "" when they have none. DecryptionError propagates."""
    stored = GitHubToken.objects.filter(user=user).first()
    return stored.get_token() if stored is not None else ""


def set_github_token(user, token: str, actor) -> GitHubToken:
    """Store (or replace) the user's token. Raises ValidationError for an implausible token.

    `actor` is who did it; None for the command line.
    """
    validate_github_token(token)
    with transaction.atomic():
        # Serialises two first-time saves for one user, which would both try to insert.
        get_user_model().objects.select_for_update().filter(pk=user.pk).exists()
        stored = GitHubToken.objects.filter(user=user).first() or GitHubToken(user=user)
        stored.set_token(token)
        stored.save()
        audit.record(
            AuditAction.GITHUB_TOKEN_SET, user=user, subject=stored.display_hint, actor=actor
        )
    return stored


def remove_github_token(user, actor) -> bool:
    """Forget the user's token; returns False if there was none. `actor` as for set."""
    with transaction.atomic():
        stored = GitHubToken.objects.select_for_update().filter(user=user).first()
        if stored is None:
            return False
        stored.delete()
        audit.record(
            AuditAction.GITHUB_TOKEN_REMOVED, user=user, subject=stored.display_hint, actor=actor
        )
    return True
