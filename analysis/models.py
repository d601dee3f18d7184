"""GitHub repositories and the analyses that find out how to run the MCP server in them."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone


class Repository(models.Model):
    """A repository on GitHub, shared by every user who analyses it."""

    owner = models.CharField(max_length=100)
    name = models.CharField(max_length=100)
    default_branch = models.CharField(max_length=255, blank=True)
    private = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "repositories"
        ordering = ["owner", "name"]
        constraints = [
            models.UniqueConstraint(
                models.functions.Lower("owner"),
                models.functions.Lower("name"),
                name="repository_unique_owner_name",
            )
        ]

    def __str__(self) -> str:
        return self.full_name

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def html_url(self) -> str:
        return f"https://github.com/{self.full_name}"


class AnalysisStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class AnalysisStep(models.TextChoices):
    """Where a running analysis is, shown to the user while it works."""

    QUEUED = "queued", "Waiting for a worker"
    FETCHING = "fetching", "Fetching the repository"
    MANIFESTS = "manifests", "Reading manifests"
    SCANNING = "scanning", "Scanning the source"
    REGISTRY = "registry", "Checking the package registry"
    CLAUDE = "claude", "Asking Claude"
    INTROSPECTING = "introspecting", "Starting the server"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class AnalysisStateError(Exception):
    """An analysis was asked to move to a state it cannot reach from where it is."""


class Analysis(models.Model):
    """One run of the analyser over a repository at a commit, requested by a user."""

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="analyses")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="analyses"
    )
    ref = models.CharField(max_length=255, blank=True, help_text="Branch, tag or SHA asked for.")
    subdirectory = models.CharField(max_length=500, blank=True)
    commit_sha = models.CharField(max_length=40, blank=True)
    analyser_version = models.CharField(max_length=20)
    status = models.CharField(
        max_length=10, choices=AnalysisStatus.choices, default=AnalysisStatus.PENDING
    )
    step = models.CharField(
        max_length=15, choices=AnalysisStep.choices, default=AnalysisStep.QUEUED
    )
    progress = models.JSONField(
        default=list, blank=True, help_text="Each step reached, with when and how long it took."
    )
    # Which layers ran (`static`, `+claude`, `+introspection`, `+preflight`): a cached result is
    # reused only by a request for the same ones.
    variant = models.CharField(max_length=60, blank=True)
    cached_from = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    result = models.JSONField(
        null=True, blank=True, help_text="The server.json document with Catwalk's _meta."
    )
    error = models.TextField(blank=True)
    timings = models.JSONField(default=dict, blank=True, help_text="Seconds spent per phase.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "analyses"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["repository", "commit_sha", "analyser_version"])]

    def __str__(self) -> str:
        where = f"@{self.commit_sha[:7]}" if self.commit_sha else ""
        return f"{self.repository}{where} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in (AnalysisStatus.SUCCEEDED, AnalysisStatus.FAILED)

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None

    def start(self) -> None:
        self._move({AnalysisStatus.PENDING}, AnalysisStatus.RUNNING, started_at=timezone.now())

    def reach(self, step: str) -> None:
        """Record that the analysis has reached `step` (while it runs)."""
        now = timezone.now()
        progress = list(self.progress or [])
        if progress:
            began = datetime.fromisoformat(progress[-1]["at"])
            progress[-1]["seconds"] = round((now - began).total_seconds(), 3)
        progress.append({"step": step, "at": now.isoformat()})
        updated = Analysis.objects.filter(pk=self.pk, status=AnalysisStatus.RUNNING).update(
            step=step, progress=progress
        )
        if updated:
            self.step, self.progress = step, progress

    def succeed(
        self,
        result: dict,
        commit_sha: str,
        timings: dict[str, float],
        cached_from: Analysis | None = None,
    ) -> None:
        self._move(
            {AnalysisStatus.RUNNING},
            AnalysisStatus.SUCCEEDED,
            step=AnalysisStep.DONE,
            result=result,
            commit_sha=commit_sha,
            timings=timings,
            cached_from=cached_from,
            finished_at=timezone.now(),
        )

    def fail(self, reason: str) -> None:
        self._move(
            {AnalysisStatus.PENDING, AnalysisStatus.RUNNING},
            AnalysisStatus.FAILED,
            step=AnalysisStep.FAILED,
            error=reason,
            finished_at=timezone.now(),
        )

    def _move(self, allowed_from: set[str], to: str, **fields) -> None:
        with transaction.atomic():
            current = Analysis.objects.select_for_update().only("status").get(pk=self.pk)
            if current.status not in allowed_from:
                raise AnalysisStateError(
                    f"analysis {self.pk} is {current.status}, cannot become {to}"
                )
            fields["status"] = to
            Analysis.objects.filter(pk=self.pk).update(**fields)
            for name, value in fields.items():
                setattr(self, name, value)
