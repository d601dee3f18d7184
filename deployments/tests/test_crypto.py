"""Secrets at rest: encrypted with the key ring, rotatable, never stored in plaintext."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.db import connection

from catwalk.testing import make_credential, make_deployment
from deployments import crypto
from deployments.models import Credential

PLAINTEXT = "sk-live-plaintext-canary-8f3a9c"


@pytest.fixture
def keys(settings):
    first = Fernet.generate_key().decode()
    settings.CATWALK_ENCRYPTION_KEYS = [first]
    return settings


@pytest.mark.django_db
def test_round_trip(keys, owner):
    credential = make_credential(make_deployment(owner), "API_KEY", PLAINTEXT)
    stored = Credential.objects.get(pk=credential.pk)
    assert stored.encrypted_value != PLAINTEXT
    assert PLAINTEXT not in stored.encrypted_value
    assert stored.get_value() == PLAINTEXT


@pytest.mark.django_db
def test_rotation_re_encrypts_everything_and_old_keys_can_be_dropped(keys, owner):
    deployment = make_deployment(owner)
    values = {f"KEY_{n}": f"secret-{n}" for n in range(5)}
    for name, value in values.items():
        make_credential(deployment, name, value)
    before = dict(Credential.objects.values_list("name", "encrypted_value"))

    new_key = Fernet.generate_key().decode()
    keys.CATWALK_ENCRYPTION_KEYS = [new_key, *keys.CATWALK_ENCRYPTION_KEYS]
    call_command("rotate_encryption_keys", stdout=open("/dev/null", "w"))  # noqa: SIM115

    after = dict(Credential.objects.values_list("name", "encrypted_value"))
    assert all(after[name] != before[name] for name in values)
    keys.CATWALK_ENCRYPTION_KEYS = [new_key]
    assert deployment.credential_environment() == values


@pytest.mark.django_db
def test_a_wrong_key_gives_a_clear_error(keys, owner):
    credential = make_credential(make_deployment(owner), "API_KEY", PLAINTEXT)
    keys.CATWALK_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(
        crypto.DecryptionError, match=r"credential API_KEY.*CATWALK_ENCRYPTION_KEYS"
    ):
        Credential.objects.get(pk=credential.pk).get_value()


@pytest.mark.django_db
def test_rotation_with_a_missing_key_changes_nothing(keys, owner):
    deployment = make_deployment(owner)
    make_credential(deployment, "A", "one")
    before = dict(Credential.objects.values_list("name", "encrypted_value"))
    keys.CATWALK_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(CommandError, match="no key in CATWALK_ENCRYPTION_KEYS decrypts it"):
        call_command("rotate_encryption_keys")
    assert dict(Credential.objects.values_list("name", "encrypted_value")) == before


def test_the_admin_form_never_offers_ciphertext_for_editing():
    assert Credential._meta.get_field("encrypted_value").formfield() is None


@pytest.mark.django_db(transaction=True)
def test_the_raw_database_never_holds_a_secret_in_plaintext(keys, owner, tmp_path):
    make_credential(make_deployment(owner), "API_KEY", PLAINTEXT)
    if connection.vendor == "sqlite":
        copy = tmp_path / "copy.sqlite3"
        with connection.cursor() as cursor:
            cursor.execute("VACUUM INTO %s", [str(copy)])
        raw = copy.read_bytes()
    else:
        if shutil.which("pg_dump") is None:
            pytest.skip("pg_dump is not installed")
        settings_dict = connection.settings_dict
        raw = subprocess.run(
            [
                "pg_dump",
                "--data-only",
                "-h",
                settings_dict["HOST"] or "127.0.0.1",
                "-p",
                str(settings_dict["PORT"] or 5432),
                "-U",
                settings_dict["USER"] or "postgres",
                settings_dict["NAME"],
            ],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        assert b"API_KEY" in raw  # the dump really holds the row
    assert PLAINTEXT.encode() not in raw
    assert b"API_KEY" in raw
