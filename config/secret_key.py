"""SECRET_KEY: from the environment, or one generated for this installation, and never a weak one.

The key signs sessions, CSRF tokens and every link in a message (the preference centre
shows a customer's email address and phone number to whoever holds its link), so a key
anyone can read in the repository lets anyone forge those links. A local installation
(``make run``, the tests) gets a random key of its own on first use, kept in
``.data/secret_key`` (readable by its owner only); production sets ``SECRET_KEY`` and is
refused a key that is short, a placeholder, or one that was ever published here.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

# Keys that were committed to this repository at some point: public, so never a secret.
PUBLISHED_KEYS = frozenset({
    "insecure-development-key-set-SECRET_KEY-in-production",
})
MIN_LENGTH = 50
MIN_UNIQUE_CHARACTERS = 5
INSECURE_PREFIXES = ("django-insecure", "insecure")


def weakness(key: str) -> str | None:
    """Why ``key`` must not protect a production site, or None if it is fit to."""
    if key in PUBLISHED_KEYS:
        return "it is a key published in Switchboard's source code"
    if key.lower().startswith(INSECURE_PREFIXES):
        return "it is marked insecure (a generated development key or a placeholder)"
    if len(key) < MIN_LENGTH:
        return f"it has {len(key)} characters; use at least {MIN_LENGTH}"
    if len(set(key)) < MIN_UNIQUE_CHARACTERS:
        return f"it uses fewer than {MIN_UNIQUE_CHARACTERS} different characters"
    return None


def require_strong(name: str, key: str) -> None:
    reason = weakness(key)
    if reason:
        raise ImproperlyConfigured(
            f"{name} is not safe to run with DEBUG off: {reason}. Generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'` and set it in the environment "
            "(see README, Production deployment)."
        )


def installation_key(path: Path) -> str:
    """The key kept in ``path``, created (random, mode 0600) on first use.

    Processes starting together (web server, workers, tests) agree on one key: each writes
    a candidate to a private temporary file and links it into place, which only the first
    succeeds at; the others read the winner's.
    """
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    if key:
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate = secrets.token_urlsafe(64)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(candidate + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            return path.read_text().strip() or candidate
    finally:
        temporary.unlink(missing_ok=True)
    return candidate
