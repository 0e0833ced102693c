"""Identifiers, credentials and client-supplied names: generated, validated, never trusted."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
import unicodedata
import uuid

from ephemera.errors import InvalidInput

SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
ARTIFACT_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
KIND_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
ADMIN_KEY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_NAME_CHARS = 255

SESSION_TOKEN_PREFIX = "eps_"  # noqa: S105 - a prefix, not a secret
ADMIN_KEY_PREFIX = "epa_"
WORKER_KEY_PREFIX = "epw_"
CLIENT_KEY_PREFIX = "epc_"
# A key's role shows in its prefix, so a key is never mistaken for a session token.
KEY_PREFIXES = {"admin": ADMIN_KEY_PREFIX, "worker": WORKER_KEY_PREFIX, "client": CLIENT_KEY_PREFIX}


def new_uuid7() -> str:
    """A time-ordered UUID (RFC 9562 v7): ordering by ID is ordering by creation."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (rand >> 68) << 64 & (0xFFF << 64)
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def check_session_id(value: str) -> str:
    if not isinstance(value, str) or not SESSION_ID_RE.fullmatch(value):
        raise InvalidInput(
            "session id must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def check_producer(value: str) -> str:
    if not SESSION_ID_RE.fullmatch(value):
        raise InvalidInput("producer must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'")
    return value


def is_artifact_id(value: str) -> bool:
    return bool(ARTIFACT_ID_RE.fullmatch(value))


def check_kind(value: str) -> str:
    if not KIND_RE.fullmatch(value):
        raise InvalidInput("kind must be 1-32 characters of a-z, 0-9, '_' or '-', starting a-z")
    return value


def check_admin_key_name(value: str) -> str:
    if not ADMIN_KEY_NAME_RE.fullmatch(value):
        raise InvalidInput("key name must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'")
    return value


def check_file_name(value: str) -> str:
    """A client's file name is a label shown back to it, never part of a storage key.

    It is still refused when it could hurt whoever displays or saves it: path separators,
    control characters, dot names, or absurd length.
    """
    if not value or len(value) > MAX_NAME_CHARS:
        raise InvalidInput(f"file name must be 1-{MAX_NAME_CHARS} characters")
    if value in (".", "..") or "/" in value or "\\" in value:
        raise InvalidInput("file name must not contain '/' or '\\' or be '.' or '..'")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in value):
        raise InvalidInput("file name must not contain control or format characters")
    if value != value.strip():
        raise InvalidInput("file name must not start or end with white space")
    return value


def new_session_token() -> str:
    return SESSION_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_key(role: str) -> str:
    return KEY_PREFIXES[role] + secrets.token_urlsafe(32)


def key_role(credential: str) -> str | None:
    """The role a credential claims by its prefix; None for anything else (a session token)."""
    for role, prefix in KEY_PREFIXES.items():
        if credential.startswith(prefix):
            return role
    return None


def new_claim_id() -> str:
    return secrets.token_urlsafe(24)


def is_task_id(value: str) -> bool:
    return is_artifact_id(value)


def hash_secret(secret: str) -> str:
    # Secrets carry 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
