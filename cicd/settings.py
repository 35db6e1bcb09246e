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

# --- Secrets at rest (cicd/crypto.py; README: Secrets and variables). CI/CD variables, webhook
# secrets, forge tokens and Slack URLs are encrypted with this Fernet key; the old keys still
# decrypt (key rotation: `manage.py reencrypt_secrets`). Default: derived from SECRET_KEY.
from cicd.crypto import check_key, derive_key  # noqa: E402

CONVEYOR_ENCRYPTION_KEY = check_key(
    "CONVEYOR_ENCRYPTION_KEY", env_str("CONVEYOR_ENCRYPTION_KEY", "") or derive_key(SECRET_KEY)
)
CONVEYOR_ENCRYPTION_OLD_KEYS = [
    check_key("CONVEYOR_ENCRYPTION_OLD_KEYS", key) for key in env_list("CONVEYOR_ENCRYPTION_OLD_KEYS", [])
]

# --- HTTPS and security headers (README: Security). CONVEYOR_HTTPS=true is the production switch
# (`manage.py check --deploy` is clean with it): secure cookies, HSTS, http -> https redirects.
# The runner API and /healthz are not redirected: runners and probes often reach the web
# process over the cluster's plain HTTP, behind the TLS-terminating proxy.
CONVEYOR_HTTPS = env_bool("CONVEYOR_HTTPS", False)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", CONVEYOR_HTTPS)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^api/runner/"]
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", CONVEYOR_HTTPS)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", CONVEYOR_HTTPS)
SESSION_COOKIE_HTTPONLY = True
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 365 * 24 * 3600 if CONVEYOR_HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", CONVEYOR_HTTPS)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", CONVEYOR_HTTPS)
# Only behind a proxy that sets X-Forwarded-Proto itself (and strips the client's): else any
# client could claim HTTPS.
if env_bool("CONVEYOR_TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Pages load scripts, styles and images from Conveyor only, and talk to it only (fetch,
# WebSockets): the templates have no inline script. Inline style attributes stay allowed.
CONVEYOR_CONTENT_SECURITY_POLICY = env_str(
    "CONVEYOR_CONTENT_SECURITY_POLICY",
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'",
)

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
    "audit",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "cicd.security.ContentSecurityPolicyMiddleware",
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
# The hot statements (the claim) run as server-side prepared statements (cicd.db): set false
# behind a connection pooler in transaction mode that cannot keep them (PgBouncer before 1.21).
DATABASE_PREPARED_STATEMENTS = env_bool("DATABASE_PREPARED_STATEMENTS", True)
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
# Fair share between runs: a run's k-th queued-or-running job queues k times this many
# seconds behind its first, so jobs of other runs queued meanwhile are claimed in between.
CONVEYOR_FAIR_SHARE_STEP_S = env_float("CONVEYOR_FAIR_SHARE_STEP_S", 10.0, minimum=0.0)
# Where the shell executor makes job workspaces.
CONVEYOR_BUILDS_DIR = env_str("CONVEYOR_BUILDS_DIR", str(embedded.var_dir() / "builds"))
# The shell executor's git cache (beside the builds directory): a cached repository no job
# used for this many days is removed; one grown past this many MB keeps only the commits fetched last.
CONVEYOR_GIT_CACHE_DAYS = env_float("CONVEYOR_GIT_CACHE_DAYS", 7.0, minimum=0.0)
CONVEYOR_GIT_CACHE_MB = env_int("CONVEYOR_GIT_CACHE_MB", 4096, minimum=1)

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

# --- Logs.
# A job's log past this many bytes keeps its head and its last CONVEYOR_LOG_TAIL_BYTES, with a
# truncation notice in between; the job itself goes on unaffected.
CONVEYOR_MAX_LOG_BYTES_PER_JOB = env_int("CONVEYOR_MAX_LOG_BYTES_PER_JOB", 100 * 1024 * 1024, minimum=64 * 1024)
CONVEYOR_LOG_TAIL_BYTES = env_int("CONVEYOR_LOG_TAIL_BYTES", 1024 * 1024, minimum=1024)
# Retention: a job's log chunks are deleted this many days after the job finished (nightly,
# at CONVEYOR_ARTIFACTS_CLEANUP_HOUR; 0 keeps logs for good). The job keeps its log's sizes and
# its pages say the log expired. Jobs per transaction of the expiry:
CONVEYOR_LOG_RETENTION_DAYS = env_int("CONVEYOR_LOG_RETENTION_DAYS", 90, minimum=0)
CONVEYOR_LOG_EXPIRE_BATCH = env_int("CONVEYOR_LOG_EXPIRE_BATCH", 200, minimum=1)
if CONVEYOR_LOG_TAIL_BYTES >= CONVEYOR_MAX_LOG_BYTES_PER_JOB:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("CONVEYOR_LOG_TAIL_BYTES must be smaller than CONVEYOR_MAX_LOG_BYTES_PER_JOB")
# Longest wait for Redis when a stored chunk is published to live viewers; past it the chunk
# is only in the database (viewers fetch it from there).
CONVEYOR_LOG_PUBLISH_TIMEOUT_S = env_float("CONVEYOR_LOG_PUBLISH_TIMEOUT_S", 2.0, minimum=0.05)
# A live viewer that has heard nothing for this long re-reads the database (missed events,
# a Redis restart, the last chunk of a step): the bound on how stale a viewer can get.
CONVEYOR_LOG_VIEWER_BACKSTOP_S = env_float("CONVEYOR_LOG_VIEWER_BACKSTOP_S", 5.0, minimum=0.05)
# A finished step's log is rendered on the server up to this many bytes (its tail beyond that).
CONVEYOR_LOG_RENDER_MAX_BYTES = env_int("CONVEYOR_LOG_RENDER_MAX_BYTES", 2 * 1024 * 1024, minimum=1024)

# --- Webhooks and triggers (pipelines/: webhooks, schedules, API runs, commit statuses).
# Largest webhook body accepted: a bigger one gets 413, and no more than this is read.
CONVEYOR_WEBHOOK_MAX_BYTES = env_int("CONVEYOR_WEBHOOK_MAX_BYTES", 5 * 1024 * 1024, minimum=1024)
# Web server (uvicorn) processes that `manage.py up` (make run) and the benchmarks start: one
# Python process runs on one core at a time, and webhook bursts need more than one.
CONVEYOR_WEB_WORKERS = env_int("CONVEYOR_WEB_WORKERS", 2, minimum=1)
# Threads per web server process that serve webhook requests, and the runner API's short calls
# (cicd.pooled); each keeps a database connection open (CONN_MAX_AGE), so these bound a
# burst's connections. A burst of webhooks does not delay the runners' reports.
CONVEYOR_WEBHOOK_THREADS = env_int("CONVEYOR_WEBHOOK_THREADS", 4, minimum=1)
CONVEYOR_RUNNER_API_THREADS = env_int("CONVEYOR_RUNNER_API_THREADS", 8, minimum=1)
# Processed deliveries are kept this long (the admin; recognizing redeliveries, which GitHub
# allows for up to 7 days), then deleted by a daily task.
CONVEYOR_WEBHOOK_RETENTION_DAYS = env_int("CONVEYOR_WEBHOOK_RETENTION_DAYS", 30, minimum=7)
# How often beat looks for due cron schedules (cron has minute resolution).
CONVEYOR_SCHEDULE_INTERVAL_S = env_int("CONVEYOR_SCHEDULE_INTERVAL_S", 20, minimum=1)
# Commit statuses posted to GitHub/GitLab: timeout of one call, retries of transient failures
# (with exponential backoff), and the period of the sweep that catches missed changes.
CONVEYOR_COMMIT_STATUS_TIMEOUT_S = env_float("CONVEYOR_COMMIT_STATUS_TIMEOUT_S", 10.0, minimum=0.1)
CONVEYOR_COMMIT_STATUS_MAX_RETRIES = env_int("CONVEYOR_COMMIT_STATUS_MAX_RETRIES", 8, minimum=0)
CONVEYOR_COMMIT_STATUS_SWEEP_S = env_int("CONVEYOR_COMMIT_STATUS_SWEEP_S", 15, minimum=1)
CELERY_BEAT_SCHEDULE.update(
    {
        "pipelines-schedules": {
            "task": "pipelines.tasks.run_due_schedules",
            "schedule": timedelta(seconds=CONVEYOR_SCHEDULE_INTERVAL_S),
        },
        "pipelines-resend-stuck-deliveries": {
            "task": "pipelines.tasks.resend_stuck_deliveries",
            "schedule": timedelta(seconds=60),
        },
        "pipelines-prune-deliveries": {"task": "pipelines.tasks.prune_deliveries", "schedule": timedelta(days=1)},
        "pipelines-commit-statuses": {
            "task": "pipelines.tasks.sweep_commit_statuses",
            "schedule": timedelta(seconds=CONVEYOR_COMMIT_STATUS_SWEEP_S),
        },
    }
)

# --- Deployments and notifications.
# Period of the beat sweep that lets held deploys go when a deploy freeze ends or an approval
# expires, finishes deployments whose job ended unnoticed and resends lost notifications.
CONVEYOR_DEPLOY_SWEEP_S = env_int("CONVEYOR_DEPLOY_SWEEP_S", 15, minimum=1)
# Slack and e-mail notifications: timeout of one Slack call, and retries (exponential backoff,
# 5 s doubling up to 5 min) of a message that failed transiently before it is recorded FAILED.
CONVEYOR_NOTIFY_TIMEOUT_S = env_float("CONVEYOR_NOTIFY_TIMEOUT_S", 10.0, minimum=0.1)
CONVEYOR_NOTIFY_MAX_RETRIES = env_int("CONVEYOR_NOTIFY_MAX_RETRIES", 5, minimum=0)
# The kubeconfig file a runner's `deploy:` jobs use (its `context:` picks a context in it).
# Empty: the in-cluster service account (a runner pod), else $KUBECONFIG or ~/.kube/config.
CONVEYOR_DEPLOY_KUBECONFIG = env_str("CONVEYOR_DEPLOY_KUBECONFIG", "")
CELERY_BEAT_SCHEDULE["runs-deployments-sweep"] = {
    "task": "runs.tasks.sweep_deployments",
    "schedule": timedelta(seconds=CONVEYOR_DEPLOY_SWEEP_S),
}

# --- Dashboard and REST API (issue 8: runs/views.py, cicd/api.py, pipelines/permissions.py).
# People log in on Conveyor's own page (the admin's login admits staff only).
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"
INSTALLED_APPS += ["drf_spectacular"]
# Swagger UI's files from a package, served like any static file: the API docs page loads
# nothing from a CDN. Without the package the docs page falls back to the browsable API.
try:
    import drf_spectacular_sidecar  # noqa: F401

    INSTALLED_APPS += ["drf_spectacular_sidecar"]
    CONVEYOR_API_DOCS_ASSETS = True
except ImportError:
    CONVEYOR_API_DOCS_ASSETS = False
REST_FRAMEWORK.update(
    {
        "DEFAULT_AUTHENTICATION_CLASSES": [
            # Personal API tokens (Authorization: Bearer cvp_...), stored hashed.
            "pipelines.api_tokens.ApiTokenAuthentication",
            "rest_framework.authentication.SessionAuthentication",
        ],
        "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
        "DEFAULT_PAGINATION_CLASS": "cicd.api_base.Pagination",
        "PAGE_SIZE": 50,
        "EXCEPTION_HANDLER": "cicd.api_base.exception_handler",
    }
)
SPECTACULAR_SETTINGS = {
    "TITLE": "Conveyor API",
    "DESCRIPTION": "Repositories, pipelines, runs, jobs, logs, artifacts, runners and deployments of Conveyor.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "RunStatusEnum": "runs.models.RunStatus",
        "JobStatusEnum": "runs.models.JobStatus",
        "StepStatusEnum": "runs.models.StepStatus",
        "DeploymentStatusEnum": "runs.models.DeploymentStatus",
    },
}

# --- Artifacts (artifacts/ on the server, runners/artifacts.py on runners; README: Artifacts).
# Storage is STORAGES["artifacts"] above: the file system, or S3 with ARTIFACTS_S3_BUCKET.
# Retention of an artifact whose job sets no `artifacts: expire_in`: runs of the repository's
# default branch keep theirs longer than feature branches, tags and merge requests.
CONVEYOR_ARTIFACTS_EXPIRE_DAYS = env_int("CONVEYOR_ARTIFACTS_EXPIRE_DAYS", 30, minimum=1)
CONVEYOR_ARTIFACTS_EXPIRE_DAYS_DEFAULT_BRANCH = env_int("CONVEYOR_ARTIFACTS_EXPIRE_DAYS_DEFAULT_BRANCH", 90, minimum=1)
# Never delete the artifacts of each pipeline's latest successful run of the default branch,
# expired or not (GitLab's "keep artifacts from most recent successful jobs").
CONVEYOR_ARTIFACTS_KEEP_LATEST = env_bool("CONVEYOR_ARTIFACTS_KEEP_LATEST", True)
# Largest archive a job may upload (5 GiB: also the most one S3 PUT takes).
CONVEYOR_ARTIFACTS_MAX_BYTES = env_int("CONVEYOR_ARTIFACTS_MAX_BYTES", 5 * 1024**3, minimum=1024)
# A runner unpacks at most this many bytes from one archive of a job's dependencies (zip bombs).
CONVEYOR_ARTIFACTS_MAX_UNPACKED_BYTES = env_int("CONVEYOR_ARTIFACTS_MAX_UNPACKED_BYTES", 20 * 1024**3, minimum=1024)
# A test report archive bigger than this is stored but not parsed.
CONVEYOR_ARTIFACTS_MAX_REPORT_BYTES = env_int("CONVEYOR_ARTIFACTS_MAX_REPORT_BYTES", 50 * 1024**2, minimum=1024)
# Lifetime of presigned S3 URLs (runner uploads and downloads, browser downloads).
CONVEYOR_ARTIFACTS_PRESIGN_S = env_int("CONVEYOR_ARTIFACTS_PRESIGN_S", 3600, minimum=60)
# An upload still unfinished after this long was abandoned: the cleanup deletes it.
CONVEYOR_ARTIFACTS_PENDING_HOURS = env_int("CONVEYOR_ARTIFACTS_PENDING_HOURS", 24, minimum=1)
# Rows the nightly cleanup claims per transaction, and the hour (UTC) it runs at.
CONVEYOR_ARTIFACTS_CLEANUP_BATCH = env_int("CONVEYOR_ARTIFACTS_CLEANUP_BATCH", 500, minimum=1)
CONVEYOR_ARTIFACTS_CLEANUP_HOUR = env_int("CONVEYOR_ARTIFACTS_CLEANUP_HOUR", 3, minimum=0)
if CONVEYOR_ARTIFACTS_CLEANUP_HOUR > 23:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("CONVEYOR_ARTIFACTS_CLEANUP_HOUR must be an hour of the day, 0 to 23")
# `cache:` archives unused (neither pulled nor pushed) for this many days go with the nightly cleanup.
CONVEYOR_CACHE_RETENTION_DAYS = env_int("CONVEYOR_CACHE_RETENTION_DAYS", 14, minimum=1)
# How often storage objects of deleted rows (runs, repositories, replaced caches) are deleted.
CONVEYOR_STORAGE_DELETION_SWEEP_S = env_int("CONVEYOR_STORAGE_DELETION_SWEEP_S", 300, minimum=10)
if ARTIFACTS_S3_BUCKET:
    from boto3.s3.transfer import TransferConfig

    # Presigned URLs signed with SigV4 (what every region takes); archives stored as what
    # they are, without the Content-Encoding: gzip that guessing from ".tar.gz" would add
    # (clients would then unpack them on the fly).
    STORAGES["artifacts"]["OPTIONS"]["signature_version"] = "s3v4"
    STORAGES["artifacts"]["OPTIONS"]["object_parameters"] = {"ContentType": "application/gzip"}

    # Multipart uploads by the web process and trusted runners hold about chunk size x
    # concurrency in memory, whatever the artifact's size.
    STORAGES["artifacts"]["OPTIONS"]["transfer_config"] = TransferConfig(
        multipart_threshold=16 * 1024**2, multipart_chunksize=16 * 1024**2, max_concurrency=4
    )
from celery.schedules import crontab  # noqa: E402

CELERY_BEAT_SCHEDULE["artifacts-cleanup"] = {
    "task": "artifacts.tasks.cleanup_expired",
    "schedule": crontab(hour=CONVEYOR_ARTIFACTS_CLEANUP_HOUR, minute=17),
}
CELERY_BEAT_SCHEDULE["logs-expire"] = {
    "task": "logs.tasks.expire_logs",
    "schedule": crontab(hour=CONVEYOR_ARTIFACTS_CLEANUP_HOUR, minute=37),
}
CELERY_BEAT_SCHEDULE["artifacts-storage-deletions"] = {
    "task": "artifacts.tasks.drain_storage_deletions",
    "schedule": float(CONVEYOR_STORAGE_DELETION_SWEEP_S),
}
