"""A client of the Fly.io Machines REST API (and of Fly's logs API), as the Fly runtime uses it.

Only the documented subset Catwalk needs: apps, machines, volumes, app secrets, IP assignments
and logs. Base URLs and the token come from settings, so tests point the same code at a stand-in.

Fly answers errors as `{"error": "...", "status": "..."}`. Like flyctl, requests are retried
with exponential backoff (and jitter) on 408, 429 and 5xx and on connection failures, honouring
`Retry-After` when present; what is left after the retries is a `FlyError`. Creating a machine
or a volume is not idempotent and is never retried blindly here: after an ambiguous answer the
caller lists and adopts (machines by their metadata, as `deployments/runtimes/fly.py` does;
volumes by their name).

Nothing here logs a request or response body: secrets travel in them.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from django.conf import settings

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# The longest a single `wait` may block, by Fly's rules.
WAIT_MAX_SECONDS = 60


class FlyError(Exception):
    """Fly refused a request or could not be reached; `status` is 0 for a transport failure."""

    def __init__(self, status: int, code: str, message: str, method: str, path: str) -> None:
        self.status, self.code, self.message = status, code, message
        self.method, self.path = method, path
        where = f"{method} {path}"
        super().__init__(
            f"Fly API {where}: {status} {code}: {message}" if status else f"{where}: {message}"
        )

    @property
    def ambiguous(self) -> bool:
        """The request may or may not have taken effect (timeout, 5xx, connection lost)."""
        return self.status == 0 or self.status == 408 or self.status >= 500


@dataclass(frozen=True)
class LogLine:
    timestamp: str
    message: str
    level: str
    instance: str
    region: str


class FlyClient:
    """Blocking client; one per task run. Use as a context manager or call `close()`."""

    def __init__(
        self,
        *,
        api_url: str | None = None,
        logs_url: str | None = None,
        token: str | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        timeout: float = 30.0,
    ) -> None:
        token = token if token is not None else settings.FLY_API_TOKEN
        scheme = "" if token.startswith("FlyV1 ") else "Bearer "
        headers = {"Authorization": f"{scheme}{token}", "User-Agent": "catwalk-fly-runtime"}
        self.retries = settings.FLY_API_RETRIES if retries is None else retries
        self.backoff = settings.FLY_API_BACKOFF_SECONDS if backoff is None else backoff
        # Waits block up to WAIT_MAX_SECONDS on Fly's side: the read timeout must outlast them.
        self._http = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout, read=WAIT_MAX_SECONDS + timeout)
        )
        self.api_url = (api_url or settings.FLY_API_URL).rstrip("/")
        self.logs_url = (logs_url or settings.FLY_LOGS_API_URL).rstrip("/")

    def __enter__(self) -> FlyClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- transport ------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        retry: bool = True,
        base: str | None = None,
        accept: frozenset[int] = frozenset(),
    ) -> httpx.Response:
        """One API call with retries; returns the response for 2xx and `accept` statuses."""
        url = (base or self.api_url) + path
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            try:
                response = self._http.request(method, url, json=json, params=params)
            except httpx.TransportError as exc:
                error = FlyError(0, "unreachable", str(exc) or type(exc).__name__, method, path)
                delay = self._delay(attempt, None)
            else:
                logger.debug("fly %s %s -> %s", method, path, response.status_code)
                if response.is_success or response.status_code in accept:
                    return response
                error = self._error(response, method, path)
                if response.status_code not in RETRY_STATUSES:
                    raise error
                delay = self._delay(attempt, response.headers.get("retry-after"))
            if attempt + 1 < attempts:
                logger.info(
                    "fly %s %s: %s; retrying in %.1f s",
                    method,
                    path,
                    error.status or error.code,
                    delay,
                )
                time.sleep(delay)
        raise error

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), 30.0)
            except ValueError:
                pass
        return self.backoff * (2**attempt) * (0.5 + random.random())  # noqa: S311 - jitter

    @staticmethod
    def _error(response: httpx.Response, method: str, path: str) -> FlyError:
        code, message = "", ""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            message = str(body.get("error") or "")
            code = str(body.get("status") or "")
        return FlyError(
            response.status_code,
            code or response.reason_phrase,
            message or response.text[:300],
            method,
            path,
        )

    # --- apps -----------------------------------------------------------------------------
    def create_app(self, name: str, org: str, network: str = "") -> dict:
        body = {"app_name": name, "org_slug": org}
        if network:
            body["network"] = network
        response = self.request("POST", "/apps", json=body)
        return response.json() if response.content else {"name": name}

    def get_app(self, name: str) -> dict | None:
        """The app, or None when there is none this token can see (another org's is a 403)."""
        response = self.request("GET", f"/apps/{_seg(name)}", accept=frozenset({403, 404}))
        return None if response.status_code in (403, 404) else response.json()

    def delete_app(self, name: str) -> None:
        """Delete the app and its machines; one that is gone (or never ours) is no error."""
        self.request(
            "DELETE",
            f"/apps/{_seg(name)}",
            params={"force": "true"},
            accept=frozenset({403, 404}),
        )

    # --- secrets --------------------------------------------------------------------------
    def set_secrets(self, app: str, values: dict[str, str | None]) -> int:
        """Set (value) and unset (None) app secrets in one call; returns the secrets version."""
        response = self.request("POST", f"/apps/{_seg(app)}/secrets", json={"values": values})
        body = response.json() if response.content else {}
        version = body.get("version") if isinstance(body, dict) else None
        return int(version) if isinstance(version, int) else 0

    def list_secrets(self, app: str) -> list[str]:
        body = self.request("GET", f"/apps/{_seg(app)}/secrets").json()
        items = body.get("secrets", []) if isinstance(body, dict) else body
        return [item.get("name", "") for item in items or [] if isinstance(item, dict)]

    # --- IP assignments -------------------------------------------------------------------
    def list_ips(self, app: str) -> list[dict]:
        body = self.request("GET", f"/apps/{_seg(app)}/ip_assignments").json()
        items = body.get("ips", []) if isinstance(body, dict) else body
        return [item for item in items or [] if isinstance(item, dict)]

    def allocate_private_ip(self, app: str, network: str = "") -> dict:
        body: dict[str, str] = {"type": "private_v6"}
        if network:
            body["network"] = network
        return self.request("POST", f"/apps/{_seg(app)}/ip_assignments", json=body).json()

    # --- machines -------------------------------------------------------------------------
    def create_machine(self, app: str, body: dict) -> dict:
        """Create (and launch) a machine. Not retried: see the module's docstring."""
        return self.request("POST", f"/apps/{_seg(app)}/machines", json=body, retry=False).json()

    def get_machine(self, app: str, machine_id: str) -> dict | None:
        response = self.request(
            "GET", f"/apps/{_seg(app)}/machines/{_seg(machine_id)}", accept=frozenset({404})
        )
        return None if response.status_code == 404 else response.json()

    def list_machines(self, app: str, metadata: dict[str, str] | None = None) -> list[dict]:
        params = {f"metadata.{key}": value for key, value in (metadata or {}).items()}
        response = self.request(
            "GET", f"/apps/{_seg(app)}/machines", params=params, accept=frozenset({403, 404})
        )
        if response.status_code in (403, 404):
            return []
        return [m for m in response.json() or [] if isinstance(m, dict)]

    def update_machine(self, app: str, machine_id: str, body: dict) -> dict:
        return self.request(
            "POST", f"/apps/{_seg(app)}/machines/{_seg(machine_id)}", json=body
        ).json()

    def start_machine(self, app: str, machine_id: str) -> None:
        self.request("POST", f"/apps/{_seg(app)}/machines/{_seg(machine_id)}/start")

    def stop_machine(self, app: str, machine_id: str) -> None:
        self.request("POST", f"/apps/{_seg(app)}/machines/{_seg(machine_id)}/stop", json={})

    def delete_machine(self, app: str, machine_id: str) -> None:
        self.request(
            "DELETE",
            f"/apps/{_seg(app)}/machines/{_seg(machine_id)}",
            params={"force": "true"},
            accept=frozenset({404}),
        )

    def wait_machine(self, app: str, machine_id: str, state: str, timeout: int) -> bool:
        """Block until the machine is in `state` (True) or `timeout` seconds pass (False)."""
        response = self.request(
            "GET",
            f"/apps/{_seg(app)}/machines/{_seg(machine_id)}/wait",
            params={"state": state, "timeout": max(1, min(int(timeout), WAIT_MAX_SECONDS))},
            retry=False,
            accept=frozenset({408}),
        )
        return response.status_code != 408

    def machine_events(self, app: str, machine_id: str) -> list[dict]:
        body = self.request("GET", f"/apps/{_seg(app)}/machines/{_seg(machine_id)}/events").json()
        return [event for event in body or [] if isinstance(event, dict)]

    # --- volumes --------------------------------------------------------------------------
    def create_volume(self, app: str, name: str, region: str, size_gb: int) -> dict:
        """Create a volume (in Fly's default region when `region` is empty). Not retried: see
        the module's docstring; Fly allows several volumes of one name."""
        body: dict[str, Any] = {"name": name, "size_gb": size_gb}
        if region:
            body["region"] = region
        return self.request("POST", f"/apps/{_seg(app)}/volumes", json=body, retry=False).json()

    def list_volumes(self, app: str) -> list[dict]:
        """The app's volumes; none for an app that is not there. (A 403 is an error: a token
        that may not read them must not look like volumes that vanished.)"""
        response = self.request("GET", f"/apps/{_seg(app)}/volumes", accept=frozenset({404}))
        if response.status_code == 404:
            return []
        return [v for v in response.json() or [] if isinstance(v, dict)]

    def delete_volume(self, app: str, volume_id: str) -> None:
        """Delete a volume (its data with it); one that is already gone is no error."""
        self.request(
            "DELETE", f"/apps/{_seg(app)}/volumes/{_seg(volume_id)}", accept=frozenset({404})
        )

    # --- logs (Fly's platform API, not the Machines API) ----------------------------------
    def logs(self, app: str, next_token: str = "") -> tuple[list[LogLine], str]:
        """One page of the app's recent log lines, oldest first, and the token for the next."""
        params = {"next_token": next_token} if next_token else None
        body = self.request(
            "GET", f"/apps/{_seg(app)}/logs", params=params, base=self.logs_url, retry=False
        ).json()
        lines = []
        for item in body.get("data") or [] if isinstance(body, dict) else []:
            attributes = item.get("attributes") if isinstance(item, dict) else None
            if isinstance(attributes, dict):
                lines.append(
                    LogLine(
                        timestamp=str(attributes.get("timestamp", "")),
                        message=str(attributes.get("message", "")),
                        level=str(attributes.get("level", "")),
                        instance=str(attributes.get("instance", "")),
                        region=str(attributes.get("region", "")),
                    )
                )
        meta = body.get("meta") if isinstance(body, dict) else None
        token = str(meta.get("next_token") or "") if isinstance(meta, dict) else ""
        return lines, token


def _seg(value: str) -> str:
    """One URL path segment (app names and machine ids are plain, but never trust that)."""
    return quote(value, safe="")


def iter_events(machine: dict) -> Iterator[dict]:
    """A machine object's lifecycle events, newest first as Fly lists them."""
    for event in machine.get("events") or []:
        if isinstance(event, dict):
            yield event
