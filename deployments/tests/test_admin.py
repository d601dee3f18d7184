"""The admin from three sides: a staff owner, another staff member, an anonymous visitor.

Superusers see everything; other staff see only what they own. Secrets are write-only and
tokens show only their prefix.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from catwalk.testing import make_analysis, make_credential, make_deployment, make_token, make_user
from deployments.models import AccessToken, Credential, FlyApp, hash_token

pytestmark = pytest.mark.django_db
SECRET = "plaintext-admin-canary-1234"
LISTS = [
    "/admin/deployments/deployment/",
    "/admin/deployments/credential/",
    "/admin/deployments/accesstoken/",
    "/admin/deployments/toolcall/",
    "/admin/deployments/deploymentevent/",
    "/admin/deployments/flyapp/",
    "/admin/analysis/analysis/",
    "/admin/analysis/repository/",
]


def staff_client(user) -> Client:
    user.is_staff = True
    user.save()
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label__in=["deployments", "analysis"])
    )
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def world(owner, stranger):
    mine = make_deployment(owner, "owners-server")
    make_credential(mine, "OWNERS_KEY", SECRET)
    make_token(mine, "owners-token")
    mine.move_to("starting", "owners-event")
    make_analysis(owner, owner="owner-org", name="owners-repo")
    FlyApp.objects.create(deployment=mine, deployment_key=mine.id, name="owners-fly-app")
    theirs = make_deployment(stranger, "strangers-server")
    make_credential(theirs, "STRANGERS_KEY", "x")
    make_token(theirs, "strangers-token")
    theirs.move_to("starting", "strangers-event")
    make_analysis(stranger, owner="stranger-org", name="strangers-repo")
    FlyApp.objects.create(deployment=theirs, deployment_key=theirs.id, name="strangers-fly-app")
    return mine, theirs


@pytest.mark.parametrize("url", LISTS)
def test_staff_see_only_their_own_rows(world, owner, url):
    content = staff_client(owner).get(url).content
    assert b"strangers" not in content
    assert b"stranger-org" not in content


@pytest.mark.parametrize("url", LISTS)
def test_the_other_staff_member_sees_only_theirs(world, stranger, url):
    response = staff_client(stranger).get(url)
    assert response.status_code == 200
    assert b"owners" not in response.content
    assert b"owner-org" not in response.content


@pytest.mark.parametrize("url", LISTS)
def test_anonymous_visitors_are_sent_to_the_admin_sign_in(world, anon_client, url):
    response = anon_client.get(url)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


@pytest.mark.parametrize("url", LISTS)
def test_superusers_see_everything(world, url):
    admin_client = Client()
    admin_client.force_login(make_user("root", is_staff=True, is_superuser=True))
    response = admin_client.get(url)
    assert response.status_code == 200


def test_another_staff_member_cannot_open_a_foreign_deployment(world, stranger):
    mine, _ = world
    response = staff_client(stranger).get(f"/admin/deployments/deployment/{mine.pk}/change/")
    assert response.status_code == 302  # the admin redirects a missing object to its index


def test_a_credential_value_is_never_shown(world, owner):
    credential = Credential.objects.get(name="OWNERS_KEY")
    client = staff_client(owner)
    for url in [
        f"/admin/deployments/credential/{credential.pk}/change/",
        f"/admin/deployments/deployment/{credential.deployment_id}/change/",
    ]:
        content = client.get(url).content
        assert SECRET.encode() not in content
        assert credential.encrypted_value.encode() not in content


def test_a_credential_can_be_replaced_and_kept(world, owner):
    credential = Credential.objects.get(name="OWNERS_KEY")
    client = staff_client(owner)
    url = f"/admin/deployments/credential/{credential.pk}/change/"
    form = {"deployment": str(credential.deployment_id), "name": "OWNERS_KEY", "is_secret": "on"}
    client.post(url, {**form, "value": ""})
    credential.refresh_from_db()
    assert credential.get_value() == SECRET
    client.post(url, {**form, "value": "rotated"})
    credential.refresh_from_db()
    assert credential.get_value() == "rotated"


def test_a_token_issued_in_the_admin_is_shown_once_and_stored_hashed(world, owner):
    mine, _ = world
    client = staff_client(owner)
    response = client.post(
        "/admin/deployments/accesstoken/add/",
        {"deployment": str(mine.pk), "label": "from-admin"},
        follow=True,
    )
    plaintext = re.search(rb"cwk_[A-Za-z0-9_-]{40,}", response.content).group(0).decode()
    token = AccessToken.objects.get(label="from-admin")
    assert token.token_hash == hash_token(plaintext)
    change_page = client.get(f"/admin/deployments/accesstoken/{token.pk}/change/").content
    assert plaintext.encode() not in change_page
    assert token.prefix.encode() in change_page


def test_staff_cannot_attach_a_token_to_a_foreign_deployment(world, owner):
    _, theirs = world
    staff_client(owner).post(
        "/admin/deployments/accesstoken/add/", {"deployment": str(theirs.pk), "label": "sneaky"}
    )
    assert not AccessToken.objects.filter(label="sneaky").exists()
