"""Deployment operations that span models or talk to a runtime.

Views, tasks and management commands parse their input and call one function here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from deployments import audit
from deployments.models import (
    CREDENTIAL_VALUE_MAX_BYTES,
    ENV_NAME_VALIDATOR,
    TOKEN_PREFIX,
    TOKEN_VISIBLE_CHARS,
    AccessToken,
    BuildStatus,
    Credential,
    Deployment,
    DeploymentEvent,
    DesiredState,
    EventKind,
    PackageRegistry,
    ProcessModel,
    Runtime,
    SourceBuild,
    Status,
    hash_token,
)
from deployments.runtimes.base import (
    PackageError,
    ProbeError,
    available_runtimes,
    get_runtime,
    image_reference,
    list_tools,
    package_command,
    validate_entry,
    validate_image_package,
)

RESERVED_ENV_PREFIX = "CATWALK_BRIDGE_"
NAME_MAX = 63
LOG_LINES_ON_ERROR = 20


class DeploymentError(ValueError):
    """A deployment cannot be created or changed as asked; the message says why."""


class QuotaExceeded(DeploymentError):
    """The owner is at one of their quotas; nothing was changed."""


def _lock_owner(owner) -> None:
    """Serialise quota checks per owner: two requests cannot both take the last slot."""
    # The model, not type(owner): a request's user is a lazy wrapper around the instance.
    get_user_model().objects.select_for_update().filter(pk=owner.pk).exists()


def _check_deployment_quota(owner) -> None:
    limit = settings.QUOTA_DEPLOYMENTS_PER_USER
    if limit and Deployment.objects.filter(owner=owner).count() >= limit:
        raise QuotaExceeded(
            f"{owner} already has {limit} deployments, the most an account may have "
            "(QUOTA_DEPLOYMENTS_PER_USER). Delete one to create another."
        )


def _check_running_quota(owner, exclude=None) -> None:
    limit = settings.QUOTA_RUNNING_DEPLOYMENTS_PER_USER
    if not limit:
        return
    wanted = Deployment.objects.filter(owner=owner, desired_state=DesiredState.RUNNING)
    if exclude is not None:
        wanted = wanted.exclude(pk=exclude.pk)
    if wanted.count() >= limit:
        raise QuotaExceeded(
            f"{owner} already has {limit} deployments running (or sleeping, ready to wake), the "
            "most an account may have (QUOTA_RUNNING_DEPLOYMENTS_PER_USER). Stop one first."
        )


class DeploymentNotReady(Exception):
    """A deployment did not start serving; the message carries its status and last logs."""


class TokenNotFound(LookupError):
    """No single token matches the reference."""


@dataclass(frozen=True)
class PackageSpec:
    registry: str
    name: str
    version: str = ""


def image_package(name: str, version: str = "") -> PackageSpec:
    """An OCI package in one spelling: `registry/repository` and its tag or digest, whether
    the tag came in the name (as server.json's identifiers often have it) or apart. Raises
    PackageError."""
    image = image_reference(name, version)
    return PackageSpec(
        PackageRegistry.OCI, f"{image.registry}/{image.repository}", image.digest or image.tag
    )


def parse_package_spec(spec: str) -> PackageSpec:
    """Parse `npm:NAME[@VERSION]`, `pypi:NAME[==VERSION]` or `oci:IMAGE[:TAG|@DIGEST]`.
    Raises PackageError."""
    registry, separator, rest = spec.partition(":")
    if not separator or not rest:
        raise PackageError(
            f"{spec!r} is not npm:NAME[@VERSION], pypi:NAME[==VERSION] or oci:IMAGE[:TAG]"
        )
    if registry == PackageRegistry.NPM:
        # A scoped name starts with "@", so the version is after a later "@".
        at = rest.find("@", 1)
        name, version = (rest, "") if at < 0 else (rest[:at], rest[at + 1 :])
    elif registry == PackageRegistry.PYPI:
        name, _, version = rest.partition("==")
    elif registry == PackageRegistry.OCI:
        return image_package(rest)
    else:
        raise PackageError(f"unknown registry {registry!r}: use npm:, pypi: or oci:")
    if not version and rest != name:
        raise PackageError(f"{spec!r} has an empty version")
    package_command(registry, name, version)
    return PackageSpec(registry, name, version)


def default_name(package_name: str) -> str:
    """A deployment name from a package name: `@scope/server-x` → `server-x`."""
    base = slugify(package_name.rsplit("/", 1)[-1].replace("_", "-").replace(".", "-"))
    base = re.sub(r"-{2,}", "-", base).strip("-")[:NAME_MAX].strip("-")
    return base or "server"


def unique_name(owner, base: str) -> str:
    taken = set(
        Deployment.objects.filter(owner=owner, name__startswith=base).values_list("name", flat=True)
    )
    if base not in taken:
        return base
    counter = 2
    while True:
        suffix = f"-{counter}"
        candidate = base[: NAME_MAX - len(suffix)].rstrip("-") + suffix
        if candidate not in taken:
            return candidate
        counter += 1


def _check_environment(environment: dict[str, str]) -> None:
    for key in environment:
        try:
            ENV_NAME_VALIDATOR(key)
        except ValidationError:
            raise DeploymentError(
                f"{key!r} is not an environment variable name "
                "(letters, digits and underscores, not starting with a digit)"
            ) from None
        if key.startswith(RESERVED_ENV_PREFIX):
            raise DeploymentError(f"{key!r}: names starting {RESERVED_ENV_PREFIX} are reserved")
    # Messages name the variable, never the value: it may be a secret.
    for key, value in environment.items():
        if "\0" in value:
            # No process can receive it: the server's start would fail on every attempt.
            raise DeploymentError(f"the value of {key} contains a NUL character")
        if len(value.encode()) > CREDENTIAL_VALUE_MAX_BYTES:
            raise DeploymentError(
                f"the value of {key} is longer than {CREDENTIAL_VALUE_MAX_BYTES // 1024} KiB"
            )


def source_package(build: SourceBuild) -> PackageSpec:
    """How a source deployment names what it runs: the repository folder at its commit."""
    where = f"{build.repository}/{build.subfolder}" if build.subfolder else build.repository
    return PackageSpec(PackageRegistry.SOURCE, where, build.commit_sha[:12])


def create_deployment(
    owner,
    package: PackageSpec,
    *,
    name: str | None = None,
    environment: dict[str, str] | None = None,
    process_model: str = ProcessModel.SHARED,
    entry_command: str = "",
    entry_args: list[str] | None = None,
    runtime: str = Runtime.LOCAL,
    runtime_settings: dict | None = None,
    issued_to: str,
    analysis=None,
    secret_names: Collection[str] | None = None,
    source_build: SourceBuild | None = None,
) -> tuple[Deployment, str]:
    """Create a deployment with its encrypted credentials and a first access token.

    `issued_to` labels the first access token. `analysis` is the analysis it was configured
    from, if any. Every credential is stored encrypted; with `secret_names` given, those not
    named in it are marked not secret (without it, all are secret). Returns the deployment and
    the token's plaintext (shown once). Raises DeploymentError.
    The runtime is told once the transaction has committed.
    """
    environment = environment or {}
    entry_args = entry_args or []
    _check_runtime(runtime, source_package(source_build) if source_build else package)
    try:
        if source_build is not None:
            # A source deployment runs its build's entry point, never a command of its own.
            if source_build.status == BuildStatus.FAILED or entry_command:
                raise PackageError("a source deployment needs a build that has not failed")
            validate_entry("", entry_args)
            package = source_package(source_build)
        elif package.registry == PackageRegistry.OCI:
            validate_image_package(package.name, package.version, entry_command, entry_args)
        else:
            package_command(
                package.registry, package.name, package.version, entry_command, entry_args
            )
    except PackageError as exc:
        raise DeploymentError(str(exc)) from None
    _check_environment(environment)
    if name is None:
        name = unique_name(owner, default_name(package.name))
    elif Deployment.objects.filter(owner=owner, name=name).exists():
        raise DeploymentError(f"{owner} already has a deployment named {name!r}")
    deployment = Deployment(
        owner=owner,
        name=name,
        analysis=analysis,
        package_registry=package.registry,
        package_name=package.name,
        package_version=package.version,
        source_build=source_build,
        entry_command=entry_command,
        entry_args=entry_args,
        runtime=runtime,
        runtime_settings=runtime_settings or {},
        process_model=process_model,
    )
    try:
        deployment.full_clean(validate_constraints=False)
    except ValidationError as exc:
        problems = "; ".join(
            f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items()
        )
        raise DeploymentError(problems) from None
    try:
        with transaction.atomic():
            _lock_owner(owner)
            _check_deployment_quota(owner)
            _check_running_quota(owner)
            deployment.save()
            for key, value in environment.items():
                credential = Credential(
                    deployment=deployment,
                    name=key,
                    is_secret=secret_names is None or key in secret_names,
                )
                credential.set_value(value)
                credential.save()
            DeploymentEvent.objects.create(
                deployment=deployment,
                kind=EventKind.CONFIG,
                message=f"Created to run {deployment.package_spec}.",
                actor=owner,
            )
            _, token = AccessToken.issue(deployment, issued_to)
    except IntegrityError:
        raise DeploymentError(f"{owner} already has a deployment named {name!r}") from None
    _apply_on_commit(deployment)
    return deployment, token


def _check_runtime(kind: str, package: PackageSpec) -> None:
    """Refuse a runtime that is not configured here or cannot run this kind of package."""
    if kind not in available_runtimes():
        raise DeploymentError(
            f"the {kind} runtime is not available here; choose one of: "
            + ", ".join(available_runtimes())
        )
    if package.registry not in get_runtime(kind).registries:
        label = PackageRegistry(package.registry).label
        raise DeploymentError(f"{label} packages cannot run on the {kind} runtime yet")


def _apply_on_commit(deployment: Deployment) -> None:
    transaction.on_commit(lambda: get_runtime(deployment.runtime).apply(deployment))


def start_deployment(deployment: Deployment, actor=None) -> None:
    """Ask for the deployment to run. Raises QuotaExceeded (and changes nothing) at the quota."""
    with transaction.atomic():
        _lock_owner(deployment.owner)
        _check_running_quota(deployment.owner, exclude=deployment)
        deployment.set_desired_state(DesiredState.RUNNING, actor=actor)
    _apply_on_commit(deployment)


def stop_deployment(deployment: Deployment, actor=None) -> None:
    deployment.set_desired_state(DesiredState.STOPPED, actor=actor)
    _apply_on_commit(deployment)


def restart_deployment(deployment: Deployment, actor=None) -> None:
    """Replace the deployment's server with a fresh process, which reads the current
    credentials. A sleeping deployment stays asleep (it starts afresh when it wakes); a failed
    one starts again. Raises DeploymentError when it is stopped: starting it is what it needs.
    """
    if not deployment.request_restart(actor=actor):
        raise DeploymentError(f"{deployment.name} is stopped; start it instead")
    _apply_on_commit(deployment)


def _lock_deployment(deployment: Deployment) -> None:
    """Serialise changes to one deployment; DeploymentError once it is deleted."""
    if not Deployment.objects.select_for_update().filter(pk=deployment.pk).exists():
        raise DeploymentError(f"{deployment.name} no longer exists")


def _credential_changed(deployment: Deployment, change: str, restart: str, actor) -> None:
    """One event in the history: the change, and the restart it causes when the deployment
    is wanted running (so the server sees it), or when the server will see it."""
    if deployment.request_restart(f"{change}; {restart}", actor=actor):
        _apply_on_commit(deployment)
    else:
        DeploymentEvent.objects.create(
            deployment=deployment,
            kind=EventKind.CONFIG,
            message=f"{change}; the server gets it when it next starts.",
            actor=actor,
        )


def set_credential(deployment: Deployment, name: str, value: str, actor=None) -> None:
    """Create or replace one credential (stored encrypted, never shown again) and restart a
    deployment that is wanted running so its server uses it. Raises DeploymentError (and writes
    nothing) for a name or value no server could receive."""
    _check_environment({name: value})
    with transaction.atomic(), audit.acting_as(actor):
        _lock_deployment(deployment)
        credential = Credential.objects.filter(deployment=deployment, name=name).first()
        replaced = credential is not None
        if credential is None:
            credential = Credential(deployment=deployment, name=name)
        credential.set_value(value)
        credential.save()
        _credential_changed(
            deployment,
            f"{name} {'replaced' if replaced else 'set'}",
            "restarting so the server uses it.",
            actor,
        )


def remove_credential(deployment: Deployment, name: str, actor=None) -> None:
    """Delete one credential and restart a deployment that is wanted running, so its server
    no longer has it. Raises DeploymentError when there is no such credential."""
    with transaction.atomic(), audit.acting_as(actor):
        _lock_deployment(deployment)
        deleted, _ = Credential.objects.filter(deployment=deployment, name=name).delete()
        if not deleted:
            raise DeploymentError(f"{deployment.name} has no credential named {name!r}")
        _credential_changed(
            deployment, f"{name} removed", "restarting so the server goes without it.", actor
        )


def delete_deployment(deployment: Deployment, actor=None) -> None:
    """Delete the deployment with its credentials, tokens, call log and history.

    The supervisor stops the bridge of a deployment whose row is gone and removes its files
    (as when an account is deleted); the audit log keeps the deletion, with `actor`. Raises
    DeploymentError when it is already gone.
    """
    with transaction.atomic(), audit.acting_as(actor):
        # A second request to delete it finds it gone instead of recording another deletion.
        _lock_deployment(deployment)
        deployment_id = deployment.pk
        deployment.delete()
    runtime = get_runtime(deployment.runtime)
    transaction.on_commit(lambda: runtime.tear_down(deployment_id))


def wait_until_ready(deployment: Deployment, timeout: float, poll: float = 0.25) -> list[str]:
    """Wait until the deployment runs and a `tools/list` through its endpoint answers.

    Returns the tool names. Raises DeploymentNotReady when it fails or time runs out.
    """
    runtime = get_runtime(deployment.runtime)
    deadline = time.monotonic() + timeout
    probe_error = ""
    while True:
        deployment.refresh_from_db(fields=["status", "status_detail"])
        if deployment.status == Status.FAILED:
            raise DeploymentNotReady(_not_ready(deployment, "it failed", probe_error))
        remaining = deadline - time.monotonic()
        if deployment.status == Status.RUNNING:
            try:
                return list_tools(runtime.endpoint(deployment), timeout=max(remaining, 1.0))
            except ProbeError as exc:
                probe_error = str(exc)
        if remaining <= 0:
            raise DeploymentNotReady(
                _not_ready(deployment, f"it was not ready within {timeout:g} s", probe_error)
            )
        time.sleep(min(poll, max(remaining, 0.01)))


def _not_ready(deployment: Deployment, what: str, probe_error: str) -> str:
    lines = [
        f"deployment {deployment.name} ({deployment.id}): {what}; "
        f"status {deployment.status}: {deployment.status_detail or '(no detail)'}"
    ]
    if probe_error:
        lines.append(f"last tools/list attempt: {probe_error}")
    logs = get_runtime(deployment.runtime).logs(deployment, LOG_LINES_ON_ERROR)
    lines.append("last stderr lines:" if logs else "the server wrote nothing to stderr")
    lines.extend(f"  {line}" for line in logs)
    return "\n".join(lines)


def create_token(
    deployment: Deployment, label: str, actor=None, expires_at: datetime | None = None
) -> tuple[AccessToken, str]:
    """Issue an access token; returns it and its plaintext, shown once and never stored.

    Raises DeploymentError for a label that is blank or over 100 characters once stripped, or an
    expiry that has passed.
    """
    label = label.strip()
    longest = AccessToken._meta.get_field("label").max_length
    if not label or len(label) > longest:
        raise DeploymentError(f"a token's label must be 1 to {longest} characters")
    if expires_at is not None and expires_at <= timezone.now():
        raise DeploymentError("a token's expiry must be in the future")
    with audit.acting_as(actor):
        return AccessToken.issue(deployment, label, expires_at=expires_at)


def issue_token(
    deployment: Deployment, label: str, expires_in_days: int | None = None
) -> tuple[AccessToken, str]:
    expires_at = (
        timezone.now() + timedelta(days=expires_in_days) if expires_in_days is not None else None
    )
    return create_token(deployment, label, expires_at=expires_at)


def revoke_token(deployment: Deployment, token_id: int | str, actor=None) -> AccessToken:
    """Revoke one of this deployment's tokens (again: no change). Raises TokenNotFound for a
    token of another deployment, as for one that does not exist."""
    try:
        token = deployment.access_tokens.get(pk=token_id)
    except (AccessToken.DoesNotExist, ValueError, TypeError):
        raise TokenNotFound(f"{deployment.name} has no token {token_id}") from None
    token.revoke(actor=actor)
    return token


def find_token(reference: str) -> AccessToken:
    """A token by id, by its visible prefix, or by the whole token. Raises TokenNotFound."""
    if reference.isdigit():
        matches = list(AccessToken.objects.filter(pk=int(reference)))
    elif reference.startswith(TOKEN_PREFIX) and len(reference) > TOKEN_VISIBLE_CHARS:
        matches = list(AccessToken.objects.filter(token_hash=hash_token(reference)))
    elif reference.startswith(TOKEN_PREFIX):
        matches = list(AccessToken.objects.filter(prefix=reference)[:2])
    else:
        raise TokenNotFound(f"{reference!r} is neither a token id nor a prefix ({TOKEN_PREFIX}…)")
    if not matches:
        raise TokenNotFound(f"no token matches {reference!r}")
    if len(matches) > 1:
        raise TokenNotFound(f"{reference!r} matches several tokens; use the token id")
    return matches[0]
