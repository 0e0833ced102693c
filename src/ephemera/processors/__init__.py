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
factory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any, BinaryIO, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError

from ephemera.errors import InvalidInput
from ephemera.models import Artifact

ENTRY_POINT_GROUP = "ephemera.processors"

log = logging.getLogger(__name__)


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
    """Processors by name: the built-ins, then those found through the entry-point group."""

    def __init__(self, processors: Iterable[Processor] = ()) -> None:
        self._processors: dict[str, Processor] = {}
        for processor in processors:
            self.add(processor)

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

    def get_processor(self, name: str) -> Processor:
        try:
            return self._processors[name]
        except KeyError:
            known = ", ".join(sorted(self._processors)) or "none"
            raise InvalidInput(f"unknown processor {name[:64]!r} (known: {known})") from None

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
    def load(cls, *, builtins: bool = True, plugins: bool = True) -> Registry:
        registry = cls()
        if builtins:
            from ephemera.processors.camera_calibration import CameraCalibration
            from ephemera.processors.roi_compare import RoiCompare

            registry.add(RoiCompare())
            registry.add(CameraCalibration())
        if plugins:
            for entry in entry_points(group=ENTRY_POINT_GROUP):
                try:
                    loaded = entry.load()
                    is_instance = isinstance(loaded, Processor) and not isinstance(loaded, type)
                    registry.add(loaded if is_instance else loaded())
                except Exception:
                    # One broken plugin must not take the service down; it is named in the log.
                    log.exception("processor entry point %r could not be loaded", entry.name)
        return registry
