"""Deployments: what a user wants running, the secrets it needs, who may call it, what happened."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import IntegrityError, models, transaction
from django.utils import timezone
from oauth2_provider.settings import oauth2_settings

from deployments import crypto

ENV_NAME_VALIDATOR = RegexValidator(
    r"^[A-Za-z_][A-Za-z0-9_]*$",
    "Use letters, digits and underscores, not starting with a digit.",
)
CREDENTIAL_VALUE_MAX_BYTES = 32 * 1024
SLUG_VALIDATOR = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$",
    "Use lowercase letters, digits and hyphens (1 to 63 characters, no hyphen at either end).",
)


class Runtime(models.TextChoices):
    LOCAL = "local", "This host"
    FLY = "fly", "Fly.io Machines"


class ProcessModel(models.TextChoices):
    SHARED = "shared", "Shared: one server process for all sessions"
    ISOLATED = "isolated", "Isolated: one server process per session"


class PackageRegistry(models.TextChoices):
    NPM = "npm", "npm"
    PYPI = "pypi", "PyPI"
    OCI = "oci", "OCI image"
    SOURCE = "source", "Built from source"


class DesiredState(models.TextChoices):
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"


class Status(models.TextChoices):
    PENDING = "pending", "Pending"
    STARTING = "starting", "Starting"
    RUNNING = "running", "Running"
    SLEEPING = "sleeping", "Sleeping"
    STOPPING = "stopping", "Stopping"
    STOPPED = "stopped", "Stopped"
    CRASHED = "crashed", "Crashed"
    FAILED = "failed", "Failed"


# Which status may follow which. Anything else is a bug in a reconciler and is refused.
TRANSITIONS: dict[str, frozenset[str]] = {
    Status.PENDING: frozenset({Status.STARTING, Status.STOPPED, Status.FAILED}),
    Status.STARTING: frozenset(
        {Status.RUNNING, Status.STOPPING, Status.CRASHED, Status.FAILED, Status.STOPPED}
    ),
    Status.RUNNING: frozenset(
        {Status.SLEEPING, Status.STOPPING, Status.CRASHED, Status.STARTING, Status.FAILED}
    ),
    Status.SLEEPING: frozenset({Status.STARTING, Status.STOPPING, Status.STOPPED}),
    Status.STOPPING: frozenset({Status.STOPPED, Status.FAILED}),
    Status.STOPPED: frozenset({Status.STARTING}),
    Status.CRASHED: frozenset({Status.STARTING, Status.STOPPING, Status.STOPPED}),
    Status.FAILED: frozenset({Status.STARTING, Status.STOPPING, Status.STOPPED}),
}


class TransitionError(Exception):
    """A status change that the lifecycle does not allow."""


class Deployment(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="deployments"
    )
    name = models.CharField(max_length=63, validators=[SLUG_VALIDATOR])
    analysis = models.ForeignKey(
        "analysis.Analysis",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="deployments",
    )

    package_registry = models.CharField(max_length=10, choices=PackageRegistry.choices)
    package_name = models.CharField(max_length=255)
    package_version = models.CharField(max_length=100, blank=True)
    entry_command = models.CharField(
        max_length=255,
        blank=True,
        help_text="Executable to run where the package alone is not enough.",
    )
    entry_args = models.JSONField(default=list, blank=True)
    # A source deployment runs the entry point of this build (package_registry "source").
    source_build = models.ForeignKey(
        "SourceBuild",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="deployments",
    )
    # A redeploy: the build being switched to (served once it answers), and the one served
    # before the last switch (what a rollback switches back to).
    next_build = models.ForeignKey(
        "SourceBuild", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    previous_build = models.ForeignKey(
        "SourceBuild", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    runtime = models.CharField(max_length=10, choices=Runtime.choices, default=Runtime.LOCAL)
    runtime_settings = models.JSONField(default=dict, blank=True)
    process_model = models.CharField(
        max_length=10, choices=ProcessModel.choices, default=ProcessModel.SHARED
    )
    allowed_origins = models.JSONField(
        default=list, blank=True, help_text="Browser origins allowed to call the endpoint (CORS)."
    )

    desired_state = models.CharField(
        max_length=10, choices=DesiredState.choices, default=DesiredState.RUNNING
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    status_detail = models.TextField(blank=True)
    status_changed_at = models.DateTimeField(default=timezone.now)
    last_active_at = models.DateTimeField(null=True, blank=True)
    # The latest restart its owner asked for: a server process started before it is replaced.
    restart_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    # The host uid the local runtime's sandbox runs this deployment's processes as: its own,
    # so no other deployment can signal, trace or share files with them.
    sandbox_uid = models.PositiveIntegerField(unique=True, null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="deployment_unique_owner_name")
        ]
        indexes = [models.Index(fields=["runtime", "desired_state"])]

    def __str__(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def package_spec(self) -> str:
        if not self.package_version:
            return f"{self.package_registry}:{self.package_name}"
        joiner = "==" if self.package_registry == PackageRegistry.PYPI else "@"
        if self.package_registry == PackageRegistry.OCI:
            joiner = "@" if self.package_version.startswith("sha256:") else ":"
        return f"{self.package_registry}:{self.package_name}{joiner}{self.package_version}"

    @property
    def endpoint_path(self) -> str:
        return f"/mcp/{self.id}"

    @property
    def endpoint_url(self) -> str:
        return f"{settings.PUBLIC_URL}{self.endpoint_path}"

    def move_to(self, status: str, detail: str = "", actor=None) -> bool:
        """Change status (and record it in the event log); returns False if already there.

        Locks the row so the supervisor, a worker and a web request cannot interleave.
        """
        with transaction.atomic():
            current = Deployment.objects.select_for_update().only("status").get(pk=self.pk)
            if current.status == status:
                if detail:
                    Deployment.objects.filter(pk=self.pk).update(status_detail=detail)
                    self.status_detail = detail
                self.status = status
                return False
            if status not in TRANSITIONS[current.status]:
                raise TransitionError(
                    f"deployment {self.pk} cannot go from {current.status} to {status}"
                )
            now = timezone.now()
            Deployment.objects.filter(pk=self.pk).update(
                status=status, status_detail=detail, status_changed_at=now, updated_at=now
            )
            DeploymentEvent.objects.create(
                deployment_id=self.pk,
                kind=EventKind.STATUS,
                status=status,
                message=detail or f"Status changed from {current.status} to {status}.",
                actor=actor,
            )
        self.status, self.status_detail, self.status_changed_at = status, detail, now
        return True

    def set_desired_state(self, desired: str, actor=None) -> None:
        with transaction.atomic():
            updated = (
                Deployment.objects.filter(pk=self.pk)
                .exclude(desired_state=desired)
                .update(desired_state=desired, updated_at=timezone.now())
            )
            if updated:
                DeploymentEvent.objects.create(
                    deployment_id=self.pk,
                    kind=EventKind.ACTION,
                    message=f"{'Start' if desired == DesiredState.RUNNING else 'Stop'} requested.",
                    actor=actor,
                )
                from deployments import audit

                audit.record(
                    AuditAction.DEPLOYMENT_STARTED
                    if desired == DesiredState.RUNNING
                    else AuditAction.DEPLOYMENT_STOPPED,
                    user=self.owner_id,
                    deployment=self,
                    subject=self.name,
                    actor=actor if actor is not None else audit.UNSET,
                )
        self.desired_state = desired

    def request_restart(self, message: str = "Restart requested.", actor=None) -> bool:
        """Ask for a fresh server process, which reads the current credentials; returns False,
        changing nothing, when the deployment is not wanted running.

        The supervisor replaces a bridge started before the request (`restart_requested_at`, so
        a request survives a supervisor restart). A sleeping deployment has no process and
        starts afresh when it wakes; a failed one is started again.
        """
        from deployments import audit

        with transaction.atomic():
            current = (
                Deployment.objects.select_for_update()
                .only("desired_state", "status")
                .get(pk=self.pk)
            )
            if current.desired_state != DesiredState.RUNNING:
                return False
            now = timezone.now()
            Deployment.objects.filter(pk=self.pk).update(restart_requested_at=now, updated_at=now)
            DeploymentEvent.objects.create(
                deployment_id=self.pk, kind=EventKind.ACTION, message=message, actor=actor
            )
            audit.record(
                AuditAction.DEPLOYMENT_RESTARTED,
                user=self.owner_id,
                deployment=self,
                subject=self.name,
                actor=actor if actor is not None else audit.UNSET,
            )
            if current.status == Status.FAILED:
                # The supervisor never retries a failed deployment by itself.
                self.move_to(Status.STARTING, "Starting again.", actor=actor)
        self.restart_requested_at = now
        return True

    def ensure_sandbox_uid(self) -> int:
        """This deployment's sandbox uid, allocated on first use above SANDBOX_UID_BASE."""
        if self.sandbox_uid is not None:
            return self.sandbox_uid
        for _ in range(10):
            highest = Deployment.objects.aggregate(models.Max("sandbox_uid"))["sandbox_uid__max"]
            candidate = max(highest or 0, settings.SANDBOX_UID_BASE - 1) + 1
            try:
                with transaction.atomic():
                    claimed = Deployment.objects.filter(
                        pk=self.pk, sandbox_uid__isnull=True
                    ).update(sandbox_uid=candidate)
            except IntegrityError:
                continue  # another deployment took this uid first
            if not claimed:  # allocated concurrently for this very deployment
                candidate = Deployment.objects.values_list("sandbox_uid", flat=True).get(pk=self.pk)
            self.sandbox_uid = candidate
            return candidate
        raise RuntimeError("could not allocate a sandbox uid")

    def credential_environment(self) -> dict[str, str]:
        """The decrypted credentials, for the child process only. Never log or render this."""
        return {c.name: c.get_value() for c in self.credentials.all()}


class Credential(models.Model):
    """One environment variable of a deployment, encrypted at rest and write-only."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="credentials")
    name = models.CharField(max_length=255, validators=[ENV_NAME_VALIDATOR])
    encrypted_value = crypto.EncryptedTextField()
    is_secret = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "name"], name="credential_unique_name")
        ]

    def __str__(self) -> str:
        return self.name

    # Set by set_value, so saving records "credential set" in the audit log only for a new value.
    value_changed = False

    def set_value(self, plaintext: str) -> None:
        self.encrypted_value = crypto.encrypt(plaintext)
        self.value_changed = True

    def get_value(self) -> str:
        return crypto.decrypt(self.encrypted_value, what=f"credential {self.name}")


TOKEN_PREFIX = "cwk_"  # noqa: S105 - a marker, not a secret
TOKEN_VISIBLE_CHARS = 12


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is safe: there is nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


class AccessTokenQuerySet(models.QuerySet):
    def active(self) -> AccessTokenQuerySet:
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class TokenPurpose(models.TextChoices):
    CLIENT = "client", "MCP clients"
    # Minted by the server for the deployment page's playground, short-lived, never shown:
    # kept apart so the page's token list and the clean-up can tell them from the owner's own.
    PLAYGROUND = "playground", "Playground"


class AccessToken(models.Model):
    """A bearer token for one deployment's endpoint. Only its hash is stored."""

    deployment = models.ForeignKey(
        Deployment, on_delete=models.CASCADE, related_name="access_tokens"
    )
    label = models.CharField(max_length=100)
    prefix = models.CharField(max_length=TOKEN_VISIBLE_CHARS, editable=False)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    purpose = models.CharField(
        max_length=10, choices=TokenPurpose.choices, default=TokenPurpose.CLIENT, editable=False
    )

    objects = AccessTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.label} ({self.prefix}…)"

    @classmethod
    def issue(
        cls,
        deployment: Deployment,
        label: str,
        expires_at: datetime | None = None,
        purpose: str = TokenPurpose.CLIENT,
    ) -> tuple[AccessToken, str]:
        """Create a token; the plaintext is returned once and never stored."""
        plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            deployment=deployment,
            label=label,
            prefix=plaintext[:TOKEN_VISIBLE_CHARS],
            token_hash=hash_token(plaintext),
            expires_at=expires_at,
            purpose=purpose,
        )
        return token, plaintext

    @property
    def is_active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()

    def revoke(self, actor=None) -> None:
        from deployments import audit

        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            revoked = AccessToken.objects.filter(pk=self.pk, revoked_at__isnull=True).update(
                revoked_at=self.revoked_at
            )
            if revoked:
                audit.record(
                    AuditAction.TOKEN_REVOKED,
                    user=self.deployment.owner_id,
                    deployment=self.deployment,
                    subject=audit.describe_token(self),
                    actor=actor if actor is not None else audit.UNSET,
                )


class CallOutcome(models.TextChoices):
    OK = "ok", "OK"
    ERROR = "error", "Error"
    TIMEOUT = "timeout", "Timed out"
    CANCELLED = "cancelled", "Cancelled"
    REJECTED = "rejected", "Rejected"


class ToolCall(models.Model):
    """One MCP request through the gateway. Never holds argument values or secrets."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="tool_calls")
    token = models.ForeignKey(
        AccessToken, on_delete=models.SET_NULL, null=True, blank=True, related_name="tool_calls"
    )
    # Calls made with an OAuth token name its client: the token rotates on every refresh.
    oauth_client = models.ForeignKey(
        oauth2_settings.APPLICATION_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="tool_calls",
    )
    session_id = models.CharField(max_length=128, blank=True)
    method = models.CharField(max_length=100)
    target = models.CharField(
        max_length=255, blank=True, help_text="Tool, resource or prompt name."
    )
    started_at = models.DateTimeField()
    duration_ms = models.FloatField()
    outcome = models.CharField(max_length=10, choices=CallOutcome.choices)
    error_code = models.IntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["deployment", "-started_at"])]

    def __str__(self) -> str:
        return f"{self.method} {self.target}".strip()


class EventKind(models.TextChoices):
    STATUS = "status", "Status"
    ACTION = "action", "Action"
    CONFIG = "config", "Configuration"
    ERROR = "error", "Error"


class DeploymentEvent(models.Model):
    """The lifecycle history of a deployment, as shown to its owner."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(auto_now_add=True)
    kind = models.CharField(max_length=10, choices=EventKind.choices)
    status = models.CharField(max_length=10, choices=Status.choices, blank=True)
    message = models.TextField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["deployment", "-created_at"])]

    def __str__(self) -> str:
        return self.message


class AuditAction(models.TextChoices):
    SIGNED_IN = "signed_in", "Signed in"
    SIGN_IN_FAILED = "sign_in_failed", "Sign-in failed"
    SIGNED_OUT = "signed_out", "Signed out"
    PASSWORD_CHANGED = "password_changed", "Password changed"
    TOKEN_CREATED = "token_created", "Access token created"
    TOKEN_REVOKED = "token_revoked", "Access token revoked"
    CREDENTIAL_SET = "credential_set", "Credential set"
    CREDENTIAL_DELETED = "credential_deleted", "Credential deleted"
    DEPLOYMENT_CREATED = "deployment_created", "Deployment created"
    DEPLOYMENT_STARTED = "deployment_started", "Deployment started"
    DEPLOYMENT_STOPPED = "deployment_stopped", "Deployment stopped"
    DEPLOYMENT_RESTARTED = "deployment_restarted", "Deployment restarted"
    DEPLOYMENT_DELETED = "deployment_deleted", "Deployment deleted"
    GITHUB_TOKEN_SET = "github_token_set", "GitHub token set"
    GITHUB_TOKEN_REMOVED = "github_token_removed", "GitHub token removed"


class AuditEvent(models.Model):
    """A security-relevant action on a user's account or deployments (see deployments.audit).

    `user` is whose log shows it; `actor` who did it (None: the command line or the system).
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="audit_events"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    action = models.CharField(max_length=32, choices=AuditAction.choices)
    deployment = models.ForeignKey(
        Deployment, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    subject = models.CharField(max_length=255, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.get_action_display()}: {self.subject}" if self.subject else self.action


GITHUB_TOKEN_HINT_CHARS = 4


class GitHubToken(models.Model):
    """A user's own GitHub token, to analyse their private repositories (the platform's token
    never reads those on anyone's behalf). Encrypted at rest and write-only: only the last
    characters are ever shown. Set and removed through deployments.github_tokens."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="github_token"
    )
    encrypted_token = crypto.EncryptedTextField()
    hint = models.CharField(max_length=GITHUB_TOKEN_HINT_CHARS, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "GitHub token"

    def __str__(self) -> str:
        return f"{self.user}: {self.display_hint}"

    @property
    def display_hint(self) -> str:
        return f"…{self.hint}"

    def set_token(self, plaintext: str) -> None:
        self.encrypted_token = crypto.encrypt(plaintext)
        self.hint = plaintext[-GITHUB_TOKEN_HINT_CHARS:]

    def get_token(self) -> str:
        return crypto.decrypt(self.encrypted_token, what=f"the GitHub token of user {self.user_id}")


class BuildStatus(models.TextChoices):
    BUILDING = "building", "Building"
    SUCCEEDED = "succeeded", "Built"
    FAILED = "failed", "Failed"
    # Pinned for a runtime that builds in the deployment's own machine (Fly): nothing was built
    # on this host, and a deployment here builds it first.
    ELSEWHERE = "elsewhere", "Built where it runs"


class SourceBuild(models.Model):
    """A repository folder built at one commit with one recipe; shared by every deployment of
    the same (repository, folder, commit, recipe), so a second deploy reuses it."""

    repository = models.CharField(max_length=201, help_text="owner/name on GitHub.")
    subfolder = models.CharField(max_length=500, blank=True)
    commit_sha = models.CharField(max_length=40)
    recipe = models.JSONField(help_text="The analysis's recipe (analysis.recipe.Recipe).")
    recipe_hash = models.CharField(max_length=64)
    status = models.CharField(
        max_length=10, choices=BuildStatus.choices, default=BuildStatus.BUILDING
    )
    error = models.TextField(blank=True)
    size_bytes = models.BigIntegerField(default=0)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["repository", "subfolder", "commit_sha", "recipe_hash"],
                name="source_build_unique_key",
            )
        ]

    def __str__(self) -> str:
        where = f"/{self.subfolder}" if self.subfolder else ""
        return f"{self.repository}{where}@{self.commit_sha[:7]} ({self.status})"

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class FlyApp(models.Model):
    """A deployment's resources on Fly.io: one app (with its Flycast address and secrets) and
    one machine. What the Fly runtime's reconciler last made true, kept so it can carry on after
    a failure, adopt what an ambiguous answer left behind, and tear everything down after the
    deployment itself is deleted (the row outlives it, with `deployment` null, until then).
    """

    deployment = models.OneToOneField(
        Deployment, on_delete=models.SET_NULL, null=True, blank=True, related_name="fly_app"
    )
    # The deployment's id, kept after it is deleted: machines are tagged with it.
    deployment_key = models.UUIDField(unique=True, editable=False)
    name = models.CharField(max_length=63, unique=True)
    app_created = models.BooleanField(default=False)
    ip_allocated = models.BooleanField(default=False)
    machine_id = models.CharField(max_length=32, blank=True)
    # A source deployment's volume (its build, kept across stops) and the region it is in.
    volume_id = models.CharField(max_length=64, blank=True)
    volume_region = models.CharField(max_length=16, blank=True)
    # What the machine was last configured with: a digest of its config, the app secrets
    # version it boots with, and the restart request it serves.
    config_digest = models.CharField(max_length=64, blank=True)
    secrets_digest = models.CharField(max_length=64, blank=True)
    secret_names = models.JSONField(default=list, blank=True)
    secrets_version = models.PositiveIntegerField(null=True, blank=True)
    restart_served_at = models.DateTimeField(null=True, blank=True)
    # A start in progress must answer by this time, or the deployment fails.
    start_deadline = models.DateTimeField(null=True, blank=True)
    # One reconciler at a time: whoever holds an unexpired lease.
    lease_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "Fly app"

    def __str__(self) -> str:
        return self.name
