"""Sign-up, sign-in, password change and reset, and the first-administrator claim."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.core import mail

from catwalk import accounts
from catwalk.testing import PASSWORD, make_user

pytestmark = pytest.mark.django_db
NEW_PASSWORD = "another-long-password-77"


def signup(client, username="newcomer", email="newcomer@example.com"):
    return client.post(
        "/accounts/signup/",
        {
            "username": username,
            "email": email,
            "password1": NEW_PASSWORD,
            "password2": NEW_PASSWORD,
        },
    )


def test_sign_up_creates_an_account_and_signs_in(anon_client):
    response = signup(anon_client)
    assert response.status_code == 302
    assert get_user_model().objects.filter(username="newcomer").exists()
    assert anon_client.get("/").status_code == 200


def test_sign_up_errors_are_shown_and_nothing_is_saved(anon_client):
    response = anon_client.post(
        "/accounts/signup/",
        {"username": "x", "email": "bad", "password1": "a", "password2": "b"},
    )
    assert response.status_code == 400
    assert b"Enter a valid email address" in response.content
    assert not get_user_model().objects.filter(username="x").exists()


def test_sign_up_is_refused_when_closed(anon_client, settings):
    settings.SIGNUP_OPEN = False
    assert signup(anon_client).status_code == 403
    assert not get_user_model().objects.exists()


def test_sign_up_can_be_limited_to_domains(anon_client, settings):
    settings.SIGNUP_ALLOWED_DOMAINS = ["acme.test"]
    response = signup(anon_client, email="someone@elsewhere.test")
    assert response.status_code == 400
    assert b"limited to addresses at" in response.content
    assert signup(anon_client, email="someone@ACME.test").status_code == 302


def test_sign_up_refuses_a_duplicate_email(anon_client):
    make_user("first", email="taken@example.com")
    response = signup(anon_client, email="Taken@example.com")
    assert response.status_code == 400


def test_sign_in_and_sign_out(anon_client):
    make_user("alice")
    response = anon_client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    assert anon_client.get("/").status_code == 200
    anon_client.post("/accounts/logout/")
    assert anon_client.get("/").status_code == 302


def test_wrong_password_is_refused(anon_client):
    make_user("alice")
    response = anon_client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert b"correct username and password" in response.content


def test_password_change(owner_client, owner):
    response = owner_client.post(
        "/accounts/password/change/",
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 302
    owner.refresh_from_db()
    assert owner.check_password(NEW_PASSWORD)


def test_password_reset_by_email(anon_client):
    user = make_user("forgetful")
    anon_client.post("/accounts/password/reset/", {"email": user.email})
    assert len(mail.outbox) == 1
    link = re.search(r"http://\S+", mail.outbox[0].body).group(0)
    path = link.split("testserver", 1)[1]
    form_page = anon_client.get(path, follow=True)
    response = anon_client.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)


def test_password_reset_does_not_reveal_unknown_addresses(anon_client):
    response = anon_client.post("/accounts/password/reset/", {"email": "nobody@example.com"})
    assert response.status_code == 302
    assert mail.outbox == []


def test_the_claim_link_makes_the_first_account_an_administrator(owner_client, owner):
    path = accounts.admin_claim_path()
    assert owner_client.get(path).status_code == 200
    assert owner_client.post(path).status_code == 302
    owner.refresh_from_db()
    assert owner.is_superuser and owner.is_staff


def test_the_claim_link_works_only_once(owner_client, stranger_client, stranger):
    path = accounts.admin_claim_path()
    owner_client.post(path)
    assert stranger_client.post(path).status_code == 410
    stranger.refresh_from_db()
    assert not stranger.is_superuser


def test_a_forged_claim_link_is_refused(owner_client, owner):
    response = owner_client.post("/setup/claim-admin/first-admin:forged/")
    assert response.status_code == 404
    owner.refresh_from_db()
    assert not owner.is_superuser


def test_the_claim_link_needs_a_signed_in_account(anon_client):
    response = anon_client.get(accounts.admin_claim_path())
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_pages_carry_a_content_security_policy(anon_client):
    response = anon_client.get("/accounts/login/")
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
