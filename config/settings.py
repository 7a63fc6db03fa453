"""Settings, all read from the environment. See the README's Configuration section."""

import os
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, "1" if default else "0").strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# Zero-setup mode (no DATABASE_URL) is the local demo, so it defaults to DEBUG on.
DEBUG = env_bool("DEBUG", default=not os.environ.get("DATABASE_URL"))

# --- Secret key (see config/secret_key.py) ---------------------------------------------------
# SECRET_KEY from the environment; without it, a local installation (DEBUG on) uses a random
# key generated on first run and kept in .data/secret_key. With DEBUG off the key must be
# set and strong. SECRET_KEY_FALLBACKS (comma-separated) keeps old links valid while rotating.
from config import secret_key as _secret_key  # noqa: E402

SECRET_KEY = os.environ.get("SECRET_KEY", "")
SECRET_KEY_FALLBACKS = env_list("SECRET_KEY_FALLBACKS")
if not SECRET_KEY and DEBUG:
    SECRET_KEY = _secret_key.installation_key(Path(os.environ.get("SECRET_KEY_FILE", BASE_DIR / ".data" / "secret_key")))
if not SECRET_KEY:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off (see README, Production deployment).")
if not DEBUG:
    _secret_key.require_strong("SECRET_KEY", SECRET_KEY)
    for _fallback in SECRET_KEY_FALLBACKS:
        _secret_key.require_strong("A key in SECRET_KEY_FALLBACKS", _fallback)
# --- end of secret key ------------------------------------------------------------------------

SITE_URL = os.environ.get("SITE_URL", "http://localhost:8000").rstrip("/")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", SITE_URL)
if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", SITE_URL.startswith("https://"))
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Security headers: HTTPS, Content-Security-Policy, Permissions-Policy ------------------
# Production (DEBUG off) redirects plain HTTP to HTTPS (behind the proxy header above) and
# sends HSTS when SITE_URL is https. The CSP is enforced in every mode, so the development
# server and the browser tests catch anything the production policy would block.
from django.utils.csp import CSP  # noqa: E402

if not DEBUG:
    _https = SITE_URL.startswith("https://")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", _https)
    # Paths (regexes, no leading slash) still answered over plain HTTP, e.g. a load balancer's
    # health check that talks to the app directly.
    SECURE_REDIRECT_EXEMPT = env_list("SECURE_REDIRECT_EXEMPT")
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", str(365 * 24 * 3600) if _https else "0"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)

# Websockets (live dashboards) go to this same site; older browsers do not count ws:/wss: as 'self'.
_site_host = SITE_URL.split("://", 1)[-1].split("/", 1)[0]
_ws_schemes = ["wss"] if SITE_URL.startswith("https://") else ["ws", "wss"]
SECURE_CSP = {
    "default-src": [CSP.SELF],
    # Every <script> is a file of ours or carries the request's nonce; no inline handlers, no eval.
    "script-src": [CSP.SELF, CSP.NONCE],
    # The same for <style>; inline style="" attributes are refused too (set from JS through
    # element.style instead, which CSP allows). Email HTML, full of inline styles, is shown
    # in frames served with a policy of their own (campaigns/views.py, EMAIL_FRAME_CSP).
    "style-src": [CSP.SELF, CSP.NONCE],
    "img-src": [CSP.SELF, "data:"],
    "font-src": [CSP.SELF],
    "connect-src": [CSP.SELF, *(f"{scheme}://{_site_host}" for scheme in _ws_schemes)],
    "frame-src": [CSP.SELF],
    "frame-ancestors": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
}

# Browser features no page of ours uses: denied to the pages and to anything they embed.
PERMISSIONS_POLICY = {
    feature: []
    for feature in (
        "accelerometer", "autoplay", "camera", "display-capture", "geolocation", "gyroscope", "magnetometer",
        "microphone", "midi", "payment", "usb", "xr-spatial-tracking",
    )
}
# --- end of security headers -----------------------------------------------------------------

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django.contrib.postgres",
    "channels",
    "channels_postgres",
    "django_q",
    "django_htmx",
    "ninja",
    "core",
    "customers",
    "segments",
    "campaigns",
    "journeys",
    "dashboards",
    "webhooks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "config.middleware.PermissionsPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

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
                "customers.context_processors.roles",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------
# DATABASE_URL, or the embedded PostgreSQL in .data/ (started on first use, see
# config/localdb.py).


def database_from_url(url: str) -> dict:
    params = conninfo_to_dict(url)
    options = {
        key: value
        for key, value in params.items()
        if key not in {"dbname", "user", "password", "host", "port"}
    }
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.get("dbname", ""),
        "USER": params.get("user", ""),
        "PASSWORD": params.get("password", ""),
        "HOST": params.get("host", ""),
        "PORT": params.get("port", ""),
        "CONN_MAX_AGE": int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")),
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": options,
        "TEST": {"NAME": os.environ.get("DATABASE_TEST_NAME") or None},
        "TIME_ZONE": None,
        "ATOMIC_REQUESTS": False,
        "AUTOCOMMIT": True,
    }


DATABASE_URL = os.environ.get("DATABASE_URL")
if not DATABASE_URL:
    from config import localdb

    EMBEDDED_POSTGRES = localdb.start()
    DATABASE_URL = localdb.url(EMBEDDED_POSTGRES)

DATABASES = {"default": database_from_url(DATABASE_URL)}
# The ASGI server runs each request's database work on whichever thread is free, so
# per-thread persistent connections turn into a new connection per request. It uses a
# connection pool instead (config/asgi.py turns this on); workers keep plain connections.
if env_bool("DATABASE_POOL"):
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"]["pool"] = {
        "min_size": 2,
        "max_size": int(os.environ.get("DATABASE_POOL_MAX", "16")),
        "timeout": 10,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis (optional): task broker and channel layer -----------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "")

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # channels-redis that recovers when Redis restarts (dashboards/layers.py).
            "BACKEND": "dashboards.layers.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    # channels-postgres removes a socket from a group through the ORM, on a database alias
    # of its own: the same database as default (a mirror of it in tests).
    DATABASES["channels_postgres"] = {
        **DATABASES["default"],
        "OPTIONS": {k: v for k, v in DATABASES["default"]["OPTIONS"].items() if k != "pool"},
        "CONN_MAX_AGE": 0,
        "TEST": {"MIRROR": "default"},
    }
    # channels-postgres needs a full Django database settings dict. Ours is a subclass that
    # recovers by itself when PostgreSQL restarts (dashboards/layers.py).
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "dashboards.layers.PostgresChannelLayer",
            # channels-postgres opens its own connections: no Django pool options.
            "CONFIG": {
                **DATABASES["default"],
                "CONN_MAX_AGE": 0,
                "OPTIONS": {k: v for k, v in DATABASES["default"]["OPTIONS"].items() if k != "pool"},
            },
        }
    }

Q_CLUSTER = {
    "name": "switchboard",
    "workers": int(os.environ.get("Q_WORKERS", "2")),
    "timeout": 120,
    # retry must exceed timeout, or a slow task is picked up twice.
    "retry": 180,
    "max_attempts": 3,
    "catch_up": False,
    "save_limit": 1000,
    "label": "Background tasks",
    "poll": 0.5,
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# A segment's full computation (on create, on a rule change) runs as a background task, or
# within the request when there are at most this many customers (the wait for a worker would
# be longer than the work). -1 always uses the background.
SEGMENT_COMPUTE_INLINE_CUSTOMERS = int(os.environ.get("SEGMENT_COMPUTE_INLINE_CUSTOMERS", "20000"))

# Live dashboards: each process publishes a changed group at most this often (seconds), and
# each open dashboard receives at most one push per DASHBOARD_PUSH_INTERVAL.
DASHBOARD_PUBLISH_INTERVAL = float(os.environ.get("DASHBOARD_PUBLISH_INTERVAL", "0.05"))
DASHBOARD_PUSH_INTERVAL = float(os.environ.get("DASHBOARD_PUSH_INTERVAL", "0.2"))

# Opens and clicks: the tracking route queues them (campaigns.engagement) and a thread in each
# web process applies the queue at most every TRACKING_DRAIN_INTERVAL seconds, and looks for
# hits left by a stopped process every TRACKING_DRAIN_POLL seconds. With TRACKING_DRAIN_IN_WEB
# off, only the workers' minute tick applies them.
TRACKING_DRAIN_IN_WEB = env_bool("TRACKING_DRAIN_IN_WEB", True)
TRACKING_DRAIN_INTERVAL = float(os.environ.get("TRACKING_DRAIN_INTERVAL", "0.05"))
TRACKING_DRAIN_POLL = float(os.environ.get("TRACKING_DRAIN_POLL", "5"))
# Per web process: hits already queued (repeats are not queued again) and click destinations.
TRACKING_SEEN_CACHE = 200_000
TRACKING_LINK_CACHE = 10_000

# --- Auth ---------------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# Messages can carry a freshly created API key: keep them server-side, not in a cookie.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# --- Sign-in protection -------------------------------------------------------------------
# django-axes counts failed sign-ins in the database (no Redis needed) for the sign-in page
# and Django admin alike; accounts/ records sign-ins in the audit trail and limits password
# resets. The client address is REMOTE_ADDR: behind a reverse proxy, uvicorn sets it from
# X-Forwarded-For only for the proxies in FORWARDED_ALLOW_IPS (loopback by default).
from datetime import timedelta  # noqa: E402

INSTALLED_APPS += ["axes", "accounts"]
# Last, as axes asks: it turns a lockout flagged during the request into the lockout page.
MIDDLEWARE.append("axes.middleware.AxesMiddleware")
AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out client before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = int(os.environ.get("LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=int(os.environ.get("LOGIN_LOCKOUT_MINUTES", "15")))
# Per account and client, and per account alone so that a guess spread over many addresses
# is stopped too; never per address alone, so colleagues behind one office address are not
# locked out by someone else's typos.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"], "username"]
# A lockout lasts the cool-off from the failure that caused it: retrying while locked out
# does not push it further away.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "accounts.views.locked_out"
# No version banner from every process `make run` starts; failures are still logged.
AXES_VERBOSE = False

# Password reset emails: at most this many per address and per client in the window.
PASSWORD_RESET_LIMIT_PER_ADDRESS = int(os.environ.get("PASSWORD_RESET_LIMIT_PER_ADDRESS", "3"))
PASSWORD_RESET_LIMIT_PER_CLIENT = int(os.environ.get("PASSWORD_RESET_LIMIT_PER_CLIENT", "10"))
PASSWORD_RESET_WINDOW = timedelta(minutes=int(os.environ.get("PASSWORD_RESET_WINDOW_MINUTES", "60")))

# --- Internationalisation --------------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- Static files ---------------------------------------------------------------------------

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / ".data" / "static"))
STATICFILES_DIRS = [BASE_DIR / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    # plotly.js from the installed plotly package, as vendor/plotly.min.js
    "config.staticfiles.PackageFileFinder",
]
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# --- Email and providers ------------------------------------------------------------------

DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "Switchboard <hello@localhost>")


def _json_env(name: str) -> dict:
    import json

    from django.core.exceptions import ImproperlyConfigured

    try:
        value = json.loads(os.environ.get(name) or "{}")
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise ImproperlyConfigured(f"{name} must be a JSON object, not {type(value).__name__}")
    return value


def _mailer_from_env() -> dict:
    """Django 6.1's MAILERS entry for EMAIL_BACKEND (SMTP unless an anymail ESP backend is named).

    The deprecated EMAIL_* *settings* cannot coexist with MAILERS, so the environment
    variables of the same names are read here into the SMTP backend's OPTIONS instead.
    Every email the app sends (password resets, campaigns through EMAIL_PROVIDER=django)
    goes through this one mailer.
    """
    smtp = "django.core.mail.backends.smtp.EmailBackend"
    # The demo has no mail server: with neither a backend nor a relay named, DEBUG prints
    # each email (a password-reset link included) in the terminal running the app, instead
    # of failing to reach an SMTP server on localhost after the page said it was sent.
    default = smtp
    if DEBUG and not os.environ.get("EMAIL_HOST"):
        default = "config.mail.EmailBackend"
    backend = os.environ.get("EMAIL_BACKEND", default)
    options: dict = {}
    if backend == smtp:
        options = {
            "host": os.environ.get("EMAIL_HOST", "localhost"),
            "username": os.environ.get("EMAIL_HOST_USER", ""),
            "password": os.environ.get("EMAIL_HOST_PASSWORD", ""),
            "use_tls": env_bool("EMAIL_USE_TLS"),
            "use_ssl": env_bool("EMAIL_USE_SSL"),
            # A hung relay must not hold a dispatcher's batch (and its leases) forever.
            "timeout": float(os.environ.get("EMAIL_TIMEOUT", "30")),
        }
        if os.environ.get("EMAIL_PORT"):
            options["port"] = int(os.environ["EMAIL_PORT"])
    options.update(_json_env("EMAIL_OPTIONS"))
    return {"BACKEND": backend, "OPTIONS": options}


MAILERS = {"default": _mailer_from_env()}
# django-anymail: ESP keys come as JSON (e.g. {"POSTMARK_SERVER_TOKEN": "…"}), the webhook
# basic-auth secret ("user:password") on its own.
ANYMAIL = _json_env("ANYMAIL_SETTINGS")
if os.environ.get("ANYMAIL_WEBHOOK_SECRET"):
    ANYMAIL["WEBHOOK_SECRET"] = os.environ["ANYMAIL_WEBHOOK_SECRET"]


def _quiet_hours(value: str):
    from datetime import time

    try:
        start, end = (time.fromisoformat(part.strip()) for part in value.split("-"))
    except ValueError:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"QUIET_HOURS must look like 08:00-21:00 (the allowed local hours), not {value!r}")
    return start, end


# Which provider each channel uses (see campaigns/providers/__init__.py for the choices).
PROVIDERS = {
    "email": os.environ.get("EMAIL_PROVIDER", "sandbox"),
    "sms": os.environ.get("SMS_PROVIDER", "sandbox"),
    "whatsapp": os.environ.get("WHATSAPP_PROVIDER", "sandbox"),
    "voice": os.environ.get("VOICE_PROVIDER", "sandbox"),
    "push": os.environ.get("PUSH_PROVIDER", "sandbox"),
}
# The demo plays delivery, opens, clicks and conversions for sandbox sends.
SANDBOX_SIMULATE = env_bool("SANDBOX_SIMULATE", default=False)

# --- Preference-centre links (campaigns/tracking.py) ---------------------------------------
# A link to the preference centre shows the customer's email address and phone number, so it
# expires; an expired one offers to email a fresh link. Unsubscribe links never expire
# (they show no more than the address the message went to, and must keep working).
from datetime import timedelta  # noqa: E402

PREFERENCES_LINK_MAX_AGE = timedelta(days=float(os.environ.get("PREFERENCES_LINK_MAX_AGE_DAYS", "30")))
# At most this many fresh links are emailed to one address in an hour (so the form cannot
# be used to flood an inbox), counted in the database (customers/limits.py).
PREFERENCES_LINK_REQUESTS_PER_HOUR = int(os.environ.get("PREFERENCES_LINK_REQUESTS_PER_HOUR", "3"))
# --- end of preference-centre links ---------------------------------------------------------

# The send policy (campaigns/policy.py).
FREQUENCY_CAP_MESSAGES = int(os.environ.get("FREQUENCY_CAP_MESSAGES", "3"))
FREQUENCY_CAP_HOURS = int(os.environ.get("FREQUENCY_CAP_HOURS", "24"))
QUIET_HOURS = _quiet_hours(os.environ.get("QUIET_HOURS", "08:00-21:00"))

# The dispatcher (campaigns/dispatch.py).
DELIVERY_BATCH_SIZE = int(os.environ.get("DELIVERY_BATCH_SIZE", "500"))
DELIVERY_CONCURRENCY = int(os.environ.get("DELIVERY_CONCURRENCY", "16"))
# A delivery claimed longer ago than this by a worker that never finished is settled again.
DELIVERY_LEASE_SECONDS = int(os.environ.get("DELIVERY_LEASE_SECONDS", "60"))
DELIVERY_MAX_ATTEMPTS = int(os.environ.get("DELIVERY_MAX_ATTEMPTS", "5"))

# Journeys (journeys/).
# Due wake-ups claimed per statement, and how long a worker keeps claiming before it yields.
JOURNEY_BATCH_SIZE = int(os.environ.get("JOURNEY_BATCH_SIZE", "5000"))
# The minute task keeps claiming wake-ups (and sleeping until the next is due) this long.
JOURNEY_TICK_SECONDS = float(os.environ.get("JOURNEY_TICK_SECONDS", "50"))
# In test mode every wait lasts this many seconds.
JOURNEY_TEST_WAIT_SECONDS = int(os.environ.get("JOURNEY_TEST_WAIT_SECONDS", "5"))
# Webhooks (journey webhook nodes and outgoing webhook endpoints) may call only these hosts
# (exact names, or ".example.com" for subdomains); without an entry, any public host is
# allowed and internal addresses never are. JOURNEY_WEBHOOK_ALLOWED_HOSTS, the list's older
# name, is still honoured: its entries are added (core/outbound.py).
WEBHOOK_ALLOWED_HOSTS = env_list("WEBHOOK_ALLOWED_HOSTS", "")
JOURNEY_WEBHOOK_ALLOWED_HOSTS = env_list("JOURNEY_WEBHOOK_ALLOWED_HOSTS", "")
# The shared secret webhook receivers verify the X-Switchboard-Signature header with.
JOURNEY_WEBHOOK_SECRET = os.environ.get("JOURNEY_WEBHOOK_SECRET", "")
JOURNEY_WEBHOOK_TIMEOUT_SECONDS = float(os.environ.get("JOURNEY_WEBHOOK_TIMEOUT_SECONDS", "5"))

# Outgoing webhooks (webhooks/): after a failed attempt, the next waits the next of these
# (seconds); a message still failing after the last is given up and its endpoint disabled.
WEBHOOK_RETRY_SCHEDULE = [float(s) for s in env_list("WEBHOOK_RETRY_SCHEDULE", "5,300,1800,7200,18000,36000,36000")]
WEBHOOK_TIMEOUT_SECONDS = float(os.environ.get("WEBHOOK_TIMEOUT_SECONDS", "10"))
# After a secret is rotated, messages are signed with the previous one too for this long.
WEBHOOK_SECRET_GRACE_SECONDS = int(os.environ.get("WEBHOOK_SECRET_GRACE_SECONDS", str(24 * 3600)))
# A sender holds an endpoint this long past each attempt; a killed worker's endpoint is
# taken over once it ends. Must exceed WEBHOOK_TIMEOUT_SECONDS.
WEBHOOK_LEASE_SECONDS = int(os.environ.get("WEBHOOK_LEASE_SECONDS", "60"))

# Twilio (or a Twilio-compatible API) for SMS, WhatsApp and voice.
TWILIO_ACCOUNT_SID = os.environ.get("TWILIO_ACCOUNT_SID", "")
TWILIO_AUTH_TOKEN = os.environ.get("TWILIO_AUTH_TOKEN", "")
TWILIO_API_BASE = os.environ.get("TWILIO_API_BASE", "https://api.twilio.com").rstrip("/")
TWILIO_SMS_FROM = os.environ.get("TWILIO_SMS_FROM", "")
TWILIO_WHATSAPP_FROM = os.environ.get("TWILIO_WHATSAPP_FROM", "")
TWILIO_VOICE_FROM = os.environ.get("TWILIO_VOICE_FROM", "")
TWILIO_MESSAGING_SERVICE_SID = os.environ.get("TWILIO_MESSAGING_SERVICE_SID", "")

# Push: FCM HTTP v1 (service-account JSON file) and Web Push (VAPID).
FCM_CREDENTIALS_FILE = os.environ.get("FCM_CREDENTIALS_FILE", "")
FCM_PROJECT_ID = os.environ.get("FCM_PROJECT_ID", "")
# Where FCM's HTTP v1 API lives; only a test or a proxy changes it.
FCM_API_BASE = os.environ.get("FCM_API_BASE", "https://fcm.googleapis.com").rstrip("/")
# How long the push services keep a message for a device that is offline.
PUSH_TTL_SECONDS = int(os.environ.get("PUSH_TTL_SECONDS", str(24 * 3600)))
VAPID_PRIVATE_KEY = os.environ.get("VAPID_PRIVATE_KEY", "")
VAPID_PUBLIC_KEY = os.environ.get("VAPID_PUBLIC_KEY", "")
VAPID_SUBJECT = os.environ.get("VAPID_SUBJECT", "mailto:" + DEFAULT_FROM_EMAIL.split("<")[-1].rstrip(">"))

# --- API ----------------------------------------------------------------------------------

API_MAX_BATCH = 1000
# A batch of 1,000 events with rich properties can pass the 2.5 MB default.
DATA_UPLOAD_MAX_MEMORY_SIZE = 16 * 1024 * 1024
NINJA_PAGINATION_PER_PAGE = 50

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "embedded_postgres": {"level": "WARNING"},
        # It warns about every publish to a dashboard nobody has open.
        "channels_postgres": {"level": "ERROR"},
        "django.db.backends": {"level": "INFO"},
    },
}
