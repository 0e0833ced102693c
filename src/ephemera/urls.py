"""Backend URLs as they may be shown: in logs, on a terminal, in the deployment record."""

from __future__ import annotations

import re

# user:password@ in the authority part
_PASSWORD = re.compile(r"(//[^/?#@:]*):[^@]*@")
# a query parameter whose name says it carries a secret
_CREDENTIAL_PARAM_NAME = r"[^=&#]*(?:pass|secret|token|key|credential|signature)[^=&#]*"
_SECRET_VALUE = re.compile(rf"([?&]{_CREDENTIAL_PARAM_NAME}=)[^&#]*", re.IGNORECASE)
_SECRET_PARAM = re.compile(rf"([?&]){_CREDENTIAL_PARAM_NAME}=[^&#]*&?", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with its password and secret query values replaced by ``***``."""
    return _SECRET_VALUE.sub(r"\1***", _PASSWORD.sub(r"\1:***@", url))


def without_secrets(url: str) -> str:
    """``url`` with no password and no secret query parameter at all: what names a backend,
    however its credentials are given (so a redacted URL and the original compare equal)."""
    return _SECRET_PARAM.sub(r"\1", _PASSWORD.sub(r"\1@", url)).rstrip("?&")
