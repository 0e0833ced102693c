"""AcroForm fields: what a template offers, how one is filled, how a filled form is flattened.

Supported: text fields (values with generated appearance streams, so viewers and text
extraction show them without regenerating anything), check boxes and radio groups (one of
their own appearance states is switched on). Choice lists, signatures and push buttons are
listed but never filled.

Output is reproducible: nothing here reads a clock or a random source, and the document ID
is set by the caller. pypdf writes objects in the order it cloned them, which depends on the
template alone.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from pypdf import PdfReader, PdfWriter
from pypdf.generic import (
    ArrayObject,
    ByteStringObject,
    ContentStream,
    DictionaryObject,
    IndirectObject,
    NameObject,
    StreamObject,
)

from ephemera.processors import TaskFailed

TEXT, CHECKBOX, RADIO = "text", "checkbox", "radio"
FILLABLE = (TEXT, CHECKBOX, RADIO)
OFF = "Off"
# Field flags (PDF 32000-1, 12.7.4.2.1): a button is a radio group or a push button.
FF_RADIO = 1 << 15
FF_PUSHBUTTON = 1 << 16
# Annotation flags (12.5.3): a hidden or no-view widget is not drawn when flattened.
F_HIDDEN = 1 << 1
F_NOVIEW = 1 << 5
# Nested deeper than this, a field tree is an attack, not a form.
MAX_DEPTH = 32

FieldValue = str | list[str] | None


@dataclass(frozen=True, slots=True)
class FormField:
    name: str  # fully qualified: the partial names from the root, joined by "."
    kind: str  # text, checkbox, radio; or choice, signature, push button, unknown
    states: tuple[str, ...] = ()  # a button's "on" appearance states, without the slash
    max_len: int | None = None  # a text field's /MaxLen
    value: FieldValue = None  # its /V: text, a button's state, a choice list's selection


def form_fields(reader: PdfReader, label: str, max_fields: int) -> list[FormField]:
    """Every terminal field of the form, in document order; [] for a PDF without a form."""
    try:
        root = reader.trailer["/Root"].get_object()
        if not isinstance(root, DictionaryObject):
            raise ValueError("/Root is not a dictionary")
        form = root.get("/AcroForm")
        form = form.get_object() if form is not None else None
        top = form.get("/Fields") if isinstance(form, DictionaryObject) else None
        top = top.get_object() if top is not None else None
        if not isinstance(top, ArrayObject):
            return []
        found: list[FormField] = []
        for field in _walk(top, "", None, 0, 0, set()):
            found.append(field)
            if len(found) > max_fields:
                raise TaskFailed(f"{label}: has more than {max_fields} form fields")
        return found
    except TaskFailed:
        raise
    except Exception as exc:
        raise TaskFailed(f"{label}: has an unreadable form ({type(exc).__name__}: {exc})") from None


def _walk(
    nodes: ArrayObject,
    parent: str,
    inherited_type: str | None,
    inherited_flags: int,
    depth: int,
    seen: set[int],
) -> Iterator[FormField]:
    if depth > MAX_DEPTH:
        raise ValueError(f"fields nested deeper than {MAX_DEPTH} levels")
    for ref in nodes:
        if isinstance(ref, IndirectObject):
            if ref.idnum in seen:
                raise ValueError("the field tree has a cycle")
            seen.add(ref.idnum)
        node = ref.get_object()
        if not isinstance(node, DictionaryObject) or "/T" not in node:
            continue  # a widget without a field of its own
        name = f"{parent}.{node['/T']}" if parent else str(node["/T"])
        field_type = str(node.get("/FT", inherited_type or ""))
        flags = int(node.get("/Ff", inherited_flags))
        kids = node.get("/Kids")
        kids = kids.get_object() if kids is not None else None
        named_kids = isinstance(kids, ArrayObject) and any(
            isinstance(k.get_object(), DictionaryObject) and "/T" in k.get_object() for k in kids
        )
        if named_kids:
            assert isinstance(kids, ArrayObject)
            yield from _walk(kids, name, field_type, flags, depth + 1, seen)
            continue
        widgets = list(kids) if isinstance(kids, ArrayObject) else [node]
        yield _field(name, field_type, flags, node, widgets)


def _field(
    name: str, field_type: str, flags: int, node: DictionaryObject, widgets: list[object]
) -> FormField:
    value = _value(node.get("/V"))
    if field_type == "/Tx":
        max_len = node.get("/MaxLen")
        limit = int(max_len) if max_len is not None else None
        return FormField(name, TEXT, max_len=limit, value=value)
    if field_type == "/Btn":
        if flags & FF_PUSHBUTTON:
            return FormField(name, "push button", value=value)
        states: dict[str, None] = {}
        for widget in widgets:
            for state in _appearance_states(widget):
                states.setdefault(state)
        kind = RADIO if flags & FF_RADIO else CHECKBOX
        return FormField(name, kind, tuple(states), value=value)
    if field_type == "/Ch":
        return FormField(name, "choice", value=value)
    if field_type == "/Sig":
        return FormField(name, "signature")  # its /V is a signature dictionary, not a value
    return FormField(name, "unknown", value=value)


def _value(value: object, depth: int = 0) -> FieldValue:
    value = value.get_object() if isinstance(value, IndirectObject) else value
    if value is None:
        return None
    if isinstance(value, list):
        if depth:
            return str(value)
        return [str(_value(v, depth + 1) or "") for v in value]
    if isinstance(value, NameObject):
        return str(value)[1:]  # a checkbox's "/Yes" is the value "Yes"
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _appearance_states(widget: object) -> list[str]:
    if isinstance(widget, IndirectObject):
        widget = widget.get_object()
    if not isinstance(widget, DictionaryObject):
        return []
    appearances = widget.get("/AP")
    normal = appearances.get_object().get("/N") if appearances is not None else None
    normal = normal.get_object() if normal is not None else None
    if not isinstance(normal, DictionaryObject) or isinstance(normal, StreamObject):
        return []
    return [str(key)[1:] for key in normal if key != "/" + OFF]


def fill(
    template: PdfReader,
    text: Mapping[str, str],
    buttons: Mapping[str, str],
    *,
    flatten: bool,
    document_id: bytes,
) -> bytes:
    """The template with these values (text by field name; a button's state name or "Off").

    The template is cloned, never changed: one reader serves every row."""
    writer = PdfWriter(clone_from=template)
    if text:
        # NeedAppearances off: the streams generated here are what every viewer shows.
        writer.update_page_form_field_values(None, dict(text), auto_regenerate=False)
    if buttons:
        _set_buttons(writer, buttons)
    if flatten:
        _flatten(writer)
    # pypdf has no public setter for the trailer ID; left alone it would be random or the
    # template's own, and two fills of one row must be the same bytes.
    # (A private attribute: tests/unit/test_pdf_library_internals.py notices if it goes.)
    writer._ID = ArrayObject([ByteStringObject(document_id), ByteStringObject(document_id)])
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _widgets(writer: PdfWriter) -> Iterator[tuple[int, DictionaryObject]]:
    """Every widget annotation, with the index of its page."""
    for index, page in enumerate(writer.pages):
        annotations = page.get("/Annots")
        annotations = annotations.get_object() if annotations is not None else None
        if not isinstance(annotations, ArrayObject):
            continue
        for ref in annotations:
            annotation = ref.get_object()
            if isinstance(annotation, DictionaryObject) and annotation.get("/Subtype") == "/Widget":
                yield index, annotation


def _qualified_name(field: DictionaryObject) -> str:
    parts: list[str] = []
    node: DictionaryObject | None = field
    for _ in range(MAX_DEPTH + 1):
        if node is None:
            break
        if "/T" in node:
            parts.append(str(node["/T"]))
        parent = node.get("/Parent")
        parent = parent.get_object() if parent is not None else None
        node = parent if isinstance(parent, DictionaryObject) else None
    return ".".join(reversed(parts))


def _set_buttons(writer: PdfWriter, buttons: Mapping[str, str]) -> None:
    for _, widget in _widgets(writer):
        field = widget
        if "/T" not in widget:
            parent = widget.get("/Parent")
            parent = parent.get_object() if parent is not None else None
            if not isinstance(parent, DictionaryObject):
                continue
            field = parent
        state = buttons.get(_qualified_name(field))
        if state is None:
            continue
        field[NameObject("/V")] = NameObject("/" + state)
        # Each widget shows the state if it has an appearance for it: in a radio group,
        # only the chosen button does; the others go Off.
        on = state in _appearance_states(widget)
        widget[NameObject("/AS")] = NameObject("/" + (state if on else OFF))


def _flatten(writer: PdfWriter) -> None:
    """Draw every visible widget's appearance into its page, then drop the widgets and form."""
    drawn: dict[int, list[tuple[DictionaryObject, IndirectObject]]] = {}
    for index, widget in _widgets(writer):
        if int(widget.get("/F", 0)) & (F_HIDDEN | F_NOVIEW):
            continue
        appearance = _normal_appearance(widget)
        if appearance is not None:
            drawn.setdefault(index, []).append((widget, appearance))
    for index, page in enumerate(writer.pages):
        commands = [
            _draw(page, f"/EphemeraField{n}", widget, appearance)
            for n, (widget, appearance) in enumerate(drawn.get(index, []))
        ]
        if commands:
            contents = page.get_contents()
            old = contents.get_data() if contents is not None else b""
            # The page's own drawing is wrapped in q/Q, so a graphics state it leaves
            # changed cannot move or recolour the field values drawn after it.
            stream = StreamObject()
            stream.set_data(b"q\n" + old + b"\nQ\n" + "\n".join(commands).encode("ascii"))
            # replace_contents fails on a direct /Contents array; adding the object does not,
            # but pypdf's add is private: without it, the public way, for most documents.
            add = getattr(writer, "_add_object", None)
            if add is not None:
                page[NameObject("/Contents")] = add(stream)
            else:
                page.replace_contents(ContentStream(stream, writer))
    writer.remove_annotations(subtypes="/Widget")
    for page in writer.pages:
        if "/Annots" in page and not page["/Annots"]:
            del page["/Annots"]
    del writer.root_object["/AcroForm"]


def _normal_appearance(widget: DictionaryObject) -> IndirectObject | None:
    appearances = widget.get("/AP")
    appearances = appearances.get_object() if appearances is not None else None
    if not isinstance(appearances, DictionaryObject) or "/N" not in appearances:
        return None
    ref = appearances.raw_get("/N")
    normal = ref.get_object()
    if isinstance(normal, DictionaryObject) and not isinstance(normal, StreamObject):
        state = widget.get("/AS")
        if state is None or state not in normal:
            return None
        ref = normal.raw_get(state)
    if not isinstance(ref, IndirectObject) or not isinstance(ref.get_object(), StreamObject):
        return None
    return ref


def _draw(
    page: DictionaryObject, name: str, widget: DictionaryObject, appearance: IndirectObject
) -> str:
    stream = appearance.get_object()
    assert isinstance(stream, StreamObject)
    stream[NameObject("/Type")] = NameObject("/XObject")
    stream[NameObject("/Subtype")] = NameObject("/Form")
    _xobjects(page)[NameObject(name)] = appearance
    # PDF 32000-1, 12.5.5: the form's bounding box, transformed by its own matrix, is mapped
    # onto the annotation's rectangle.
    x0, y0, x1, y1 = _box(widget.get("/Rect", [0, 0, 0, 0]))
    a, b, c, d, e, f = (float(v) for v in stream.get("/Matrix", [1, 0, 0, 1, 0, 0]))
    bx0, by0, bx1, by1 = _box(stream.get("/BBox", [0, 0, x1 - x0, y1 - y0]))
    xs = [a * x + c * y + e for x in (bx0, bx1) for y in (by0, by1)]
    ys = [b * x + d * y + f for x in (bx0, bx1) for y in (by0, by1)]
    width, height = max(xs) - min(xs), max(ys) - min(ys)
    sx = (x1 - x0) / width if width else 1.0
    sy = (y1 - y0) / height if height else 1.0
    tx, ty = x0 - sx * min(xs), y0 - sy * min(ys)
    return f"q {_num(sx)} 0 0 {_num(sy)} {_num(tx)} {_num(ty)} cm {name} Do Q"


def _xobjects(page: DictionaryObject) -> DictionaryObject:
    resources = page.get("/Resources")
    if resources is None:
        # Inherited from the page tree: the page gets its own copy, or adding to it would
        # hide what it inherits.
        resources = _inherited(page, "/Resources")
        page[NameObject("/Resources")] = resources
    resources = resources.get_object()
    assert isinstance(resources, DictionaryObject)
    xobjects = resources.get("/XObject")
    if xobjects is None:
        xobjects = DictionaryObject()
        resources[NameObject("/XObject")] = xobjects
    xobjects = xobjects.get_object()
    assert isinstance(xobjects, DictionaryObject)
    return xobjects


def _inherited(page: DictionaryObject, key: str) -> DictionaryObject:
    node = page.get("/Parent")
    for _ in range(MAX_DEPTH):
        node = node.get_object() if node is not None else None
        if not isinstance(node, DictionaryObject):
            break
        if key in node:
            found = node[key].get_object()
            if isinstance(found, DictionaryObject):
                return DictionaryObject(found)
        node = node.get("/Parent")
    return DictionaryObject()


def _box(values: object) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in values)  # type: ignore[attr-defined]
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _num(value: float) -> str:
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text
