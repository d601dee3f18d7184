"""The Fly.io runtime: each deployment is a Fly app with one machine running the runner image.

The runner (`mcpgateway/runner.py`, the Dockerfile's `runner` target) runs the deployment's
package as the bridge's child, sandboxed as on this host. Per deployment Catwalk creates:

* an app (`FLY_APP_PREFIX-<deployment id>`, another name if that one is taken elsewhere on
  Fly) on a network of its own, so no deployment reaches another's machines or the platform's;
* its secrets, through the app secrets endpoint, never in a machine's config: the bridge's relay
  secret (`CATWALK_BRIDGE_SECRET`) and each credential as `CATWALK_ENV_<NAME>`, which the runner
  hands the server under its own name (and nothing else of the machine's environment);
* a Flycast address on the platform's network: the gateway relays to `FLY_RELAY_URL`
  (`http://<app>.flycast`), through Fly's proxy, which starts a stopped machine;
* one machine: the runner image, the guest size of the settings, restart on failure, a service
  on the bridge's port with autostop/autostart (idle deployments cost nothing and wake on the
  next request) and an HTTP check on the bridge's `/healthz`. It is tagged with the deployment's
  id in its metadata: after an ambiguous create Catwalk lists and adopts rather than creating a
  second one.

`sync()` is the reconciler, run by the Celery task `fly_sync` (deployments/tasks.py) whenever
the deployment changes, on a schedule for every Fly deployment (drift: machine or app gone,
autostop), and again shortly while a start is under way. Each run is short, holds a lease on the
deployment's `FlyApp` row so runs never overlap, and is idempotent.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import httpx
from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from analysis.models import Repository
from analysis.recipe import Recipe
from deployments import builds
from deployments.crypto import DecryptionError
from deployments.models import (
    TRANSITIONS,
    Deployment,
    DeploymentEvent,
    DesiredState,
    EventKind,
    FlyApp,
    PackageRegistry,
    Status,
    TransitionError,
)
from deployments.runtimes.base import (
    Endpoint,
    PackageError,
    ProbeError,
    Runtime,
    bridge_secret,
    crash_reason,
    deployment_command,
    list_tools,
    register,
    validate_image_package,
)
from deployments.runtimes.fly_api import FlyClient, FlyError, iter_events
from deployments.runtimes.local import APP_MOUNT, SECRET_HEADER, session_settings, source_entry

logger = logging.getLogger(__name__)

RUNNER_PORT = 8080
CREDENTIAL_PREFIX = "CATWALK_ENV_"
SECRET_NAME = "CATWALK_BRIDGE_SECRET"  # noqa: S105 - a variable's name
METADATA_KEY = "catwalk_deployment"
# A reconciler run holds its lease this long at most; one that dies frees it by expiry.
LEASE_SECONDS = 120
# While a machine starts, the reconciler looks again this soon.
STARTING_RECHECK_SECONDS = 2.0
PROBE_TIMEOUT_SECONDS = 10.0
LOG_TIMEOUT_SECONDS = 5.0
# Every open deployment page polls its logs: one read of Fly's logs API per app serves them all
# for this long.
LOG_CACHE_SECONDS = 3
# Machine states, as Fly names them.
UP_STATES = frozenset({"started"})
COMING_UP_STATES = frozenset({"created", "starting", "replacing", "updating"})
DOWN_STATES = frozenset({"stopped", "stopping", "suspended", "suspending"})
FAILED_STATES = frozenset({"failed", "launch_failed"})
GONE_STATES = frozenset({"destroyed", "destroying"})
# A source build or a pulled OCI image lives on a volume of the deployment's own, mounted here.
VOLUME_NAME = "catwalk_builds"
VOLUME_PATH = "/data"
GONE_VOLUME_STATES = frozenset({"destroyed", "destroying", "pending_destroy"})


def app_name_for(deployment_id: uuid.UUID, suffix: str = "") -> str:
    """A Fly app name for the deployment: lowercase, at most 63 characters, unique to it."""
    base = f"{settings.FLY_APP_PREFIX}-{deployment_id.hex}"
    return f"{base}-{suffix}" if suffix else base


def relay_url(app_name: str) -> str:
    return settings.FLY_RELAY_URL.format(app=app_name)


def _digest(value: object) -> str:
    """A keyed digest, so what is stored reveals nothing of secret values."""
    data = json.dumps(value, sort_keys=True).encode()
    return hmac.new(settings.SECRET_KEY.encode(), data, hashlib.sha256).hexdigest()


def app_secrets(deployment: Deployment) -> dict[str, str]:
    values = {SECRET_NAME: bridge_secret(deployment.id)}
    for name, value in deployment.credential_environment().items():
        values[f"{CREDENTIAL_PREFIX}{name}"] = value
    return values


def source_spec(deployment: Deployment) -> tuple[dict, list[str]]:
    """A source deployment's `CATWALK_SOURCE` (what the runner fetches and builds, once, into
    its volume) and its server's entry command in the build. Raises PackageError."""
    build = deployment.source_build
    if build is None:
        raise PackageError("the deployment has no source build")
    try:
        recipe = Recipe.from_meta(build.recipe)
    except ValueError as exc:
        raise PackageError(f"the build recipe cannot be used: {exc}") from None
    owner, _, name = build.repository.partition("/")
    if Repository.objects.filter(owner__iexact=owner, name__iexact=name, private=True).exists():
        # The machine would need the owner's GitHub token, which Catwalk keeps to itself.
        raise PackageError("private repositories cannot be built on Fly yet")
    steps = [
        {"what": what, "argv": argv, "folder": folder}
        for what, argv, folder in builds.steps(recipe, uv="uv")
    ]
    http = None
    if recipe.transport == "streamable-http":
        http = {"port_argument": recipe.port_argument, "path": recipe.http_path}
    spec = {
        "archive": f"{settings.GITHUB_API_URL}/repos/{build.repository}/tarball/{build.commit_sha}",
        "steps": steps,
        "folder": recipe.folder,
        "http": http,
        "timeout_seconds": settings.BUILD_TIMEOUT_SECONDS,
        "max_mb": settings.BUILD_MAX_MB,
        # What the repository's archive may hold: as for an analysis's download.
        "archive_limits": {
            "max_tarball_bytes": settings.ANALYSIS_MAX_TARBALL_BYTES,
            "max_files": settings.ANALYSIS_MAX_FILES,
            "max_file_bytes": settings.ANALYSIS_MAX_FILE_BYTES,
            "max_total_bytes": settings.ANALYSIS_MAX_TOTAL_BYTES,
        },
    }
    return spec, [*source_entry(recipe, APP_MOUNT), *(deployment.entry_args or [])]


def image_spec(deployment: Deployment) -> dict:
    """An OCI deployment's `CATWALK_IMAGE`: the image its runner pulls, once, into its volume
    (`mcpgateway/oci.py`), and where to reach its registry. Raises PackageError."""
    return image_spec_for(
        deployment.package_name,
        deployment.package_version,
        deployment.entry_command,
        deployment.entry_args or [],
    )


def image_spec_for(name: str, version: str, entry: str = "", arguments=()) -> dict:
    """`CATWALK_IMAGE` for the image `name` at `version`, its entry and arguments checked as
    for any OCI package. Raises PackageError."""
    image = validate_image_package(name, version, entry, arguments)
    registries = {
        host: url for host, url in settings.OCI_REGISTRY_URLS.items() if host == image.registry
    }
    return {
        "reference": str(image),
        "registries": registries,
        "max_bytes": settings.OCI_MAX_IMAGE_MB << 20,
    }


def uses_volume(deployment: Deployment) -> bool:
    """A source build or a pulled image is kept on a volume of the deployment's own."""
    return deployment.package_registry in (PackageRegistry.SOURCE, PackageRegistry.OCI)


def machine_config(deployment: Deployment) -> dict:
    """The machine's config: no secret in it (they come from the app's secrets at boot). A
    source deployment's volume is mounted by the reconciler, which knows the volume's id."""
    cap, idle = session_settings(deployment)
    env = {"CATWALK_DEPLOYMENT": str(deployment.id)}
    if deployment.package_registry == PackageRegistry.SOURCE:
        spec, command = source_spec(deployment)
        env["CATWALK_SOURCE"] = json.dumps(spec, sort_keys=True)
        env["CATWALK_RUNNER_BUILDS"] = f"{VOLUME_PATH}/builds"
    elif deployment.package_registry == PackageRegistry.OCI:
        env["CATWALK_IMAGE"] = json.dumps(image_spec(deployment), sort_keys=True)
        env["CATWALK_RUNNER_IMAGES"] = f"{VOLUME_PATH}/images"
        # The image's own command, unless the deployment gives arguments in its place.
        command = list(deployment.entry_args or [])
    else:
        command = deployment_command(deployment)
    return {
        "image": settings.FLY_RUNNER_IMAGE,
        "env": {
            **env,
            "CATWALK_SERVER_COMMAND": json.dumps(command),
            "CATWALK_BRIDGE_MODE": deployment.process_model,
            "CATWALK_MAX_SESSIONS": str(cap),
            "CATWALK_SESSION_IDLE_TIMEOUT": f"{idle:g}",
        },
        "guest": {
            "cpu_kind": settings.FLY_GUEST_CPU_KIND,
            "cpus": settings.FLY_GUEST_CPUS,
            "memory_mb": settings.FLY_GUEST_MEMORY_MB,
        },
        "restart": {"policy": "on-failure", "max_retries": 3},
        "metadata": {METADATA_KEY: str(deployment.id)},
        "stop_config": {"signal": "SIGTERM", "timeout": "10s"},
        "services": [
            {
                "protocol": "tcp",
                "internal_port": RUNNER_PORT,
                "autostart": True,
                "autostop": settings.FLY_AUTOSTOP,
                "min_machines_running": 0,
                "ports": [{"port": 80, "handlers": ["http"]}],
                "concurrency": {"type": "requests", "soft_limit": 200, "hard_limit": 250},
            }
        ],
        "checks": {
            "bridge": {
                "type": "http",
                "port": RUNNER_PORT,
                "path": "/healthz",
                "method": "GET",
                "interval": "15s",
                "timeout": "5s",
                "grace_period": "30s",
            }
        },
    }


# --- the runtime ------------------------------------------------------------------------------


@register
class FlyRuntime(Runtime):
    kind = "fly"
    registries = frozenset(
        {PackageRegistry.NPM, PackageRegistry.PYPI, PackageRegistry.SOURCE, PackageRegistry.OCI}
    )
    # Fly's proxy starts a stopped machine for a request relayed through it.
    proxy_wakes = True
    # A source deployment is built by its runner at first boot, into its own volume.
    builds_in_place = True

    @classmethod
    def is_configured(cls) -> bool:
        return bool(settings.FLY_API_TOKEN and settings.FLY_ORG and settings.FLY_RUNNER_IMAGE)

    def apply(self, deployment: Deployment) -> None:
        from deployments.tasks import fly_sync

        fly_sync.delay_on_commit(str(deployment.id))

    def tear_down(self, deployment_id: uuid.UUID) -> None:
        from deployments.tasks import fly_sync

        fly_sync.delay_on_commit(str(deployment_id))

    def wake(self, deployment: Deployment) -> None:
        """Fly's proxy wakes the machine; only ask for its status to be brought up to date
        (once per few seconds, however many requests arrive)."""
        if cache.add(f"fly:wake:{deployment.id}", 1, timeout=5):
            from deployments.tasks import fly_sync

            fly_sync.apply_async((str(deployment.id),), countdown=STARTING_RECHECK_SECONDS)

    def endpoint(self, deployment: Deployment) -> Endpoint:
        name = (
            FlyApp.objects.filter(deployment_id=deployment.pk)
            .values_list("name", flat=True)
            .first()
        ) or app_name_for(deployment.id)
        return Endpoint(
            base_url=relay_url(name), headers={SECRET_HEADER: bridge_secret(deployment.id)}
        )

    def problem(self, deployment: Deployment) -> str:
        error = (
            FlyApp.objects.filter(deployment_id=deployment.pk)
            .values_list("last_error", flat=True)
            .first()
        )
        if not error:
            return ""
        return f"Fly's API refused the last attempt to apply changes; trying again shortly. {error}"

    def logs(self, deployment: Deployment, lines: int = 200) -> list[str]:
        name = FlyApp.objects.filter(deployment_id=deployment.pk).values_list("name", flat=True)
        if not name:
            return []
        key = f"fly:logs:{name[0]}"
        messages = cache.get(key)
        if messages is None:
            try:
                with FlyClient(retries=0, timeout=LOG_TIMEOUT_SECONDS) as client:
                    found, _ = client.logs(name[0])
            except FlyError as exc:
                return [f"(Fly's logs could not be read: {exc.message or exc.code})"]
            messages = [line.message for line in found]
            cache.set(key, messages, LOG_CACHE_SECONDS)
        return messages[-lines:] if lines > 0 else []


# --- the reconciler ---------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a reconciler run asks for next: another run after `again` seconds, or none."""

    again: float | None = None


class _Lease:
    """The right to reconcile one FlyApp row, held until released or expired."""

    def __init__(self, app: FlyApp) -> None:
        self.app = app
        self.held = False

    def __enter__(self) -> bool:
        now = timezone.now()
        free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
        claimed = FlyApp.objects.filter(free, pk=self.app.pk).update(
            lease_until=now + timedelta(seconds=LEASE_SECONDS)
        )
        self.held = bool(claimed)
        return self.held

    def __exit__(self, *_: object) -> None:
        if self.held:
            FlyApp.objects.filter(pk=self.app.pk).update(lease_until=None)


def sync(deployment_id: str) -> Outcome:
    """Make Fly match the deployment (or tear its resources down once it is deleted)."""
    key = uuid.UUID(str(deployment_id))
    deployment = Deployment.objects.filter(pk=key).first()
    if deployment is None or deployment.runtime != FlyRuntime.kind:
        app = FlyApp.objects.filter(deployment_key=key, deployment__isnull=True).first()
        if app is None:
            return Outcome()
        return _locked(app, lambda client: _tear_down(client, app))
    app = _app_row(deployment)
    return _locked(app, lambda client: _reconcile(client, deployment, app))


def _locked(app: FlyApp, work) -> Outcome:
    with _Lease(app) as held:
        if not held:
            return Outcome(again=STARTING_RECHECK_SECONDS)
        app.refresh_from_db()
        with FlyClient() as client:
            try:
                outcome = work(client)
            except FlyError as exc:
                # Fly kept failing after the client's retries: the scheduled reconcile
                # (every FLY_RECONCILE_SECONDS) tries again; no chain of retries piles up.
                logger.warning("fly reconcile of %s: %s", app.name, exc)
                FlyApp.objects.filter(pk=app.pk).update(last_error=str(exc)[:2000])
                return Outcome()
        if app.pk is not None and app.last_error:
            FlyApp.objects.filter(pk=app.pk).update(last_error="")
        return outcome


def _app_row(deployment: Deployment) -> FlyApp:
    app = FlyApp.objects.filter(deployment=deployment).first()
    if app is not None:
        return app
    try:
        with transaction.atomic():
            return FlyApp.objects.create(
                deployment=deployment,
                deployment_key=deployment.id,
                name=app_name_for(deployment.id),
            )
    except IntegrityError:
        return FlyApp.objects.get(deployment_key=deployment.id)


def _save(app: FlyApp, **changes) -> None:
    for field, value in changes.items():
        setattr(app, field, value)
    FlyApp.objects.filter(pk=app.pk).update(**changes, updated_at=timezone.now())


def _move(deployment: Deployment, status: str, detail: str = "") -> None:
    """Move to `status` by the shortest way the lifecycle allows (each step is recorded)."""
    deployment.refresh_from_db(fields=["status"])
    path = _path(deployment.status, status)
    for step in path[:-1]:
        deployment.move_to(step)
    deployment.move_to(status, detail)


def _path(start: str, goal: str) -> list[str]:
    routes: dict[str, list[str]] = {start: []}
    queue = [start]
    while queue:
        current = queue.pop(0)
        if current == goal:
            return routes[current] or [goal]
        for following in sorted(TRANSITIONS[current]):
            if following not in routes:
                routes[following] = [*routes[current], following]
                queue.append(following)
    raise TransitionError(f"no way from {start} to {goal}")


def _event(deployment: Deployment, kind: str, message: str) -> None:
    DeploymentEvent.objects.create(deployment=deployment, kind=kind, message=message)


def _reconcile(client: FlyClient, deployment: Deployment, app: FlyApp) -> Outcome:
    if deployment.desired_state == DesiredState.STOPPED:
        return _bring_down(client, deployment, app)
    if deployment.status == Status.FAILED and not _restart_pending(deployment, app):
        return Outcome()  # stays failed until its owner starts or restarts it
    try:
        config = machine_config(deployment)
        secret_values = app_secrets(deployment)
    except PackageError as exc:
        _fail(deployment, app, f"Cannot run on Fly: {exc}")
        return Outcome()
    except DecryptionError:
        _fail(deployment, app, "A credential cannot be decrypted; set it again.")
        return Outcome()
    if not _ensure_app(client, deployment, app):
        return Outcome(again=STARTING_RECHECK_SECONDS)
    _ensure_ip(client, app)
    if uses_volume(deployment):
        _ensure_volume(client, deployment, app)
        config["mounts"] = [{"volume": app.volume_id, "path": VOLUME_PATH}]
    _ensure_secrets(client, app, secret_values)
    machine = _ensure_machine(client, deployment, app, config)
    return _follow(client, deployment, app, machine)


def _restart_pending(deployment: Deployment, app: FlyApp) -> bool:
    requested = deployment.restart_requested_at
    return requested is not None and requested != app.restart_served_at


def _ensure_app(client: FlyClient, deployment: Deployment, app: FlyApp) -> bool:
    """The app exists (created, adopted, or created again after it vanished)."""
    if app.app_created:
        if client.get_app(app.name) is not None:
            return True
        message = (
            f"The Fly app {app.name} no longer exists (it was deleted outside Catwalk); "
            "creating it again."
        )
        _event(deployment, EventKind.ERROR, message)
        _restart_status(deployment, message)
        _save(
            app,
            app_created=False,
            ip_allocated=False,
            machine_id="",
            config_digest="",
            secrets_digest="",
            secret_names=[],
            secrets_version=None,
            volume_id="",
            volume_region="",
        )
    try:
        client.create_app(app.name, settings.FLY_ORG, network=app.name)
    except FlyError as exc:
        if exc.status != 422 or exc.code != "name_taken":
            raise
        found = client.get_app(app.name)
        org = ((found or {}).get("organization") or {}).get("slug")
        if found is None or (org and org != settings.FLY_ORG):
            # Taken by someone else on Fly: take another name and create that next time.
            _save(app, name=app_name_for(deployment.id, secrets.token_hex(3)))
            return False
        # Ours: an earlier create whose answer was lost.
    _save(app, app_created=True)
    if deployment.status in (Status.PENDING, Status.STOPPED, Status.CRASHED, Status.FAILED):
        _move(deployment, Status.STARTING, f"Creating its Fly machine (app {app.name}).")
    return True


def _restart_status(deployment: Deployment, detail: str) -> None:
    if deployment.status != Status.STARTING:
        _move(deployment, Status.STARTING, detail)


def _ensure_ip(client: FlyClient, app: FlyApp) -> None:
    if app.ip_allocated:
        return
    if not any(ip.get("type") == "private_v6" for ip in client.list_ips(app.name)):
        client.allocate_private_ip(app.name, settings.FLY_PLATFORM_NETWORK)
    _save(app, ip_allocated=True)


def _ensure_volume(client: FlyClient, deployment: Deployment, app: FlyApp) -> None:
    """The source deployment's volume (its build survives stops there): created once, adopted
    after a create whose answer was lost, created again if it vanished."""
    found = _our_volumes(client, app)
    if app.volume_id and any(v.get("id") == app.volume_id for v in found):
        return
    if app.volume_id:
        # A machine stays with its volume's host: a new volume needs a new machine.
        message = "Its Fly volume is gone; a new machine builds it again on a new one."
        _event(deployment, EventKind.ERROR, message)
        _restart_status(deployment, message)
        if app.machine_id:
            client.delete_machine(app.name, app.machine_id)
        _save(app, volume_id="", volume_region="", machine_id="", config_digest="")
    if found:
        volume = found[0]
    else:
        try:
            volume = client.create_volume(
                app.name, VOLUME_NAME, settings.FLY_REGION, settings.FLY_VOLUME_GB
            )
        except FlyError as exc:
            if not exc.ambiguous:
                raise
            found = _our_volumes(client, app)
            if not found:
                raise
            volume = found[0]
    _save(app, volume_id=volume["id"], volume_region=str(volume.get("region") or ""))


def _our_volumes(client: FlyClient, app: FlyApp) -> list[dict]:
    return [
        volume
        for volume in client.list_volumes(app.name)
        if volume.get("name") == VOLUME_NAME and volume.get("state") not in GONE_VOLUME_STATES
    ]


def _ensure_secrets(client: FlyClient, app: FlyApp, values: dict[str, str]) -> None:
    digest = _digest(values)
    if digest == app.secrets_digest:
        return
    changes: dict[str, str | None] = dict(values)
    for name in app.secret_names:
        if name not in values:
            changes[name] = None  # a removed credential
    version = client.set_secrets(app.name, changes)
    _save(app, secrets_digest=digest, secret_names=sorted(values), secrets_version=version)


def _ensure_machine(client: FlyClient, deployment: Deployment, app: FlyApp, config: dict) -> dict:
    """The deployment's machine, created, adopted or reconfigured as needed."""
    digest = _digest({"config": config, "secrets": app.secrets_digest})
    machine = client.get_machine(app.name, app.machine_id) if app.machine_id else None
    if app.machine_id and (machine is None or machine.get("state") in GONE_STATES):
        message = f"Its Fly machine {app.machine_id} is gone; creating another."
        _event(deployment, EventKind.ERROR, message)
        _restart_status(deployment, message)
        _save(app, machine_id="", config_digest="")
        machine = None
    if machine is None:
        machine = _adopt(client, deployment, app)
    if machine is None:
        machine = _create(client, deployment, app, config)
        _save(
            app,
            machine_id=machine["id"],
            config_digest=digest,
            restart_served_at=deployment.restart_requested_at,
            start_deadline=_deadline(),
        )
        return machine
    if digest != app.config_digest or _restart_pending(deployment, app):
        # An update replaces the machine's config (and secrets) and restarts it; a sleeping
        # deployment stays asleep and boots with them when a request wakes it.
        asleep = deployment.status == Status.SLEEPING and machine.get("state") in DOWN_STATES
        body = _create_body(app, config)
        if asleep:
            body["skip_launch"] = True
        machine = client.update_machine(app.name, machine["id"], body)
        if not asleep:
            _restart_status(deployment, "Restarting its Fly machine with the new configuration.")
        _save(
            app,
            config_digest=digest,
            restart_served_at=deployment.restart_requested_at,
            start_deadline=None if asleep else _deadline(),
        )
    return machine


def _deadline():
    return timezone.now() + timedelta(seconds=settings.FLY_START_TIMEOUT_SECONDS)


def _create_body(app: FlyApp, config: dict) -> dict:
    body = {"name": f"{app.name}-1"[:63], "config": config}
    # A machine with a volume runs where its volume is.
    region = app.volume_region if config.get("mounts") else settings.FLY_REGION
    if region:
        body["region"] = region
    if app.secrets_version is not None:
        body["min_secrets_version"] = app.secrets_version
    return body


def _adopt(client: FlyClient, deployment: Deployment, app: FlyApp) -> dict | None:
    """A machine tagged with this deployment that an earlier create left; extras destroyed."""
    found = [
        m
        for m in client.list_machines(app.name, {METADATA_KEY: str(deployment.id)})
        if m.get("state") not in GONE_STATES
    ]
    if not found:
        return None
    found.sort(key=lambda m: str(m.get("created_at", "")))
    keep, *extra = found
    for machine in extra:
        client.delete_machine(app.name, machine["id"])
    _save(app, machine_id=keep["id"], start_deadline=app.start_deadline or _deadline())
    return keep


def _create(client: FlyClient, deployment: Deployment, app: FlyApp, config: dict) -> dict:
    body = _create_body(app, config)
    try:
        return client.create_machine(app.name, body)
    except FlyError as exc:
        if not exc.ambiguous:
            raise
        # The machine may exist although the answer was lost: adopt it rather than create a
        # second one; if it does not, the next run creates it.
        adopted = _adopt(client, deployment, app)
        if adopted is None:
            raise
        return adopted


def _follow(client: FlyClient, deployment: Deployment, app: FlyApp, machine: dict) -> Outcome:
    """Bring the deployment's status in line with the machine's state."""
    state = machine.get("state", "")
    if state in FAILED_STATES:
        _fail(deployment, app, f"Its Fly machine failed: {_reason(client, app, machine)}")
        return Outcome()
    if state in DOWN_STATES:
        crashed = _crash(machine)
        if crashed:
            _move(deployment, Status.CRASHED, crashed)
            return Outcome()
        if deployment.status == Status.RUNNING:
            _move(deployment, Status.SLEEPING, "Stopped by Fly after a while without requests.")
            return Outcome()
        if deployment.status == Status.SLEEPING:
            return Outcome()
        client.start_machine(app.name, machine["id"])
        return Outcome(again=STARTING_RECHECK_SECONDS)
    if state in UP_STATES:
        if deployment.status == Status.SLEEPING:
            _move(deployment, Status.STARTING, "Woken by a request.")
        if deployment.status == Status.RUNNING and _checks_pass(machine):
            # Nothing is sent through the proxy here: a request would keep an idle machine
            # from being stopped.
            return Outcome()
        health = _bridge_health(deployment)
        building = health is not None and health.get("phase") == "build"
        if building and health.get("status") == "crashed":
            # Building again would fail the same way: the machine need not run meanwhile.
            client.stop_machine(app.name, machine["id"])
            _fail(deployment, app, str(health.get("last_error") or "The build failed."))
            return Outcome()
        if health is not None and health.get("status") == "crashed":
            _fail(deployment, app, crash_reason(health))
            return Outcome()
        if building:
            # The runner limits each step's time itself; the start deadline counts from the
            # build's end.
            _save(app, start_deadline=_deadline())
            if deployment.status != Status.STARTING:
                _move(deployment, Status.STARTING, "Its Fly machine is building it from source.")
            return Outcome(again=STARTING_RECHECK_SECONDS)
        if deployment.status == Status.RUNNING:
            return Outcome()
        if health is None or health.get("status") in ("starting", "restarting"):
            why = "the bridge does not answer" if health is None else "the server is starting"
            return _still_starting(client, deployment, app, machine, why)
        try:
            tools = list_tools(FlyRuntime().endpoint(deployment), timeout=PROBE_TIMEOUT_SECONDS)
        except ProbeError as exc:
            return _still_starting(client, deployment, app, machine, str(exc))
        _save(app, start_deadline=None)
        _move(deployment, Status.RUNNING, f"Running on Fly ({len(tools)} tools).")
        return Outcome()
    return _still_starting(client, deployment, app, machine, f"machine {state or 'unknown'}")


def _checks_pass(machine: dict) -> bool:
    """Fly's checks of the machine (the bridge's /healthz) are not failing."""
    checks = machine.get("checks") or []
    return not any(
        isinstance(check, dict) and check.get("status") == "critical" for check in checks
    )


def _bridge_health(deployment: Deployment) -> dict | None:
    """The bridge's own account of its server (`/healthz`), through Fly's proxy."""
    try:
        with FlyRuntime().endpoint(deployment).client(PROBE_TIMEOUT_SECONDS) as http:
            response = http.get("/healthz")
        health = response.json() if response.status_code in (200, 503) else None
    except (httpx.HTTPError, ValueError):
        return None
    return health if isinstance(health, dict) else None


def _still_starting(
    client: FlyClient, deployment: Deployment, app: FlyApp, machine: dict, why: str
) -> Outcome:
    if app.start_deadline is None:
        _save(app, start_deadline=_deadline())
    elif timezone.now() >= app.start_deadline:
        reason = _reason(client, app, machine)
        _fail(
            deployment,
            app,
            f"Its Fly machine did not become ready within {settings.FLY_START_TIMEOUT_SECONDS} s "
            f"(state {machine.get('state', 'unknown')}; {reason}; last check: {why}).",
        )
        return Outcome()
    if deployment.status != Status.STARTING:
        _move(deployment, Status.STARTING, "Its Fly machine is starting.")
    return Outcome(again=STARTING_RECHECK_SECONDS)


def _fail(deployment: Deployment, app: FlyApp, detail: str) -> None:
    _save(app, start_deadline=None)
    _move(deployment, Status.FAILED, detail)


def _crash(machine: dict) -> str:
    """Why a stopped machine counts as crashed (its server kept exiting), or ""."""
    for event in iter_events(machine):
        if event.get("type") != "exit":
            continue
        exit_event = ((event.get("request") or {}).get("exit_event")) or {}
        if exit_event.get("requested_stop"):
            return ""
        code = exit_event.get("exit_code")
        if exit_event.get("oom_killed"):
            return "Its Fly machine ran out of memory and stopped."
        if isinstance(code, int) and code != 0:
            return f"Its Fly machine kept exiting (status {code}) and Fly stopped restarting it."
        return ""
    return ""


def _reason(client: FlyClient, app: FlyApp, machine: dict) -> str:
    """Fly's own account of a machine: its latest lifecycle events."""
    events = list(iter_events(machine))
    if not events and machine.get("id"):
        try:
            events = client.machine_events(app.name, machine["id"])
        except FlyError:
            events = []
    described = []
    for event in events[:3]:
        words = [str(event.get("type", "")), str(event.get("status", ""))]
        exit_event = ((event.get("request") or {}).get("exit_event")) or {}
        if "exit_code" in exit_event:
            words.append(f"exit code {exit_event['exit_code']}")
        request = event.get("request") or {}
        message = request.get("message") or request.get("reason") or event.get("message")
        if message:
            words.append(str(message))
        described.append(" ".join(w for w in words if w))
    return "; ".join(described) or "Fly reported no events"


def _bring_down(client: FlyClient, deployment: Deployment, app: FlyApp) -> Outcome:
    machine = None
    if app.machine_id and app.app_created:
        machine = client.get_machine(app.name, app.machine_id)
    state = (machine or {}).get("state", "")
    if machine is not None and state not in DOWN_STATES | GONE_STATES | FAILED_STATES:
        if deployment.status != Status.STOPPING:
            _move(deployment, Status.STOPPING, "Stopping its Fly machine.")
        if state != "stopping":
            client.stop_machine(app.name, app.machine_id)
        return Outcome(again=STARTING_RECHECK_SECONDS)
    if deployment.status != Status.STOPPED:
        _move(deployment, Status.STOPPED, "Stopped by its owner.")
    _save(app, start_deadline=None)
    return Outcome()


def _tear_down(client: FlyClient, app: FlyApp) -> Outcome:
    """Destroy the machine and the app of a deleted deployment, then forget them. Asked of Fly
    even when no create was confirmed: a create whose answer was lost may have made the app."""
    for machine in client.list_machines(app.name):
        client.delete_machine(app.name, machine["id"])
    client.delete_app(app.name)
    FlyApp.objects.filter(pk=app.pk).delete()
    app.pk = None
    return Outcome()


# --- short-lived machines for untrusted work of the platform ---------------------------------

JOB_READY_POLL_SECONDS = 0.5
# Lines the runner and the bridge write about themselves, not the server's.
OWN_LOG_PREFIXES = ("catwalk-bridge", "catwalk-runner:")


@dataclass
class JobMachine:
    """A running job machine: where its bridge answers, and its app (for its logs)."""

    app: str
    endpoint: Endpoint
    client: FlyClient

    def server_log(self) -> list[str]:
        """What the server wrote to stderr (the runner's and bridge's own lines left out)."""
        try:
            lines, _ = self.client.logs(self.app)
        except FlyError:
            return []
        return [line.message for line in lines if not line.message.startswith(OWN_LOG_PREFIXES)]


class JobError(Exception):
    """A job machine could not be made ready; the message says why."""


@contextlib.contextmanager
def job_machine(
    command: list[str], environment: dict[str, str], timeout: float, image: dict | None = None
):
    """Run `command` (an MCP server) in a machine of its own until the block ends; with
    `image` (a `CATWALK_IMAGE` spec), that image's entrypoint, `command` its arguments.

    When Catwalk itself runs on Fly (`FLY_JOBS`), an analysis's introspection and a draft's
    preflight run the server here rather than on the worker: a throwaway app on a network of
    its own (`FLY_APP_PREFIX-job-<random>`), `environment` as its secrets, the runner image,
    no restarts, reached through Fly's proxy with a secret made for this job alone. The app,
    and with it the machine, is destroyed when the block ends, however it ends. Yields a
    `JobMachine` whose bridge answers; raises JobError (or FlyError) when none comes up in
    `timeout` seconds.
    """
    deadline = timezone.now() + timedelta(seconds=timeout)
    name = f"{settings.FLY_APP_PREFIX}-job-{secrets.token_hex(8)}"
    relay_secret = secrets.token_urlsafe(32)
    config = {
        "image": settings.FLY_RUNNER_IMAGE,
        "env": {
            "CATWALK_DEPLOYMENT": "job",
            "CATWALK_SERVER_COMMAND": json.dumps(command),
            "CATWALK_BRIDGE_MODE": "shared",
            **({"CATWALK_IMAGE": json.dumps(image, sort_keys=True)} if image else {}),
        },
        "guest": {
            "cpu_kind": settings.FLY_GUEST_CPU_KIND,
            "cpus": settings.FLY_GUEST_CPUS,
            "memory_mb": settings.FLY_GUEST_MEMORY_MB,
        },
        "restart": {"policy": "no"},
        "auto_destroy": True,
        "metadata": {METADATA_KEY: "job"},
        "services": [
            {
                "protocol": "tcp",
                "internal_port": RUNNER_PORT,
                "autostart": True,
                "autostop": "off",
                "ports": [{"port": 80, "handlers": ["http"]}],
            }
        ],
    }
    with FlyClient() as client:
        created = False
        try:
            client.create_app(name, settings.FLY_ORG, network=name)
            created = True
            client.allocate_private_ip(name, settings.FLY_PLATFORM_NETWORK)
            values = {SECRET_NAME: relay_secret}
            values.update({f"{CREDENTIAL_PREFIX}{k}": v for k, v in environment.items()})
            version = client.set_secrets(name, values)
            body = {"name": f"{name}-1", "config": config, "min_secrets_version": version}
            if settings.FLY_REGION:
                body["region"] = settings.FLY_REGION
            client.create_machine(name, body)
            endpoint = Endpoint(base_url=relay_url(name), headers={SECRET_HEADER: relay_secret})
            _wait_for_bridge(endpoint, deadline)
            yield JobMachine(app=name, endpoint=endpoint, client=client)
        finally:
            if created:
                try:
                    client.delete_app(name)
                except FlyError as exc:
                    logger.warning("fly job app %s was not deleted: %s", name, exc)


def _wait_for_bridge(endpoint: Endpoint, deadline) -> None:
    """Until the job's bridge answers /healthz through the proxy (which starts the machine);
    the runner's own answers while it pulls an image do not count, and a failed pull ends the
    wait with its reason."""
    last = "no answer yet"
    with endpoint.client(PROBE_TIMEOUT_SECONDS) as http:
        while timezone.now() < deadline:
            try:
                response = http.get("/healthz")
                try:
                    health = response.json()
                except ValueError:
                    health = {}
                health = health if isinstance(health, dict) else {}
                if health.get("phase") == "build":
                    if health.get("status") == "crashed":
                        raise JobError(str(health.get("last_error") or "the image was not pulled"))
                    last = str(health.get("detail") or "preparing")
                elif response.status_code == 200:
                    return
                else:
                    last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = str(exc) or type(exc).__name__
            time.sleep(JOB_READY_POLL_SECONDS)
    raise JobError(f"the job machine was not ready in time ({last})")
