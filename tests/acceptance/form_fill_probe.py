"""Run pdf-form-fill on a 1 GiB CSV made up as it is read; print time and peak RSS as JSON.

``python -m tests.acceptance.form_fill_probe recorded|streamed``: ``recorded`` gives the CSV
its true size (refused unread); ``streamed`` records it as small, so the read itself must
stop at the byte limit. Peak RSS is this process's own ``ru_maxrss``, before and after.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
from typing import BinaryIO, cast

from ephemera.processors import Registry, TaskFailed
from ephemera.processors.documents.form_fill import PdfFormFill, PdfFormFillParams
from ephemera.testing import MemoryTaskContext
from tests.documents import LazyStream, form_template

GiB = 1 << 30
HEADER = b"shipper,notes\n"
ROW = b"ACME Freight," + b"n" * 30_000 + b"\n"  # 30 kB rows: the byte limit comes first


class LazyCsvContext(MemoryTaskContext):
    def __init__(self, template: bytes, recorded_size: int) -> None:
        super().__init__({"t": ("template.pdf", template), "r": ("rows.csv", b"")})
        self.inputs = [self.inputs[0], dataclasses.replace(self.inputs[1], size=recorded_size)]

    def open_input(self, artifact_id: str) -> BinaryIO:
        if artifact_id == "r":
            return cast(BinaryIO, LazyStream(HEADER, ROW, GiB))
        return super().open_input(artifact_id)


def main(case: str) -> None:
    template = form_template()
    ctx = LazyCsvContext(template, GiB if case == "recorded" else 1024)
    processor = PdfFormFill()
    params = Registry([processor]).validate(
        processor.name, {"template": "t", "rows": "r", "max_rows": 10_000}, ctx.inputs
    )
    assert isinstance(params, PdfFormFillParams)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    error = None
    try:
        processor.run(ctx, params)
    except TaskFailed as exc:
        error = exc.message
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = {
        "error": error,
        "seconds": seconds,
        "baseline_kib": baseline,
        "peak_kib": peak,
        "outputs": len(ctx.outputs),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
