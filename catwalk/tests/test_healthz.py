import pytest


@pytest.mark.django_db
def test_healthz_reports_a_reachable_database(anon_client):
    response = anon_client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["checks"]["database"] == "ok"


@pytest.mark.django_db
def test_healthz_checks_redis_when_configured(anon_client, redis_url):
    response = anon_client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["checks"]["redis"] == "ok"


@pytest.mark.django_db
def test_healthz_is_unhealthy_when_redis_is_down(anon_client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = anon_client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"] == "unreachable"


@pytest.mark.django_db
def test_healthz_answers_a_platform_check_addressed_by_private_ip(anon_client, settings):
    settings.ALLOWED_HOSTS = ["catwalk.example.com"]
    response = anon_client.get("/healthz", HTTP_HOST="[fdaa:0:1::3]:8080")
    assert response.status_code == 200
    assert anon_client.get("/accounts/login/", HTTP_HOST="[fdaa:0:1::3]:8080").status_code == 400
