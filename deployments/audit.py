"""The audit log: who did what security-relevant thing to whose account or deployment, from where.

Recorded where the change happens (model methods and signals), so the admin, the command line,
the web pages and the API are all covered. The request being served, if any, supplies the actor
and the address (`AuditMiddleware`); outside a request the actor is whoever the caller names, or
nobody (the command line).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from inspect import iscoroutinefunction

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware

from deployments.models import AccessToken, AuditAction, AuditEvent, Credential, Deployment

_request: contextvars.ContextVar[HttpRequest | None] = contextvars.ContextVar(
    "catwalk_audit_request", default=None
)

UNSET = object()

_actor: contextvars.ContextVar[object] = contextvars.ContextVar(
    "catwalk_audit_actor", default=UNSET
)


@sync_and_async_middleware
def AuditMiddleware(get_response):
    """Makes the current request (its user and address) known to `record`."""
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponse:
            token = _request.set(request)
            try:
                return await get_response(request)
            finally:
                _request.reset(token)

    else:

        def middleware(request: HttpRequest) -> HttpResponse:
            token = _request.set(request)
            try:
                return get_response(request)
            finally:
                _request.reset(token)

    return middleware


@contextlib.contextmanager
def acting_as(actor) -> Iterator[None]:
    """Name `actor` as who did what is recorded inside, where a signal records it (a deletion,
    a credential saved): a service called with an actor. None leaves the request's user."""
    if actor is None:
        yield
        return
    token = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(token)


def record(
    action: str,
    *,
    user,
    deployment: Deployment | None = None,
    subject: str = "",
    actor=UNSET,
    request: HttpRequest | None = None,
) -> AuditEvent:
    request = request or _request.get()
    if actor is UNSET:
        actor = _actor.get()
    if actor is UNSET:
        current = getattr(request, "user", None) if request is not None else None
        actor = current if current is not None and current.is_authenticated else None
    return AuditEvent.objects.create(
        user_id=user.pk if hasattr(user, "pk") else user,
        actor=actor,
        action=action,
        deployment=deployment,
        subject=subject[:255],
        ip_address=request.META.get("REMOTE_ADDR") if request is not None else None,
    )


def describe_token(token: AccessToken) -> str:
    return f"{token.label} ({token.prefix}…) on {token.deployment.name}"


# --- Accounts ---------------------------------------------------------------------------------


@receiver(user_logged_in)
def _signed_in(sender, request, user, **kwargs) -> None:
    record(AuditAction.SIGNED_IN, user=user, actor=user, request=request)


@receiver(user_logged_out)
def _signed_out(sender, request, user, **kwargs) -> None:
    if user is not None:
        record(AuditAction.SIGNED_OUT, user=user, actor=user, request=request)


@receiver(user_login_failed)
def _sign_in_failed(sender, credentials, request=None, **kwargs) -> None:
    name = credentials.get("username")
    user = get_user_model().objects.filter(username=name).first() if name else None
    if user is not None:  # attempts on unknown names belong to no one's log
        record(AuditAction.SIGN_IN_FAILED, user=user, actor=None, request=request)


@receiver(pre_save, sender=get_user_model())
def _password_changing(sender, instance, **kwargs) -> None:
    instance._audit_password_changed = (
        instance.pk is not None
        and sender.objects.filter(pk=instance.pk).exclude(password=instance.password).exists()
    )


@receiver(post_save, sender=get_user_model())
def _password_changed(sender, instance, created: bool, **kwargs) -> None:
    # Every way a password changes (the account pages, a reset link, the admin, changepassword)
    # saves the user: recorded here, once.
    if not created and getattr(instance, "_audit_password_changed", False):
        instance._audit_password_changed = False
        record(AuditAction.PASSWORD_CHANGED, user=instance)


# --- Deployments, credentials, tokens ----------------------------------------------------------


@receiver(post_save, sender=Deployment)
def _deployment_saved(sender, instance: Deployment, created: bool, **kwargs) -> None:
    if created:
        record(
            AuditAction.DEPLOYMENT_CREATED,
            user=instance.owner_id,
            deployment=instance,
            subject=f"{instance.name} ({instance.package_spec})",
        )


def _deleted_as_part_of(origin, model) -> bool:
    """Is this deletion the cascade of deleting something of `model` (a user, a deployment)?"""
    target = getattr(origin, "model", type(origin))  # a queryset's model, or an instance's
    return isinstance(target, type) and issubclass(target, model)


@receiver(post_delete, sender=Deployment)
def _deployment_deleted(sender, instance: Deployment, origin=None, **kwargs) -> None:
    if _deleted_as_part_of(origin, get_user_model()):
        return  # the account goes, and its log with it
    record(AuditAction.DEPLOYMENT_DELETED, user=instance.owner_id, subject=instance.name)


@receiver(post_save, sender=Credential)
def _credential_saved(sender, instance: Credential, created: bool, **kwargs) -> None:
    if created or instance.value_changed:
        record(
            AuditAction.CREDENTIAL_SET,
            user=instance.deployment.owner_id,
            deployment=instance.deployment,
            subject=f"{instance.name} on {instance.deployment.name}",
        )
        instance.value_changed = False


@receiver(post_delete, sender=Credential)
def _credential_deleted(sender, instance: Credential, origin=None, **kwargs) -> None:
    if _deleted_as_part_of(origin, Deployment) or _deleted_as_part_of(origin, get_user_model()):
        return  # gone with its deployment, which is recorded (or with the whole account)
    deployment = Deployment.objects.filter(pk=instance.deployment_id).first()
    if deployment is None:
        return
    record(
        AuditAction.CREDENTIAL_DELETED,
        user=deployment.owner_id,
        deployment=deployment,
        subject=f"{instance.name} on {deployment.name}",
    )


@receiver(post_save, sender=AccessToken)
def _token_saved(sender, instance: AccessToken, created: bool, **kwargs) -> None:
    if created:
        record(
            AuditAction.TOKEN_CREATED,
            user=instance.deployment.owner_id,
            deployment=instance.deployment,
            subject=describe_token(instance),
        )


@receiver(post_delete, sender=AccessToken)
def _token_deleted(sender, instance: AccessToken, origin=None, **kwargs) -> None:
    # Deleting a live token revokes it; an expired or revoked one, or one deleted with its
    # deployment or account, is no news (the clean-up deletes expired playground tokens).
    if not instance.is_active or not _deleted_as_part_of(origin, AccessToken):
        return
    deployment = Deployment.objects.filter(pk=instance.deployment_id).first()
    if deployment is None:
        return
    record(
        AuditAction.TOKEN_REVOKED,
        user=deployment.owner_id,
        deployment=deployment,
        subject=f"{instance.label} ({instance.prefix}…) on {deployment.name}, deleted",
    )
