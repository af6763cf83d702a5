"""API keys: checked in constant time; each key is a client, and a client sees only its own jobs."""

from __future__ import annotations

import hashlib
import hmac
import os

from serve.config import AuthSettings

ANONYMOUS = "anonymous"


class AuthError(Exception):
    """The request carries no valid API key."""


class ApiKeys:
    """The configured keys (inline and from the environment variable), or none when auth is off."""

    def __init__(self, settings: AuthSettings, environ: dict[str, str] | None = None):
        environ = os.environ if environ is None else environ
        keys = [key.get_secret_value() for key in settings.api_keys]
        if settings.api_keys_env:
            keys += [key.strip() for key in environ.get(settings.api_keys_env, "").split(",") if key.strip()]
        self.required = settings.required
        if self.required and not keys:
            raise ValueError(
                f"auth: required but no API key is configured; set auth.api_keys or the environment variable "
                f"{settings.api_keys_env or '(auth.api_keys_env is unset)'}, or set auth.required: false "
                "for local use only"
            )
        self._keys = [key.encode() for key in keys]

    def client(self, authorization: str | None) -> str:
        """The client id for an `Authorization` header value; AuthError unless it is `Bearer <a configured key>`."""
        if not self.required:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        given = token.strip().encode()
        # Compare against every key (no early exit), each comparison in constant time.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            raise AuthError("invalid API key")
        return "key-" + hashlib.sha256(given).hexdigest()[:16]
