"""Start-up refuses bad configuration with a message that names the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]
STRONG_SECRET = "k" * 20 + "Zq9-long-random-secret-for-tests-only-0123456789"
GOOD_PRODUCTION = {
    "DEBUG": "False",
    "SECRET_KEY": STRONG_SECRET,
    "CATWALK_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
    "ALLOWED_HOSTS": "catwalk.example.com",
    "EMAIL_URL": "smtp+tls://mailer:password@smtp.example.com:587",
}


def run_check(tmp_path: Path, *args: str, **variables: str) -> subprocess.CompletedProcess:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY", "ALLOWED_HOSTS"}
        and not key.startswith("CATWALK_")
    }
    environment.update({"CATWALK_DATA_DIR": str(tmp_path), **variables})
    return subprocess.run(
        [sys.executable, "manage.py", "check", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_zero_variables_is_a_working_development_setup(tmp_path):
    result = run_check(tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "encryption_key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_development_keys_are_generated_once_and_kept(tmp_path):
    run_check(tmp_path)
    first = (tmp_path / "encryption_key").read_text()
    run_check(tmp_path)
    assert (tmp_path / "encryption_key").read_text() == first


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"DATABASE_URL": "not-a-url"}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysql://root@127.0.0.1/test"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgres://root@127.0.0.1:notaport/test"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgres://root@127.0.0.1:5432/"}, "DATABASE_URL"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"CATWALK_ENCRYPTION_KEYS": "not-a-fernet-key"}, "CATWALK_ENCRYPTION_KEYS"),
        ({"TOOL_CALL_RETENTION_DAYS": "soon"}, "TOOL_CALL_RETENTION_DAYS"),
        ({"SECRET_KEY_FILE": "/nonexistent/secret"}, "SECRET_KEY_FILE"),
        ({"OAUTH_ACCESS_TOKEN_SECONDS": "5"}, "OAUTH_ACCESS_TOKEN_SECONDS"),
        ({"OAUTH_REDIRECT_URI_SCHEMES": "https,javascript"}, "OAUTH_REDIRECT_URI_SCHEMES"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(tmp_path, variables, named):
    result = run_check(tmp_path, **variables)
    assert result.returncode != 0
    assert f"{named}:" in result.stderr


@pytest.mark.parametrize("missing", ["SECRET_KEY", "CATWALK_ENCRYPTION_KEYS", "ALLOWED_HOSTS"])
def test_production_refuses_development_defaults(tmp_path, missing):
    variables = {k: v for k, v in GOOD_PRODUCTION.items() if k != missing}
    result = run_check(tmp_path, **variables)
    assert result.returncode != 0
    assert f"{missing}:" in result.stderr


def test_production_refuses_a_weak_secret_key(tmp_path):
    result = run_check(tmp_path, **{**GOOD_PRODUCTION, "SECRET_KEY": "django-insecure-short"})
    assert result.returncode != 0
    assert "SECRET_KEY:" in result.stderr


def test_production_refuses_a_wildcard_host(tmp_path):
    result = run_check(tmp_path, **{**GOOD_PRODUCTION, "ALLOWED_HOSTS": "*"})
    assert "ALLOWED_HOSTS:" in result.stderr


def test_production_refuses_fetching_oauth_client_metadata_from_loopback(tmp_path):
    result = run_check(tmp_path, **{**GOOD_PRODUCTION, "OAUTH_CIMD_ALLOW_LOOPBACK": "true"})
    assert "OAUTH_CIMD_ALLOW_LOOPBACK:" in result.stderr


def test_production_configuration_passes_the_deploy_checks(tmp_path):
    result = run_check(tmp_path, "--deploy", "--fail-level", "WARNING", **GOOD_PRODUCTION)
    assert result.returncode == 0, result.stderr + result.stdout


def test_secrets_can_come_from_files(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(STRONG_SECRET + "\n")
    variables = {k: v for k, v in GOOD_PRODUCTION.items() if k != "SECRET_KEY"}
    result = run_check(tmp_path, "--deploy", SECRET_KEY_FILE=str(secret_file), **variables)
    assert result.returncode == 0, result.stderr


def test_a_database_password_is_not_echoed_in_the_error(tmp_path):
    result = run_check(tmp_path, DATABASE_URL="mysql://root:hunter2@127.0.0.1/db")
    assert "DATABASE_URL:" in result.stderr
    assert "hunter2" not in result.stderr
