"""Django settings for the TEST-ONLY OAuth 2.0 authorization server.

Used by tower-bearer's integration tests (see ../README.md). It binds to
127.0.0.1 only, uses a throwaway SQLite database and fixed, publicly known
client secrets. Never deploy it.

Environment variables:
  AUTHSERVER_STATE_DIR  directory holding db.sqlite3 and oidc.key
                        (default: <repo>/target/authserver)
  AUTHSERVER_ISSUER     OIDC/OAuth issuer, e.g. http://127.0.0.1:PORT/o
                        (default: derived from each request)
"""
import os
from pathlib import Path

from authserver.expiry import access_token_expires_in

BASE_DIR = Path(__file__).resolve().parent.parent          # tests/authserver
REPO_ROOT = BASE_DIR.parent.parent
STATE_DIR = Path(os.environ.get("AUTHSERVER_STATE_DIR", REPO_ROOT / "target" / "authserver"))
OIDC_KEY_FILE = STATE_DIR / "oidc.key"

SECRET_KEY = "test-only-not-secret-tower-bearer-authserver"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "oauth2_provider",
    "authserver",
]

MIDDLEWARE = [
    # Sets Content-Length, so runserver keeps HTTP/1.1 connections alive.
    "django.middleware.common.CommonMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # TEST-ONLY: faults armed through /test/fault (see faults.py).
    "authserver.faults.TokenFaultMiddleware",
]

APPEND_SLASH = False
ROOT_URLCONF = "authserver.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.contrib.auth.context_processors.auth"]},
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": STATE_DIR / "db.sqlite3",
        # One transaction per request, taken with BEGIN IMMEDIATE (below): requests
        # are serialized at the database, so concurrent use of one refresh token
        # is deterministic (the first wins, the rest are reuse).
        "ATOMIC_REQUESTS": True,
        "OPTIONS": {
            # The server is threaded and tests send concurrent requests: wait for
            # locks instead of failing, and take the write lock up front.
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Fast hashing: every token request checks a client secret. Test-only server.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.MD5PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
USE_I18N = False

_rsa_key = OIDC_KEY_FILE.read_text() if OIDC_KEY_FILE.exists() else ""

OAUTH2_PROVIDER = {
    "SCOPES": {"read": "Read", "write": "Write", "openid": "OpenID Connect"},
    "DEFAULT_SCOPES": ["read", "write"],
    # 3600 s for every client, 2 s for cc-short (callable: see expiry.py).
    "ACCESS_TOKEN_EXPIRE_SECONDS": access_token_expires_in,
    "AUTHORIZATION_CODE_EXPIRE_SECONDS": 60,
    "ROTATE_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_GRACE_PERIOD_SECONDS": 0,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,  # replaying a rotated refresh token revokes the family
    "PKCE_REQUIRED": False,                   # optional, but verified when the code carries a challenge
    "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": True,  # bearer tokens only in the header
    "OIDC_ENABLED": True,
    "OIDC_RSA_PRIVATE_KEY": _rsa_key,
    "OIDC_ISS_ENDPOINT": os.environ.get("AUTHSERVER_ISSUER", ""),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "django": {"handlers": ["console"], "level": "WARNING"},
        "oauth2_provider": {"handlers": ["console"], "level": "WARNING"},
        "authserver": {"handlers": ["console"], "level": "INFO"},
    },
}
