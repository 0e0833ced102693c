"""Backend URLs as they may be shown: in logs, on a terminal, in the deployment record."""

from __future__ import annotations

import re

# user:password@ in the authority part
_PASSWORD = re.compile(r"(//[^/?#@:]*):[^@]*@")
# query parameters whose names say they carry a secret
_SECRET_PARAM = re.compile(
    r"([?&][^=&#]*(?:pass|secret|token|key|credential|signature)[^=&#]*=)[^&#]*", re.IGNORECASE
)


def redact_url(url: str) -> str:
    """``url`` with its password and secret query values replaced by ``***``."""
    return _SECRET_PARAM.sub(r"\1***", _PASSWORD.sub(r"\1:***@", url))
