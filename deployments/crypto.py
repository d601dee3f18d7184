"""Secrets at rest: a Fernet key ring from `CATWALK_ENCRYPTION_KEYS`.

The first key encrypts; every key decrypts, so a new key can be put in front, stored values
re-encrypted (`manage.py rotate_encryption_keys`), and the old key dropped afterwards.
Columns that hold ciphertext are `EncryptedTextField`s, which is how rotation finds them all.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.apps import apps
from django.conf import settings
from django.db import models, transaction


class DecryptionError(Exception):
    """A stored secret cannot be decrypted with any key of the ring."""


class EncryptedTextField(models.TextField):
    """Holds Fernet ciphertext. Values are encrypted and decrypted explicitly, never on load,
    so plaintext never sits in a model instance, a form's initial value or a log line."""

    def formfield(self, **kwargs):  # Ciphertext is not for editing by hand.
        return None


@lru_cache(maxsize=4)
def _ring(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def key_ring() -> MultiFernet:
    return _ring(tuple(settings.CATWALK_ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    return key_ring().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str, what: str = "a stored secret") -> str:
    try:
        return key_ring().decrypt(ciphertext.encode()).decode()
    except InvalidToken:
        raise DecryptionError(
            f"cannot decrypt {what}: no key in CATWALK_ENCRYPTION_KEYS matches it "
            "(was a key removed before `manage.py rotate_encryption_keys` ran?)"
        ) from None


def encrypted_columns() -> list[tuple[type[models.Model], str]]:
    return [
        (model, field.attname)
        for model in apps.get_models()
        for field in model._meta.concrete_fields
        if isinstance(field, EncryptedTextField)
    ]


def rotate_all(batch_size: int = 500) -> int:
    """Re-encrypt every stored secret under the primary key; returns how many were rewritten.

    Runs in one transaction: either every value is under the new key or nothing changed.
    A value no key can decrypt aborts the whole rotation with a DecryptionError.
    """
    ring = key_ring()
    rewritten = 0
    with transaction.atomic():
        for model, column in encrypted_columns():
            rows = model._default_manager.select_for_update().exclude(**{column: ""})
            changed = []
            for row in rows.only("pk", column).iterator(chunk_size=batch_size):
                old = getattr(row, column)
                try:
                    new = ring.rotate(old.encode()).decode()
                except InvalidToken:
                    raise DecryptionError(
                        f"cannot rotate {model._meta.label} {row.pk}.{column}: "
                        "no key in CATWALK_ENCRYPTION_KEYS decrypts it; nothing was changed"
                    ) from None
                setattr(row, column, new)
                changed.append(row)
            model._default_manager.bulk_update(changed, [column], batch_size=batch_size)
            rewritten += len(changed)
    return rewritten
