"""The console's static files: our own stylesheet and script, and the vendored libraries.

Every vendored file is pinned here by version and sha256; a test recomputes the hashes, so
a file changed by hand (or by a careless update) fails the suite. Nothing is fetched at run
time or at install time: the files ship inside the package. Pages refer to every asset
through :func:`asset_url`, which adds a digest of the file so browsers may cache it forever.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PATH = "/console/static"


@dataclass(frozen=True)
class Vendored:
    package: str  # on the npm registry
    version: str
    source: str  # the file's path inside the package
    license: str
    sha256: str


VENDORED: dict[str, Vendored] = {
    "vendor/htmx.min.js": Vendored(
        "htmx.org",
        "2.0.11",
        "dist/htmx.min.js",
        "0BSD",
        "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717",
    ),
    "vendor/tus.min.js": Vendored(
        "tus-js-client",
        "4.3.1",
        "dist/tus.min.js",
        "MIT",
        "8cbb1b63fccc3bba0ae73ad1deb160ce046c3750851d0c3e94921ae3ef070eb8",
    ),
}


@cache
def _digest(name: str) -> str:
    return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]


def asset_url(name: str) -> str:
    """The URL of a static file, versioned by its content."""
    return f"{STATIC_PATH}/{name}?v={_digest(name)}"
