"""A real nginx in front of a real ``ephemera serve``, for the X-Accel-Redirect mode.

Debian's nginx, run as a child (never its system service) with a configuration written into a
directory of its own: pid, logs and temporary files live there too. The configuration is the
one docs/operations.md shows, with the paths filled in. Outside CI a missing nginx skips the
tests that need it, with the reason; under ``CI=true`` it fails them (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ACCEL_PREFIX = "/_ephemera_blobs"

_CONF = """\
worker_processes 1;
user root;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 256; }}
http {{
    # $uri is where a request ended up: an accelerated one shows the internal location.
    log_format served '$status $request_method $uri $body_bytes_sent';
    access_log {run}/access.log served;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {run}/tmp/body;
    proxy_temp_path {run}/tmp/proxy;
    fastcgi_temp_path {run}/tmp/fastcgi;
    uwsgi_temp_path {run}/tmp/uwsgi;
    scgi_temp_path {run}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            proxy_request_buffering off;
            proxy_buffering off;
            client_max_body_size 1g;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            # Tells ephemera that this proxy serves its X-Accel-Redirect answers (and
            # overwrites whatever a client sent in this header).
            proxy_set_header X-Sendfile-Type X-Accel-Redirect;
        }}
        location {prefix}/ {{
            internal;
            alias {blobs}/;
            # ephemera decided the answer; the file's own ETag, dates and 304s are not ours.
            etag off;
            if_modified_since off;
            max_ranges 1;
            add_header Last-Modified "";
            add_header ETag $upstream_http_etag always;
            add_header X-Content-Type-Options $upstream_http_x_content_type_options always;
            add_header Content-Security-Policy $upstream_http_content_security_policy always;
        }}
{extra}    }}
}}
"""

_DIRECT = """\
        location /direct/ {{
            alias {root}/;
        }}
"""


def nginx_binary() -> str:
    """The nginx to run; fails under CI=true and skips elsewhere when there is none."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        reason = "nginx is not installed (apt-get install -y nginx)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """nginx on a free port of 127.0.0.1, proxying to ``upstream_port`` and serving accelerated
    redirects from ``blob_root``; ``direct_root`` adds ``/direct/`` serving files as they are."""

    def __init__(
        self,
        binary: str,
        run_dir: Path,
        upstream_port: int,
        blob_root: Path,
        direct_root: Path | None = None,
    ) -> None:
        self.binary = binary
        self.run_dir = run_dir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        extra = _DIRECT.format(root=direct_root.resolve()) if direct_root else ""
        self.conf = run_dir / "nginx.conf"
        self.text = _CONF.format(
            run=run_dir.resolve(),
            port=self.port,
            upstream_port=upstream_port,
            prefix=ACCEL_PREFIX,
            blobs=blob_root.resolve(),
            extra=extra,
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        (self.run_dir / "tmp").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.text)
        log = (self.run_dir / "stderr.log").open("ab")
        with log:
            argv = [self.binary, "-c", str(self.conf), "-p", str(self.run_dir)]
            self.process = subprocess.Popen([*argv, "-g", "daemon off;"], stderr=log)
        deadline = time.monotonic() + 15
        while True:
            if self.process.poll() is not None:
                errors = (self.run_dir / "stderr.log").read_text(errors="replace")
                raise RuntimeError(f"nginx exited with {self.process.returncode}: {errors}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("nginx did not listen within 15 s") from None
                time.sleep(0.05)

    def served(self) -> list[str]:
        """The access log's lines so far: status, method, final URI, body bytes sent."""
        log = self.run_dir / "access.log"
        return log.read_text().splitlines() if log.exists() else []

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: workers finish and exit
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
