"""image-catalog: thumbnails, EXIF, hashes and tags per image; near-duplicates across tasks."""

from __future__ import annotations

import io
import json
import tracemalloc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image, ImageChops, ImageCms, features

from ephemera import InvalidInput, Settings, Store
from ephemera.errors import StorageError
from ephemera.models import Task, TaskState
from ephemera.processors import TaskCancelled, TaskFailed, image_catalog
from ephemera.processors.image_catalog import ImageCatalog, ImageCatalogParams
from ephemera.processors.image_decode import MAX_PIXELS_CEILING, decode, encode_thumbnail
from ephemera.processors.image_tags import BLURRY_BELOW, analyse, aspect_name
from ephemera.testing import MemoryTaskContext
from ephemera.worker import Worker
from tests.images import encoded, exif_jpeg, jpeg, photo, png, rgb, strip_jpeg_segment

RED = (200, 40, 30)
BLUE = (30, 60, 210)


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def rotated_source() -> np.ndarray[Any, Any]:
    """A grey landscape BGR array, red at its top-left corner and blue at its bottom-left."""
    arr = np.full((300, 400, 3), 128, np.uint8)
    arr[:60, :60] = RED[::-1]
    arr[-60:, :60] = BLUE[::-1]
    return arr


def sixteen_bit() -> np.ndarray[Any, Any]:
    """A 16-bit grey ramp over the whole range, left (black) to right (white)."""
    ramp = np.linspace(0, 65535, 320).round().astype(np.uint16)
    return np.tile(ramp, (240, 1))


def cmyk_jpegs() -> tuple[bytes, bytes]:
    """The same picture as a CMYK JPEG in Adobe's convention (inverted, with Adobe's marker)
    and as a plain one (values as they are, no marker), as other encoders write it."""
    cmyk = rgb(photo(1, (320, 240))).convert("CMYK")
    adobe = encoded(cmyk, "JPEG", quality=95)
    plain = strip_jpeg_segment(encoded(ImageChops.invert(cmyk), "JPEG", quality=95), 0xEE)
    assert b"Adobe" in adobe
    assert b"Adobe" not in plain
    return adobe, plain


def the_set() -> dict[str, bytes]:
    """The acceptance set: one photo, its re-encodes and a smaller copy, a different photo,
    an EXIF-rotated JPEG, grayscale, 16-bit, CMYK, a truncated JPEG and a text file."""
    original = photo(1)
    adobe, plain = cmyk_jpegs()
    full = jpeg(photo(4), 90)
    return {
        "photo.png": png(original),
        "photo-q95.jpg": jpeg(original, 95),
        "photo-q60.jpg": jpeg(original, 60),
        "photo-small.png": png(cv2.resize(original, (500, 375), interpolation=cv2.INTER_AREA)),
        "other.png": png(photo(2)),
        "rotated.jpg": exif_jpeg(rgb(rotated_source()), orientation=6),
        "gray.png": png(cv2.cvtColor(photo(3), cv2.COLOR_BGR2GRAY)),
        "deep.png": png(sixteen_bit()),
        "cmyk-adobe.jpg": adobe,
        "cmyk-plain.jpg": plain,
        "truncated.jpg": full[: len(full) // 2],
        "notes.txt": b"a shopping list, not a picture\n",
    }


@dataclass
class Run:
    store: Store
    session: str
    task: Task
    ids: dict[str, str]  # input name -> artifact ID

    @property
    def result(self) -> dict[str, Any]:
        assert self.task.result is not None, self.task.error
        return self.task.result

    def item(self, name: str) -> dict[str, Any]:
        items: list[dict[str, Any]] = [i for i in self.result["items"] if i["name"] == name]
        (item,) = items
        return item

    def read(self, artifact_id: str) -> bytes:
        return self.store.read_artifact(self.session, artifact_id)

    def entry(self, name: str) -> dict[str, Any]:
        entry: dict[str, Any] = json.loads(self.read(self.item(name)["catalog"]["artifact_id"]))
        return entry

    def thumbnail(self, name: str) -> Image.Image:
        return open_image(self.read(self.item(name)["thumbnail"]["artifact_id"]))


def catalogue(
    store: Store,
    session: str,
    files: dict[str, bytes],
    params: dict[str, Any] | None = None,
    *,
    given: Sequence[str] = (),
) -> Run:
    """Upload ``files`` into the session and run one image-catalog task over them (and the
    artifacts ``given``, e.g. earlier catalog entries) in a worker, here."""
    ids = {name: store.put_artifact(session, data, name=name).id for name, data in files.items()}
    task = store.submit_task(session, "image-catalog", [*ids.values(), *given], params or {})
    assert Worker(store, name="test-worker").run_one()
    return Run(store, session, store.get_task(session, task.id), ids)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(Settings(data_dir=tmp_path / "data")) as opened:
        opened.create_session("photos")
        yield opened


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The acceptance set, catalogued once for the tests that only read the outcome."""
    data_dir = tmp_path_factory.mktemp("catalog") / "data"
    with Store.open(Settings(data_dir=data_dir)) as opened:
        opened.create_session("photos")
        yield catalogue(opened, "photos", the_set(), {"thumbnail_size": 128})


# -- the acceptance set ----------------------------------------------------------------------


def test_each_image_gets_a_thumbnail_that_decodes_within_the_bound_and_a_catalog_entry(
    run: Run,
) -> None:
    assert run.task.state is TaskState.SUCCEEDED, run.task.error
    images = [n for n in run.ids if n not in ("truncated.jpg", "notes.txt")]
    assert [i["name"] for i in run.result["items"]] == images
    outputs = {o.artifact_id: o for o in run.task.outputs}
    assert len(outputs) == 2 * len(images)
    for name in images:
        item = run.item(name)
        thumb_ref = outputs[item["thumbnail"]["artifact_id"]]
        assert (thumb_ref.name, thumb_ref.kind) == (f"{Path(name).stem}.thumb.png", "output")
        assert thumb_ref.content_type == "image/png"
        thumbnail = run.thumbnail(name)
        assert thumbnail.format == "PNG"
        assert max(thumbnail.size) == 128  # every source is larger: scaled down to the bound
        assert not thumbnail.getexif()  # nothing of the source's metadata is copied
        entry_ref = outputs[item["catalog"]["artifact_id"]]
        assert (entry_ref.name, entry_ref.kind) == (f"{Path(name).stem}.catalog.json", "result")
        assert entry_ref.content_type == "application/json"
        entry = run.entry(name)
        assert (entry["artifact_id"], entry["name"]) == (run.ids[name], name)
        assert entry["thumbnail"]["artifact_id"] == thumb_ref.artifact_id
        assert (entry["width"], entry["height"]) == (item["width"], item["height"])
        assert entry["hash"] == {"algorithm": "phash", "value": item["hash"]}
        assert entry["tags"] == item["tags"]
    assert run.item("photo.png")["format"] == "PNG"
    assert run.item("photo-q60.jpg")["format"] == "JPEG"
    assert (run.item("photo.png")["width"], run.item("photo.png")["height"]) == (800, 600)


def test_an_unreadable_input_fails_alone_and_is_named_with_the_reason(run: Run) -> None:
    assert run.result["failed"] == [
        {
            "artifact_id": run.ids["truncated.jpg"],
            "name": "truncated.jpg",
            "error": "truncated.jpg: image file is truncated",
        },
        {
            "artifact_id": run.ids["notes.txt"],
            "name": "notes.txt",
            "error": "notes.txt: not an image Pillow can read "
            "(supported: JPEG, PNG, WEBP, AVIF, GIF, TIFF, BMP, PPM)",
        },
    ]
    outputs = [o.name for o in run.task.outputs]
    assert not [n for n in outputs if n.startswith(("truncated", "notes"))]


def test_exif_orientation_is_honoured_in_the_dimensions_and_the_thumbnail(run: Run) -> None:
    item = run.item("rotated.jpg")
    assert (item["width"], item["height"]) == (300, 400)  # stored 400x300, shown turned
    assert item["tags"][0] == "portrait"
    assert run.entry("rotated.jpg")["exif"]["orientation"] == 6
    thumbnail = np.asarray(run.thumbnail("rotated.jpg").convert("RGB"), np.int16)
    assert thumbnail.shape[:2] == (128, 96)
    # Orientation 6 turns the picture a quarter clockwise to show it: the stored top-left
    # corner goes top-right, the bottom-left one top-left.
    assert np.abs(thumbnail[3, -4] - RED).max() < 25
    assert np.abs(thumbnail[3, 3] - BLUE).max() < 25
    assert np.abs(thumbnail[-4, -4] - 128).max() < 25


def test_re_encoded_and_resized_copies_are_grouped_and_a_different_image_is_not(
    run: Run,
) -> None:
    copies = ["photo.png", "photo-q95.jpg", "photo-q60.jpg", "photo-small.png"]
    expected = sorted(run.ids[n] for n in copies)
    (group,) = [g for g in run.result["groups"] if run.ids["photo.png"] in g["artifact_ids"]]
    assert group["artifact_ids"] == expected
    assert len(group["pairs"]) == 6
    assert all(p["distance"] <= 8 for p in group["pairs"])
    assert group["max_distance"] == max(p["distance"] for p in group["pairs"])
    grouped = {a for g in run.result["groups"] for a in g["artifact_ids"]}
    assert run.ids["other.png"] not in grouped
    assert (run.result["hash"], run.result["duplicate_distance"]) == ("phash", 8)


def test_a_16_bit_image_keeps_its_whole_range_in_the_thumbnail(run: Run) -> None:
    entry = run.entry("deep.png")
    assert entry["mode"] == "I;16"
    assert "grayscale" in entry["tags"]
    thumbnail = np.asarray(run.thumbnail("deep.png"), np.float64)
    assert thumbnail.ndim == 2
    # A ramp from black to white: not all black, not clipped to white, in order.
    assert thumbnail[:, 0].mean() < 10
    assert thumbnail[:, -1].mean() > 245
    assert abs(thumbnail.mean() - 127.5) < 5
    assert (np.diff(thumbnail[64]) >= 0).all()


def test_a_16_bit_image_is_narrowed_without_widening_its_pixels() -> None:
    """At the 100 MP ceiling every byte a pixel is 100 MB: narrowing 16 to 8 bits holds the
    1-byte result and a band of pixels, never a copy of the whole image, let alone a wider
    (int64) one."""
    width, height = 2000, 1500
    ramp = np.linspace(0, 65535, width).round().astype(np.uint16)
    data = png(np.tile(ramp, (height, 1)))
    tracemalloc.start()
    try:
        decoded = decode(io.BytesIO(data), MAX_PIXELS_CEILING, 512, gps=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (decoded.mode, decoded.image.mode) == ("I;16", "L")
    assert peak < 2 * width * height
    row = np.asarray(decoded.image)[0]
    assert (row[0], row[-1]) == (0, 255)
    assert np.array_equal(row, (ramp >> 8).astype(np.uint8))


@pytest.mark.parametrize("name", ["cmyk-adobe.jpg", "cmyk-plain.jpg"])
def test_a_cmyk_jpeg_keeps_its_colours_whichever_convention_it_follows(run: Run, name: str) -> None:
    assert run.entry(name)["mode"] == "CMYK"
    reference = rgb(photo(1, (320, 240)))
    reference.thumbnail((128, 128), Image.Resampling.LANCZOS)
    thumbnail = np.asarray(run.thumbnail(name).convert("RGB"), np.float64)
    difference = np.abs(thumbnail - np.asarray(reference, np.float64))
    assert difference.mean() < 6  # not inverted (that would be ~100) nor shifted


def test_grayscale_is_tagged_from_the_mode_or_the_pixels(run: Run) -> None:
    assert run.entry("gray.png")["mode"] == "L"
    assert "grayscale" in run.item("gray.png")["tags"]
    assert "grayscale" not in run.item("photo.png")["tags"]


# -- failures, params ------------------------------------------------------------------------


def test_when_every_image_fails_the_task_fails_naming_each_and_stores_nothing(
    store: Store,
) -> None:
    full = jpeg(photo(1), 90)
    outcome = catalogue(store, "photos", {"cut.jpg": full[:2000], "readme.md": b"# hello\n"})
    assert outcome.task.state is TaskState.FAILED
    assert outcome.task.error == (
        "no input could be catalogued: cut.jpg: image file is truncated; readme.md: not an "
        "image Pillow can read (supported: JPEG, PNG, WEBP, AVIF, GIF, TIFF, BMP, PPM)"
    )
    assert outcome.task.outputs == ()
    names = sorted(a.name for a in store.list_artifacts("photos").items)
    assert names == ["cut.jpg", "readme.md"]


def test_an_image_above_max_pixels_fails_before_it_is_decoded(store: Store) -> None:
    outcome = catalogue(
        store,
        "photos",
        {"big.png": png(photo(1)), "small.png": png(photo(2, (200, 150)))},
        {"max_pixels": 100_000},
    )
    (failure,) = outcome.result["failed"]
    assert failure["error"] == "big.png: is 800x600 pixels (0.5 MP), above max_pixels (0.1 MP)"
    assert [i["name"] for i in outcome.result["items"]] == ["small.png"]


def test_32_bit_grey_is_clipped_to_the_16_bit_range_then_narrowed() -> None:
    values = np.array([[-5, 0, 255, 256, 65535, 70000]] * 3, np.int32)
    tiff = encoded(Image.fromarray(values), "TIFF")
    decoded = decode(io.BytesIO(tiff), MAX_PIXELS_CEILING, 512, gps=False)
    assert (decoded.mode, decoded.image.mode) == ("I", "L")
    assert np.asarray(decoded.image)[0].tolist() == [0, 0, 0, 1, 255, 255]


def test_an_image_just_over_pillows_warning_threshold_but_under_max_pixels_decodes() -> None:
    """Pillow only warns from 89.5 MP; max_pixels alone decides, whatever the warning filters
    (here they make warnings errors, as in no production run)."""
    assert Image.MAX_IMAGE_PIXELS is not None
    width, height = 9500, Image.MAX_IMAGE_PIXELS // 9500 + 1
    buffer = io.BytesIO()
    Image.new("1", (width, height), 1).save(buffer, "PNG", compress_level=1)
    decoded = decode(io.BytesIO(buffer.getvalue()), MAX_PIXELS_CEILING, 512, gps=False)
    assert (decoded.width, decoded.height) == (width, height)
    assert decoded.image.getextrema() == (255, 255)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"thumbnail_size": 8}, "thumbnail_size"),
        ({"thumbnail_size": 4096}, "thumbnail_size"),
        ({"thumbnail_format": "jpeg"}, "thumbnail_format"),
        ({"hash": "ahash"}, "hash"),
        ({"duplicate_distance": 33}, "duplicate_distance"),
        ({"max_pixels": 10**9}, "max_pixels"),
        ({"gps": "please"}, "gps"),
        ({"colour": True}, "colour: Extra inputs are not permitted"),
    ],
)
def test_bad_params_are_refused_at_submission_and_change_nothing(
    store: Store, params: dict[str, Any], message: str
) -> None:
    image = store.put_artifact("photos", png(photo(1, (64, 48))), name="a.png")
    with pytest.raises(InvalidInput, match=message):
        store.submit_task("photos", "image-catalog", [image.id], params)
    assert store.list_tasks("photos").items == []


def test_a_task_without_inputs_is_refused_at_submission(store: Store) -> None:
    with pytest.raises(InvalidInput, match="at least one image or catalog entry"):
        store.submit_task("photos", "image-catalog", [])


# -- across tasks ----------------------------------------------------------------------------


def test_catalog_entries_of_earlier_tasks_group_the_whole_session(store: Store) -> None:
    original = photo(1)
    first = catalogue(store, "photos", {"photo.png": png(original)})
    second = catalogue(
        store, "photos", {"again.jpg": jpeg(original, 70), "other.png": png(photo(2))}
    )
    entries = [
        o.artifact_id
        for t in (first, second)
        for o in t.task.outputs
        if o.name.endswith(".catalog.json")
    ]
    assert len(entries) == 3

    grouping = catalogue(store, "photos", {}, given=entries)
    assert grouping.task.state is TaskState.SUCCEEDED, grouping.task.error
    assert grouping.result["items"] == []
    assert grouping.task.outputs == ()  # entries are read, nothing is decoded or stored again
    assert sorted(g["artifact_id"] for g in grouping.result["given"]) == sorted(
        [first.ids["photo.png"], second.ids["again.jpg"], second.ids["other.png"]]
    )
    (group,) = grouping.result["groups"]
    assert group["artifact_ids"] == sorted([first.ids["photo.png"], second.ids["again.jpg"]])

    # A new image joins the earlier ones it duplicates, given their entries.
    third = catalogue(
        store, "photos", {"copy.png": png(cv2.resize(original, (400, 300)))}, given=entries
    )
    (group,) = third.result["groups"]
    assert group["artifact_ids"] == sorted(
        [first.ids["photo.png"], second.ids["again.jpg"], third.ids["copy.png"]]
    )


def test_an_entry_that_is_not_comparable_fails_alone(store: Store) -> None:
    first = catalogue(store, "photos", {"photo.png": png(photo(1))}, {"hash": "dhash"})
    (entry,) = [o for o in first.task.outputs if o.name.endswith(".catalog.json")]
    forged = store.put_artifact("photos", b'{"schema": "x"}', name="forged.catalog.json")
    outcome = catalogue(
        store, "photos", {"b.png": png(photo(2))}, given=[entry.artifact_id, forged.id]
    )
    assert [f["error"] for f in outcome.result["failed"]] == [
        "photo.catalog.json: holds a dhash hash; this task compares phash hashes",
        "forged.catalog.json: is not a catalog entry of image-catalog",
    ]
    only_entries = catalogue(store, "photos", {}, given=[forged.id])
    assert only_entries.task.state is TaskState.FAILED


# -- EXIF ------------------------------------------------------------------------------------


THUMBNAIL_FORMATS = [
    "png",
    pytest.param(
        "webp", marks=pytest.mark.skipif(not features.check("webp"), reason="no WebP support")
    ),
]


@pytest.mark.parametrize("fmt", THUMBNAIL_FORMATS)
def test_gps_is_reported_only_when_asked_and_never_copied_into_the_thumbnail(
    store: Store, fmt: str
) -> None:
    data = exif_jpeg(
        rgb(photo(1, (320, 240))),
        camera=("Canon", "EOS R5"),
        gps=(48.858222, -2.2945),
        taken_at="2024:05:01 10:20:30",
    )
    quiet = catalogue(store, "photos", {"paris.jpg": data}, {"thumbnail_format": fmt})
    entry = quiet.entry("paris.jpg")
    assert entry["exif"] == {
        "make": "Canon",
        "model": "EOS R5",
        "exposure_time_s": 0.004,
        "f_number": 2.8,
        "taken_at": "2024-05-01T10:20:30",
    }
    raw = quiet.read(quiet.item("paris.jpg")["catalog"]["artifact_id"])
    assert b"48.85" not in raw
    assert b"gps" not in raw

    asked = catalogue(
        store, "photos", {"paris-2.jpg": data}, {"gps": True, "thumbnail_format": fmt}
    )
    position = asked.entry("paris-2.jpg")["exif"]["gps"]
    assert position["latitude"] == pytest.approx(48.858222, abs=1e-5)
    assert position["longitude"] == pytest.approx(-2.2945, abs=1e-5)
    for outcome, name in ((quiet, "paris.jpg"), (asked, "paris-2.jpg")):
        thumbnail = outcome.thumbnail(name)
        assert thumbnail.format == fmt.upper()
        assert not thumbnail.getexif()
        assert b"Exif" not in outcome.read(outcome.item(name)["thumbnail"]["artifact_id"])


@pytest.mark.parametrize("fmt", THUMBNAIL_FORMATS)
def test_a_thumbnail_carries_none_of_the_metadata_its_source_image_holds(fmt: str) -> None:
    source = rgb(photo(1, (320, 240)))
    exif = Image.Exif()
    exif.get_ifd(0x8825)[2] = (48, 51, 29.6)  # GPSLatitude
    source.info.update(
        exif=exif.tobytes(),
        xmp=b"<x:xmpmeta>where it was taken</x:xmpmeta>",
        icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
        comment=b"a private note",
    )
    thumbnail, _ = encode_thumbnail(source, 64, fmt)
    for marker in (b"Exif", b"xmpmeta", b"private note", b"ICCP", b"iCCP"):
        assert marker not in thumbnail.data
    opened = open_image(thumbnail.data)
    assert not {"exif", "xmp", "icc_profile", "comment"} & set(opened.info)
    assert source.info["comment"] == b"a private note"  # the source is left as it was


# -- thumbnails, tags ------------------------------------------------------------------------


def test_a_webp_thumbnail_is_lossless(store: Store) -> None:
    files = {"photo.png": png(photo(1, (320, 240)))}
    as_png = catalogue(store, "photos", files)
    as_webp = catalogue(store, "photos", files, {"thumbnail_format": "webp"})
    (output,) = [o for o in as_webp.task.outputs if o.content_type.startswith("image/")]
    assert (output.name, output.content_type) == ("photo.thumb.webp", "image/webp")
    webp = as_webp.thumbnail("photo.png")
    assert webp.format == "WEBP"
    expected = np.asarray(as_png.thumbnail("photo.png").convert("RGB"))
    assert np.array_equal(np.asarray(webp.convert("RGB")), expected)


def test_a_small_image_is_not_enlarged_and_equal_stems_get_distinct_names(store: Store) -> None:
    tiny = png(photo(1, (40, 30)))
    outcome = catalogue(store, "photos", {"a.png": tiny, "a.jpg": jpeg(photo(1, (40, 30)))})
    assert outcome.thumbnail("a.png").size == (40, 30)
    names = sorted(o.name for o in outcome.task.outputs)
    assert names == ["a-2.catalog.json", "a-2.thumb.png", "a.catalog.json", "a.thumb.png"]


def analysed(image: Image.Image) -> dict[str, Any]:
    return analyse(image, image.mode)


def test_tags_say_what_the_pixels_show() -> None:
    sharp = rgb(photo(1))
    tags = analysed(sharp)
    assert tags["tags"][:3] == ["landscape", "4:3", "normal"]
    assert tags["blur"]["score"] > 2 * BLURRY_BELOW
    assert not tags["blur"]["blurry"]

    soft = analysed(rgb(np.asarray(cv2.GaussianBlur(photo(1), (0, 0), 3), np.uint8)))
    assert soft["blur"]["blurry"]
    assert "blurry" in soft["tags"]

    dark = analysed(Image.new("RGB", (64, 64), (20, 20, 30)))
    assert dark["brightness"]["level"] == "dark"
    assert "dark" in dark["tags"]
    assert dark["brightness"]["mean"] == pytest.approx(20.9, abs=0.5)
    bright = analysed(Image.new("L", (64, 64), 240))
    assert bright["brightness"]["level"] == "bright"
    assert bright["orientation"] == "square"
    assert bright["aspect"] == "1:1"

    halves = Image.new("RGBA", (100, 50), (0, 0, 0, 0))
    halves.paste((30, 60, 220, 255), (0, 0, 50, 50))
    coloured = analysed(halves)
    assert coloured["has_alpha"]
    assert "has-alpha" in coloured["tags"]
    # Only the opaque half counts: all blue, none of the transparent black.
    assert coloured["colours"] == [{"name": "blue", "share": 1.0}]
    assert "blue" in coloured["tags"]

    split = Image.new("RGB", (100, 100), (220, 30, 30))
    split.paste((250, 250, 250), (0, 0, 100, 30))
    colours = analysed(split)["colours"]
    assert [c["name"] for c in colours] == ["red", "white"]
    assert [c["share"] for c in colours] == pytest.approx([0.7, 0.3], abs=0.01)


@pytest.mark.parametrize(
    ("size", "name"),
    [
        ((640, 480), "4:3"),
        ((480, 640), "4:3"),
        ((600, 400), "3:2"),
        ((1920, 1080), "16:9"),
        ((1000, 1000), "1:1"),
        ((1010, 1000), "1:1"),
        ((3000, 1000), "panorama"),
        ((1250, 1000), None),
        ((700, 400), "16:9"),
    ],
)
def test_aspect_is_named_only_when_close(size: tuple[int, int], name: str | None) -> None:
    assert aspect_name(*size) == name


# -- progress and cancellation (no store needed) ---------------------------------------------


def test_progress_is_reported_per_input_and_cancellation_stops_between_images() -> None:
    files = {f"p{i}": (f"p{i}.png", png(photo(i, (64, 48)))) for i in range(3)}
    ctx = MemoryTaskContext(files)
    result = ImageCatalog().run(ctx, ImageCatalogParams())
    assert ctx.progress_log == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert len(result["items"]) == 3

    cancelled = MemoryTaskContext(files)
    write = cancelled.write_output

    def write_then_cancel(*args: Any, **kwargs: Any) -> Any:
        written = write(*args, **kwargs)
        if len(cancelled.outputs) == 2:  # the first image is stored, then the task cancelled
            cancelled.cancelled = True
        return written

    cancelled.write_output = write_then_cancel  # type: ignore[method-assign]
    with pytest.raises(TaskCancelled):
        ImageCatalog().run(cancelled, ImageCatalogParams())
    assert sorted(cancelled.outputs) == ["p0.catalog.json", "p0.thumb.png"]


def test_all_inputs_failing_raises_task_failed_in_process() -> None:
    ctx = MemoryTaskContext({"x": ("x.bin", b"\x00" * 10)})
    with pytest.raises(TaskFailed, match=r"^no input could be catalogued: x.bin: not an image"):
        ImageCatalog().run(ctx, ImageCatalogParams())


@pytest.mark.parametrize(
    ("step", "error", "reason"),
    [
        ("analyse", MemoryError(), "needs more memory than is available to analyse"),
        ("perceptual_hash", ValueError("bad shape"), "cannot be analysed (ValueError: bad shape)"),
        (
            "encode_thumbnail",
            OSError("encoder error -2"),
            "cannot be analysed (OSError: encoder error -2)",
        ),
        (
            "analyse",
            Image.DecompressionBombError("too many pixels"),
            "cannot be analysed (DecompressionBombError: too many pixels)",
        ),
    ],
)
def test_an_image_that_breaks_after_decoding_fails_alone_and_stores_nothing(
    monkeypatch: pytest.MonkeyPatch, step: str, error: Exception, reason: str
) -> None:
    """Only the 64x64 image breaks (in analysis, hashing or encoding); the other one is
    catalogued and the task succeeds."""
    real = getattr(image_catalog, step)

    def breaks_on_the_square_one(image: Image.Image, *args: Any) -> Any:
        if image.size == (64, 64):
            raise error
        return real(image, *args)

    monkeypatch.setattr(image_catalog, step, breaks_on_the_square_one)
    ctx = MemoryTaskContext(
        {
            "good": ("good.png", png(photo(1, (64, 48)))),
            "bad": ("bad.png", png(photo(2, (64, 64)))),
        }
    )
    result = ImageCatalog().run(ctx, ImageCatalogParams())
    assert result["failed"] == [
        {"artifact_id": "bad", "name": "bad.png", "error": f"bad.png: {reason}"}
    ]
    assert [i["name"] for i in result["items"]] == ["good.png"]
    assert sorted(ctx.outputs) == ["good.catalog.json", "good.thumb.png"]


def test_a_store_error_raised_while_analysing_still_fails_the_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """StorageError is an OSError, yet it is the store's fault, not the image's."""

    def store_fails(*args: Any) -> Any:
        raise StorageError("blob store unreachable")

    monkeypatch.setattr(image_catalog, "analyse", store_fails)
    ctx = MemoryTaskContext({"a": ("a.png", png(photo(1, (64, 48))))})
    with pytest.raises(StorageError, match="unreachable"):
        ImageCatalog().run(ctx, ImageCatalogParams())


def test_a_store_failing_mid_read_fails_the_attempt_not_the_image() -> None:
    """A read error of the store is not a bad image: it must reach the worker (to retry)."""
    data = png(photo(1, (64, 48)))

    class FailingStream(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell() > 100:
                raise StorageError("blob store unreachable")
            return super().read(size)

    ctx = MemoryTaskContext({"a": ("a.png", data)})
    ctx.open_input = lambda artifact_id: FailingStream(data)  # type: ignore[method-assign]
    with pytest.raises(StorageError, match="unreachable"):
        ImageCatalog().run(ctx, ImageCatalogParams())
