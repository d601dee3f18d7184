"""Admin for deployments. Secrets are write-only here; tokens show only their prefix.

Superusers see everything; any other staff member sees only their own deployments and what
hangs off them.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from deployments.github_tokens import remove_github_token
from deployments.models import (
    AccessToken,
    AuditEvent,
    Credential,
    Deployment,
    DeploymentEvent,
    FlyApp,
    GitHubToken,
    ToolCall,
)
from deployments.runtimes.base import get_runtime


class OwnedAdmin(admin.ModelAdmin):
    """Limits non-superusers to rows they own, through `owner_path`."""

    owner_path = "deployment__owner"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(**{self.owner_path: request.user})

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "deployment" and not request.user.is_superuser:
            kwargs["queryset"] = Deployment.objects.filter(owner=request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class CredentialForm(forms.ModelForm):
    value = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        required=False,
        help_text="Write-only. Leave empty to keep the stored value.",
    )

    class Meta:
        model = Credential
        fields = ["deployment", "name", "is_secret"]

    def clean(self):
        cleaned = super().clean()
        if not self.instance.pk and not cleaned.get("value"):
            self.add_error("value", "A new credential needs a value.")
        return cleaned

    def save(self, commit: bool = True):
        if self.cleaned_data.get("value"):
            self.instance.set_value(self.cleaned_data["value"])
        return super().save(commit)


@admin.register(Credential)
class CredentialAdmin(OwnedAdmin):
    form = CredentialForm
    list_display = ["name", "deployment", "is_secret", "updated_at"]
    list_filter = ["is_secret"]
    search_fields = ["name", "deployment__name"]
    list_select_related = ["deployment"]


class AccessTokenForm(forms.ModelForm):
    class Meta:
        model = AccessToken
        fields = ["deployment", "label", "expires_at"]


@admin.register(AccessToken)
class AccessTokenAdmin(OwnedAdmin):
    form = AccessTokenForm
    list_display = [
        "label",
        "prefix",
        "deployment",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    ]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter), "purpose", "created_at"]
    search_fields = ["label", "prefix", "deployment__name"]
    readonly_fields = ["prefix", "purpose", "created_at", "last_used_at", "revoked_at"]
    list_select_related = ["deployment"]
    actions = ["revoke"]

    def get_readonly_fields(self, request, obj=None):
        if obj is not None:  # an issued token's deployment never changes
            return [*self.readonly_fields, "deployment"]
        return self.readonly_fields

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        token, plaintext = AccessToken.issue(obj.deployment, obj.label, obj.expires_at)
        obj.pk, obj.prefix, obj.token_hash = token.pk, token.prefix, token.token_hash
        messages.warning(
            request,
            f"Token for {obj.deployment.name}: {plaintext} — copy it now, it is not shown again.",
        )

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        tokens = list(queryset.filter(revoked_at__isnull=True).select_related("deployment"))
        for token in tokens:
            token.revoke(actor=request.user)
        self.message_user(request, f"Revoked {len(tokens)} token(s).")


class CredentialInline(admin.TabularInline):
    model = Credential
    form = CredentialForm
    extra = 0
    fields = ["name", "value", "is_secret", "updated_at"]
    readonly_fields = ["updated_at"]


class TokenInline(admin.TabularInline):
    model = AccessToken
    extra = 0
    fields = ["label", "prefix", "created_at", "last_used_at", "expires_at", "revoked_at"]
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Deployment)
class DeploymentAdmin(OwnedAdmin):
    owner_path = "owner"
    list_display = [
        "name",
        "owner",
        "package_spec",
        "runtime",
        "process_model",
        "desired_state",
        "status",
        "updated_at",
    ]
    list_filter = ["status", "desired_state", "runtime", "process_model", "package_registry"]
    search_fields = ["name", "package_name", "owner__username", "id"]
    readonly_fields = [
        "id",
        "status",
        "status_detail",
        "status_changed_at",
        "last_active_at",
        "created_at",
        "updated_at",
    ]
    list_select_related = ["owner"]
    inlines = [CredentialInline, TokenInline]
    raw_id_fields = ["analysis"]

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "owner" and not request.user.is_superuser:
            kwargs["queryset"] = get_user_model().objects.filter(pk=request.user.pk)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        """Saves only the fields the form changed, so a status the supervisor wrote meanwhile
        survives; a changed desired state goes through set_desired_state (event, audit log,
        runtime)."""
        if not change:
            super().save_model(request, obj, form, change)
            return
        fields = [name for name in form.changed_data if name != "desired_state"]
        if fields:
            obj.save(update_fields=[*fields, "updated_at"])
        if "desired_state" in form.changed_data:
            desired = obj.desired_state
            obj.desired_state = form.initial["desired_state"]
            obj.set_desired_state(desired, actor=request.user)
            transaction.on_commit(lambda: get_runtime(obj.runtime).apply(obj))


@admin.register(ToolCall)
class ToolCallAdmin(OwnedAdmin):
    list_display = [
        "started_at",
        "deployment",
        "method",
        "target",
        "duration_ms",
        "outcome",
        "error_code",
    ]
    list_filter = ["outcome", "method", "started_at"]
    search_fields = ["target", "method", "deployment__name", "session_id"]
    list_select_related = ["deployment"]
    date_hierarchy = "started_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(DeploymentEvent)
class DeploymentEventAdmin(OwnedAdmin):
    list_display = ["created_at", "deployment", "kind", "status", "message"]
    list_filter = ["kind", "status"]
    search_fields = ["message", "deployment__name"]
    list_select_related = ["deployment"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(FlyApp)
class FlyAppAdmin(OwnedAdmin):
    """What the Fly runtime made on Fly for each deployment; the reconciler alone changes it.
    A row without a deployment is a deleted one whose app is still being torn down."""

    list_display = [
        "name",
        "deployment",
        "machine_id",
        "secrets_version",
        "last_error",
        "updated_at",
    ]
    search_fields = ["name", "machine_id", "deployment__name"]
    list_select_related = ["deployment"]
    exclude = ["config_digest", "secrets_digest", "lease_until"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(OwnedAdmin):
    owner_path = "user"
    list_display = ["created_at", "user", "action", "subject", "actor", "ip_address"]
    list_filter = ["action", "created_at"]
    search_fields = ["subject", "user__username", "actor__username", "ip_address"]
    list_select_related = ["user", "actor"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(GitHubToken)
class GitHubTokenAdmin(OwnedAdmin):
    """Write-only: the admin shows that a token exists and its hint, never the token. Deleting
    one goes through remove_github_token, so the owner's audit log shows it."""

    owner_path = "user"
    fields = ["user", "display_hint", "created_at", "updated_at"]
    readonly_fields = fields
    list_display = ["user", "display_hint", "created_at", "updated_at"]
    search_fields = ["user__username"]
    list_select_related = ["user"]

    @admin.display(description="Token")
    def display_hint(self, obj: GitHubToken) -> str:
        return obj.display_hint

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def delete_model(self, request, obj):
        remove_github_token(obj.user, actor=request.user)

    def delete_queryset(self, request, queryset):
        for token in queryset.select_related("user"):
            remove_github_token(token.user, actor=request.user)
