"""Accelerated downloads: ephemera decides, a proxy in front sends the bytes.

With ``accel_redirect_prefix`` set, a download request that arrives through a proxy which
announces ``X-Sendfile-Type: X-Accel-Redirect`` is answered, once every check has passed, with
an empty body and ``X-Accel-Redirect: <prefix>/sessions/{sid}/{aid}``: nginx then serves that
file from an ``internal`` location aliasing the blob directory, with sendfile. Credentials,
the artifact's state, its integrity flag, If-None-Match and the Range decision stay ephemera's
(``serve_artifact`` makes them before it gets here). Requests without the announcement (a
client that reaches the server directly, an internal worker) are streamed as before, so a
server that is also reachable past its proxy never answers them with an empty body.

What the proxy cannot do is hash: the streaming path cuts a whole body that does not match its
sha256. Here every redirect first compares the file's size with the recorded one (one
``stat``); a file that differs, or is not there, is not redirected but streamed with
verification, which flags it. Bytes changed in place at the same size go out under the
recorded ETag until the scrub or a verification flags them; that is the price of the mode,
and why it is opt-in (docs/operations.md, "Downloads through nginx").
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from urllib.parse import quote

from fastapi import Request, Response

from ephemera.models import Artifact

log = logging.getLogger("ephemera.http.accel")

SENDFILE_TYPE = "X-Accel-Redirect"
# nginx tests these against the file before the ETag from the answer is set, so it would refuse
# even the right ETag with 412; ephemera does not act on them: such requests stay here.
_NGINX_PRECONDITIONS = ("if-match", "if-unmodified-since")


def accel_redirect(
    prefix: str | None,
    artifact: Artifact,
    path: Path | None,
    request: Request,
    headers: dict[str, str],
) -> Response | None:
    """The redirect that lets the proxy send ``artifact``, or None to serve it here."""
    if prefix is None or path is None:
        return None
    if request.headers.get("x-sendfile-type", "").strip().lower() != SENDFILE_TYPE.lower():
        return None
    if any(name in request.headers for name in _NGINX_PRECONDITIONS):
        return None
    key = path.parts[-3:]
    if key != ("sessions", artifact.session_id, artifact.id):
        # Not the blob layout the proxy's location aliases: never point it anywhere else.
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size != artifact.size:
        log.warning(
            "artifact %s/%s: its file has %d bytes, its record %d; streamed with verification "
            "instead of redirected",
            artifact.session_id,
            artifact.id,
            st.st_size,
            artifact.size,
            extra={"action": "accel"},
        )
        return None
    target = prefix.rstrip("/") + "/" + "/".join(quote(part, safe="") for part in key)
    # The proxy keeps Content-Type, Content-Disposition, Cache-Control and Accept-Ranges of
    # this answer; its internal location repeats ETag and the security headers from it.
    return Response(
        status_code=200,
        headers={**headers, "accept-ranges": "bytes", "x-accel-redirect": target},
        media_type=artifact.content_type,
    )
