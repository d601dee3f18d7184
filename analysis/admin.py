from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from analysis.models import Analysis, Repository


@admin.register(Repository)
class RepositoryAdmin(admin.ModelAdmin):
    list_display = ["full_name", "default_branch", "private", "updated_at"]
    list_filter = ["private"]
    search_fields = ["owner", "name"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(analyses__requested_by=request.user).distinct()


@admin.register(Analysis)
class AnalysisAdmin(admin.ModelAdmin):
    list_display = [
        "repository",
        "commit_sha",
        "status",
        "analyser_version",
        "requested_by",
        "created_at",
    ]
    list_filter = ["status", "analyser_version"]
    search_fields = [
        "repository__owner",
        "repository__name",
        "commit_sha",
        "requested_by__username",
    ]
    readonly_fields = ["created_at", "started_at", "finished_at"]
    list_select_related = ["repository", "requested_by"]
    raw_id_fields = ["repository", "requested_by"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(requested_by=request.user)
