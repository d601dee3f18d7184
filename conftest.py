"""Fixtures for every suite: an owner, another user and an anonymous visitor."""

from __future__ import annotations

import pytest
from django.test import Client

from catwalk.testing import make_user


@pytest.fixture
def owner(db):
    return make_user("owner")


@pytest.fixture
def stranger(db):
    return make_user("stranger")


@pytest.fixture
def owner_client(owner) -> Client:
    client = Client()
    client.force_login(owner)
    return client


@pytest.fixture
def stranger_client(stranger) -> Client:
    client = Client()
    client.force_login(stranger)
    return client


@pytest.fixture
def anon_client() -> Client:
    return Client()


@pytest.fixture
def redis_url(settings) -> str:
    """The configured Redis; tests that need it skip with a reason when there is none."""
    import redis

    if not settings.REDIS_URL:
        pytest.skip("REDIS_URL is not set; CI sets it so this runs there")
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis at REDIS_URL is unreachable: {exc}")
    return settings.REDIS_URL
