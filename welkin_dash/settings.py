"""welkin-dash settings, all from the environment.

Every variable is read by a helper (welkin_dash/env.py) that raises ImproperlyConfigured
naming the variable when its value is bad. With no DATABASE_URL the project runs embedded
for a first look: SQLite under ./var and scans in-process (no broker needed).

Sections, in order: the basics (debug, keys, hosts, time); the database and cache; the
Django app; HTTP security; sessions and sign-in; Celery; scans and registries; exports
and evidence; notifications; operations; logging and the checks that span sections.
"""

import base64
import binascii
import re
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from celery.schedules import crontab
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from welkin_dash.env import (
    check_fernet_keys,
    database_from_url,
    development_keys,
    env_bool,
    env_int,
    env_list,
    env_networks,
    env_str,
    env_url,
    proxy_ssl_header,
)

# --- the basics: debug, server keys, hosts, time ------------------------------------------
BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
VAR_DIR = Path(env_str("WELKIN_VAR_DIR", str(BASE_DIR / "var")))
# `manage.py evaluate` (set by manage.py) is a CI tool: it needs no server secrets and no
# database, so missing keys are not an error there (nothing in it signs or decrypts).
OFFLINE_COMMAND = env_bool("WELKIN_OFFLINE_COMMAND", False)
NEEDS_KEYS = not DEBUG and not OFFLINE_COMMAND
DEVELOPMENT_KEYS_FILE = VAR_DIR / "development-keys.json"
_dev_keys: dict[str, str] = {}


def server_key(name: str, generate: str) -> str:
    """A key the server needs: from the environment; required when DEBUG is off (but not
    for `manage.py evaluate`, which signs and decrypts nothing); for a first look (DEBUG)
    a random one kept in ./var (see development_keys), so nothing needs setting up."""
    value = env_str(name, "")
    if value:
        return value
    if NEEDS_KEYS:
        raise ImproperlyConfigured(
            f"{name} is required when DEBUG is off (generate one with `{generate}`)"
        )
    if not DEBUG:
        return ""
    if not _dev_keys:
        try:
            _dev_keys.update(development_keys(DEVELOPMENT_KEYS_FILE))
        except OSError as e:
            raise ImproperlyConfigured(
                f"{name}: not set, and no development key can be kept in "
                f"{DEVELOPMENT_KEYS_FILE} ({e.strerror}); set it, or WELKIN_VAR_DIR"
            ) from None
    return _dev_keys[name]


SECRET_KEY = server_key(
    "SECRET_KEY", "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
)
# Reports are signed with an Ed25519 key: base64 of its 32-byte private seed.
WELKIN_SIGNING_KEY = server_key(
    "WELKIN_SIGNING_KEY",
    "python -c 'import os, base64; print(base64.b64encode(os.urandom(32)).decode())'",
)
try:
    if WELKIN_SIGNING_KEY and len(base64.b64decode(WELKIN_SIGNING_KEY, validate=True)) != 32:
        raise ValueError
except (ValueError, binascii.Error):
    raise ImproperlyConfigured("WELKIN_SIGNING_KEY: expected base64 of 32 bytes") from None
# A manifest signed with the key of a first look says so (and so does its verification).
WELKIN_DEVELOPMENT_SIGNING_KEY = bool(
    WELKIN_SIGNING_KEY and WELKIN_SIGNING_KEY == _dev_keys.get("WELKIN_SIGNING_KEY")
)

# Fernet keys for credentials at rest, comma separated: the first encrypts, all decrypt.
WELKIN_FERNET_KEYS = env_list("WELKIN_FERNET_KEYS", []) or [
    k
    for k in [
        server_key(
            "WELKIN_FERNET_KEYS",
            "python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'",
        )
    ]
    if k
]


check_fernet_keys("WELKIN_FERNET_KEYS", WELKIN_FERNET_KEYS)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

TIME_ZONE = env_str("TIME_ZONE", "UTC")
try:
    import zoneinfo

    zoneinfo.ZoneInfo(TIME_ZONE)
except (zoneinfo.ZoneInfoNotFoundError, ValueError):
    raise ImproperlyConfigured(f"TIME_ZONE={TIME_ZONE!r}: not a known time zone") from None
USE_TZ = True
USE_I18N = False
LANGUAGE_CODE = "en-us"


# --- the database and the page cache ------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL")
EMBEDDED = not DATABASE_URL
if DATABASE_URL:
    DATABASES = {"default": database_from_url(DATABASE_URL)}
elif OFFLINE_COMMAND and not (VAR_DIR / "welkin-dash.sqlite3").exists():
    DATABASES = {"default": {"ENGINE": "django.db.backends.dummy"}}  # no database
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": VAR_DIR / "welkin-dash.sqlite3"}
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# PostgreSQL's JIT compiler, off by default for this app's connections (compliance/apps.py).
WELKIN_DB_JIT = env_bool("WELKIN_DB_JIT", False)

# Per-scan page caches. CACHE_URL=redis://... shares them between web processes.
CACHE_URL = env_str("CACHE_URL", "")
if CACHE_URL and not CACHE_URL.startswith(("redis://", "rediss://")):
    raise ImproperlyConfigured(f"CACHE_URL={CACHE_URL!r}: expected redis:// or rediss://")
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}
        if CACHE_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}


# --- the Django app: apps, API, middleware, templates, static files -----------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "csp",
    "axes",
    "compliance",
]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "compliance.web.api_auth.ExpiringToken",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "compliance.web.api_parsers.JSONBody",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "EXCEPTION_HANDLER": "compliance.web.api.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "welkin-dash API",
    "DESCRIPTION": "Read-only: clusters, scans, findings, rollups and point-in-time reports, "
    "filtered by the same access rules as the pages.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
}

MIDDLEWARE = [
    # /healthz, /readyz and /metrics: answered first, before host checks, redirects and
    # sessions (probes and scrapers address the pod by IP, over plain HTTP).
    "compliance.ops.health.OpsEndpoints",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    # Serves the collected static files (vendored JS, CSS) under gunicorn, without a CDN.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "compliance.identity.sessions.SessionLifetime",
    "compliance.params.BadParameterMiddleware",
    "compliance.web.middleware.LoginRequired",
    "django.contrib.messages.middleware.MessageMiddleware",
    "compliance.audit.log.DeniedAccessMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out login into its lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "welkin_dash.urls"
WSGI_APPLICATION = "welkin_dash.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "compliance.web.context.navigation",
                "compliance.web.views.sso.login_options",
            ],
        },
    },
]

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "var" / "static")))
try:  # collectstatic fills it in the image; before that WhiteNoise wants it to exist
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
except OSError:
    pass
WHITENOISE_USE_FINDERS = DEBUG
# Collected static files (the image) get hashed names and a year of caching; without a
# collected manifest (make run, tests) plain names are served from the source folders.
STATIC_MANIFEST = env_bool("WELKIN_STATIC_MANIFEST", (STATIC_ROOT / "staticfiles.json").exists())
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if STATIC_MANIFEST
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# Uploads: form fields at most 2.5 MB in memory, files over 2.5 MB spooled to a
# temporary file; the Verify page refuses reports over WELKIN_VERIFY_MAX_BYTES before
# reading them, and hashes what it takes as a stream.
WELKIN_SNAPSHOT_MAX_BYTES = env_int("WELKIN_SNAPSHOT_MAX_BYTES", 1 << 30, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
WELKIN_VERIFY_MAX_BYTES = env_int("WELKIN_VERIFY_MAX_BYTES", 1 << 30, minimum=1)


# --- HTTP security: production defaults when DEBUG is off, each one configurable ----------
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)


SECURE_PROXY_SSL_HEADER = proxy_ssl_header("SECURE_PROXY_SSL_HEADER")

# Content-Security-Policy (django-csp 4): every script and style is ours and a file under
# /static/ (htmx and Chart.js are vendored), so nothing inline runs or applies.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}
if env_str("WELKIN_CSP_REPORT_URI"):
    CONTENT_SECURITY_POLICY["DIRECTIVES"]["report-uri"] = [env_str("WELKIN_CSP_REPORT_URI")]


# --- sessions and sign-in: single sign-on, local passwords, lockouts (docs/operating.md) --
# Logins: a session ends after WELKIN_SESSION_IDLE_SECONDS without a request (background
# polling does not count) and WELKIN_SESSION_MAX_SECONDS after the login, whichever is first.
WELKIN_SESSION_IDLE_SECONDS = env_int("WELKIN_SESSION_IDLE_SECONDS", 30 * 60, minimum=60)
WELKIN_SESSION_MAX_SECONDS = env_int("WELKIN_SESSION_MAX_SECONDS", 8 * 3600, minimum=60)
SESSION_COOKIE_AGE = WELKIN_SESSION_MAX_SECONDS

# OpenID Connect: on when WELKIN_OIDC_ISSUER is set (its /.well-known/openid-configuration
# is read for the endpoints and keys).
WELKIN_OIDC_ISSUER = env_url("WELKIN_OIDC_ISSUER", debug=DEBUG)
WELKIN_OIDC_CLIENT_ID = env_str("WELKIN_OIDC_CLIENT_ID", "") or ""
WELKIN_OIDC_CLIENT_SECRET = env_str("WELKIN_OIDC_CLIENT_SECRET", "") or ""
if WELKIN_OIDC_ISSUER and not WELKIN_OIDC_CLIENT_ID:
    raise ImproperlyConfigured("WELKIN_OIDC_CLIENT_ID is required with WELKIN_OIDC_ISSUER")
WELKIN_OIDC_SCOPES = env_str("WELKIN_OIDC_SCOPES", "openid email profile groups")
if "openid" not in (WELKIN_OIDC_SCOPES or "").split():
    raise ImproperlyConfigured(f"WELKIN_OIDC_SCOPES={WELKIN_OIDC_SCOPES!r}: must include openid")
WELKIN_OIDC_NAME = env_str("WELKIN_OIDC_NAME", "single sign-on")
WELKIN_OIDC_GROUPS_CLAIM = env_str("WELKIN_OIDC_GROUPS_CLAIM", "groups")
WELKIN_OIDC_ROLES_CLAIM = env_str("WELKIN_OIDC_ROLES_CLAIM", "roles")
WELKIN_OIDC_TIMEOUT = env_int("WELKIN_OIDC_TIMEOUT", 10, minimum=1)
# API tokens are refused this many days after they were made (make a new one with
# `manage.py drf_create_token -r USER`); Settings lists them and revokes them.
WELKIN_API_TOKEN_DAYS = env_int("WELKIN_API_TOKEN_DAYS", 90, minimum=1)
# A provider account not seen (signed in) for this long loses its role and grants at the
# next hourly sweep: nothing else tells us someone left. Its next sign-in maps them again.
WELKIN_SSO_ACCESS_SECONDS = env_int(
    "WELKIN_SSO_ACCESS_SECONDS", WELKIN_SESSION_MAX_SECONDS, minimum=60
)
# Local passwords: off for everyone except the superusers named here.
WELKIN_LOCAL_LOGIN = env_bool("WELKIN_LOCAL_LOGIN", True)
WELKIN_LOCAL_LOGIN_USERS = env_list("WELKIN_LOCAL_LOGIN_USERS", [])
AUTHENTICATION_BACKENDS = [
    "compliance.identity.LoginThrottle",  # django-axes: first, refuses locked-out logins
    "compliance.identity.LocalPasswords",
    "compliance.identity.SingleSignOn",  # keeps sessions made by single sign-on
]
# django-axes: WELKIN_LOGIN_FAILURE_LIMIT failed passwords for one user name, or from one
# address, lock that user name or address out for WELKIN_LOGIN_LOCKOUT_MINUTES.
AXES_FAILURE_LIMIT = env_int("WELKIN_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("WELKIN_LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
# An address that fails too often is locked out (a guesser trying many names), and a name
# from that address (a stranger cannot lock a known name out everywhere).
AXES_LOCKOUT_PARAMETERS = ["ip_address", ["username", "ip_address"]]
AXES_CLIENT_IP_CALLABLE = "compliance.params.client_address"
# Behind a proxy (an Ingress, nginx): its addresses, CIDRs. Only from them is
# X-Forwarded-For believed, its right-most untrusted hop taken as the client. None: the
# TCP peer is the client.
WELKIN_TRUSTED_PROXIES = env_networks("WELKIN_TRUSTED_PROXIES", [])
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False
AXES_SENSITIVE_PARAMETERS = ["password"]
AXES_USERNAME_CALLABLE = "compliance.audit.log.axes_username"


# --- Celery: broker, queues by purpose, time limits ---------------------------------------
# Celery. Embedded mode runs tasks in-process so a first look needs no broker.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
if not CELERY_BROKER_URL.startswith(("redis://", "rediss://", "amqp://", "memory://")):
    raise ImproperlyConfigured(
        f"CELERY_BROKER_URL={CELERY_BROKER_URL!r}: expected redis://, rediss:// or amqp://"
    )
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", EMBEDDED)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One task reserved at a time per worker process: a long scan never holds a second task
# (an export, a delivery) that another process could have started.
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 1, minimum=1)
# Celery's queues, one per purpose, so an export or a notification never waits behind a
# fleet's scans: scans, exports, notifications, and "celery" (beat's housekeeping: the
# fan-out, sweeps, pruning, signing). A worker started without -Q consumes all four (a
# small install); at scale, run workers per queue (docs/operating.md, "Running at scale").
CELERY_QUEUES_BY_PURPOSE = ("scans", "exports", "notifications", "celery")
CELERY_TASK_QUEUES = {q: {"exchange": q, "routing_key": q} for q in CELERY_QUEUES_BY_PURPOSE}
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_ROUTES = {
    "compliance.tasks.scan_cluster": {"queue": "scans"},
    "compliance.tasks.export": {"queue": "exports"},
    "compliance.tasks.deliver": {"queue": "notifications"},
    "compliance.tasks.deliver_due": {"queue": "notifications"},
    # They read and delete files in the exports folder: run where it is mounted.
    "compliance.tasks.sweep_exports": {"queue": "exports"},
    "compliance.tasks.timestamp_pending": {"queue": "exports"},
}
# Every task ends within an hour (scans and exports have their own, shorter, limits).
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 3600, minimum=60)
# Redis re-delivers a task not acknowledged within this many seconds (acks_late: a task is
# acknowledged when it ends). It must exceed the longest time limit, or a long export or
# scan would be delivered to a second worker while the first still runs it.
WELKIN_BROKER_VISIBILITY_TIMEOUT = env_int("WELKIN_BROKER_VISIBILITY_TIMEOUT", 7200, minimum=60)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": WELKIN_BROKER_VISIBILITY_TIMEOUT}
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Each section below adds its periodic tasks (beat) next to its settings.
CELERY_BEAT_SCHEDULE: dict = {}


# --- scans and registries (compliance/collect/) -------------------------------------------
WELKIN_PAGE_LIMIT = env_int("WELKIN_PAGE_LIMIT", 500, minimum=1)
WELKIN_KUBE_TIMEOUT = env_int("WELKIN_KUBE_TIMEOUT", 60, minimum=1)
WELKIN_SCAN_TIME_LIMIT = env_int("WELKIN_SCAN_TIME_LIMIT", 1800, minimum=10)
# A running scan whose progress is older than this is taken as abandoned (SQLite only;
# on PostgreSQL the advisory lock tells at once).
WELKIN_SCAN_STALE_SECONDS = env_int("WELKIN_SCAN_STALE_SECONDS", 2100, minimum=10)

# Collector bounds (hostile API servers).
# One LIST response body at most this many bytes; one request complete within this many
# seconds however slowly the bytes come; one scan's collection within WELKIN_SCAN_DEADLINE
# seconds (also for `manage.py scan`, which has no task time limit; under Celery, keep it
# below WELKIN_SCAN_TIME_LIMIT for its reason to be the one recorded) and at most
# WELKIN_SCAN_MAX_PODS objects a list. Past any of them the scan fails with the reason.
WELKIN_PAGE_MAX_BYTES = env_int("WELKIN_PAGE_MAX_BYTES", 64 << 20, minimum=1 << 16)
WELKIN_KUBE_REQUEST_DEADLINE = env_int("WELKIN_KUBE_REQUEST_DEADLINE", 120, minimum=1)
WELKIN_SCAN_DEADLINE = env_int("WELKIN_SCAN_DEADLINE", 1800, minimum=10)
WELKIN_SCAN_MAX_PODS = env_int("WELKIN_SCAN_MAX_PODS", 1_000_000, minimum=1)
# How long a scan waits for the lock of a scan whose worker died (its session ending).
WELKIN_SCAN_LOCK_WAIT = env_int("WELKIN_SCAN_LOCK_WAIT", 10, minimum=0)
WELKIN_FANOUT_SECONDS = env_int("WELKIN_FANOUT_SECONDS", 60, minimum=5)
# Image registries.
WELKIN_REGISTRY_TIMEOUT = env_int("WELKIN_REGISTRY_TIMEOUT", 10, minimum=1)
WELKIN_REGISTRY_CONCURRENCY = env_int("WELKIN_REGISTRY_CONCURRENCY", 8, minimum=1)
WELKIN_REGISTRY_TAG_TTL = env_int("WELKIN_REGISTRY_TAG_TTL", 3600, minimum=0)
WELKIN_REGISTRY_FAILURE_TTL = env_int("WELKIN_REGISTRY_FAILURE_TTL", 300, minimum=0)
WELKIN_REGISTRY_LOOKUPS = env_bool("WELKIN_REGISTRY_LOOKUPS", True)
# Reading /etc/passwd from an image's layers (for the fix): bytes of layer blobs read per
# image, and the time per image.
WELKIN_PASSWD_MAX_BYTES = env_int("WELKIN_PASSWD_MAX_BYTES", 64 << 20, minimum=1 << 20)
WELKIN_PASSWD_SECONDS = env_int("WELKIN_PASSWD_SECONDS", 60, minimum=1)

CELERY_BEAT_SCHEDULE.update(
    {
        "enqueue-due-scans": {
            "task": "compliance.tasks.enqueue_due_scans",
            "schedule": float(WELKIN_FANOUT_SECONDS),
            # A fan-out nobody picked up in time is replaced by the next one.
            "options": {"expires": WELKIN_FANOUT_SECONDS * 0.9},
        },
    }
)


# --- risk acceptance (compliance/risk/) ---------------------------------------------------
# Risk acceptance: the longest an exception may last from its request, in days.
WELKIN_EXCEPTION_MAX_DAYS = env_int("WELKIN_EXCEPTION_MAX_DAYS", 180, minimum=1)
if WELKIN_EXCEPTION_MAX_DAYS > 3650:
    raise ImproperlyConfigured(
        f"WELKIN_EXCEPTION_MAX_DAYS={WELKIN_EXCEPTION_MAX_DAYS}: at most 3650 (ten years)"
    )


# --- exports and evidence (compliance/evidence/, compliance/audit/) -----------------------
EXPORTS_DIR = Path(env_str("WELKIN_EXPORTS_DIR", str(BASE_DIR / "var" / "exports")))

# Exports (compliance/evidence/jobs.py), written by workers on the "exports" queue: at most
# this many seconds each; a running export with no progress for WELKIN_EXPORT_STALE_SECONDS
# (or whose worker process on this host is gone) is taken over, at most
# WELKIN_EXPORT_MAX_ATTEMPTS times; done or failed exports are deleted (files, record;
# audited) WELKIN_EXPORT_RETENTION_DAYS after they were written.
WELKIN_EXPORT_TIME_LIMIT = env_int("WELKIN_EXPORT_TIME_LIMIT", 1800, minimum=10)
WELKIN_EXPORT_STALE_SECONDS = env_int("WELKIN_EXPORT_STALE_SECONDS", 600, minimum=10)
WELKIN_EXPORT_MAX_ATTEMPTS = env_int("WELKIN_EXPORT_MAX_ATTEMPTS", 3, minimum=1)
WELKIN_EXPORT_RETENTION_DAYS = env_int("WELKIN_EXPORT_RETENTION_DAYS", 90, minimum=1)
# PostgreSQL's work_mem for an export's COPY (its rows are sorted by name: a 1M-row fleet
# report sorts in memory with 256MB, in temporary files without). One per running export.
WELKIN_EXPORT_WORK_MEM = env_str("WELKIN_EXPORT_WORK_MEM", "256MB")
if not re.fullmatch(r"[1-9][0-9]{0,6}(kB|MB|GB)", WELKIN_EXPORT_WORK_MEM):
    raise ImproperlyConfigured(
        f"WELKIN_EXPORT_WORK_MEM={WELKIN_EXPORT_WORK_MEM!r}: a size such as 64MB or 1GB"
    )
# An export's CSV or JSON rows are cut into this many ranges of names, each written by its
# own COPY on its own connection, from one snapshot (compliance/evidence/pgcopy.py); 1: one COPY.
WELKIN_EXPORT_PARALLEL = env_int("WELKIN_EXPORT_PARALLEL", 2, minimum=1)
if WELKIN_EXPORT_PARALLEL > 16:
    raise ImproperlyConfigured(
        f"WELKIN_EXPORT_PARALLEL={WELKIN_EXPORT_PARALLEL}: at most 16 (each is a connection "
        "to PostgreSQL, and a process there, for every running export)"
    )
# Exports one user may have queued or being written at once (more: 429).
WELKIN_EXPORT_MAX_ACTIVE = env_int("WELKIN_EXPORT_MAX_ACTIVE", 3, minimum=1)
# Without a broker (make run) an export is written within its request.
WELKIN_EXPORTS_IN_PROCESS = env_bool("WELKIN_EXPORTS_IN_PROCESS", CELERY_TASK_ALWAYS_EAGER)

# An RFC 3161 timestamp authority: every export's manifest and the audit log's daily head
# get a token. http:// is usual for TSAs (a token proves itself); the CA bundle (PEM) is
# what its signer must chain to, and the CRLs (PEM or DER files) what it is checked against.
WELKIN_TSA_URL = (env_str("WELKIN_TSA_URL", "") or "").strip()
if WELKIN_TSA_URL and (
    urlsplit(WELKIN_TSA_URL).scheme not in ("http", "https")
    or not urlsplit(WELKIN_TSA_URL).hostname
):
    raise ImproperlyConfigured(f"WELKIN_TSA_URL={WELKIN_TSA_URL!r}: expected an http(s):// URL")
WELKIN_TSA_CA_BUNDLE = env_str("WELKIN_TSA_CA_BUNDLE", "") or ""
if WELKIN_TSA_URL and not WELKIN_TSA_CA_BUNDLE:
    raise ImproperlyConfigured(
        "WELKIN_TSA_CA_BUNDLE is required with WELKIN_TSA_URL: the PEM file of the CA the "
        "timestamp authority's certificate is issued by"
    )
WELKIN_TSA_CRLS = env_list("WELKIN_TSA_CRLS", [])
WELKIN_TSA_TIMEOUT = env_int("WELKIN_TSA_TIMEOUT", 10, minimum=1)
# Retention: raw scan data (scan runs, finding events, resolved findings) for this many
# days (three years: a certification cycle), daily rollups for this many.
WELKIN_RETENTION_DAYS = env_int("WELKIN_RETENTION_DAYS", 3 * 365, minimum=30)
WELKIN_ROLLUP_RETENTION_DAYS = env_int("WELKIN_ROLLUP_RETENTION_DAYS", 10 * 365, minimum=30)
if WELKIN_ROLLUP_RETENTION_DAYS < WELKIN_RETENTION_DAYS:
    raise ImproperlyConfigured(
        "WELKIN_ROLLUP_RETENTION_DAYS must be at least WELKIN_RETENTION_DAYS (rollups are "
        "kept longer than the raw data they summarise)"
    )
CELERY_BEAT_SCHEDULE.update(
    {
        "sign-audit-head": {
            "task": "compliance.tasks.sign_audit_head",
            "schedule": crontab(minute=5, hour=0),
            "options": {"expires": 3600},
        },
        "timestamp-pending": {
            "task": "compliance.tasks.timestamp_pending",
            "schedule": 600.0,
            "options": {"expires": 540},
        },
        "sweep-exports": {
            "task": "compliance.tasks.sweep_exports",
            "schedule": 300.0,
            "options": {"expires": 270},
        },
        "prune": {
            "task": "compliance.tasks.prune",
            "schedule": crontab(minute=30, hour=3),
            "options": {"expires": 3600},
        },
    }
)


# --- notifications (compliance/notify/) ---------------------------------------------------
# Links in messages point here.
WELKIN_BASE_URL = env_url("WELKIN_BASE_URL", "http://127.0.0.1:8000", debug=DEBUG)
# E-mail goes out through EMAIL_HOST; with none set, e-mail is off (webhooks still go).
EMAIL_HOST = env_str("EMAIL_HOST", "") or ""
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "") or ""
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "") or ""
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL: set one of them, not both")
WELKIN_NOTIFY_FROM = env_str("WELKIN_NOTIFY_FROM", "welkin-dash@localhost")
# One SMTP or webhook request: at most this many seconds.
WELKIN_NOTIFY_TIMEOUT = env_int("WELKIN_NOTIFY_TIMEOUT", 10, minimum=1)
EMAIL_TIMEOUT = WELKIN_NOTIFY_TIMEOUT
# A delivery is tried this many times, waiting WELKIN_NOTIFY_BACKOFF_SECONDS, then twice
# that, ... (at most an hour) between tries; then it is kept as failed, with its reason.
WELKIN_NOTIFY_MAX_ATTEMPTS = env_int("WELKIN_NOTIFY_MAX_ATTEMPTS", 8, minimum=1)
WELKIN_NOTIFY_BACKOFF_SECONDS = env_int("WELKIN_NOTIFY_BACKOFF_SECONDS", 30, minimum=1)
# A cluster without a complete scan for this long is reported to the officers.
WELKIN_NOTIFY_STALE_SECONDS = env_int("WELKIN_NOTIFY_STALE_SECONDS", 6 * 3600, minimum=60)
# Webhooks go to public addresses only; these networks (CIDRs) are allowed as well (an
# in-house chat server on a private network, say). Never the metadata service by default.
WELKIN_WEBHOOK_ALLOWED_NETWORKS = env_networks("WELKIN_WEBHOOK_ALLOWED_NETWORKS", [])
# The key that signs generic webhooks whose destination has no secret of its own.
WELKIN_WEBHOOK_SECRET = env_str("WELKIN_WEBHOOK_SECRET", "") or ""
if WELKIN_WEBHOOK_SECRET and len(WELKIN_WEBHOOK_SECRET) < 16:
    raise ImproperlyConfigured("WELKIN_WEBHOOK_SECRET: at least 16 characters")


# Beat: retries that are due, stale clusters, the digest.
CELERY_BEAT_SCHEDULE.update(
    {
        "deliver-notifications": {
            "task": "compliance.tasks.deliver_due",
            "schedule": 60.0,
            "options": {"expires": 54},
        },
        "notify-stale-clusters": {
            "task": "compliance.tasks.notify_stale_clusters",
            "schedule": 900.0,
            "options": {"expires": 810},
        },
        "exceptions-ending": {
            "task": "compliance.tasks.notify_exceptions_ending",
            "schedule": 3600.0,
            "options": {"expires": 3240},
        },
        "expire-sso-access": {
            "task": "compliance.tasks.expire_sso_access",
            "schedule": 3600.0,
            "options": {"expires": 3240},
        },
        "weekly-digest": {
            "task": "compliance.tasks.weekly_digest",
            "schedule": crontab(minute=0, hour=7, day_of_week=1),
            "options": {"expires": 3600},
        },
    }
)


# --- operations: /healthz, /readyz, /metrics (compliance/ops/) ----------------------------
# /metrics answers a request with `Authorization: Bearer WELKIN_METRICS_TOKEN`, or from an
# address in WELKIN_METRICS_ALLOWED_NETWORKS (CIDRs, the TCP peer, never a forwarded
# header); with neither set it answers nobody.
WELKIN_METRICS_TOKEN = env_str("WELKIN_METRICS_TOKEN", "")
if WELKIN_METRICS_TOKEN and len(WELKIN_METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("WELKIN_METRICS_TOKEN: at least 16 characters")


WELKIN_METRICS_ALLOWED_NETWORKS = env_networks(
    "WELKIN_METRICS_ALLOWED_NETWORKS", ["127.0.0.1/32", "::1/128"] if DEBUG else []
)
# A namespace label on the findings metrics multiplies their series by the namespaces.
WELKIN_METRICS_NAMESPACES = env_bool("WELKIN_METRICS_NAMESPACES", False)

WELKIN_METRICS_QUEUES = env_list("WELKIN_METRICS_QUEUES", list(CELERY_QUEUES_BY_PURPOSE))
WELKIN_READYZ_TIMEOUT = env_int("WELKIN_READYZ_TIMEOUT", 2, minimum=1)


# --- logging, and the checks that span sections -------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

for _limit in ("WELKIN_SCAN_TIME_LIMIT", "WELKIN_EXPORT_TIME_LIMIT", "CELERY_TASK_TIME_LIMIT"):
    if globals()[_limit] >= WELKIN_BROKER_VISIBILITY_TIMEOUT:
        raise ImproperlyConfigured(
            f"{_limit} must be below WELKIN_BROKER_VISIBILITY_TIMEOUT (a task still running "
            "when it passes is delivered to a second worker)"
        )

# Checked last, so a missing key is named before a weak one.
if not DEBUG and SECRET_KEY and (len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5):
    raise ImproperlyConfigured(
        "SECRET_KEY: at least 50 characters, at least 5 of them different (generate one with "
        "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`)"
    )
