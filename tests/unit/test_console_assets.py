"""The console's vendored files are exactly the pinned releases, and ship in the package."""

from __future__ import annotations

import hashlib

from ephemera.console.assets import STATIC_DIR, VENDORED, asset_url


def test_every_vendored_file_matches_its_pinned_sha256() -> None:
    for name, pinned in VENDORED.items():
        digest = hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()
        assert digest == pinned.sha256, f"{name} is not {pinned.package} {pinned.version}"


def test_nothing_is_vendored_without_a_pin_and_a_licence() -> None:
    scripts = {f"vendor/{p.name}" for p in (STATIC_DIR / "vendor").glob("*.js")}
    assert scripts == set(VENDORED)
    licences = {p.name for p in (STATIC_DIR / "vendor").glob("LICENSE.*")}
    assert licences == {f"LICENSE.{v.package.removesuffix('.org')}.txt" for v in VENDORED.values()}


def test_asset_urls_change_with_the_content() -> None:
    url = asset_url("console.css")
    digest = hashlib.sha256((STATIC_DIR / "console.css").read_bytes()).hexdigest()[:12]
    assert url == f"/console/static/console.css?v={digest}"
