"""The EXIF fields of a photo worth showing, read defensively: a malformed field is left out.

GPS position is personal data: it is read only when asked for, and never copied elsewhere.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from PIL import ExifTags, Image

TEXT_MAX = 128

_EXIF_DATE = re.compile(r"^(\d{4}):(\d{2}):(\d{2}) (\d{2}):(\d{2}):(\d{2})")
_EXIF_OFFSET = re.compile(r"^[+-]\d{2}:\d{2}$")


def exif_fields(exif: Image.Exif, *, gps: bool) -> dict[str, Any]:
    """The EXIF fields worth showing, each only when present and sane; GPS only if asked."""
    base = ExifTags.Base
    try:
        sub = exif.get_ifd(ExifTags.IFD.Exif)
    except Exception:  # a malformed EXIF block loses its details, not the image
        sub = {}
    fields: dict[str, Any] = {
        "make": _text(exif.get(base.Make)),
        "model": _text(exif.get(base.Model)),
        "lens": _text(sub.get(base.LensModel)),
        "exposure_time_s": _positive(sub.get(base.ExposureTime)),
        "f_number": _positive(sub.get(base.FNumber)),
        "iso": _iso(sub.get(base.ISOSpeedRatings)),
        "focal_length_mm": _positive(sub.get(base.FocalLength)),
        "taken_at": _taken_at(
            sub.get(base.DateTimeOriginal) or sub.get(base.DateTimeDigitized),
            sub.get(base.OffsetTimeOriginal),
        ),
        "orientation": _orientation(exif.get(base.Orientation)),
    }
    if gps:
        fields["gps"] = _gps(exif)
    return {key: value for key, value in fields.items() if value is not None}


def _orientation(value: Any) -> int | None:
    return value if isinstance(value, int) and 1 <= value <= 8 else None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    cleaned = value.replace("\x00", "").strip()[:TEXT_MAX]
    return cleaned or None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) else None


def _positive(value: Any) -> float | None:
    number = _number(value)
    return round(number, 6) if number is not None and number > 0 else None


def _iso(value: Any) -> int | None:
    if isinstance(value, tuple) and value:
        value = value[0]
    return value if isinstance(value, int) and value > 0 else None


def _taken_at(value: Any, offset: Any) -> str | None:
    text = _text(value)
    match = _EXIF_DATE.match(text or "")
    if match is None:
        return None
    try:
        # EXIF times are the camera's local time, naive unless an offset is recorded.
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        moment = datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None
    zone = _text(offset)
    return moment.isoformat() + (zone if zone and _EXIF_OFFSET.match(zone) else "")


def _gps(exif: Image.Exif) -> dict[str, float] | None:
    try:
        info = exif.get_ifd(ExifTags.IFD.GPSInfo)
    except Exception:
        return None
    latitude = _degrees(info.get(ExifTags.GPS.GPSLatitude), info.get(ExifTags.GPS.GPSLatitudeRef))
    longitude = _degrees(
        info.get(ExifTags.GPS.GPSLongitude), info.get(ExifTags.GPS.GPSLongitudeRef)
    )
    if latitude is None or longitude is None or abs(latitude) > 90 or abs(longitude) > 180:
        return None
    return {"latitude": latitude, "longitude": longitude}


def _degrees(value: Any, ref: Any) -> float | None:
    if not isinstance(value, tuple) or len(value) != 3:
        return None
    parts = [_number(v) for v in value]
    if any(p is None or p < 0 for p in parts):
        return None
    d, m, s = (float(p) for p in parts if p is not None)
    sign = -1.0 if _text(ref) in ("S", "W") else 1.0
    return round(sign * (d + m / 60 + s / 3600), 7)
