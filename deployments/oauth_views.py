"""The OAuth endpoints as Catwalk mounts them, and the approvals on a deployment's page.

DOT's views do the protocol; the few subclassed here add Catwalk's consent page (which
deployment, which client, where the browser goes next), its registration and grant rules, and
one protected resource metadata document per deployment (RFC 9728).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlsplit

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import path
from django.utils.csp import CSP
from django.views.decorators.http import require_POST
from oauth2_provider import views as dot_views
from oauth2_provider.exceptions import FatalClientError, OAuthToolkitError
from oauth2_provider.models import get_application_model
from oauth2_provider.settings import oauth2_settings
from oauthlib.common import add_params_to_uri
from oauthlib.oauth2.rfc6749 import errors

from deployments.models import Deployment
from deployments.oauth import (
    GRANT_TYPES,
    ApprovalNotFound,
    ResourceRefused,
    is_loopback_host,
    redirect_uri_allowed,
    resolve_resource,
    revoke_approval,
)
from deployments.views import _back_to, _get_deployment_for_user


def _form_action_source(redirect_uri: str) -> str:
    """The CSP source that lets the consent form's redirect reach the client: browsers hold
    the redirect after a form POST to the page's form-action too."""
    parts = urlsplit(redirect_uri)
    if parts.scheme in ("http", "https"):
        return f"{parts.scheme}://{parts.netloc}"
    return f"{parts.scheme}:"


class ConsentView(dot_views.AuthorizationView):
    """The authorization endpoint: DOT's flow with Catwalk's consent page.

    The page says which client asks (its name, which nobody vouches for, and where the browser
    goes afterwards, which is what can be trusted), which deployment, and what the one scope
    allows. A resource that is missing or not a deployment's endpoint goes back to the client
    as `invalid_target`; another account's deployment is refused on the page, 403.
    """

    def dispatch(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        self.deployment: Deployment | None = None
        self.client_redirect_uri: str | None = None
        if "approval_prompt" in request.GET:
            # Consent every time: DOT's approval_prompt=auto would let a client reuse a consent
            # given for one deployment to get another of the same owner without asking.
            request.GET = request.GET.copy()
            del request.GET["approval_prompt"]
        return super().dispatch(request, *args, **kwargs)

    def validate_authorization_request(self, request: HttpRequest):
        scopes, credentials = super().validate_authorization_request(request)

        def refuse(error: str, description: str, status: int = 400):
            oauthlib_error = errors.CustomOAuth2Error(
                error, description=description, state=credentials.get("state"), status_code=status
            )
            return OAuthToolkitError(error=oauthlib_error, redirect_uri=credentials["redirect_uri"])

        # DOT refuses "plain" only once the code is made, after the consent page: refuse it
        # before, so nobody approves a request that cannot succeed.
        if credentials.get("code_challenge_method") != "S256":
            raise refuse("invalid_request", "PKCE with code_challenge_method S256 is required.")
        user = request.user if request.user.is_authenticated else None
        try:
            self.deployment = resolve_resource(request.GET.getlist("resource"), user)
        except ResourceRefused as refusal:
            if refusal.error == "access_denied":
                error = refuse(refusal.error, refusal.description, status=403)
                raise FatalClientError(error=error.oauthlib_error) from None
            raise refuse(refusal.error, refusal.description) from None
        self.client_redirect_uri = credentials["redirect_uri"]
        return scopes, credentials

    def get_context_data(self, **kwargs) -> dict:
        context = super().get_context_data(**kwargs)
        if self.deployment is not None and self.client_redirect_uri:
            redirect = urlsplit(self.client_redirect_uri)
            application = context["application"]
            context.update(
                deployment=self.deployment,
                redirect_scheme=redirect.scheme,
                redirect_host=redirect.netloc or redirect.scheme,
                redirect_is_loopback=is_loopback_host(redirect.hostname),
                client_id_host=urlsplit(application.client_id).netloc
                if application.registration_source == application.RegistrationSource.CIMD
                else "",
            )
        return context

    def render_to_response(self, context, **response_kwargs) -> HttpResponse:
        response = super().render_to_response(context, **response_kwargs)
        if self.client_redirect_uri and self.deployment is not None:
            response._csp_config = {
                **settings.SECURE_CSP,
                "form-action": [CSP.SELF, _form_action_source(self.client_redirect_uri)],
            }
        return response

    def form_valid(self, form) -> HttpResponse:
        client_id = form.cleaned_data["client_id"]
        if not get_application_model().objects.filter(client_id=client_id).exists():
            return self.render_to_response({"error": errors.InvalidClientIdError()}, status=400)
        return super().form_valid(form)

    def form_invalid(self, form) -> HttpResponse:
        return self.render_to_response(self.get_context_data(form=form), status=400)

    def redirect(self, redirect_to: str, application) -> HttpResponse:
        # RFC 9207: the issuer goes with every authorization response, errors included; DOT
        # adds it to the successful ones only.
        if "iss" not in dict(parse_qsl(urlsplit(redirect_to).query)):
            issuer = oauth2_settings.oauth2_authorization_server_issuer(self.request)
            redirect_to = add_params_to_uri(redirect_to, [("iss", issuer)])
        return super().redirect(redirect_to, application)


class TokenView(dot_views.TokenView):
    """DOT's token endpoint for the two grants Catwalk issues tokens through."""

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if request.POST.get("grant_type") not in GRANT_TYPES:
            return JsonResponse(
                {
                    "error": "unsupported_grant_type",
                    "error_description": "Only authorization_code and refresh_token.",
                },
                status=400,
            )
        response = super().post(request, *args, **kwargs)
        if response.status_code != 200 and not response["Content-Type"].startswith(
            "application/json"
        ):
            # An error raised while the token is saved (the resource checks) reaches DOT's
            # wrapper without oauthlib's default headers; its body is the JSON error all the same.
            response["Content-Type"] = "application/json"
            response["Cache-Control"] = "no-store"
        return response


def _registration_refusal(metadata: dict) -> JsonResponse | None:
    """Why Catwalk refuses this client metadata (RFC 7591 §3.2.2), before DOT reads it; None
    when it has nothing to add to DOT's own checks."""
    grant_types = metadata.get("grant_types", ["authorization_code"])
    response_types = metadata.get("response_types", ["code"])
    redirect_uris = metadata.get("redirect_uris", [])
    if isinstance(grant_types, list) and not set(grant_types) <= set(GRANT_TYPES):
        return _metadata_error(
            "invalid_client_metadata",
            "grant_types may only be authorization_code and refresh_token.",
        )
    if isinstance(response_types, list) and not set(response_types) <= {"code"}:
        return _metadata_error("invalid_client_metadata", "response_types may only be code.")
    if isinstance(redirect_uris, list) and not all(
        isinstance(uri, str) and redirect_uri_allowed(uri) for uri in redirect_uris
    ):
        return _metadata_error(
            "invalid_redirect_uri",
            "An http redirect URI must point at a loopback address (127.0.0.1, [::1] or "
            "localhost); use https elsewhere.",
        )
    return None


def _metadata_error(error: str, description: str) -> JsonResponse:
    return JsonResponse({"error": error, "error_description": description}, status=400)


def _body_refusal(request: HttpRequest) -> JsonResponse | None:
    try:
        metadata = json.loads(request.body)
    except ValueError:
        return None  # DOT answers that one
    return _registration_refusal(metadata) if isinstance(metadata, dict) else None


class RegistrationView(dot_views.DynamicClientRegistrationView):
    """Dynamic Client Registration (RFC 7591), open to anyone (see OAUTH2_PROVIDER in
    settings), for clients that fit Catwalk's rules."""

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        return _body_refusal(request) or super().post(request, *args, **kwargs)


class RegistrationManagementView(dot_views.DynamicClientRegistrationManagementView):
    """A registered client reading, changing (by the same rules) or deleting its registration
    with its registration access token (RFC 7592)."""

    def put(self, request: HttpRequest, client_id: str, *args, **kwargs) -> HttpResponse:
        return _body_refusal(request) or super().put(request, client_id, *args, **kwargs)


class DeploymentResourceMetadataView(dot_views.OAuthProtectedResourceMetadataView):
    """RFC 9728 metadata of one deployment's endpoint, the resource its tokens are bound to."""

    def get(self, request: HttpRequest, deployment_id, *args, **kwargs) -> HttpResponse:
        self.deployment = get_object_or_404(Deployment, pk=deployment_id)
        return super().get(request, *args, **kwargs)

    def get_resource(self, request: HttpRequest) -> str:
        return self.deployment.endpoint_url

    def get_authorization_servers(self, request: HttpRequest) -> list[str]:
        return [settings.PUBLIC_URL]

    def get_resource_name(self) -> str:
        return self.deployment.name


@login_required
@require_POST
def revoke_approval_view(request: HttpRequest, deployment_id, application_id: int) -> HttpResponse:
    deployment = _get_deployment_for_user(request, deployment_id)
    try:
        application = revoke_approval(deployment, application_id, actor=request.user)
    except ApprovalNotFound as exc:
        raise Http404("This client holds no approval for this deployment.") from exc
    name = application.name or "The client"
    messages.success(request, f"{name} can no longer use {deployment.name}: its tokens are gone.")
    return _back_to(deployment, "#approvals")


# Mounted at the site's root in DOT's namespace, whose names its metadata view reverses.
oauth_patterns = [
    path(
        ".well-known/oauth-authorization-server",
        dot_views.OAuthServerMetadataView.as_view(),
        name="oauth-server-metadata",
    ),
    path(
        ".well-known/oauth-protected-resource/mcp/<uuid:deployment_id>",
        DeploymentResourceMetadataView.as_view(),
        name="oauth-resource-metadata-deployment",
    ),
    path("oauth/authorize/", ConsentView.as_view(), name="authorize"),
    path("oauth/token/", TokenView.as_view(), name="token"),
    path("oauth/revoke_token/", dot_views.RevokeTokenView.as_view(), name="revoke-token"),
    path("oauth/register/", RegistrationView.as_view(), name="dcr-register"),
    path(
        "oauth/register/<str:client_id>/",
        RegistrationManagementView.as_view(),
        name="dcr-register-management",
    ),
]
