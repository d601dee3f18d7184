"""A user's own GitHub token: set, replaced and removed by its owner only, encrypted at rest,
never shown again anywhere (page, admin), every change in the audit log."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client
from django.urls import reverse

from deployments import crypto
from deployments.github_tokens import (
    github_token_for,
    remove_github_token,
    set_github_token,
)
from deployments.models import AuditAction, AuditEvent, GitHubToken

pytestmark = pytest.mark.django_db

TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Qr7s"
OTHER_TOKEN = "github_pat_11AAAAAAA0abcdefghijklmnopqrstuvwxyz0123456789wxyz"
URL = reverse("github-token")


def github_events(user) -> list[tuple[str, str]]:
    return list(
        AuditEvent.objects.filter(
            user=user,
            action__in=[AuditAction.GITHUB_TOKEN_SET, AuditAction.GITHUB_TOKEN_REMOVED],
        )
        .order_by("created_at", "id")
        .values_list("action", "subject")
    )


# --- The functions ----------------------------------------------------------------------------


def test_without_a_token_github_token_for_is_empty(owner):
    assert github_token_for(owner) == ""


def test_set_replace_and_remove(owner):
    set_github_token(owner, TOKEN, actor=owner)
    assert github_token_for(owner) == TOKEN

    set_github_token(owner, OTHER_TOKEN, actor=owner)
    assert github_token_for(owner) == OTHER_TOKEN
    assert GitHubToken.objects.filter(user=owner).count() == 1

    assert remove_github_token(owner, actor=owner) is True
    assert github_token_for(owner) == ""
    assert remove_github_token(owner, actor=owner) is False


def test_each_change_is_audited_with_the_hint_only(owner):
    set_github_token(owner, TOKEN, actor=owner)
    set_github_token(owner, OTHER_TOKEN, actor=None)
    remove_github_token(owner, actor=owner)
    remove_github_token(owner, actor=owner)  # nothing left: nothing recorded

    assert github_events(owner) == [
        (AuditAction.GITHUB_TOKEN_SET, "…Qr7s"),
        (AuditAction.GITHUB_TOKEN_SET, "…wxyz"),
        (AuditAction.GITHUB_TOKEN_REMOVED, "…wxyz"),
    ]
    actors = list(
        AuditEvent.objects.filter(user=owner).order_by("id").values_list("actor", flat=True)
    )
    assert actors == [owner.pk, None, owner.pk]


def test_the_stored_column_holds_ciphertext_not_the_token(owner):
    set_github_token(owner, TOKEN, actor=owner)
    table = GitHubToken._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT encrypted_token, hint FROM {table}")  # noqa: S608
        ((ciphertext, hint),) = cursor.fetchall()
    assert TOKEN not in ciphertext
    assert crypto.decrypt(ciphertext) == TOKEN
    assert hint == "Qr7s"


def test_a_token_no_key_decrypts_raises(owner, settings):
    set_github_token(owner, TOKEN, actor=owner)
    settings.CATWALK_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(crypto.DecryptionError):
        github_token_for(owner)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "short_token",
        "ghp_" + "x" * 252,
        "ghp_with space_in_the_middle0",
        "ghp_tokén0123456789ab",
    ],
)
def test_implausible_tokens_are_refused_and_nothing_is_saved(owner, token):
    with pytest.raises(ValidationError):
        set_github_token(owner, token, actor=owner)
    assert not GitHubToken.objects.exists()
    assert github_events(owner) == []


def test_tokens_without_a_known_prefix_are_accepted(owner):
    legacy = "0123456789abcdef0123456789abcdef01234567"
    set_github_token(owner, legacy, actor=owner)
    assert github_token_for(owner) == legacy


def test_deleting_the_account_deletes_its_token(owner):
    set_github_token(owner, TOKEN, actor=owner)
    owner.delete()
    assert not GitHubToken.objects.exists()


# --- The page -------------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_sign_in(anon_client):
    for response in (anon_client.get(URL), anon_client.post(URL, {"token": TOKEN})):
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))
    assert not GitHubToken.objects.exists()


def test_the_page_says_when_no_token_is_stored(owner_client):
    response = owner_client.get(URL)
    assert response.status_code == 200
    assert b"No token is stored." in response.content
    assert b'value="remove"' not in response.content


def test_setting_a_token_redirects_with_a_message_and_shows_only_the_hint(owner, owner_client):
    response = owner_client.post(URL, {"action": "set", "token": f"  {TOKEN}\n"}, follow=True)

    assert response.redirect_chain == [(URL, 302)]
    assert github_token_for(owner) == TOKEN  # pasted whitespace is dropped
    content = response.content.decode()
    assert "Your GitHub token ending …Qr7s is stored." in content
    assert "A token ending <code>…Qr7s</code> is stored" in content
    assert TOKEN not in content
    assert 'value="remove"' in content


def test_replacing_a_token(owner, owner_client):
    set_github_token(owner, TOKEN, actor=owner)
    response = owner_client.post(URL, {"action": "set", "token": OTHER_TOKEN}, follow=True)
    assert github_token_for(owner) == OTHER_TOKEN
    content = response.content.decode()
    assert "…wxyz" in content
    assert TOKEN not in content
    assert OTHER_TOKEN not in content


def test_removing_a_token(owner, owner_client):
    set_github_token(owner, TOKEN, actor=owner)
    response = owner_client.post(URL, {"action": "remove"}, follow=True)
    assert response.redirect_chain == [(URL, 302)]
    assert github_token_for(owner) == ""
    assert b"Your GitHub token is removed." in response.content
    assert b"No token is stored." in response.content


def test_changes_through_the_page_are_audited_with_the_user_as_actor(owner, owner_client):
    owner_client.post(URL, {"action": "set", "token": TOKEN}, REMOTE_ADDR="203.0.113.9")
    owner_client.post(URL, {"action": "remove"}, REMOTE_ADDR="203.0.113.9")
    events = AuditEvent.objects.filter(user=owner, action__startswith="github_token").order_by("id")
    assert [(e.action, e.actor, e.ip_address) for e in events] == [
        (AuditAction.GITHUB_TOKEN_SET, owner, "203.0.113.9"),
        (AuditAction.GITHUB_TOKEN_REMOVED, owner, "203.0.113.9"),
    ]


def test_an_invalid_token_is_refused_with_a_form_error_and_not_rendered_back(owner_client):
    bad = "ghp_has spaces in it but is long"
    response = owner_client.post(URL, {"action": "set", "token": bad})
    assert response.status_code == 400
    content = response.content.decode()
    assert "without spaces" in content
    assert bad not in content
    assert 'aria-invalid="true"' in content
    assert not GitHubToken.objects.exists()
    assert not AuditEvent.objects.filter(action=AuditAction.GITHUB_TOKEN_SET).exists()


def test_a_refused_token_leaves_the_stored_one_in_place(owner, owner_client):
    set_github_token(owner, TOKEN, actor=owner)
    owner_client.post(URL, {"action": "set", "token": ""})
    assert github_token_for(owner) == TOKEN


def test_each_user_sees_and_changes_only_their_own(owner, stranger, stranger_client):
    set_github_token(owner, TOKEN, actor=owner)

    page = stranger_client.get(URL).content.decode()
    assert "No token is stored." in page
    assert "Qr7s" not in page

    stranger_client.post(URL, {"action": "remove"})
    stranger_client.post(URL, {"action": "set", "token": OTHER_TOKEN})

    assert github_token_for(owner) == TOKEN
    assert github_token_for(stranger) == OTHER_TOKEN
    assert github_events(owner) == [(AuditAction.GITHUB_TOKEN_SET, "…Qr7s")]


def test_changes_need_the_csrf_token(owner):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.post(URL, {"action": "set", "token": TOKEN}).status_code == 403
    assert not GitHubToken.objects.exists()


def test_other_methods_are_refused(owner_client):
    assert owner_client.put(URL).status_code == 405
    assert owner_client.delete(URL).status_code == 405


# --- The admin ------------------------------------------------------------------------------


def test_the_admin_shows_the_hint_but_never_the_token_or_its_ciphertext(owner, admin_client):
    stored = set_github_token(owner, TOKEN, actor=owner)

    listing = admin_client.get("/admin/deployments/githubtoken/").content.decode()
    change = admin_client.get(f"/admin/deployments/githubtoken/{stored.pk}/change/")

    assert change.status_code == 200
    content = change.content.decode()
    for page in (listing, content):
        assert "…Qr7s" in page
        assert TOKEN not in page
        assert stored.encrypted_token not in page
    assert 'name="encrypted_token"' not in content
    assert admin_client.get("/admin/deployments/githubtoken/add/").status_code == 403


def test_deleting_in_the_admin_is_audited(owner, admin_client, admin_user):
    stored = set_github_token(owner, TOKEN, actor=owner)
    admin_client.post(f"/admin/deployments/githubtoken/{stored.pk}/delete/", {"post": "yes"})
    assert not GitHubToken.objects.exists()
    removed = AuditEvent.objects.get(action=AuditAction.GITHUB_TOKEN_REMOVED)
    assert (removed.user, removed.actor) == (owner, admin_user)
