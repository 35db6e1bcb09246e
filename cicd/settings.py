"""Conveyor settings. Every knob comes from the environment (see README: Configuration).

Nothing must be set to run locally: without DATABASE_URL / REDIS_URL the embedded
PostgreSQL and Redis under var/ are used (``python -m cicd.embedded up`` starts them).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from cicd import embedded
from cicd.env import check_redis_url, env_bool, env_float, env_int, env_list, env_str, parse_database_url, raw

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG and env_bool("CONVEYOR_REQUIRE_SECRET_KEY", False):
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("SECRET_KEY must be set in production")
    # Local default: stable per checkout, never shared between installations.
    key_file = embedded.var_dir() / "secret_key"
    if key_file.exists():
        SECRET_KEY = key_file.read_text().strip()
    else:
        import secrets

        key_file.parent.mkdir(parents=True, exist_ok=True)
        SECRET_KEY = secrets.token_urlsafe(50)
        key_file.write_text(SECRET_KEY)
        key_file.chmod(0o600)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# Absolute URL used in notifications and commit statuses.
CONVEYOR_BASE_URL = env_str("CONVEYOR_BASE_URL", "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "django_celery_beat",
    "channels",
    "pipelines",
    "runs",
    "runners",
    "artifacts",
    "logs",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "cicd.urls"
WSGI_APPLICATION = "cicd.wsgi.application"
ASGI_APPLICATION = "cicd.asgi.application"

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
            ],
        },
    },
]

# --- Database: PostgreSQL only (the job queue relies on SKIP LOCKED and LISTEN/NOTIFY).
USING_EMBEDDED_POSTGRES = not raw("DATABASE_URL")
DATABASE_URL = raw("DATABASE_URL") or embedded.database_url()
DATABASES = {"default": parse_database_url(DATABASE_URL)}
DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: Celery broker, channel layer (Pub/Sub), cache.
USING_EMBEDDED_REDIS = not raw("REDIS_URL")
REDIS_URL = check_redis_url(raw("REDIS_URL") or embedded.redis_url())

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    }
}

# kombu spells a Redis unix socket redis+socket://, not unix:// as redis-py does.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL.replace("unix://", "redis+socket://", 1))
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True  # a worker killed mid-task leaves the task for another
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
# Backstop sweep of the DAG engine (promotion is event-driven; this catches anything missed).
CONVEYOR_SWEEP_INTERVAL_S = env_int("CONVEYOR_SWEEP_INTERVAL_S", 5, minimum=1)
CELERY_BEAT_SCHEDULE = {
    "runs-sweep": {"task": "runs.tasks.sweep_runs", "schedule": timedelta(seconds=CONVEYOR_SWEEP_INTERVAL_S)},
}

# --- Storage.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "artifacts": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": env_str("ARTIFACTS_DIR", str(embedded.var_dir() / "artifacts"))},
    },
}
ARTIFACTS_S3_BUCKET = env_str("ARTIFACTS_S3_BUCKET", "")
if ARTIFACTS_S3_BUCKET:
    STORAGES["artifacts"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": ARTIFACTS_S3_BUCKET,
            "endpoint_url": env_str("ARTIFACTS_S3_ENDPOINT_URL", "") or None,
            "region_name": env_str("ARTIFACTS_S3_REGION", "") or None,
            "access_key": env_str("AWS_ACCESS_KEY_ID", "") or None,
            "secret_key": env_str("AWS_SECRET_ACCESS_KEY", "") or None,
            "default_acl": None,
            "querystring_auth": True,
        },
    }

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env_str("STATIC_ROOT", str(embedded.var_dir() / "static"))

# --- E-mail (notifications).
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "conveyor@localhost")

# --- Pipelines.
# Where bare mirrors of repositories are kept.
CONVEYOR_MIRRORS_DIR = Path(env_str("CONVEYOR_MIRRORS_DIR", str(embedded.var_dir() / "mirrors")))
# Upper bounds that keep a hostile config from exhausting the server.
CONVEYOR_MAX_CONFIG_BYTES = env_int("CONVEYOR_MAX_CONFIG_BYTES", 1024 * 1024, minimum=1024)
CONVEYOR_MAX_JOBS_PER_RUN = env_int("CONVEYOR_MAX_JOBS_PER_RUN", 2000, minimum=1)

# --- Runners and the queue.
# A running job's lease: the runner's heartbeats extend it; past it the reaper takes the job back.
CONVEYOR_JOB_LEASE_S = env_int("CONVEYOR_JOB_LEASE_S", 30, minimum=5)
# Timeout of a job whose config sets none.
CONVEYOR_JOB_TIMEOUT_S = env_int("CONVEYOR_JOB_TIMEOUT_S", 3600, minimum=1)
# How often a runner reports on its jobs (and learns of cancels).
CONVEYOR_HEARTBEAT_S = env_float("CONVEYOR_HEARTBEAT_S", 1.0, minimum=0.1)
# Idle runners wait on LISTEN/NOTIFY; this poll is only the fallback.
CONVEYOR_RUNNER_POLL_S = env_float("CONVEYOR_RUNNER_POLL_S", 5.0, minimum=0.1)
# Where the shell executor makes job workspaces.
CONVEYOR_BUILDS_DIR = env_str("CONVEYOR_BUILDS_DIR", str(embedded.var_dir() / "builds"))

# --- Kubernetes executor: one pod per job (runners/executors/kubernetes.py).
CONVEYOR_K8S_NAMESPACE = env_str("CONVEYOR_K8S_NAMESPACE", "conveyor-jobs")
# Job pods run under this service account; leave empty for the namespace default (which should have no rights).
CONVEYOR_K8S_SERVICE_ACCOUNT = env_str("CONVEYOR_K8S_SERVICE_ACCOUNT", "") or None
# Image of a job that names none.
CONVEYOR_K8S_DEFAULT_IMAGE = env_str("CONVEYOR_K8S_DEFAULT_IMAGE", "alpine:3")
# Resource requests/limits of job pods in Kubernetes quantity syntax ("500m", "1Gi"); empty means unset.
CONVEYOR_K8S_CPU_REQUEST = env_str("CONVEYOR_K8S_CPU_REQUEST", "") or None
CONVEYOR_K8S_CPU_LIMIT = env_str("CONVEYOR_K8S_CPU_LIMIT", "") or None
CONVEYOR_K8S_MEMORY_REQUEST = env_str("CONVEYOR_K8S_MEMORY_REQUEST", "") or None
CONVEYOR_K8S_MEMORY_LIMIT = env_str("CONVEYOR_K8S_MEMORY_LIMIT", "") or None

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "admin:login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
