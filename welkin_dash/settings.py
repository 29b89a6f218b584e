"""welkin-dash settings, all from the environment.

Every variable is read by a helper that raises ImproperlyConfigured naming the variable
when its value is bad. With no DATABASE_URL the project runs embedded for a first look:
SQLite under ./var and scans in-process (no broker needed).
"""

import base64
import binascii
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r}: expected true or false (1/0, yes/no, on/off)")


def env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r}: expected a whole number") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r}: must be at least {minimum}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def database_from_url(url: str, name: str = "DATABASE_URL") -> dict:
    """postgres://user:password@host:port/dbname?sslmode=... -> a DATABASES entry."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        raise ImproperlyConfigured(
            f"{name}: unsupported scheme {parts.scheme!r}, expected postgres://"
        )
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname:
        raise ImproperlyConfigured(f"{name}: no database name in the URL")
    try:
        port = parts.port
    except ValueError:
        raise ImproperlyConfigured(f"{name}: the port is not a number") from None
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": dbname,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        # An empty host means the local socket.
        "HOST": unquote(parts.hostname or ""),
        "PORT": str(port or ""),
        "OPTIONS": options,
        "CONN_MAX_AGE": env_int("DATABASE_CONN_MAX_AGE", 60),
        "CONN_HEALTH_CHECKS": True,
    }


DEBUG = env_bool("DEBUG", False)
# `manage.py evaluate` (set by manage.py) is a CI tool: it needs no server secrets and no
# database, so missing keys are not an error there (nothing in it signs or decrypts).
OFFLINE_COMMAND = env_bool("WELKIN_OFFLINE_COMMAND", False)
NEEDS_KEYS = not DEBUG and not OFFLINE_COMMAND
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if NEEDS_KEYS:
        raise ImproperlyConfigured("SECRET_KEY is required when DEBUG is off")
    SECRET_KEY = "insecure-development-key-for-debug-only" if DEBUG else ""
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

DATABASE_URL = env_str("DATABASE_URL")
EMBEDDED = not DATABASE_URL
if DATABASE_URL:
    DATABASES = {"default": database_from_url(DATABASE_URL)}
elif (
    OFFLINE_COMMAND
    and not (
        Path(env_str("WELKIN_VAR_DIR", str(BASE_DIR / "var"))) / "welkin-dash.sqlite3"
    ).exists()
):
    DATABASES = {"default": {"ENGINE": "django.db.backends.dummy"}}  # no database
else:
    VAR_DIR = Path(env_str("WELKIN_VAR_DIR", str(BASE_DIR / "var")))
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": VAR_DIR / "welkin-dash.sqlite3"}
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

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
    "compliance",
]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "EXCEPTION_HANDLER": "compliance.api.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "welkin-dash API",
    "DESCRIPTION": "Read-only: clusters, scans, findings, rollups and point-in-time reports, "
    "filtered by the same access rules as the pages.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
}

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves the collected static files (vendored JS, CSS) under gunicorn, without a CDN.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "compliance.params.BadParameterMiddleware",
    "compliance.middleware.LoginRequired",
    "django.contrib.messages.middleware.MessageMiddleware",
    "compliance.audit.DeniedAccessMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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
                "compliance.context.navigation",
            ],
        },
    },
]

# Uploads: form fields at most 2.5 MB in memory, files over 2.5 MB spooled to a
# temporary file; the Verify page refuses reports over WELKIN_VERIFY_MAX_BYTES before
# reading them, and hashes what it takes as a stream.
WELKIN_SNAPSHOT_MAX_BYTES = env_int("WELKIN_SNAPSHOT_MAX_BYTES", 1 << 30, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
WELKIN_VERIFY_MAX_BYTES = env_int("WELKIN_VERIFY_MAX_BYTES", 1 << 30, minimum=1)

EXPORTS_DIR = Path(env_str("WELKIN_EXPORTS_DIR", str(BASE_DIR / "var" / "exports")))

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "var" / "static")))
try:  # collectstatic fills it in the image; before that WhiteNoise wants it to exist
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
except OSError:
    pass
WHITENOISE_USE_FINDERS = DEBUG

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

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
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

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
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True


def server_key(
    name: str,
    derived_from: bytes,
    generate: str,
    encode: Callable[[bytes], bytes] = base64.b64encode,
) -> str:
    """A key the server needs: from the environment; required when DEBUG is off (but not
    for `manage.py evaluate`, which signs and decrypts nothing); for a first look (DEBUG)
    derived from SECRET_KEY and `derived_from`, so nothing needs setting up."""
    value = env_str(name, "")
    if value:
        return value
    if NEEDS_KEYS:
        raise ImproperlyConfigured(
            f"{name} is required when DEBUG is off (generate one with `{generate}`)"
        )
    if not DEBUG:
        return ""
    return encode(hashlib.sha256(derived_from + SECRET_KEY.encode()).digest()).decode()


# Reports are signed with an Ed25519 key: base64 of its 32-byte private seed.
WELKIN_SIGNING_KEY = server_key(
    "WELKIN_SIGNING_KEY",
    b"welkin-dash report signing:",
    "python -c 'import os, base64; print(base64.b64encode(os.urandom(32)).decode())'",
)
try:
    if WELKIN_SIGNING_KEY and len(base64.b64decode(WELKIN_SIGNING_KEY, validate=True)) != 32:
        raise ValueError
except (ValueError, binascii.Error):
    raise ImproperlyConfigured("WELKIN_SIGNING_KEY: expected base64 of 32 bytes") from None

# Scanning.
# Fernet keys for credentials at rest, comma separated: the first encrypts, all decrypt.
WELKIN_FERNET_KEYS = env_list("WELKIN_FERNET_KEYS", []) or [
    k
    for k in [
        server_key(
            "WELKIN_FERNET_KEYS",
            b"welkin-dash credentials:",
            "python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'",
            base64.urlsafe_b64encode,
        )
    ]
    if k
]
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

CELERY_BEAT_SCHEDULE = {
    "enqueue-due-scans": {
        "task": "compliance.tasks.enqueue_due_scans",
        "schedule": float(WELKIN_FANOUT_SECONDS),
        # A fan-out nobody picked up in time is replaced by the next one.
        "options": {"expires": WELKIN_FANOUT_SECONDS * 0.9},
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
