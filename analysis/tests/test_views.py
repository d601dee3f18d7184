"""An analysis is visible to the user who asked for it only."""

from __future__ import annotations

import pytest

from catwalk.testing import make_analysis

pytestmark = pytest.mark.django_db


@pytest.fixture
def analysis(owner):
    return make_analysis(owner, owner="acme", name="weather-mcp")


def test_owner_sees_their_analysis(owner_client, analysis):
    response = owner_client.get(f"/analyses/{analysis.pk}/")
    assert response.status_code == 200
    assert b"acme/weather-mcp" in response.content


def test_another_user_gets_404(stranger_client, analysis):
    assert stranger_client.get(f"/analyses/{analysis.pk}/").status_code == 404


def test_anonymous_visitors_are_sent_to_sign_in(anon_client, analysis):
    response = anon_client.get(f"/analyses/{analysis.pk}/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
