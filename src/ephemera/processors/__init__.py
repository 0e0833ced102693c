"""Processors: the code a task runs, and the registry that finds them.

A processor is any object with a ``name``, a pydantic ``params_model`` and a ``run`` method.
Params are validated when the task is submitted, never at run time, so ``run`` receives a
valid model instance. ``run`` reads inputs and writes outputs only through its context and
returns the task's result (JSON-serialisable).

A processor fails a task on purpose by raising :class:`TaskFailed` with a message meant for
the user (a corrupt image, a region outside the picture). Such a failure is final: running
the same inputs again would fail the same way.

Third-party processors register in the entry-point group ``ephemera.processors``; an entry
point names a processor object, a class to instantiate without arguments, or a zero-argument
factory. Installing a package enables nothing: a processor runs only when the settings name it
(``processors``; by default the built-ins alone), so a package that happens to be installed on
a server never becomes something any session token can run.

The built-ins need an extra: ``vision`` (OpenCV, NumPy, Pillow, ImageHash) for the image
processors, ``documents`` (pypdf, pdfplumber) for the document ones. By default
(``processors`` unset) the registry holds the built-ins whose extra is installed and remembers
the others, so that a task for one of them is refused with the extra to install; a built-in
named in the settings without its extra stops start-up with that same advice.

A processor may describe itself for the processor list with a ``description`` attribute;
without one, its class's docstring is used.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, BinaryIO, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError

from ephemera import extras
from ephemera.errors import EphemeraError, InvalidInput, NotFound
from ephemera.models import Artifact

ENTRY_POINT_GROUP = "ephemera.processors"


@dataclass(frozen=True, slots=True)
class Builtin:
    target: str  # ``module:attribute``, as an entry point names it
    extra: str  # the optional dependency group its module imports


# The built-ins, enabled by default; they load through the same path as entry points, so the
# image and PDF libraries are imported only where a built-in is enabled and its extra is installed.
BUILTINS: dict[str, Builtin] = {
    "roi-compare": Builtin("ephemera.processors.roi_compare:RoiCompare", "vision"),
    "camera-calibration": Builtin(
        "ephemera.processors.camera_calibration:CameraCalibration", "vision"
    ),
    "image-catalog": Builtin("ephemera.processors.image_catalog:ImageCatalog", "vision"),
    "pdf-form-fill": Builtin("ephemera.processors.documents.form_fill:PdfFormFill", "documents"),
    "pdf-extract": Builtin("ephemera.processors.documents.extract:PdfExtract", "documents"),
    "bol-reconcile": Builtin("ephemera.processors.documents.reconcile:BolReconcile", "documents"),
}


class ProcessorUnavailable(EphemeraError):
    """A processor the settings enable is not installed, or its code cannot be loaded."""

    code = "processor_unavailable"


@dataclass(frozen=True, slots=True)
class ProcessorInfo:
    """What the processor list shows of one enabled processor."""

    name: str
    description: str | None
    # The JSON schema of the params; None for external processors, whose workers check them.
    params_schema: dict[str, Any] | None
    external: bool


class TaskFailed(Exception):
    """The task cannot succeed with these inputs; the message is shown to the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TaskCancelled(Exception):
    """The task was cancelled (or its claim was lost); stop and write nothing more."""


class TaskContext(Protocol):
    """What a running processor may touch: its inputs, its outputs, its progress."""

    @property
    def task_id(self) -> str: ...

    @property
    def session_id(self) -> str: ...

    @property
    def inputs(self) -> Sequence[Artifact]:
        """The input artifacts, in submission order (reference data included)."""
        ...

    def input(self, artifact_id: str) -> Artifact:
        """The input with this ID; TaskFailed if the task was not given it."""
        ...

    def open_input(self, artifact_id: str) -> BinaryIO: ...

    def read_input(self, artifact_id: str) -> bytes: ...

    def write_output(
        self,
        name: str,
        data: bytes | BinaryIO | Iterable[bytes],
        *,
        kind: str = "output",
        content_type: str | None = None,
    ) -> Artifact:
        """Store an output artifact in the task's session, protected while the task runs."""
        ...

    def progress(self, done: int, total: int) -> None:
        """Report progress; raises TaskCancelled once the task is cancelled."""
        ...

    @property
    def cancelled(self) -> bool: ...

    def check_cancelled(self) -> None:
        """Raise TaskCancelled if the task was cancelled or its claim was lost."""
        ...


@runtime_checkable
class Processor(Protocol):
    # Read-only, so a processor may declare its own model class (a subclass).
    @property
    def name(self) -> str: ...

    @property
    def params_model(self) -> type[BaseModel]: ...

    def run(self, ctx: TaskContext, params: Any) -> dict[str, Any]: ...


@runtime_checkable
class ChecksInputs(Protocol):
    """Optional: check, at submission, that the params fit the inputs (IDs named, kinds)."""

    def check_inputs(self, params: Any, inputs: Sequence[Artifact]) -> None:
        """Raise InvalidInput with a clear message when they do not."""
        ...


class Registry(Mapping[str, Processor]):
    """The enabled processors by name, and the names external workers run.

    As a mapping it holds only processors that run here: what embedded workers claim.
    ``lacking_extra`` maps the default built-ins left out for want of their extra to it.
    """

    def __init__(
        self,
        processors: Iterable[Processor] = (),
        external: Iterable[str] = (),
        lacking_extra: Mapping[str, str] | None = None,
    ) -> None:
        self._processors: dict[str, Processor] = {}
        for processor in processors:
            self.add(processor)
        self.external = frozenset(external)
        self.lacking_extra: Mapping[str, str] = dict(lacking_extra or {})

    def add(self, processor: Processor) -> None:
        if not isinstance(processor, Processor):
            raise TypeError(f"{processor!r} is not a processor (name, params_model, run)")
        if processor.name in self._processors:
            raise ValueError(f"two processors are named {processor.name!r}")
        self._processors[processor.name] = processor

    def __getitem__(self, name: str) -> Processor:
        return self._processors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._processors)

    def __len__(self) -> int:
        return len(self._processors)

    def enabled(self) -> list[str]:
        """Every name a task may use: processors that run here and external ones."""
        return sorted({*self._processors, *self.external})

    def not_enabled(self, name: str) -> str:
        # The same answer for unknown, uninstalled and disabled names: a client learns what it
        # may use, not what the server has installed. A built-in left out for want of its
        # extra says which: the built-ins' names are public, so that reveals nothing.
        enabled = f"(enabled: {', '.join(self.enabled())})"
        extra = self.lacking_extra.get(name)
        if extra is not None:
            return f"processor {name!r} is not enabled: {extras.needs(extra, 'it')} {enabled}"
        return f"processor {name[:64]!r} is not enabled {enabled}"

    def get_processor(self, name: str) -> Processor:
        try:
            return self._processors[name]
        except KeyError:
            raise InvalidInput(self.not_enabled(name)) from None

    def describe(self) -> list[ProcessorInfo]:
        return [self.describe_one(name) for name in self.enabled()]

    def describe_one(self, name: str) -> ProcessorInfo:
        processor = self._processors.get(name)
        if processor is not None:
            return ProcessorInfo(
                name, description_of(processor), processor.params_model.model_json_schema(), False
            )
        if name in self.external:
            return ProcessorInfo(name, None, None, True)
        raise NotFound(self.not_enabled(name))

    def validate(self, name: str, params: Any, inputs: Sequence[Artifact]) -> BaseModel:
        """The params as the processor's model; InvalidInput naming every problem."""
        processor = self.get_processor(name)
        try:
            model = processor.params_model.model_validate(params if params is not None else {})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}"
                for e in exc.errors()
            )
            raise InvalidInput(f"invalid params for {name}: {problems}") from None
        if isinstance(processor, ChecksInputs):
            processor.check_inputs(model, inputs)
        return model

    @classmethod
    def load(cls, names: Sequence[str] | None = None, external: Iterable[str] = ()) -> Registry:
        """The processors named (default: the built-ins whose extra is installed), loaded now.

        A name is a built-in or the name of an entry point of the ``ephemera.processors``
        group; only named entry points are imported. A name that nothing installed provides,
        whose extra is missing, or whose code fails to load, raises ProcessorUnavailable: the
        operator asked for it, so running without it would be a silent miss. The default asks
        for nothing in particular: a lean install serves without the built-ins it cannot run.
        """
        lacking: dict[str, str] = {}
        if names is None:
            lacking = {n: b.extra for n, b in BUILTINS.items() if extras.missing(b.extra)}
            names = [n for n in BUILTINS if n not in lacking]
        registry = cls(external=external, lacking_extra=lacking)
        for name in dict.fromkeys(names):
            registry.add(_load(name))
        return registry


def description_of(processor: Processor) -> str | None:
    text = getattr(processor, "description", None)
    if isinstance(text, str):
        return text
    return inspect.getdoc(type(processor))


def _load(name: str) -> Processor:
    if name in BUILTINS:
        builtin = BUILTINS[name]
        if extras.missing(builtin.extra):
            raise ProcessorUnavailable(extras.needs(builtin.extra, f"processor {name!r}"))
        entry = EntryPoint(name=name, value=builtin.target, group=ENTRY_POINT_GROUP)
    else:
        found = list(entry_points(group=ENTRY_POINT_GROUP, name=name))
        if len(found) != 1:
            installed = sorted({*BUILTINS, *entry_points(group=ENTRY_POINT_GROUP).names})
            problem = "no installed package provides it" if not found else "two packages do"
            raise ProcessorUnavailable(
                f"processor {name!r} is enabled but {problem} (installed: {', '.join(installed)})"
            )
        (entry,) = found
    try:
        loaded = entry.load()
        is_instance = isinstance(loaded, Processor) and not isinstance(loaded, type)
        processor = loaded if is_instance else loaded()
    except Exception as exc:
        raise ProcessorUnavailable(
            f"processor {name!r} ({entry.value}) could not be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(processor, Processor):
        raise ProcessorUnavailable(
            f"processor {name!r} ({entry.value}) is not a processor (name, params_model, run)"
        )
    if processor.name != name:
        raise ProcessorUnavailable(
            f"entry point {name!r} ({entry.value}) gives a processor named {processor.name!r}"
        )
    return processor
