"""Catwalk as an OAuth 2.1 authorization server for its MCP endpoints.

django-oauth-toolkit (DOT) speaks the protocol: metadata (RFC 8414, RFC 9728), the authorization
code flow with PKCE, dynamic registration (RFC 7591), Client ID Metadata Documents, refresh token
rotation, `iss` in authorization responses (RFC 9207). What is Catwalk's own lives here, in the
hooks DOT offers:

- every token is bound to exactly one resource (RFC 8707), the endpoint URL of a deployment that
  the approving user owns; the token request must name the same one;
- an http redirect URI is only ever a loopback one (RFC 8252 §7.3);
- a Client ID Metadata Document may come from a loopback address when a setting allows it;
- the approvals an owner sees on a deployment's page, and revokes there.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import urllib3
from django.conf import settings
from django.db import transaction
from django.db.models import Min, OuterRef, Subquery
from django.utils import timezone
from oauth2_provider.cimd import CIMDError, SafeMetadataFetcher
from oauth2_provider.models import (
    AbstractApplication,
    get_access_token_model,
    get_application_model,
    get_grant_model,
    get_refresh_token_model,
    refresh_token_expire_timedelta,
)
from oauth2_provider.oauth2_validators import OAuth2Validator
from oauth2_provider.settings import oauth2_settings
from oauthlib.common import Request as OAuthlibRequest
from oauthlib.oauth2.rfc6749 import errors

from deployments import audit
from deployments.models import AuditAction, Deployment, ToolCall

SCOPE = "mcp"
GRANT_TYPES = ("authorization_code", "refresh_token")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class ResourceRefused(Exception):
    """A `resource` this server will not issue a token for; `error` is the OAuth error code."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def is_loopback_host(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redirect_uri_allowed(uri: str | None) -> bool:
    """An http redirect URI must point at this machine (a native client's loopback listener):
    anywhere else the code would cross the network in clear. Other schemes are DOT's to judge."""
    if not uri:
        return False
    parts = urlsplit(uri)
    return parts.scheme.lower() != "http" or is_loopback_host(parts.hostname)


def canonical_resource(uri: str) -> str | None:
    """The comparable form of a resource indicator: scheme and host lower-cased, default port
    and trailing slash dropped. None for what cannot be one (RFC 8707 §2: an absolute URI
    without a fragment; a query has no place in an endpoint URL either)."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except (ValueError, TypeError, AttributeError):
        return None
    if not parts.scheme or not parts.hostname or parts.username is not None:
        return None
    if parts.query or parts.fragment or "#" in uri:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    authority = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    return f"{scheme}://{authority}{parts.path.rstrip('/')}"


def deployment_for_resource(uri: str) -> Deployment | None:
    """The deployment whose endpoint URL this resource indicator names, if any."""
    canonical = canonical_resource(uri)
    if canonical is None:
        return None
    try:
        deployment_id = uuid.UUID(canonical.rsplit("/", 1)[-1])
    except ValueError:
        return None
    deployment = Deployment.objects.filter(pk=deployment_id).first()
    if deployment is None or canonical_resource(deployment.endpoint_url) != canonical:
        return None
    return deployment


def resolve_resource(resources: list[str], user) -> Deployment:
    """RFC 8707 at the authorization endpoint: exactly one resource, the endpoint of a
    deployment that `user` owns (None: nobody is signed in yet, ownership is not asked).

    Raises ResourceRefused: `invalid_target` for a missing, second, malformed or unknown
    resource; `access_denied` for another account's deployment.
    """
    if not resources:
        raise ResourceRefused(
            "invalid_target",
            "The resource parameter is required: the endpoint URL of the Catwalk deployment "
            "to use (RFC 8707).",
        )
    if len(resources) > 1:
        raise ResourceRefused(
            "invalid_target", "One deployment per authorization: send a single resource."
        )
    deployment = deployment_for_resource(resources[0])
    if deployment is None:
        raise ResourceRefused(
            "invalid_target",
            f"The resource {resources[0]} is not the endpoint URL of a Catwalk deployment.",
        )
    if user is not None and deployment.owner_id != user.pk:
        raise ResourceRefused(
            "access_denied",
            "This deployment belongs to another account: only its owner can authorize it.",
        )
    return deployment


def _body_resources(request: OAuthlibRequest) -> list[str]:
    """Every `resource` of a token request (RFC 8707 lets it repeat; oauthlib keeps the last)."""
    return [value for key, value in (request.decoded_body or []) if key == "resource"]


class CatwalkOAuth2Validator(OAuth2Validator):
    """DOT's validator with Catwalk's rules (OAUTH2_VALIDATOR_CLASS)."""

    def validate_redirect_uri(self, client_id, redirect_uri, request, *args, **kwargs) -> bool:
        return redirect_uri_allowed(redirect_uri) and super().validate_redirect_uri(
            client_id, redirect_uri, request, *args, **kwargs
        )

    def get_default_redirect_uri(self, client_id, request, *args, **kwargs) -> str | None:
        # The one registered URI stands in when a request names none; oauthlib does not
        # validate it again, so a registered plaintext one would slip through here.
        uri = super().get_default_redirect_uri(client_id, request, *args, **kwargs)
        return uri if redirect_uri_allowed(uri) else None

    def _create_authorization_code(self, request, code, expires=None):
        # The consent page checked the resource already; this is the check that counts, on
        # what the submitted form carries (its hidden fields can be changed).
        resources = request.resource or []
        if isinstance(resources, str):
            resources = resources.split()
        try:
            deployment = resolve_resource(resources, request.user)
        except ResourceRefused as refusal:
            raise errors.CustomOAuth2Error(
                refusal.error, description=refusal.description, request=request
            ) from None
        request.resource = [deployment.endpoint_url]
        return super()._create_authorization_code(request, code, expires)

    def _check_and_set_request_resource(self, request) -> None:
        """RFC 8707 at the token endpoint: a code is exchanged only for the resource it was
        granted for, named again; a refresh keeps its resource, and only while the user still
        owns that deployment."""
        requested = {canonical_resource(uri) for uri in _body_resources(request)}
        if request.grant_type == "authorization_code":
            grant = (
                get_grant_model()
                .objects.filter(code=request.code, application=request.client)
                .first()
            )
            bound = list(grant.resource) if grant else []
            if not requested:
                raise errors.CustomOAuth2Error(
                    "invalid_target",
                    description="The resource parameter is required: the endpoint URL the "
                    "code was granted for (RFC 8707).",
                    request=request,
                )
            if requested != {canonical_resource(uri) for uri in bound}:
                raise errors.CustomOAuth2Error(
                    "invalid_target",
                    description="This code was granted for another resource.",
                    request=request,
                )
            request.resource = bound
        elif request.grant_type == "refresh_token":
            bound = list(request.refresh_token_instance.resource)
            if requested and requested != {canonical_resource(uri) for uri in bound}:
                raise errors.CustomOAuth2Error(
                    "invalid_target",
                    description="This refresh token is for another resource.",
                    request=request,
                )
            deployment = deployment_for_resource(bound[0]) if len(bound) == 1 else None
            if deployment is None or deployment.owner_id != request.user.pk:
                raise errors.InvalidGrantError(
                    description="The deployment this token was for is gone, or no longer "
                    "belongs to the account that approved it.",
                    request=request,
                )
            request.resource = bound
        super()._check_and_set_request_resource(request)


class CatwalkMetadataFetcher(SafeMetadataFetcher):
    """DOT's SSRF-hardened fetcher of Client ID Metadata Documents (https to public addresses
    only). With OAUTH_CIMD_ALLOW_LOOPBACK, which production refuses, a document on this machine
    is fetched too (trusting the certificates SSL_CERT_FILE names), so tests and local
    development can serve one."""

    def fetch(self, client_id):
        if not (
            settings.OAUTH_CIMD_ALLOW_LOOPBACK and is_loopback_host(urlsplit(client_id).hostname)
        ):
            return super().fetch(client_id)
        try:
            response = urllib3.request(
                "GET",
                client_id,
                headers={"Accept": "application/json"},
                timeout=oauth2_settings.CIMD_FETCH_TIMEOUT_SECONDS,
                retries=False,
                redirect=False,
                preload_content=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise CIMDError(f"could not fetch client_id document: {exc}") from exc
        try:
            return self._read_document(response)
        finally:
            response.release_conn()


# --- Approvals: what an owner has let clients do with a deployment ----------------------------


class ApprovalNotFound(Exception):
    pass


@dataclass(frozen=True)
class Approval:
    """A client that holds live tokens for a deployment, from one or more consents."""

    application: AbstractApplication
    approved_at: datetime
    last_used_at: datetime | None  # its latest call still in the call history

    @property
    def client_name(self) -> str:
        return self.application.name or "Unnamed client"

    @property
    def redirect_hosts(self) -> list[str]:
        return sorted({urlsplit(uri).netloc for uri in self.application.redirect_uris.split()})


def _tokens_for(deployment: Deployment) -> dict:
    """What picks a deployment's OAuth tokens: its owner's, bound to its endpoint (the
    validator binds every token to exactly one resource)."""
    return {"user_id": deployment.owner_id, "resource": [deployment.endpoint_url]}


def approvals_for(deployment: Deployment) -> list[Approval]:
    """The deployment's approvals, newest first, in two queries however many there are.

    A consent starts a family of refresh tokens that each refresh extends; an approval is live
    while one of its families can still refresh, and dates from its oldest token. The gateway
    names the client of every call it records, which says when it was last used.
    """
    refresh_tokens = get_refresh_token_model().objects
    live = refresh_tokens.filter(
        **_tokens_for(deployment), revoked__isnull=True, access_token__isnull=False
    )
    if lifetime := refresh_token_expire_timedelta():
        live = live.filter(access_token__expires__gt=timezone.now() - lifetime)
    approved = dict(
        refresh_tokens.filter(token_family__in=live.values("token_family"))
        .values("application_id")
        .annotate(approved_at=Min("created"))
        .values_list("application_id", "approved_at")
    )
    last_call = (
        ToolCall.objects.filter(deployment=deployment, oauth_client=OuterRef("pk"))
        .order_by("-started_at")
        .values("started_at")[:1]
    )
    applications = (
        get_application_model()
        .objects.filter(pk__in=approved)
        .annotate(last_used_at=Subquery(last_call))
    )
    approvals = [Approval(a, approved[a.pk], a.last_used_at) for a in applications]
    return sorted(approvals, key=lambda approval: approval.approved_at, reverse=True)


def revoke_approval(deployment: Deployment, application_id: int, actor=None):
    """Revoke everything `application` holds for this deployment: its refresh tokens (their
    access tokens go with them), any access token left, codes not yet exchanged. Raises
    ApprovalNotFound when it holds nothing live. Returns the application."""
    application = get_application_model().objects.filter(pk=application_id).first()
    if application is None:
        raise ApprovalNotFound(f"no client {application_id}")
    mine = {**_tokens_for(deployment), "application": application}
    refresh_tokens = get_refresh_token_model().objects
    access_tokens = get_access_token_model().objects.filter(**mine)
    with transaction.atomic():
        live = list(refresh_tokens.filter(**mine, revoked__isnull=True))
        if not live and not access_tokens.exists():
            raise ApprovalNotFound(f"{application} holds nothing for {deployment.name}")
        for refresh_token in live:
            refresh_token.revoke()
        access_tokens.delete()
        get_grant_model().objects.filter(**mine).delete()
    audit.record(
        AuditAction.TOKEN_REVOKED,
        user=deployment.owner_id,
        deployment=deployment,
        subject=f"OAuth access of {application.name or application.client_id} to {deployment.name}",
        actor=actor,
    )
    return application
