"""Strict readers for the environment that settings are built from.

django-environ does the parsing; this module adds what a product needs on top: a bad value
stops start-up with a message that names the variable, `X_FILE` variants for secrets, and
development defaults that production refuses.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

import environ
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}
DATABASE_SCHEMES = {"sqlite", "postgres", "postgresql", "pgsql", "psql"}
REDIS_SCHEMES = {"redis", "rediss"}

env = environ.Env()


class SettingError(ImproperlyConfigured):
    """A setting's value is unusable; the message names the variable."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name


def read(name: str, default: str | None = None) -> str | None:
    """The variable's value, or the contents of the file named by `<name>_FILE`."""
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise SettingError(
                f"{name}_FILE", f"cannot read {file_name!r}: {exc.strerror}"
            ) from exc
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value


def read_bool(name: str, default: bool) -> bool:
    value = read(name)
    if value is None:
        return default
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise SettingError(name, f"expected a boolean (true/false, 1/0, yes/no, on/off), got {value!r}")


def read_int(name: str, default: int, minimum: int = 0) -> int:
    value = read(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise SettingError(name, f"expected a whole number, got {value!r}") from None
    if number < minimum:
        raise SettingError(name, f"must be at least {minimum}, got {number}")
    return number


def read_list(name: str, default: list[str]) -> list[str]:
    value = read(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def read_database(name: str, default: str) -> dict:
    url = read(name, default)
    assert url is not None
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in DATABASE_SCHEMES:
        raise SettingError(
            name,
            f"expected postgres://USER@HOST:PORT/NAME or sqlite:///PATH, got {_redact(url)!r}",
        )
    try:
        config = env.db_url_config(url)
    except Exception as exc:  # django-environ raises assorted errors for malformed URLs
        raise SettingError(name, f"cannot parse {_redact(url)!r}: {exc}") from exc
    if scheme != "sqlite":
        parts = urlsplit(url)
        if not parts.hostname and not config.get("HOST"):
            raise SettingError(name, f"no host in {_redact(url)!r}")
        if not config.get("NAME"):
            raise SettingError(name, f"no database name in {_redact(url)!r}")
        try:
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise SettingError(name, f"bad port in {_redact(url)!r}") from None
    return config


def read_redis(name: str) -> str | None:
    url = read(name)
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES or not parts.hostname:
        raise SettingError(name, f"expected redis://HOST:PORT/DB, got {_redact(url)!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise SettingError(name, f"bad port in {_redact(url)!r}") from None
    return url


def read_encryption_keys(name: str, dev_key_file: Path | None) -> list[str]:
    """The key ring: the first key encrypts, every key decrypts.

    In development (dev_key_file given) a key is generated on first run into a 0600 file.
    """
    value = read(name)
    if value is None:
        if dev_key_file is None:
            raise SettingError(name, "required when DEBUG is off (comma-separated Fernet keys)")
        return [_dev_key(dev_key_file)]
    keys = [key.strip() for key in value.split(",") if key.strip()]
    if not keys:
        raise SettingError(name, "no key given")
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise SettingError(
                name, f"key {position} is not a Fernet key (32 url-safe base64-encoded bytes)"
            ) from None
    return keys


def dev_secret_key(path: Path) -> str:
    """A per-checkout development secret key, kept out of the repository."""
    if path.exists():
        return path.read_text().strip()
    return _write_private(path, secrets.token_urlsafe(50))


def _dev_key(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    return _write_private(path, Fernet.generate_key().decode())


def _write_private(path: Path, content: str) -> str:
    """Create `path` (mode 0600) with `content` unless another process won the race.

    Returns what the file holds afterwards. Linking a finished temporary file into place is
    atomic, so a concurrent reader never sees a half-written key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(content + "\n")
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    return path.read_text().strip()


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url
