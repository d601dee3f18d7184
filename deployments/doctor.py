"""The connector doctor: the discovery a remote connector (claude.ai, ChatGPT) performs against a
deployment's public endpoint, step by step, each passing or failing with the fix in plain words.

Everything a connector does itself goes over HTTP to the public URL, as the connector's own
requests would: the unauthenticated `initialize` and its 401 challenge (MCP authorization, RFC
9728 §5.1), the protected resource metadata, the authorization server metadata (RFC 8414, then
OpenID discovery), dynamic client registration (RFC 7591) of a throwaway public client, the token
request with the PKCE verifier and the `resource` (RFC 7636, RFC 8707), and `initialize` plus
`tools/list` with the token through the gateway.

The one step a connector leaves to a person, the owner pressing Allow on the consent page, is
taken here for the owner, server-side: the authorization request the connector would send
(its client id, loopback redirect URI, S256 challenge, state, scope and resource) goes through
the same oauthlib server, with the same request validator, that the consent page's view answers
with once the owner allows. That saves handing the owner's browser session to an HTTP client or
scraping a form, and it still checks the client, the redirect URI, the PKCE challenge and the
resource, and records the grant the token endpoint later redeems over HTTP. The token's binding
is then read back from the database row the gateway will look it up by.

Whatever happens, the throwaway client is deleted at the end, and with it (the toolkit's foreign
keys cascade) its grant, its registration token, and the access and refresh tokens issued to it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.urls import resolve, reverse
from oauth2_provider.models import get_access_token_model, get_application_model
from oauthlib.oauth2 import OAuth2Error

from deployments.models import Deployment, DesiredState
from deployments.playground import PlaygroundError, connect
from deployments.runtimes.base import initialize_request

CLIENT_NAME = "Catwalk connector doctor"
# A loopback redirect URI, as a desktop client registers (RFC 8252 §7.3). Nothing listens there:
# the authorization response is read where it is made, never followed.
REDIRECT_URI = "http://127.0.0.1/callback"
# Discovery answers at once or not at all; the wake-up of a sleeping server is step 6's business.
HTTP_TIMEOUT = httpx.Timeout(10, connect=5)
MAX_TOOLS_NAMED = 5
INITIALIZE = initialize_request("catwalk-connector-doctor")
CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*"([^"]*)"')


class Outcome(StrEnum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Step:
    """One step as the page shows it: what was seen and, when it failed, how to fix it."""

    title: str
    outcome: Outcome
    seen: str
    fix: str = ""


@dataclass(frozen=True)
class Diagnosis:
    steps: list[Step]

    @property
    def healthy(self) -> bool:
        return all(step.outcome == Outcome.OK for step in self.steps)

    @property
    def failed_step(self) -> Step | None:
        return next((step for step in self.steps if step.outcome == Outcome.FAILED), None)


class StepFailed(Exception):
    def __init__(self, seen: str, fix: str) -> None:
        super().__init__(seen)
        self.seen, self.fix = seen, fix


async def diagnose(deployment: Deployment, owner: AbstractBaseUser) -> Diagnosis:
    """Run every step against `deployment.endpoint_url`, as `owner` where a person consents.
    A failed step skips the ones after it; the throwaway client goes away in every case."""
    steps: list[Step] = []
    failed = ""
    # Redirects are reported, not followed: connectors do not all follow them.
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=False) as http:
        checkup = _Checkup(deployment, owner, http)
        try:
            for title, check in checkup.checks():
                if failed:
                    steps.append(Step(title, Outcome.SKIPPED, f"Not run: “{failed}” failed."))
                    continue
                try:
                    steps.append(Step(title, Outcome.OK, await check()))
                except StepFailed as failure:
                    failed = title
                    steps.append(Step(title, Outcome.FAILED, failure.seen, failure.fix))
        finally:
            await checkup.clean_up()
    return Diagnosis(steps)


@dataclass
class _Checkup:
    """What the steps find, each handing the next what a connector would carry forward."""

    deployment: Deployment
    owner: AbstractBaseUser
    http: httpx.AsyncClient
    resource_metadata_url: str = ""
    challenge_scope: str = ""
    resource_metadata: dict = field(default_factory=dict)
    server_metadata: dict = field(default_factory=dict)
    client_id: str = ""
    token: str = ""

    @property
    def endpoint(self) -> str:
        return self.deployment.endpoint_url

    def checks(self):
        return [
            ("The endpoint asks for OAuth", self.challenge),
            ("Protected resource metadata", self.protected_resource),
            ("Authorization server metadata", self.authorization_server),
            ("Client registration", self.registration),
            ("A token for this deployment", self.token_for_deployment),
            ("Tools listed with the token", self.tools),
        ]

    # --- 1. The 401 challenge ----------------------------------------------------------------

    async def challenge(self) -> str:
        response = await self._send(
            "POST",
            self.endpoint,
            json=INITIALIZE,
            headers={"Accept": "application/json, text/event-stream"},
            fix=_REACH_FIX,
        )
        if response.status_code != 401:
            raise StepFailed(
                f"Without a token the endpoint answered HTTP {response.status_code}"
                f"{_redirect_note(response)}, where connectors expect 401.",
                "Something in front of Catwalk answers for /mcp/ at this address, or the "
                "address is not Catwalk's: requests to the endpoint must reach Catwalk's gateway "
                "unchanged, and CATWALK_PUBLIC_URL must be the address clients use "
                f"(now {settings.PUBLIC_URL}).",
            )
        header = response.headers.get("WWW-Authenticate", "")
        params = _bearer_challenge(header)
        if "resource_metadata" not in params:
            seen = f"“{header}”" if header else "no WWW-Authenticate header"
            raise StepFailed(
                f"The 401 came with {seen}: no resource_metadata to discover the sign-in from.",
                "The gateway answers every 401 with WWW-Authenticate: Bearer "
                'resource_metadata="…"; a proxy in front of Catwalk must pass that header on.',
            )
        self.resource_metadata_url = params["resource_metadata"]
        self.challenge_scope = params.get("scope", "")
        return f"HTTP 401, pointing to {self.resource_metadata_url}."

    # --- 2. RFC 9728 -------------------------------------------------------------------------

    async def protected_resource(self) -> str:
        url = self.resource_metadata_url
        metadata = await self._get_json(url, fix=_WELL_KNOWN_FIX)
        resource = metadata.get("resource")
        if resource != self.endpoint:
            raise StepFailed(
                f"The metadata at {url} names the resource {_shown(resource)}, but connectors "
                f"are given {self.endpoint}.",
                "A connector refuses metadata for another resource than the URL it was given, "
                "and asks for a token for that URL. Both come from CATWALK_PUBLIC_URL (now "
                f"{settings.PUBLIC_URL}): set it to the exact public address of this Catwalk, "
                "scheme and port included, on every process.",
            )
        servers = metadata.get("authorization_servers")
        if not isinstance(servers, list) or not servers or not isinstance(servers[0], str):
            raise StepFailed(
                f"The metadata at {url} names no authorization server "
                f"(authorization_servers is {_shown(servers)}).",
                f"It must list Catwalk itself ({settings.PUBLIC_URL}), where connectors sign in.",
            )
        self.resource_metadata = metadata
        return f"{url} names this endpoint and the authorization server {servers[0]}."

    # --- 3. RFC 8414 / OpenID discovery ------------------------------------------------------

    async def authorization_server(self) -> str:
        issuer = self.resource_metadata["authorization_servers"][0]
        failures = []
        for url in _server_metadata_urls(issuer):
            try:
                metadata = await self._get_json(url, fix="")
            except StepFailed as failure:
                failures.append(failure.seen)
                continue
            break
        else:
            raise StepFailed(
                " ".join(failures),
                f"The protected resource metadata names {issuer} as the authorization server; "
                f"Catwalk is its deployments' authorization server and publishes its metadata at "
                f"{settings.PUBLIC_URL}/.well-known/oauth-authorization-server. Name that "
                "server (CATWALK_PUBLIC_URL), and let /.well-known/ through any proxy.",
            )
        if metadata.get("issuer") != issuer:
            raise StepFailed(
                f"The metadata at {url} names the issuer {_shown(metadata.get('issuer'))}, "
                f"not {issuer}.",
                "Connectors refuse metadata whose issuer is not the server they asked (RFC 8414 "
                f"§3.3). Both come from CATWALK_PUBLIC_URL (now {settings.PUBLIC_URL}): set it "
                "to the public address of this Catwalk.",
            )
        if issuer != settings.PUBLIC_URL:
            raise StepFailed(
                f"The authorization server is {issuer}, not this Catwalk ({settings.PUBLIC_URL}).",
                "Catwalk issues its deployments' tokens itself: the protected resource metadata "
                "must name CATWALK_PUBLIC_URL as the authorization server.",
            )
        missing = [
            name
            for name in ("authorization_endpoint", "token_endpoint", "registration_endpoint")
            if not isinstance(metadata.get(name), str)
        ]
        if missing:
            raise StepFailed(
                f"The metadata at {url} has no {' or '.join(missing)}.",
                "Connectors sign in with the authorization code flow and register themselves "
                "(dynamic client registration): the authorization, token and registration "
                "endpoints must all be enabled and published.",
            )
        if "S256" not in (metadata.get("code_challenge_methods_supported") or []):
            raise StepFailed(
                f"The metadata at {url} does not list S256 in code_challenge_methods_supported "
                f"({_shown(metadata.get('code_challenge_methods_supported'))}).",
                "Connectors refuse an authorization server that does not advertise PKCE with "
                "S256: it must be required and published.",
            )
        self.server_metadata = metadata
        registration = metadata["registration_endpoint"]
        return f"{url}: issuer {issuer}, PKCE with S256, registration at {registration}."

    # --- 4. RFC 7591 -------------------------------------------------------------------------

    async def registration(self) -> str:
        url = self.server_metadata["registration_endpoint"]
        response = await self._send(
            "POST",
            url,
            json={
                "client_name": CLIENT_NAME,
                "redirect_uris": [REDIRECT_URI],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
            },
            fix=_WELL_KNOWN_FIX,
        )
        body = _json_object(response)
        if response.status_code != 201 or not isinstance(body.get("client_id"), str):
            raise StepFailed(
                f"Registering a public client at {url} answered HTTP {response.status_code}"
                f"{_oauth_error(body)}.",
                "Connectors register themselves before signing in: registration must be open to "
                "anonymous public clients (no client secret) with loopback and https redirect "
                "URIs.",
            )
        self.client_id = body["client_id"]
        return f"{url} registered a public client ({self.client_id}); it is deleted afterwards."

    # --- 5. Authorization code with PKCE and the resource, then RFC 8707 at the token endpoint --

    async def token_for_deployment(self) -> str:
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        scope = self.challenge_scope or " ".join(
            self.resource_metadata.get("scopes_supported") or []
        )
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": REDIRECT_URI,
            "code_challenge": challenge.decode().rstrip("="),
            "code_challenge_method": "S256",
            "state": secrets.token_urlsafe(16),
            "resource": self.endpoint,
            **({"scope": scope} if scope else {}),
        }
        authorization = f"{self.server_metadata['authorization_endpoint']}?{urlencode(query)}"
        code = await sync_to_async(_consent_as)(self.owner, authorization, self.endpoint)
        url = self.server_metadata["token_endpoint"]
        response = await self._send(
            "POST",
            url,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT_URI,
                "client_id": self.client_id,
                "code_verifier": verifier,
                "resource": self.endpoint,
            },
            fix=_WELL_KNOWN_FIX,
        )
        body = _json_object(response)
        token = body.get("access_token")
        if response.status_code != 200 or not isinstance(token, str):
            raise StepFailed(
                f"Exchanging the code at {url} answered HTTP {response.status_code}"
                f"{_oauth_error(body)}.",
                "Connectors redeem the code there with their PKCE verifier and the resource "
                "(this deployment's endpoint): the token endpoint must accept a public client "
                "and the resource it was authorized for.",
            )
        if str(body.get("token_type", "")).lower() != "bearer":
            raise StepFailed(
                f"The token endpoint issued a token of type {_shown(body.get('token_type'))}.",
                "Connectors send Bearer tokens only.",
            )
        self.token = token
        resources = await sync_to_async(_resources_of)(token)
        if resources != [self.endpoint]:
            raise StepFailed(
                f"The token issued is bound to {_shown(resources)}, not to {self.endpoint} alone.",
                "Every token must be bound to exactly the one deployment it was asked for "
                "(RFC 8707 resource), or a token for one deployment would open others.",
            )
        return f"{url} issued a token for you, bound to {self.endpoint} alone."

    # --- 6. MCP with the token ---------------------------------------------------------------

    async def tools(self) -> str:
        try:
            async with connect(self.deployment, self.token) as session:
                tools = await session.tools()
        except PlaygroundError as exc:
            if self.deployment.desired_state == DesiredState.STOPPED:
                fix = "The deployment is stopped: start it, then check again."
            else:
                fix = (
                    "The gateway must accept an OAuth token bound to this endpoint from its "
                    "owner; if the server itself fails, its status and logs on this page say why."
                )
            raise StepFailed(
                f"initialize and tools/list with the token failed: {exc}", fix
            ) from exc
        names = ", ".join(tool.name for tool in tools[:MAX_TOOLS_NAMED])
        more = f" and {len(tools) - MAX_TOOLS_NAMED} more" if len(tools) > MAX_TOOLS_NAMED else ""
        listed = f"{len(tools)} tool{'s' if len(tools) != 1 else ''}"
        return (
            f"initialize and tools/list answered: {listed}{f' ({names}{more})' if names else ''}."
        )

    # --- HTTP --------------------------------------------------------------------------------

    async def _send(self, method: str, url: str, *, fix: str, **kwargs) -> httpx.Response:
        try:
            return await self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise StepFailed(f"Could not reach {url}: {exc or type(exc).__name__}.", fix) from exc

    async def _get_json(self, url: str, *, fix: str) -> dict:
        response = await self._send("GET", url, fix=fix)
        body = _json_object(response)
        if response.status_code != 200 or not body:
            got = (
                "no JSON object" if response.status_code == 200 else f"HTTP {response.status_code}"
            )
            raise StepFailed(f"{url} answered {got}{_redirect_note(response)}.", fix)
        return body

    async def clean_up(self) -> None:
        if self.client_id:
            await sync_to_async(_delete_client)(self.client_id)


def _consent_as(owner: AbstractBaseUser, authorization_request: str, resource: str) -> str:
    """The authorization code the consent page would send back once `owner` allowed the request.

    The server is the one the authorization endpoint's view builds (its validator included), and
    the call is the one that view makes on Allow: oauthlib validates the request, then the
    validator stores the grant with the user, the PKCE challenge and the resource. The resource
    is passed as the view passes it, since oauthlib itself does not read it."""
    view = resolve(reverse("oauth2_provider:authorize")).func.view_class
    server = view.get_server()
    try:
        scopes, credentials = server.validate_authorization_request(authorization_request)
        credentials.update(user=owner, resource=[resource])
        headers, _, _ = server.create_authorization_response(
            authorization_request, scopes=scopes, credentials=credentials
        )
    except OAuth2Error as exc:
        raise StepFailed(
            f"The authorization request was refused: {exc.error}"
            f"{f' ({exc.description})' if exc.description else ''}.",
            _AUTHORIZE_FIX,
        ) from exc
    answer = parse_qs(urlsplit(headers.get("Location", "")).query)
    if "code" not in answer:
        error = answer.get("error", ["no code"])[0]
        description = answer.get("error_description", [""])[0]
        raise StepFailed(
            f"The authorization request was refused: {error}"
            f"{f' ({description})' if description else ''}.",
            _AUTHORIZE_FIX,
        )
    return answer["code"][0]


def _resources_of(token: str) -> list[str] | None:
    """The resources the toolkit bound the token to, found as the gateway finds it."""
    checksum = hashlib.sha256(token.encode()).hexdigest()
    row = get_access_token_model().objects.filter(token_checksum=checksum).first()
    return None if row is None else list(row.resource)


def _delete_client(client_id: str) -> None:
    get_application_model().objects.filter(client_id=client_id).delete()


def _server_metadata_urls(issuer: str) -> list[str]:
    """Where a client looks for the metadata of `issuer`, in the MCP specification's order:
    RFC 8414 then OpenID discovery, with the issuer's path inserted after the well-known part
    (and, for OpenID, also appended)."""
    parts = urlsplit(issuer)
    origin, path = f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")
    urls = [
        f"{origin}/.well-known/oauth-authorization-server{path}",
        f"{origin}/.well-known/openid-configuration{path}",
    ]
    if path:
        urls.append(f"{origin}{path}/.well-known/openid-configuration")
    return urls


def _bearer_challenge(header: str) -> dict[str, str]:
    """The parameters of a Bearer challenge (RFC 6750 §3), or nothing if there is none."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return {}
    return {name.lower(): value for name, value in CHALLENGE_PARAM.findall(rest)}


def _json_object(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _oauth_error(body: dict) -> str:
    if not isinstance(body.get("error"), str):
        return ""
    description = body.get("error_description")
    return f" ({body['error']}{f': {description}' if isinstance(description, str) else ''})"


def _redirect_note(response: httpx.Response) -> str:
    if response.is_redirect:
        target = response.headers.get("Location", "nowhere")
        return f" (a redirect to {target}, which connectors do not follow)"
    return ""


def _shown(value: object) -> str:
    return "nothing" if value in (None, "", []) else json.dumps(value)


_REACH_FIX = (
    "Connectors reach the endpoint at this address from the internet: CATWALK_PUBLIC_URL "
    "must be the address clients use, and Catwalk must answer there."
)
_WELL_KNOWN_FIX = (
    "Connectors fetch this from the address the server itself advertises: CATWALK_PUBLIC_URL "
    "must be the address clients use, and requests to /.well-known/ and /oauth/ must reach "
    "Catwalk."
)
_AUTHORIZE_FIX = (
    "A connector sends this request (its client id, redirect URI, PKCE challenge and this "
    "deployment as the resource) to the consent page: the authorization server must accept "
    "a newly registered public client with a loopback redirect URI."
)
