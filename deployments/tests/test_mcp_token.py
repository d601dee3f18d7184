"""`manage.py mcp_token create|list|revoke` manages a deployment's access tokens."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from catwalk.testing import make_deployment, make_token
from deployments.models import AccessToken, hash_token

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command("mcp_token", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def deployment(owner):
    return make_deployment(owner)


def test_create_prints_the_token_once_and_stores_only_its_hash(deployment):
    printed = run("create", str(deployment.id), "--label", "laptop", "--expires-in", "7").strip()

    token = AccessToken.objects.get(deployment=deployment)
    assert token.token_hash == hash_token(printed)
    assert token.label == "laptop"
    assert printed.startswith(token.prefix)
    assert timedelta(days=6, hours=23) < token.expires_at - timezone.now() <= timedelta(days=7)


def test_list_shows_prefixes_labels_and_states_but_never_a_token(deployment):
    _, active = make_token(deployment, "active one")
    revoked, _ = make_token(deployment, "revoked one")
    revoked.revoke()
    make_token(deployment, "expired one", expires_at=timezone.now() - timedelta(days=1))

    listing = run("list", str(deployment.id))

    rows = {line.split("\t")[2]: line.split("\t") for line in listing.splitlines()[1:]}
    assert rows["active one"][-1] == "active"
    assert rows["revoked one"][-1] == "revoked"
    assert rows["expired one"][-1] == "expired"
    assert rows["active one"][1] == active[:12]
    assert active not in listing


@pytest.mark.parametrize("reference", ["prefix", "id", "token"])
def test_revoke_finds_a_token_by_prefix_id_or_value(deployment, reference):
    token, plaintext = make_token(deployment)
    other, _ = make_token(deployment, "other")
    given = {"prefix": token.prefix, "id": str(token.pk), "token": plaintext}[reference]

    output = run("revoke", given)

    token.refresh_from_db()
    other.refresh_from_db()
    assert not token.is_active
    assert other.is_active
    assert f"Revoked token {token.pk}" in output


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["revoke", "cwk_nothing"], "no token matches"),
        (["revoke", "laptop"], "neither a token id nor a prefix"),
        (["create", "not-a-uuid", "--label", "x"], "no deployment with id"),
        (["list", "0b9a4f9e-7d3c-4c4e-9a57-5a1f7f5d8c11"], "no deployment with id"),
        (["create", "DEPLOYMENT", "--label", "x", "--expires-in", "0"], "expires-in"),
        (["create", "DEPLOYMENT", "--label", "  "], "label must be 1 to 100 characters"),
    ],
)
def test_bad_references_get_a_clear_error(deployment, args, problem):
    args = [str(deployment.id) if arg == "DEPLOYMENT" else arg for arg in args]
    with pytest.raises(CommandError, match=problem):
        run(*args)
    assert not AccessToken.objects.exists()
