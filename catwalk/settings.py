"""Catwalk settings, read from the environment.

Runs with zero variables set (development: SQLite and a filesystem broker in the data folder,
console e-mail). `DATABASE_URL` switches to PostgreSQL, `REDIS_URL` to Redis for the Celery
broker, the channel layer, the cache and rate limits. With `DEBUG=False` the development
defaults are refused. Every variable is listed in README.md.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.utils.csp import CSP

from catwalk import config
from catwalk.config import SettingError

BASE_DIR = Path(__file__).resolve().parent.parent
DEBUG = config.read_bool("DEBUG", default=True)
TESTING = config.read_bool("CATWALK_TESTING", default=False)
# `make test` runs the suite in parallel workers (pytest-xdist) on one host: each gets a data
# folder, a Redis database and a range of sandbox uids of its own (worker N: database N + 1).
_worker = os.environ.get("PYTEST_XDIST_WORKER", "") if TESTING else ""
TEST_WORKER = int(_worker[2:]) if _worker.startswith("gw") and _worker[2:].isdigit() else None

_data_default = BASE_DIR / "data" / (f"test-gw{TEST_WORKER}" if TEST_WORKER is not None else "")
DATA_DIR = Path(config.read("CATWALK_DATA_DIR", str(_data_default))).resolve()
DATA_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)  # keys, database, caches

# --- Secrets and hosts: development defaults that production refuses -----------------------
SECRET_KEY = config.read("SECRET_KEY")
if SECRET_KEY is None:
    if not DEBUG:
        raise SettingError("SECRET_KEY", "required when DEBUG is off")
    SECRET_KEY = config.dev_secret_key(DATA_DIR / "secret_key")
elif not DEBUG and (len(SECRET_KEY) < 50 or SECRET_KEY.startswith("django-insecure")):
    raise SettingError("SECRET_KEY", "too weak for production: use 50+ random characters")

CATWALK_ENCRYPTION_KEYS = config.read_encryption_keys(
    "CATWALK_ENCRYPTION_KEYS", dev_key_file=DATA_DIR / "encryption_key" if DEBUG else None
)

ALLOWED_HOSTS = config.read_list(
    "ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else []
)
if not DEBUG and not ALLOWED_HOSTS:
    raise SettingError("ALLOWED_HOSTS", "required when DEBUG is off (comma-separated host names)")
if not DEBUG and "*" in ALLOWED_HOSTS:
    raise SettingError("ALLOWED_HOSTS", "'*' is refused when DEBUG is off")

PUBLIC_URL = config.read("CATWALK_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
CSRF_TRUSTED_ORIGINS = config.read_list("CSRF_TRUSTED_ORIGINS", [PUBLIC_URL])

# --- Applications ---------------------------------------------------------------------------
INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_htmx",
    "channels",
    "catwalk",
    "analysis",
    "deployments",
    "mcpgateway",
    "oauth2_provider",
]

MIDDLEWARE = [
    "catwalk.middleware.HealthCheckMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "deployments.audit.AuditMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "catwalk.urls"
ASGI_APPLICATION = "catwalk.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.csp",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "catwalk.context_processors.catwalk",
            ],
        },
    },
]

# --- Data -----------------------------------------------------------------------------------
DATABASES = {
    "default": config.read_database("DATABASE_URL", f"sqlite:///{DATA_DIR / 'catwalk.sqlite3'}")
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and supervisor share one SQLite file: wait for locks instead of failing, and
    # take the write lock at BEGIN so transactions never deadlock on a lock upgrade.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    if TESTING:
        # A file, not pytest-django's in-memory default, so that the supervisor and bridges the
        # tests start as subprocesses see the same test database. Per process: runs in parallel
        # (two checkouts sharing a data folder) must not clobber each other's database.
        DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / f"test-db-{os.getpid()}.sqlite3")}
else:
    DATABASES["default"]["CONN_MAX_AGE"] = config.read_int("DATABASE_CONN_MAX_AGE", 60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = config.read_redis("REDIS_URL")
if REDIS_URL and TEST_WORKER is not None:
    REDIS_URL = urlunsplit(urlsplit(REDIS_URL)._replace(path=f"/{TEST_WORKER + 1}"))

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "catwalk",
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": "catwalk"},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Celery: Redis when configured, else kombu's filesystem transport in the data folder ------
CELERY_BROKER_DIR = DATA_DIR / "broker"
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
else:
    (CELERY_BROKER_DIR / "queue").mkdir(parents=True, exist_ok=True)
    (CELERY_BROKER_DIR / "processed").mkdir(parents=True, exist_ok=True)
    (CELERY_BROKER_DIR / "control").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_DIR / "queue"),
        "data_folder_out": str(CELERY_BROKER_DIR / "queue"),
        "processed_folder": str(CELERY_BROKER_DIR / "processed"),
        "control_folder": str(CELERY_BROKER_DIR / "control"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ALWAYS_EAGER = config.read_bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    "prune-tool-calls": {"task": "deployments.tasks.prune_tool_calls", "schedule": 3600.0},
    "prune-playground-tokens": {
        "task": "deployments.tasks.prune_playground_tokens",
        "schedule": 3600.0,
    },
    "fail-stale-analyses": {"task": "analysis.tasks.fail_stale_analyses", "schedule": 300.0},
    "fail-abandoned-builds": {"task": "deployments.tasks.fail_abandoned_builds", "schedule": 300.0},
    "fly-reconcile": {
        "task": "deployments.tasks.fly_reconcile_all",
        "schedule": float(config.read_int("FLY_RECONCILE_SECONDS", 60, minimum=5)),
    },
}

# --- Accounts -------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"
SIGNUP_OPEN = config.read_bool("SIGNUP_OPEN", default=DEBUG)
SIGNUP_ALLOWED_DOMAINS = [d.lower() for d in config.read_list("SIGNUP_ALLOWED_DOMAINS", [])]

_email = config.env.email_url_config(config.read("EMAIL_URL", "consolemail://"))
_smtp_options = {
    "host": _email.get("EMAIL_HOST"),
    "port": _email.get("EMAIL_PORT"),
    "username": _email.get("EMAIL_HOST_USER"),
    "password": _email.get("EMAIL_HOST_PASSWORD"),
    "use_tls": _email.get("EMAIL_USE_TLS"),
    "use_ssl": _email.get("EMAIL_USE_SSL"),
}
MAILERS = {
    "default": {
        "BACKEND": _email["EMAIL_BACKEND"],
        "OPTIONS": {k: v for k, v in _smtp_options.items() if v not in (None, "")}
        if _email["EMAIL_BACKEND"].endswith("smtp.EmailBackend")
        else {},
    }
}
DEFAULT_FROM_EMAIL = config.read("DEFAULT_FROM_EMAIL", "Catwalk <noreply@localhost>")

# --- HTTP hardening -------------------------------------------------------------------------
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "frame-ancestors": [CSP.NONE],
    "form-action": [CSP.SELF],
}
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
if not DEBUG:
    # Fly's proxy terminates TLS and says so in X-Forwarded-Proto.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = config.read_bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = config.read_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = False
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
SILENCED_SYSTEM_CHECKS = [
    "security.W021",  # HSTS preload is the operator's own decision
    # OAuth redirects may use http, for loopback addresses only (deployments/oauth.py).
    "oauth2_provider.W008",
]

# --- Static files ---------------------------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(config.read("CATWALK_STATIC_ROOT", str(BASE_DIR / "staticfiles"))).resolve()
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG or TESTING
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

if TESTING:
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed, tests only

# --- Catwalk ----------------------------------------------------------------------------------
TOOL_CALL_RETENTION_DAYS = config.read_int("TOOL_CALL_RETENTION_DAYS", 30, minimum=1)
ANALYSIS_TIMEOUT_SECONDS = config.read_int("ANALYSIS_TIMEOUT_SECONDS", 900, minimum=30)
ADMIN_CLAIM_MAX_AGE_SECONDS = 24 * 3600

# --- Analysis: reading repositories from GitHub (analysis/github.py) --------------------------
GITHUB_API_URL = config.read("GITHUB_API_URL", "https://api.github.com").rstrip("/")
# Only raises the rate limit; never sent when reading a private repository (that takes the
# user's own token).
GITHUB_TOKEN = config.read("GITHUB_TOKEN")
ANALYSIS_MAX_TARBALL_BYTES = config.read_int(
    "ANALYSIS_MAX_TARBALL_BYTES", 100 * 1024 * 1024, minimum=1024
)
ANALYSIS_MAX_FILES = config.read_int("ANALYSIS_MAX_FILES", 20_000, minimum=1)
ANALYSIS_MAX_FILE_BYTES = config.read_int("ANALYSIS_MAX_FILE_BYTES", 10 * 1024 * 1024, minimum=1)
ANALYSIS_MAX_TOTAL_BYTES = config.read_int("ANALYSIS_MAX_TOTAL_BYTES", 300 * 1024 * 1024, minimum=1)
# --- end of the GitHub settings ---------------------------------------------------------------

# --- Analysis: the optional Claude layer (analysis/llm.py) -----------------------------------
# Without a key the analysis stops at the static layers.
ANTHROPIC_API_KEY = config.read("ANTHROPIC_API_KEY", "")
# Empty means the SDK's own default (https://api.anthropic.com).
ANTHROPIC_BASE_URL = config.read("ANTHROPIC_BASE_URL", "").rstrip("/")
CATWALK_ANALYSIS_MODEL = config.read("CATWALK_ANALYSIS_MODEL", "claude-sonnet-5-5")
ANALYSIS_CLAUDE_TIMEOUT_SECONDS = config.read_int("ANALYSIS_CLAUDE_TIMEOUT_SECONDS", 60, minimum=1)

# The deployments app starts packages for introspection and keeps users' GitHub tokens; the
# analysis reaches both through these (analysis never imports deployments).
ANALYSIS_INTROSPECTOR = "deployments.introspection.introspect_for_analysis"
ANALYSIS_GITHUB_TOKEN_PROVIDER = "deployments.github_tokens.github_token_for"  # noqa: S105
# How long introspection waits for a server to start and list what it offers (a first npx or
# uvx download included).
ANALYSIS_INTROSPECTION_TIMEOUT_SECONDS = config.read_int(
    "ANALYSIS_INTROSPECTION_TIMEOUT_SECONDS", 180, minimum=10
)

# --- Builds from source (deployments/builds.py) -----------------------------------------------
# A build step (install, build script) running longer than this is stopped and the build fails.
BUILD_TIMEOUT_SECONDS = config.read_int("BUILD_TIMEOUT_SECONDS", 900, minimum=30)
# A build whose folder (sources, dependencies, output) grows past this fails.
BUILD_MAX_MB = config.read_int("BUILD_MAX_MB", 2048, minimum=16)

# --- Analysis: package registries (analysis/registry.py) --------------------------------------
NPM_REGISTRY_URL = config.read("NPM_REGISTRY_URL", "https://registry.npmjs.org").rstrip("/")
PYPI_URL = config.read("PYPI_URL", "https://pypi.org").rstrip("/")

# --- Local runtime: the supervisor (`manage.py supervise`) and its bridges --------------------
# Whether deployments may run on this host. A platform with no supervisor (on Fly, where every
# deployment is a machine of its own) turns it off so the local runtime is not offered.
LOCAL_RUNTIME_ENABLED = config.read_bool("LOCAL_RUNTIME_ENABLED", default=True)
# A running deployment with no request for this long is stopped and sleeps until the next
# request wakes it; 0 keeps deployments running.
LOCAL_IDLE_TIMEOUT_SECONDS = config.read_int("LOCAL_IDLE_TIMEOUT_SECONDS", 900)
# How long a bridge may take to answer `tools/list` after starting (a first `npx` or `uvx`
# download included) before the start counts as failed.
LOCAL_START_TIMEOUT_SECONDS = config.read_int("LOCAL_START_TIMEOUT_SECONDS", 300, minimum=10)
# After a redeploy, how long sessions opened on the previous version may go on with it.
LOCAL_SWITCH_GRACE_SECONDS = config.read_int("LOCAL_SWITCH_GRACE_SECONDS", 300, minimum=0)
# Host settings MCP servers get from the supervisor's environment (the rest of it never reaches
# them): how to trust TLS and reach the registries through a proxy, so npx and uvx can download.
LOCAL_PASSTHROUGH_ENV = config.read_list(
    "LOCAL_PASSTHROUGH_ENV",
    [
        *("SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE"),
        *("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy"),
    ],
)
if _leaks := [
    n
    for n in LOCAL_PASSTHROUGH_ENV
    if n.upper().startswith(("CATWALK_", "DJANGO_"))
    or n.upper() in {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "EMAIL_URL"}
]:
    raise SettingError(
        "LOCAL_PASSTHROUGH_ENV",
        f"Catwalk's own settings must not reach MCP servers: {', '.join(_leaks)}",
    )
# MCP sessions per deployment (beyond it shared mode evicts the least recently used session,
# isolated mode refuses new ones) and how long an unused session lives. A deployment's
# runtime_settings may override both (`max_sessions`, `session_idle_timeout_seconds`).
LOCAL_MAX_SESSIONS = config.read_int("LOCAL_MAX_SESSIONS", 1000, minimum=1)
LOCAL_ISOLATED_MAX_SESSIONS = config.read_int("LOCAL_ISOLATED_MAX_SESSIONS", 20, minimum=1)
LOCAL_SESSION_IDLE_TIMEOUT_SECONDS = config.read_int(
    "LOCAL_SESSION_IDLE_TIMEOUT_SECONDS", 1800, minimum=1
)

# The sandbox every local MCP server runs in (mcpgateway/sandbox.py, docs/security.md). It
# needs root, bubblewrap, slirp4netns, setpriv and nft; without them the supervisor refuses to
# start deployments unless CATWALK_UNSAFE_NO_SANDBOX is set, which runs servers as Catwalk's
# own user with nothing between them and the host.
UNSAFE_NO_SANDBOX = config.read_bool("CATWALK_UNSAFE_NO_SANDBOX", default=False)
# Each deployment runs as its own uid, allocated upwards from here (never root, never Catwalk's).
SANDBOX_UID_BASE = config.read_int("SANDBOX_UID_BASE", 200_000, minimum=10_000)
if TEST_WORKER is not None:
    SANDBOX_UID_BASE += 1_000_000 * (TEST_WORKER + 1)
# Limits per deployment (per session process in isolated mode): memory (cgroup), CPU in cores
# (cgroup), processes of its uid (cgroup and rlimit), open files, and its writable folders
# (home, work, /tmp), a tmpfs that lives as long as the process.
SANDBOX_MEMORY_MB = config.read_int("SANDBOX_MEMORY_MB", 1024, minimum=16)
SANDBOX_CPU_PERCENT = config.read_int("SANDBOX_CPU_PERCENT", 100, minimum=1)
SANDBOX_MAX_PROCESSES = config.read_int("SANDBOX_MAX_PROCESSES", 256, minimum=4)
SANDBOX_MAX_OPEN_FILES = config.read_int("SANDBOX_MAX_OPEN_FILES", 4096, minimum=64)
SANDBOX_DISK_MB = config.read_int("SANDBOX_DISK_MB", 512, minimum=1)
# Extra host folders servers may read (the interpreters and node are always visible). Catwalk's
# data folder stays hidden even inside one of these.
SANDBOX_READONLY_PATHS = config.read_list("SANDBOX_READONLY_PATHS", [])
# Extra IPv4 networks servers may not reach, beyond loopback, private, link-local, the host's
# own addresses and the networks it is attached to.
SANDBOX_BLOCKED_NETWORKS = config.read_list("SANDBOX_BLOCKED_NETWORKS", [])
for _network in SANDBOX_BLOCKED_NETWORKS:
    try:
        if ipaddress.ip_network(_network, strict=False).version != 4:
            raise ValueError("only IPv4 (the sandbox has no IPv6 route at all)")
    except ValueError as _error:
        raise SettingError("SANDBOX_BLOCKED_NETWORKS", f"{_network!r}: {_error}") from None
SANDBOX_CGROUP_ROOT = config.read("SANDBOX_CGROUP_ROOT", "/sys/fs/cgroup")
# Where the sandbox's programs (bwrap, slirp4netns, nft, setpriv, mount) are looked for.
SANDBOX_TOOLS_PATH = config.read(
    "SANDBOX_TOOLS_PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)
# --- end of the local runtime's settings ----------------------------------------------------

# --- Tenancy: per-user quotas and per-token rate limits (0 turns a limit off) ---------------
# Deployments a user may have, and how many of them may be wanted running (sleeping ones count:
# a request wakes them). Refusals happen before anything is written.
QUOTA_DEPLOYMENTS_PER_USER = config.read_int("QUOTA_DEPLOYMENTS_PER_USER", 20)
QUOTA_RUNNING_DEPLOYMENTS_PER_USER = config.read_int("QUOTA_RUNNING_DEPLOYMENTS_PER_USER", 5)
# MCP sessions a user's clients may hold open at once across all their deployments, and requests
# per minute per access token; over either the gateway answers 429 with Retry-After. Counted in
# Redis when REDIS_URL is set (shared by every gateway process), else per process.
QUOTA_SESSIONS_PER_USER = config.read_int("QUOTA_SESSIONS_PER_USER", 100)
RATE_LIMIT_REQUESTS_PER_MINUTE = config.read_int("RATE_LIMIT_REQUESTS_PER_MINUTE", 1200)

GATEWAY_MAX_BODY_BYTES = config.read_int("GATEWAY_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024)
GATEWAY_WAKE_TIMEOUT_SECONDS = config.read_int("GATEWAY_WAKE_TIMEOUT_SECONDS", 60, minimum=1)
# How long the playground on a deployment's page waits for a tool's answer.
PLAYGROUND_CALL_TIMEOUT_SECONDS = config.read_int("PLAYGROUND_CALL_TIMEOUT_SECONDS", 30, minimum=1)

# --- Fly.io runtime (deployments/runtimes/fly.py) -------------------------------------------
# Deployments may run on Fly Machines once a token, an organisation and a runner image are
# set (docs/deploy-fly.md). Each deployment gets an app of its own on a network of its own,
# reached by the gateway through its Flycast address and Fly's proxy, which wakes it.
FLY_API_URL = config.read("FLY_API_URL", "https://api.machines.dev/v1").rstrip("/")
FLY_LOGS_API_URL = config.read("FLY_LOGS_API_URL", "https://api.fly.io/api/v1").rstrip("/")
# Where the gateway relays a deployment's traffic; {app} is its Fly app's name.
FLY_RELAY_URL = config.read("FLY_RELAY_URL", "http://{app}.flycast")
if "{app}" not in FLY_RELAY_URL:
    raise config.SettingError("FLY_RELAY_URL", "must contain {app}, the Fly app's name")
FLY_API_TOKEN = config.read("FLY_API_TOKEN", "")
FLY_ORG = config.read("FLY_ORG", "")
FLY_REGION = config.read("FLY_REGION", "")
# The image built from the Dockerfile's `runner` target (e.g. registry.fly.io/catwalk-runner:v1).
FLY_RUNNER_IMAGE = config.read("FLY_RUNNER_IMAGE", "")
# App names are global across Fly: each deployment's is this prefix and its id.
FLY_APP_PREFIX = config.read("FLY_APP_PREFIX", "catwalk")
# The network Flycast addresses are allocated on: the one the platform's own machines are on
# ("" = the organisation's default network). Each deployment's app has a network of its own.
FLY_PLATFORM_NETWORK = config.read("FLY_PLATFORM_NETWORK", "")
FLY_GUEST_CPU_KIND = config.read("FLY_GUEST_CPU_KIND", "shared")
FLY_GUEST_CPUS = config.read_int("FLY_GUEST_CPUS", 1, minimum=1)
FLY_GUEST_MEMORY_MB = config.read_int("FLY_GUEST_MEMORY_MB", 512, minimum=256)
if FLY_GUEST_MEMORY_MB % 256:
    raise config.SettingError("FLY_GUEST_MEMORY_MB", "must be a multiple of 256")
# What Fly's proxy does with an idle machine: "stop" (no cost, cold start on the next request)
# or "suspend" (memory kept, resumes in about a second; machines up to 2 GB).
FLY_AUTOSTOP = config.read("FLY_AUTOSTOP", "stop")
if FLY_AUTOSTOP not in ("stop", "suspend"):
    raise config.SettingError("FLY_AUTOSTOP", "must be stop or suspend")
# How long a machine may take from launch to answering tools/list (a first package download
# included) before the deployment fails.
FLY_START_TIMEOUT_SECONDS = config.read_int("FLY_START_TIMEOUT_SECONDS", 300, minimum=5)
# OCI images (packages of registryType "oci", which run on Fly): the runner pulls them itself.
# OCI_REGISTRY_URLS maps a registry to the base URL to use for it ("ghcr.io=https://mirror...",
# comma-separated); any other registry is https://<host>, Docker Hub registry-1.docker.io.
OCI_REGISTRY_URLS = {}
for _entry in config.read_list("OCI_REGISTRY_URLS", []):
    _host, _, _url = _entry.partition("=")
    if not _host.strip() or not _url.strip().startswith(("http://", "https://")):
        raise config.SettingError("OCI_REGISTRY_URLS", "must be host=http(s)://url pairs")
    OCI_REGISTRY_URLS[_host.strip()] = _url.strip().rstrip("/")
# The largest image, unpacked, that a deployment may run.
OCI_MAX_IMAGE_MB = config.read_int("OCI_MAX_IMAGE_MB", 2048, minimum=16)
# A source or OCI deployment's volume (GB), which keeps its build or image across stops: room
# for one of BUILD_MAX_MB (or OCI_MAX_IMAGE_MB) and the next beside it.
FLY_VOLUME_GB = config.read_int(
    "FLY_VOLUME_GB", max(1, -(-2 * max(BUILD_MAX_MB, OCI_MAX_IMAGE_MB) // 1024)), minimum=1
)
# Retries of a Fly API call answered 408/429/5xx (exponential backoff from this first delay).
FLY_API_RETRIES = config.read_int("FLY_API_RETRIES", 5)
FLY_API_BACKOFF_SECONDS = float(config.read("FLY_API_BACKOFF_SECONDS", "0.5"))
# Run untrusted work of the platform (an analysis's introspection, a draft's preflight) in
# short-lived Fly machines instead of this host's sandbox: for Catwalk itself running on Fly,
# whose web and worker machines never execute a package's code.
FLY_JOBS = config.read_bool("FLY_JOBS", default=False)
if FLY_JOBS and not (FLY_API_TOKEN and FLY_ORG and FLY_RUNNER_IMAGE):
    raise config.SettingError(
        "FLY_JOBS", "needs the Fly runtime configured (FLY_API_TOKEN, FLY_ORG, FLY_RUNNER_IMAGE)"
    )
# How often every Fly deployment is compared with what Fly reports (drift, autostop).
FLY_RECONCILE_SECONDS = config.read_int("FLY_RECONCILE_SECONDS", 60, minimum=5)

# --- OAuth 2.1 authorization server for the MCP endpoints (deployments/oauth.py) -------------
# django-oauth-toolkit speaks the protocol; every token it issues is bound to one deployment's
# endpoint (RFC 8707) by a user who owns that deployment. Lifetimes: an access token is short
# (a stolen one is useful for an hour); the refresh token rotates on every use, and a replayed
# one revokes its whole family; an authorization code lives just long enough for the redirect.
OAUTH_ACCESS_TOKEN_SECONDS = config.read_int("OAUTH_ACCESS_TOKEN_SECONDS", 3600, minimum=60)
OAUTH_REFRESH_TOKEN_SECONDS = config.read_int(
    "OAUTH_REFRESH_TOKEN_SECONDS", 30 * 24 * 3600, minimum=3600
)
OAUTH_AUTHORIZATION_CODE_SECONDS = config.read_int(
    "OAUTH_AUTHORIZATION_CODE_SECONDS", 60, minimum=10
)
# Redirect URI schemes clients may register: https, and http for loopback addresses only (RFC
# 8252 native apps such as CLI clients); add a private-use scheme (RFC 8252 §7.1, e.g. an
# editor's own) only for a client you know.
OAUTH_REDIRECT_URI_SCHEMES = [
    scheme.lower() for scheme in config.read_list("OAUTH_REDIRECT_URI_SCHEMES", ["http", "https"])
]
for _scheme in OAUTH_REDIRECT_URI_SCHEMES:
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*", _scheme) or _scheme in {
        *("javascript", "data", "file", "vbscript", "blob")
    }:
        raise SettingError("OAUTH_REDIRECT_URI_SCHEMES", f"{_scheme!r} cannot be a redirect scheme")
# MCP clients register themselves before anyone signs in, either way; turning one off leaves
# clients that only know the other (or a client registered by an admin).
OAUTH_DYNAMIC_CLIENT_REGISTRATION = config.read_bool("OAUTH_DYNAMIC_CLIENT_REGISTRATION", True)
OAUTH_CLIENT_ID_METADATA_DOCUMENTS = config.read_bool("OAUTH_CLIENT_ID_METADATA_DOCUMENTS", True)
# A Client ID Metadata Document is fetched from a URL the client names: only public addresses,
# over https, unless this lets loopback ones through (tests and local development only).
OAUTH_CIMD_ALLOW_LOOPBACK = config.read_bool("OAUTH_CIMD_ALLOW_LOOPBACK", default=False)
if OAUTH_CIMD_ALLOW_LOOPBACK and not DEBUG:
    raise SettingError("OAUTH_CIMD_ALLOW_LOOPBACK", "refused when DEBUG is off (an SSRF opening)")

OAUTH2_PROVIDER = {
    "OAUTH2_VALIDATOR_CLASS": "deployments.oauth.CatwalkOAuth2Validator",
    "SCOPES": {"mcp": "Use this deployment's tools, resources and prompts as you"},
    "DEFAULT_SCOPES": ["mcp"],
    "OIDC_ISS_ENDPOINT": PUBLIC_URL,  # the issuer, in metadata and in every `iss` (RFC 9207)
    "ACCESS_TOKEN_EXPIRE_SECONDS": OAUTH_ACCESS_TOKEN_SECONDS,
    "REFRESH_TOKEN_EXPIRE_SECONDS": OAUTH_REFRESH_TOKEN_SECONDS,
    "AUTHORIZATION_CODE_EXPIRE_SECONDS": OAUTH_AUTHORIZATION_CODE_SECONDS,
    "ROTATE_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
    "REFRESH_TOKEN_GRACE_PERIOD_SECONDS": 0,  # must be 0 with hashed token storage
    # Consent every time: DOT's "auto" would reuse a consent given for another deployment.
    "REQUEST_APPROVAL_PROMPT": "force",
    "PKCE_REQUIRED": True,
    "ALLOWED_REDIRECT_URI_SCHEMES": OAUTH_REDIRECT_URI_SCHEMES,
    "ALLOW_URI_WILDCARDS": False,
    "ALLOW_LOCALHOST_LOOPBACK": False,  # "localhost" redirects match exactly, port included
    "OAUTH2_RESPONSE_TYPES_SUPPORTED": ["code"],
    "OAUTH2_GRANT_TYPES_SUPPORTED": ["authorization_code", "refresh_token"],
    "OAUTH2_TOKEN_ENDPOINT_AUTH_METHODS_SUPPORTED": [
        "none",
        "client_secret_basic",
        "client_secret_post",
    ],
    # RFC 9700 (OAuth 2.0 Security BCP), enforced: no implicit or password grant, PKCE S256
    # only, no token in a query string, `iss` in authorization responses, tokens stored hashed.
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": True,
    "COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS": True,
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
    "COMPLIANT_BCP_RFC9700_REFRESH_TOKEN": True,
    "COMPLIANT_BCP_RFC9700_REDIRECT_URI_MATCHING": True,
    "COMPLIANT_BCP_RFC9700_PKCE_REQUIRED": True,
    # Anonymous registration is how MCP clients arrive (they know nothing of this server but its
    # URL). It grants nothing: a token still takes a signed-in owner's consent on the consent
    # page, PKCE and an exact registered redirect URI.
    "DCR_ENABLED": OAUTH_DYNAMIC_CLIENT_REGISTRATION,
    "DCR_REGISTRATION_PERMISSION_CLASSES": ("oauth2_provider.dcr.AllowAllDCRPermission",),
    "CIMD_ENABLED": OAUTH_CLIENT_ID_METADATA_DOCUMENTS,
    "CIMD_METADATA_FETCHER": "deployments.oauth.CatwalkMetadataFetcher",
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": config.read("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # One line per request: the supervisor's health checks would drown everything else.
        "httpx": {"level": "WARNING"},
        # Likewise the MCP SDK's client and its HTTP library, several lines per playground call.
        "httpx2": {"level": "WARNING"},
        "mcp.client": {"level": "WARNING"},
    },
}
