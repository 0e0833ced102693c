"""Which files a folder import finds: regular files, not hidden or partial, matching a pattern."""

from __future__ import annotations

import os
from pathlib import Path

from ephemera.importer.scan import Filter, FoundFile, scan


def write(root: Path, rel: str, data: bytes = b"x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def found(root: Path, *patterns: str) -> dict[str, FoundFile]:
    return {f.path: f for f in scan(root, Filter(patterns))}


def test_every_regular_file_at_any_depth_with_its_relative_posix_path_size_and_mtime(
    tmp_path: Path,
) -> None:
    write(tmp_path, "a.png", b"12345")
    deep = write(tmp_path, "x/y/z/b.jpg", b"12")
    os.utime(deep, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))

    files = found(tmp_path)

    assert sorted(files) == ["a.png", "x/y/z/b.jpg"]
    assert files["a.png"].size == 5
    assert files["x/y/z/b.jpg"].mtime_ns == 1_700_000_000_123_456_789
    assert files["x/y/z/b.jpg"].absolute == deep


def test_hidden_files_hidden_folders_and_partial_downloads_are_skipped(tmp_path: Path) -> None:
    for rel in [
        ".hidden.png",
        ".git/objects/abc",
        "sub/.cache/c.png",
        "shot.png.part",
        "shot.png.partial",
        "upload.tmp",
        "UPLOAD.TMP",
        "file.temp",
        "movie.crdownload",
        "page.download",
        ".shot.png.swp",
        "notes.txt~",
    ]:
        write(tmp_path, rel)
    write(tmp_path, "sub/kept.png")

    assert sorted(found(tmp_path)) == ["sub/kept.png"]


def test_a_pattern_matches_the_relative_path_or_the_name(tmp_path: Path) -> None:
    for rel in ["a.png", "raw/b.png", "raw/deep/c.png", "d.jpg", "raw/e.txt"]:
        write(tmp_path, rel)

    assert sorted(found(tmp_path, "*.png")) == ["a.png", "raw/b.png", "raw/deep/c.png"]
    assert sorted(found(tmp_path, "raw/*.png")) == ["raw/b.png", "raw/deep/c.png"]
    assert sorted(found(tmp_path, "raw/?.png")) == ["raw/b.png"]
    # Repeated patterns add up.
    assert sorted(found(tmp_path, "*.jpg", "*.txt")) == ["d.jpg", "raw/e.txt"]


def test_symbolic_links_are_never_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    write(outside, "secret.png")
    write(root, "real.png")
    (root / "linked-dir").symlink_to(outside, target_is_directory=True)
    (root / "linked-file.png").symlink_to(outside / "secret.png")
    (root / "loop").symlink_to(root, target_is_directory=True)

    assert sorted(found(root)) == ["real.png"]


def test_the_scan_is_lazy_a_folder_is_listed_only_when_reached(tmp_path: Path) -> None:
    write(tmp_path, "first.png")
    (tmp_path / "sub").mkdir()
    files = scan(tmp_path, Filter())

    first = next(files)
    # Written after the scan started: only a scan that lists folders as it goes sees it.
    write(tmp_path, "sub/late.png")

    assert first.path == "first.png"
    assert [f.path for f in files] == ["sub/late.png"]


def test_a_folder_that_cannot_be_listed_is_reported_and_the_rest_found(tmp_path: Path) -> None:
    write(tmp_path, "ok.png")
    write(tmp_path, "gone/x.png")
    problems: list[tuple[str, str]] = []
    files = scan(tmp_path, Filter(), lambda path, error: problems.append((path, error)))
    listed = []
    for f in files:
        listed.append(f.path)
        if f.path == "ok.png":
            # Removed after the root was read, before "gone" is listed: listing it fails.
            for child in (tmp_path / "gone").iterdir():
                child.unlink()
            (tmp_path / "gone").rmdir()

    assert listed == ["ok.png"]
    assert problems == [("gone", "No such file or directory")]
