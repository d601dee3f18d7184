"""An OAuth client for the tests, written the way MCP clients work: it registers itself (or
names its metadata document), sends the user's browser to the authorization endpoint with PKCE
S256 and a resource, reads the code off the redirect, and exchanges it at the token endpoint.

`browser` is a Django test client signed in as the user; the back channel (registration,
token requests) goes through an anonymous one, as a client's own HTTP requests would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlencode, urlsplit

from django.http import HttpResponse
from django.test import Client

LOOPBACK_CALLBACK = "http://127.0.0.1:53682/callback"


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def checksum(token: str) -> str:
    """How the server finds a token it stores hashed (DOT's `token_checksum`)."""
    return hashlib.sha256(token.encode()).hexdigest()


def redirect_params(response: HttpResponse) -> dict[str, str]:
    """The query of the redirect an authorization response sends the browser to."""
    assert response.status_code == 302, response.content[:500]
    query = parse_qs(urlsplit(response["Location"]).query)
    return {key: values[0] for key, values in query.items()}


class _Forms(HTMLParser):
    """Every POST form of a page: its action and the hidden inputs it would submit."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "form" and attributes.get("method") == "post":
            self.forms.append((attributes.get("action") or "", {}))
        if tag == "input" and attributes.get("type") == "hidden" and self.forms:
            self.forms[-1][1][attributes["name"] or ""] = attributes.get("value") or ""


def consent_form(response: HttpResponse) -> tuple[str, dict[str, str]]:
    """The consent page's form (the page has others, e.g. signing out)."""
    parser = _Forms()
    parser.feed(response.content.decode())
    forms = [form for form in parser.forms if form[0] == "/oauth/authorize/"]
    assert len(forms) == 1, f"no single consent form in {parser.forms}"
    return forms[0]


@dataclass
class PkceClient:
    client_id: str
    redirect_uri: str = LOOPBACK_CALLBACK
    verifier: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    state: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    http: Client = field(default_factory=Client)

    @classmethod
    def register(
        cls, redirect_uri: str = LOOPBACK_CALLBACK, name: str = "Test MCP client", **metadata
    ) -> PkceClient:
        """Dynamic Client Registration (RFC 7591) as a public client, as MCP clients do."""
        response = register(redirect_uris=[redirect_uri], client_name=name, **metadata)
        assert response.status_code == 201, response.content
        return cls(client_id=response.json()["client_id"], redirect_uri=redirect_uri)

    def authorize_url(self, resource: str | None, **overrides) -> str:
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "code_challenge": s256(self.verifier),
            "code_challenge_method": "S256",
            "state": self.state,
            "scope": "mcp",
        }
        if resource is not None:
            params["resource"] = resource
        params.update(overrides)
        return "/oauth/authorize/?" + urlencode({k: v for k, v in params.items() if v is not None})

    def consent_page(self, browser: Client, resource: str | None, **overrides) -> HttpResponse:
        return browser.get(self.authorize_url(resource, **overrides))

    def decide(
        self, browser: Client, page: HttpResponse, *, allow: bool = True, **changed: str
    ) -> HttpResponse:
        """Submit the consent page's form, as the browser would, pressing Approve or Deny."""
        assert page.status_code == 200, page.content[:500]
        action, fields = consent_form(page)
        fields.update(changed)
        if allow:
            fields["allow"] = "true"
        return browser.post(action, fields)

    def approve(self, browser: Client, resource: str | None, **overrides) -> dict[str, str]:
        """Consent page, Approve: the parameters the client receives on its redirect URI."""
        page = self.consent_page(browser, resource, **overrides)
        return redirect_params(self.decide(browser, page))

    def exchange(self, code: str, resource: str | None, **overrides) -> HttpResponse:
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "client_id": self.client_id,
            "code_verifier": self.verifier,
            "resource": resource,
            **overrides,
        }
        return self.http.post("/oauth/token/", {k: v for k, v in data.items() if v is not None})

    def tokens(self, browser: Client, resource: str) -> dict:
        """The whole flow: approve, exchange; the token response."""
        response = self.exchange(self.approve(browser, resource)["code"], resource)
        assert response.status_code == 200, response.content
        return response.json()

    def refresh(self, refresh_token: str, resource: str | None = None) -> HttpResponse:
        data = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": self.client_id,
            "resource": resource,
        }
        return self.http.post("/oauth/token/", {k: v for k, v in data.items() if v is not None})


def register(**metadata) -> HttpResponse:
    metadata.setdefault("token_endpoint_auth_method", "none")
    metadata.setdefault("grant_types", ["authorization_code", "refresh_token"])
    metadata.setdefault("response_types", ["code"])
    return Client().post("/oauth/register/", json.dumps(metadata), content_type="application/json")
