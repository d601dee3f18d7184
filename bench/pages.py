"""How long Catwalk's web pages take on the server, for a user with 100 deployments and history.

Acceptance target: every page under 100 ms of server time for a user with 100 deployments, each
with a day of heavy traffic behind it. The same pages for a user with one deployment (and the
same history per deployment) are the baseline.

- **Where**: a child process (`python -m bench.pages`) with production settings — `DEBUG` off,
  a fresh SECRET_KEY and encryption key, whitenoise's manifest storage over static files
  collected into a throwaway data folder, which also holds the SQLite database file. With
  `DATABASE_URL` set, PostgreSQL instead: a throwaway database next to the named one, dropped
  afterwards, vacuumed and analysed after the bulk load as autovacuum would.
- **Data**: written with `bulk_create` (see `Scale` for the volumes): deployments with their
  tool calls, lifecycle events, access tokens, credentials, analyses with full server.json
  results, source builds with their build logs, the servers' stderr logs (a full rotated pair
  each), the user's audit log and GitHub token.
- **Pages**: every GET route of `catwalk.urls` whose view lives in the deployments or analysis
  apps, or which takes a deployment or analysis id — found by walking the URL configuration, so
  a page or htmx partial added later is measured without touching this file. A route answering
  405 is POST-only and left out; a page whose htmx request (`HX-Request`) gets a fragment instead
  of the whole document is measured both ways.
- **How**: Django's test `Client`, in process: the whole middleware stack (sessions, CSRF,
  authentication, audit, CSP, htmx), the view, its queries and its templates — no network,
  no ASGI server, no TLS. `warmup` unmeasured requests per page, then `requests` measured ones,
  interleaved across pages so drift hits them alike. Wall time by `time.perf_counter`, CPU by
  `time.process_time` (SQLite runs inside this process; PostgreSQL's own CPU is not counted).
  No gateway runs: a page that calls it (the playground) is timed with the connection refused.
  Queries are counted in one more request, under `CaptureQueriesContext`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench import report
from bench.proctree import machine_busy_seconds

REPO = Path(__file__).resolve().parents[1]
TARGET_MS = 100.0
REQUESTS = 30
WARMUP = 3
BEGIN_MARKER = "<!-- bench:pages:begin -->"
END_MARKER = "<!-- bench:pages:end -->"
# Views in these apps are Catwalk's pages; routes taking these ids are a deployment's or an
# analysis's, whichever app serves them.
PAGE_APPS = ("deployments", "analysis")
ID_PARAMETERS = ("deployment_id", "analysis_id")
RETENTION_DAYS = 30  # TOOL_CALL_RETENTION_DAYS's default: older calls are pruned
BUSY, BASELINE = "busy", "baseline"


@dataclass(frozen=True)
class Scale:
    """The busy user's account. Per-deployment volumes apply to the baseline user's one too."""

    deployments: int = 100
    calls_24h: int = 2_000  # per deployment, in the last 24 hours
    calls_older: int = 2_000  # per deployment, spread over the rest of the retention window
    events: int = 500  # per deployment: a month of sleeping, waking, restarts
    tokens: int = 5  # per deployment, one of them revoked and one expired
    credentials: int = 3  # per deployment
    audit_events: int = 5_000  # the busy user's security log (the baseline's is 1/100 of it)
    failed_analyses: int = 20  # besides the one succeeded analysis behind each deployment
    source_every: int = 10  # every tenth deployment is built from source, the measured one too
    build_log_lines: int = 3_000  # a chatty npm install and build
    stderr_log_bytes: int = 512 * 1024  # the bridge rotates at this: a full log and a full .1


@dataclass
class PageTiming:
    """One page for one user."""

    user: str
    name: str  # the route's name, " (htmx)" added for its fragment
    route: str  # the route's pattern, e.g. deployments/<uuid:deployment_id>/
    status: int
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    queries: int = 0
    bytes: int = 0

    @property
    def median_ms(self) -> float:
        return statistics.median(self.wall_ms)

    @property
    def p95_ms(self) -> float:
        ranked = sorted(self.wall_ms)
        return ranked[min(len(ranked) - 1, round(0.95 * (len(ranked) - 1)))]

    @property
    def max_ms(self) -> float:
        return max(self.wall_ms)

    @property
    def cpu_median_ms(self) -> float:
        return statistics.median(self.cpu_ms)

    @property
    def cpu_max_ms(self) -> float:
        return max(self.cpu_ms)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "median_ms": self.median_ms,
            "p95_ms": self.p95_ms,
            "max_ms": self.max_ms,
            "cpu_median_ms": self.cpu_median_ms,
            "cpu_max_ms": self.cpu_max_ms,
        }


@dataclass
class Measurement:
    database: str
    scale: Scale
    requests: int
    warmup: int
    rows: dict[str, int]  # table → rows, the whole database
    populate_s: float
    pages: list[PageTiming]
    skipped: dict[str, str]  # route → why it is not measured
    failures: dict[str, str]  # page → the error it raised
    other_load_percent: float  # CPU used by other processes while measuring, share of machine

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        timing_fields = {f.name for f in fields(PageTiming)}
        return cls(
            **{
                **data,
                "scale": Scale(**data["scale"]),
                "pages": [
                    PageTiming(**{k: v for k, v in page.items() if k in timing_fields})
                    for page in data["pages"]
                ],
            }
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"pages": [page.as_dict() for page in self.pages]}


# --- The parent: runs the child with production settings ---------------------------------------


def measure(scale: Scale = Scale(), requests: int = REQUESTS, warmup: int = WARMUP) -> Measurement:
    """Populate a throwaway database and time every page, in a child process of its own."""
    with tempfile.TemporaryDirectory(prefix="catwalk-bench-pages-") as work:
        out = Path(work) / "pages.json"
        spec = {"scale": asdict(scale), "requests": requests, "warmup": warmup}
        subprocess.run(
            [sys.executable, "-m", "bench.pages", json.dumps(spec), str(out)],
            env=_production_environment(Path(work) / "data"),
            cwd=REPO,
            check=True,
        )
        return Measurement.from_dict(json.loads(out.read_text()))


def _production_environment(data_dir: Path) -> dict[str, str]:
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if k not in {"CATWALK_TESTING", "DEBUG"}}
    return env | {
        "DJANGO_SETTINGS_MODULE": "catwalk.settings",
        "DEBUG": "False",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "CATWALK_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "CATWALK_DATA_DIR": str(data_dir),
        # No gateway runs here, and nothing listens on this port: a page that calls the gateway
        # (the playground lists a deployment's tools through it) is refused at once instead
        # of waiting on DNS for a made-up host.
        "CATWALK_PUBLIC_URL": "https://127.0.0.1:1",
        "ALLOWED_HOSTS": "testserver",  # the test client's host name
    }


# --- The child: database, data, pages ---------------------------------------------------------


@dataclass
class Subject:
    """A user and the objects whose pages are measured for them."""

    user: Any
    deployment: Any
    analysis: Any
    token_id: int


@dataclass(frozen=True)
class Page:
    name: str
    route: str
    url: str
    htmx: bool = False


def _child(spec: Mapping[str, Any], out: Path) -> None:
    import django

    django.setup()
    import logging

    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import override_settings

    from catwalk.warmup import load_and_freeze

    assert not settings.DEBUG, "the pages are measured with production settings"
    # The probes for POST-only routes would log a warning each.
    logging.getLogger("django.request").setLevel(logging.ERROR)
    scale = Scale(**spec["scale"])
    if connection.vendor == "sqlite":
        import sqlite3

        call_command("migrate", verbosity=0, interactive=False)
        database = f"SQLite {sqlite3.sqlite_version} (a file in the throwaway data folder)"
        created = None
    else:
        # Never the database named in DATABASE_URL, nor the test suite's test_<name>.
        test_settings = connection.settings_dict.setdefault("TEST", {})
        test_settings["NAME"] = f"{connection.settings_dict['NAME']}_bench_pages_{os.getpid()}"
        old_name = connection.settings_dict["NAME"]
        created = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
        major, minor = divmod(connection.pg_version, 10000)
        database = f"PostgreSQL {major}.{minor} (a throwaway database)"
    try:
        with override_settings(STATIC_ROOT=settings.DATA_DIR / "static"):
            call_command("collectstatic", interactive=False, verbosity=0)
            print("pages: populating…", file=sys.stderr, flush=True)
            started = time.perf_counter()
            subjects = _populate(scale, random.Random(20261128))  # noqa: S311 - fixed data
            if connection.vendor == "postgresql":
                # What autovacuum does after a bulk insert: planner statistics, and the
                # visibility map that lets counts read the index alone.
                with connection.cursor() as cursor:
                    cursor.execute("VACUUM ANALYZE")
            populate_s = time.perf_counter() - started
            rows = _row_counts()
            # A serving process's start-up, as catwalk/asgi.py does it: every view imported
            # and the heap frozen out of the garbage collector's passes (catwalk/warmup.py).
            load_and_freeze()
            print(
                f"pages: {sum(rows.values()):,} rows in {populate_s:.0f} s; measuring…",
                file=sys.stderr,
                flush=True,
            )
            pages, skipped, failures = [], {}, {}
            machine, own, wall = machine_busy_seconds(), time.process_time(), time.perf_counter()
            for label, subject in subjects.items():
                timed, skipped_here, failed = _measure_user(
                    label, subject, spec["requests"], spec["warmup"]
                )
                pages += timed
                skipped |= skipped_here
                failures |= failed
            others = machine_busy_seconds() - machine - (time.process_time() - own)
            capacity = (time.perf_counter() - wall) * (os.cpu_count() or 1)
    finally:
        if created is not None:
            connection.creation.destroy_test_db(old_name, verbosity=0)
    measurement = Measurement(
        database=database,
        scale=scale,
        requests=spec["requests"],
        warmup=spec["warmup"],
        rows=rows,
        populate_s=populate_s,
        pages=pages,
        skipped=skipped,
        failures=failures,
        other_load_percent=min(100.0, max(0.0, others / capacity * 100)) if capacity else 0.0,
    )
    out.write_text(json.dumps(measurement.as_dict(), indent=2))


def _row_counts() -> dict[str, int]:
    from django.apps import apps

    counts = {}
    for app in ("analysis", "deployments"):
        for model in apps.get_app_config(app).get_models():
            counts[model.__name__] = model.objects.count()
    return {name: count for name, count in counts.items() if count}


# --- Pages: every GET route of the deployments and analysis apps ------------------------------


OAUTH_NAMESPACE = "oauth2_provider:"


def discover() -> list[tuple[str, str, tuple[str, ...]]]:
    """(reversible name, pattern, parameter names) of every route that may be a page."""
    from django.urls import URLPattern, URLResolver, get_resolver

    found = []

    def walk(patterns, prefix: str, namespace: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
                walk(entry.url_patterns, prefix + str(entry.pattern), inner)
                continue
            if not isinstance(entry, URLPattern):
                continue
            parameters = tuple(entry.pattern.regex.groupindex)
            app = getattr(entry.callback, "__module__", "").split(".")[0]
            if app not in PAGE_APPS and not set(parameters) & set(ID_PARAMETERS):
                continue
            name = f"{namespace}{entry.name}" if entry.name else ""
            found.append((name, prefix + str(entry.pattern), parameters))

    walk(get_resolver().url_patterns, "", "")
    return found


def _pages_for(subject: Subject) -> tuple[list[Page], dict[str, str]]:
    from django.urls import reverse

    values = {
        "deployment_id": subject.deployment.pk,
        "analysis_id": subject.analysis.pk,
        "token_id": subject.token_id,
    }
    pages, skipped = [], {}
    for name, route, parameters in discover():
        missing = [p for p in parameters if p not in values]
        if not name:
            skipped[route] = "has no name to reverse"
        elif name.startswith(OAUTH_NAMESPACE) and "deployment_id" not in parameters:
            # A deployment's protected-resource metadata is a plain GET, and measured.
            skipped[route] = "an OAuth protocol endpoint: answers a registered client's request"
        elif missing:
            skipped[route] = f"needs {', '.join(missing)}"
        else:
            url = reverse(name, kwargs={p: values[p] for p in parameters})
            pages.append(Page(name, route, url))
    return pages, skipped


def _get(client, page: Page, *, htmx: bool = False):
    # Behind Fly's proxy every request arrives as HTTPS; plain HTTP would only be redirected.
    headers = {"HX-Request": "true"} if htmx or page.htmx else {}
    return client.get(page.url, secure=True, headers=headers)


def _body(response) -> bytes:
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content


def _is_document(body: bytes) -> bool:
    return body.lstrip()[:15].lower() == b"<!doctype html>"


def _measure_user(
    label: str, subject: Subject, requests: int, warmup: int
) -> tuple[list[PageTiming], dict[str, str], dict[str, str]]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    client.force_login(subject.user)
    candidates, skipped = _pages_for(subject)
    pages: list[Page] = []
    timings: dict[Page, PageTiming] = {}
    failures: dict[str, str] = {}
    for page in candidates:
        try:
            response = _get(client, page)
            if response.status_code == 405:
                skipped[page.route] = "POST only"
                continue
            variants = [page]
            fragment = _get(client, page, htmx=True)
            if (
                fragment.status_code == 200
                and _is_document(_body(response))
                and not _is_document(_body(fragment))
            ):
                variants.append(Page(f"{page.name} (htmx)", page.route, page.url, htmx=True))
        except Exception as exc:  # one broken page must not hide the others' numbers
            failures[f"{label} {page.name}"] = f"{type(exc).__name__}: {exc}"
            continue
        for variant in variants:
            pages.append(variant)
            timings[variant] = PageTiming(label, variant.name, variant.route, 0)
    for _ in range(warmup):
        for page in pages:
            _get(client, page)
    for _ in range(requests):
        for page in pages:
            wall, cpu = time.perf_counter(), time.process_time()
            response = _get(client, page)
            body = _body(response)
            timing = timings[page]
            timing.wall_ms.append((time.perf_counter() - wall) * 1e3)
            timing.cpu_ms.append((time.process_time() - cpu) * 1e3)
            timing.status, timing.bytes = response.status_code, len(body)
    for page in pages:
        with CaptureQueriesContext(connection) as captured:
            _get(client, page)
        timings[page].queries = len(captured.captured_queries)
    return [timings[page] for page in pages], skipped, failures


# --- The data ------------------------------------------------------------------------------------

TOOLS = (
    "search_issues",
    "get_issue",
    "create_issue",
    "list_pull_requests",
    "get_file_contents",
    "search_code",
    "create_comment",
    "list_commits",
    "get_forecast",
    "query",
    "fetch",
    "read_resource",
)
METHODS = (
    ("tools/call", 85),
    ("tools/list", 8),
    ("initialize", 5),
    ("resources/read", 2),
)
OUTCOMES = (("ok", 97), ("error", 2), ("timeout", 0.7), ("cancelled", 0.3))


@contextlib.contextmanager
def _dated_as_given(*model_fields) -> Iterator[None]:
    """History needs its own dates, which `auto_now_add` would overwrite with the present."""
    saved = [(f, f.auto_now, f.auto_now_add) for f in model_fields]
    for f in model_fields:
        f.auto_now = f.auto_now_add = False
    try:
        yield
    finally:
        for f, auto_now, auto_now_add in saved:
            f.auto_now, f.auto_now_add = auto_now, auto_now_add


def _populate(scale: Scale, rng: random.Random) -> dict[str, Subject]:
    from django.db import transaction

    from analysis.models import Analysis
    from deployments.models import AccessToken, Deployment, DeploymentEvent, SourceBuild

    dated = [
        model._meta.get_field("created_at")
        for model in (Analysis, Deployment, AccessToken, DeploymentEvent, SourceBuild)
    ]
    with transaction.atomic(), _dated_as_given(*dated):
        return {
            BUSY: _populate_user("busy", scale.deployments, scale, rng),
            BASELINE: _populate_user("baseline", 1, scale, rng),
        }


def _sha(rng: random.Random) -> str:
    return f"{rng.getrandbits(160):040x}"


def _populate_user(username: str, count: int, scale: Scale, rng: random.Random) -> Subject:
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from analysis.models import Analysis, AnalysisStatus, AnalysisStep, Repository
    from deployments.models import (
        AccessToken,
        Credential,
        Deployment,
        DesiredState,
        GitHubToken,
        PackageRegistry,
        Status,
    )

    now = timezone.now()
    user = get_user_model().objects.create_user(username, f"{username}@example.com")
    github_token = GitHubToken(user=user)
    github_token.set_token("github_pat_" + secrets.token_urlsafe(60))
    github_token.save()

    repositories = Repository.objects.bulk_create(
        Repository(owner=f"org-{i % 17}", name=f"{username}-mcp-{i}")
        for i in range(count + (scale.failed_analyses if count > 1 else 0))
    )
    analyses = []
    for i, repository in enumerate(repositories):
        finished = now - timedelta(days=rng.uniform(1, 90))
        succeeded = i < count
        analyses.append(
            Analysis(
                repository=repository,
                requested_by=user,
                commit_sha=_sha(rng),
                analyser_version="1",
                status=AnalysisStatus.SUCCEEDED if succeeded else AnalysisStatus.FAILED,
                step=AnalysisStep.DONE if succeeded else AnalysisStep.FAILED,
                progress=_progress(finished, succeeded),
                variant="static+introspection",
                result=_server_json(repository.owner, repository.name, rng) if succeeded else None,
                error="" if succeeded else "The server did not answer tools/list within 180 s.",
                timings={"fetch": 0.8, "static": 0.1, "introspection": 4.2},
                created_at=finished - timedelta(seconds=8),
                started_at=finished - timedelta(seconds=7),
                finished_at=finished,
            )
        )
    analyses = Analysis.objects.bulk_create(analyses)

    builds = _source_builds(user, repositories[:count], scale, rng, now)
    statuses = [Status.RUNNING] * 12 + [Status.SLEEPING] * 5 + [Status.STOPPED, Status.CRASHED]
    deployments = []
    for i, analysis in enumerate(analyses[:count]):
        build = builds.get(i)
        status = Status.RUNNING if i == 0 else rng.choice(statuses)
        package = analysis.result["packages"][0]
        deployments.append(
            Deployment(
                owner=user,
                name=f"server-{i:03d}",
                analysis=analysis,
                package_registry=PackageRegistry.SOURCE if build else PackageRegistry.NPM,
                package_name=build.repository if build else package["identifier"],
                package_version=build.commit_sha[:12] if build else package["version"],
                source_build=build,
                desired_state=DesiredState.STOPPED
                if status == Status.STOPPED
                else DesiredState.RUNNING,
                status=status,
                status_detail="The server exited with code 1." if status == Status.CRASHED else "",
                status_changed_at=now - timedelta(minutes=rng.uniform(1, 600)),
                last_active_at=now - timedelta(seconds=rng.uniform(1, 3600)),
                created_at=analysis.finished_at + timedelta(minutes=2),
            )
        )
    deployments = Deployment.objects.bulk_create(deployments)

    tokens_by_deployment = _tokens(deployments, scale, rng, now)
    credentials = []
    for deployment in deployments:
        for n in range(scale.credentials):
            credential = Credential(deployment=deployment, name=f"API_KEY_{n}", is_secret=n > 0)
            credential.set_value(secrets.token_urlsafe(24))
            credentials.append(credential)
    Credential.objects.bulk_create(credentials)
    for deployment in deployments:
        _tool_calls(deployment, tokens_by_deployment[deployment.pk], scale, rng, now)
        _events(deployment, user, scale, rng, now)
        _stderr_logs(deployment, scale, rng)
    audit_events = max(10, scale.audit_events * count // max(scale.deployments, 1))
    _audit_events(user, deployments, audit_events, rng, now)
    first = deployments[0]
    token_id = (
        AccessToken.objects.filter(deployment=first).values_list("pk", flat=True).first() or 0
    )
    return Subject(user, first, analyses[0], token_id)


def _progress(finished: datetime, succeeded: bool) -> list[dict[str, Any]]:
    began = finished - timedelta(seconds=7)
    steps = ["fetching", "manifests", "scanning", "registry", "introspecting"]
    progress = [
        {"step": step, "at": (began + timedelta(seconds=n)).isoformat(), "seconds": 1.0}
        for n, step in enumerate(steps)
    ]
    progress[-1].pop("seconds")
    if not succeeded:
        progress[-1]["seconds"] = 2.0
    return progress


def _server_json(owner: str, name: str, rng: random.Random) -> dict[str, Any]:
    """An analysed server.json the size of a real one with thirty tools (about 25 KiB)."""
    from analysis.serverjson import META_KEY

    variables = [
        {
            "name": f"{name.upper().replace('-', '_')}_{suffix}",
            "description": f"The {suffix.lower().replace('_', ' ')} the server signs in with.",
            "isRequired": n == 0,
            "isSecret": n < 2,
        }
        for n, suffix in enumerate(("API_KEY", "WEBHOOK_TOKEN", "REGION", "LOG_LEVEL"))
    ]
    tools = [
        {
            "name": f"{TOOLS[n % len(TOOLS)]}_{n}",
            "description": "Searches the service for what the query names and returns the "
            "matches with their identifiers, titles and a short excerpt of each, newest first. "
            * 2,
            "inputSchema": {
                "type": "object",
                "properties": {
                    prop: {"type": "string", "description": f"The {prop} to use."}
                    for prop in ("query", "owner", "repository", "page", "per_page")
                },
                "required": ["query"],
            },
        }
        for n in range(30)
    ]
    return {
        "$schema": "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json",
        "name": f"io.github.{owner}/{name}",
        "description": "Search and manage issues, pull requests and code of a hosted service.",
        "version": "1.4.0",
        "repository": {"url": f"https://github.com/{owner}/{name}", "source": "github"},
        "packages": [
            {
                "registryType": "npm",
                "identifier": f"@{owner}/{name}",
                "version": f"1.{rng.randrange(20)}.{rng.randrange(10)}",
                "runtimeHint": "npx",
                "transport": {"type": "stdio"},
                "packageArguments": [
                    {
                        "type": "named",
                        "name": "--read-only",
                        "description": "Refuse every tool that writes.",
                        "isRequired": False,
                    }
                ],
                "environmentVariables": variables,
            }
        ],
        "_meta": {
            META_KEY: {
                "deployable": "package",
                "package": {
                    "source": {"layer": "manifest", "file": "package.json", "detail": "name"},
                    "executables": [name],
                    "verified": True,
                    "registry": {"latest": "1.4.0", "repository": f"https://github.com/{owner}"},
                },
                "description": {"source": {"layer": "manifest", "file": "package.json"}},
                "transports": {"stdio": [{"layer": "static", "file": "src/index.ts"}]},
                "sources": {
                    "environmentVariables": {
                        v["name"]: [
                            {"layer": "static", "file": "src/config.ts", "detail": "process.env"},
                            {"layer": "documentation", "file": "README.md", "detail": ""},
                        ]
                        for v in variables
                    },
                },
                "build": {"node": {"manager": "npm"}},
                "excludedVariables": [{"name": "NODE_ENV", "reason": "a variable of the runtime"}],
                "unpublished": None,
                "tools": {
                    "verified": True,
                    "serverInfo": {"name": name, "version": "1.4.0"},
                    "tools": tools,
                    "resources": [{"uri": f"{name}://projects", "name": "Projects"}],
                    "prompts": [{"name": "triage", "description": "Triage new issues"}],
                    "needsCredentials": False,
                    "error": "",
                    "stderrTail": [],
                },
                "claude": {"used": False},
                "warnings": ["The README names a variable the code never reads."],
                "timings": {"fetch": 0.8, "static": 0.1},
            }
        },
    }


def _source_builds(user, repositories, scale: Scale, rng: random.Random, now: datetime) -> dict:
    """Deployment index → its build, for every `source_every`-th deployment, logs written."""
    from deployments import builds as build_module
    from deployments.models import BuildStatus, SourceBuild

    made = {}
    for i, repository in enumerate(repositories):
        if scale.source_every <= 0 or i % scale.source_every:
            continue
        recipe = {"ecosystem": "node", "packageManager": "npm", "lockfile": True, "n": i}
        finished = now - timedelta(days=rng.uniform(1, 60))
        made[i] = SourceBuild(
            repository=repository.full_name,
            commit_sha=_sha(rng),
            recipe=recipe,
            recipe_hash=build_module.recipe_hash(recipe),
            status=BuildStatus.SUCCEEDED,
            size_bytes=48 << 20,
            requested_by=user,
            created_at=finished - timedelta(seconds=40),
            started_at=finished - timedelta(seconds=38),
            finished_at=finished,
        )
    SourceBuild.objects.bulk_create(made.values())
    for build in made.values():
        path = build_module.log_path(build)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = (
            f"npm http fetch GET 200 https://registry.npmjs.org/package-{n} {n % 97}ms (cache miss)"
            for n in range(scale.build_log_lines)
        )
        path.write_text("\n".join(lines) + "\n[catwalk] Built: 48 MiB.\n")
    return made


def _tokens(deployments, scale: Scale, rng: random.Random, now: datetime) -> dict[Any, list]:
    """Each deployment's tokens (its active ones returned, for the calls to name)."""
    from deployments.models import TOKEN_PREFIX, AccessToken, hash_token

    tokens = []
    for deployment in deployments:
        for n in range(scale.tokens):
            plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
            created = deployment.created_at + timedelta(days=n)
            tokens.append(
                AccessToken(
                    deployment=deployment,
                    label=("laptop", "ci", "cursor", "claude-code", "old laptop")[n % 5],
                    prefix=plaintext[:12],
                    token_hash=hash_token(plaintext),
                    created_at=created,
                    last_used_at=now - timedelta(seconds=rng.uniform(1, 86400)),
                    revoked_at=created + timedelta(days=3) if n == 4 else None,
                    expires_at=created + timedelta(days=7) if n == 3 else None,
                )
            )
    AccessToken.objects.bulk_create(tokens)
    active: dict[Any, list] = {d.pk: [] for d in deployments}
    for token in tokens:
        if token.revoked_at is None and token.expires_at is None:
            active[token.deployment_id].append(token)
    return active


def _weighted(rng: random.Random, choices: Sequence[tuple[str, float]]) -> str:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


def _tool_calls(deployment, tokens, scale: Scale, rng: random.Random, now: datetime) -> None:
    from deployments.models import ToolCall

    sessions = [secrets.token_hex(16) for _ in range(50)]
    day = 86400.0
    ages = [rng.uniform(0, day) for _ in range(scale.calls_24h)]
    ages += [rng.uniform(day, RETENTION_DAYS * day) for _ in range(scale.calls_older)]
    calls = []
    for age in ages:
        method = _weighted(rng, METHODS)
        outcome = _weighted(rng, OUTCOMES)
        calls.append(
            ToolCall(
                deployment=deployment,
                token=rng.choice(tokens) if tokens else None,
                session_id=rng.choice(sessions),
                method=method,
                target=rng.choice(TOOLS) if method == "tools/call" else "",
                started_at=now - timedelta(seconds=age),
                duration_ms=round(rng.lognormvariate(3.7, 0.9), 2),
                outcome=outcome,
                error_code=-32603 if outcome == "error" else None,
            )
        )
    ToolCall.objects.bulk_create(calls, batch_size=2_000)


def _events(deployment, user, scale: Scale, rng: random.Random, now: datetime) -> None:
    """A month of an idle server sleeping and waking, and its owner's actions now and then."""
    from deployments.models import DeploymentEvent, EventKind, Status

    cycle = [
        (Status.SLEEPING, "Idle for 15 minutes: sleeping until the next request."),
        (Status.STARTING, "A request woke it."),
        (Status.RUNNING, "Answering: tools/list returned 30 tools."),
    ]
    events = []
    spacing = timedelta(days=RETENTION_DAYS) / max(scale.events, 1)
    for n in range(scale.events):
        created = now - (scale.events - n) * spacing
        if n % 25 == 24:
            events.append(
                DeploymentEvent(
                    deployment=deployment,
                    kind=EventKind.ACTION,
                    message="Restart requested.",
                    actor=user,
                    created_at=created,
                )
            )
            continue
        status, message = cycle[n % len(cycle)]
        events.append(
            DeploymentEvent(
                deployment=deployment,
                kind=EventKind.STATUS,
                status=status,
                message=message,
                created_at=created,
            )
        )
    DeploymentEvent.objects.bulk_create(events, batch_size=2_000)


def _stderr_logs(deployment, scale: Scale, rng: random.Random) -> None:
    from deployments.runtimes.local import run_paths

    stderr_log = run_paths(deployment.pk).stderr_log
    stderr_log.parent.mkdir(parents=True, exist_ok=True)
    line = "[server] handled tools/call search_issues in 41 ms (cache hit ratio 0.83)\n"
    text = line * (scale.stderr_log_bytes // len(line))
    stderr_log.write_text(text)
    stderr_log.with_name(stderr_log.name + ".1").write_text(text)


def _audit_events(user, deployments, count: int, rng: random.Random, now: datetime) -> None:
    from deployments.models import AuditAction, AuditEvent

    actions = list(AuditAction.values)
    events = []
    for n in range(count):
        deployment = rng.choice(deployments)
        events.append(
            AuditEvent(
                user=user,
                actor=user if n % 7 else None,
                action=actions[n % len(actions)],
                deployment=deployment,
                subject=f"laptop (cwk_abcdefgh…) on {deployment.name}",
                ip_address=f"203.0.113.{n % 250 + 1}",
                created_at=now - timedelta(seconds=n * 90 * 86400 / count),
            )
        )
    AuditEvent.objects.bulk_create(events, batch_size=2_000)


# --- The report ----------------------------------------------------------------------------------


def _verdict(ms: float) -> str:
    return "under" if ms < TARGET_MS else "**over**"


def _cell(page: PageTiming | None) -> str:
    if page is None:
        return "—"
    return f"{page.median_ms:.1f} / {page.p95_ms:.1f} / {page.max_ms:.1f}"


def render(measurement: Measurement, context: Mapping[str, Any]) -> str:
    scale = measurement.scale
    busy = [page for page in measurement.pages if page.user == BUSY]
    baseline = {page.name: page for page in measurement.pages if page.user == BASELINE}
    many = f"{scale.deployments} deployments"
    lines = [
        f"| Page | Route | Status | {many}: median / p95 / max ms | CPU median / max ms "
        f"| Queries | KiB | 1 deployment: median / p95 / max ms | Queries |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for page in busy:
        alone = baseline.get(page.name)
        lines.append(
            f"| {page.name} | `/{page.route}` | {page.status} | {_cell(page)} "
            f"| {page.cpu_median_ms:.1f} / {page.cpu_max_ms:.1f} | {page.queries} "
            f"| {page.bytes / 1024:.1f} | {_cell(alone)} | {alone.queries if alone else '—'} |"
        )
    calls = scale.deployments * (scale.calls_24h + scale.calls_older)
    lines.append("")
    if busy:
        slowest = max(busy, key=lambda page: page.p95_ms)
        worst = max(busy, key=lambda page: page.max_ms)
        busiest = max(busy, key=lambda page: page.cpu_max_ms)
        lines.append(
            f"- **Slowest page** for the user with {many}: {slowest.name}, p95 "
            f"**{slowest.p95_ms:.1f} ms**, {_verdict(slowest.p95_ms)} the {TARGET_MS:.0f} ms "
            f"target; the single slowest request: {worst.name}, {worst.max_ms:.1f} ms. The "
            f"most CPU any request took: {busiest.cpu_max_ms:.1f} ms ({busiest.name}); wall "
            "time beyond a request's CPU time is waiting (for the database's file, or for a "
            "core while other processes run)."
        )
    for page, failure in measurement.failures.items():
        lines.append(f"- **FAILED**: {page}: {failure}")
    lines += [
        f"- Data ({measurement.database}, populated in {measurement.populate_s:.0f} s): the busy "
        f"user has {many}, each with {scale.calls_24h:,} tool calls in the last 24 h and "
        f"{scale.calls_older:,} more over the rest of a {RETENTION_DAYS}-day retention window "
        f"({calls:,} for the user), {scale.events} lifecycle events, {scale.tokens} access "
        f"tokens, {scale.credentials} credentials, a succeeded analysis with a 30-tool "
        f"server.json, a {scale.stderr_log_bytes // 1024} KiB stderr log plus its rotated "
        f"copy; every {scale.source_every}th deployment (the measured one too) is built from "
        f"source with a {scale.build_log_lines:,}-line build log; {scale.failed_analyses} "
        f"failed analyses and {scale.audit_events:,} audit events. The baseline user has one "
        "deployment with the same history, in the same database. Rows: "
        + ", ".join(f"{name} {count:,}" for name, count in measurement.rows.items())
        + ".",
        "- Server time through Django's test `Client` in process: the whole middleware stack, "
        "the view, its queries and templates; no network, ASGI server or TLS. Production "
        f"settings (`DEBUG=False`). Per page {measurement.warmup} warm-up then "
        f"{measurement.requests} measured requests, interleaved across pages; CPU is this "
        "process's (it includes SQLite's work, not a PostgreSQL server's). Queries counted in "
        "one more request. Other processes used "
        f"{measurement.other_load_percent:.0f}% of the machine meanwhile.",
    ]
    if measurement.skipped:
        lines.append(
            "- Routes not measured: "
            + "; ".join(f"`/{route}` ({why})" for route, why in measurement.skipped.items())
            + "."
        )
    lines += report.provenance(context)
    return "\n".join(lines)


def update_docs(path: Path, markdown: str) -> None:
    report.replace_section(path, BEGIN_MARKER, END_MARKER, markdown)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]), Path(sys.argv[2]))
