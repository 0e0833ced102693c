"""Sample processors from outside ephemera, registered through its entry-point group."""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class UpperParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    suffix: str = Field("", max_length=20)


class Upper:
    """Upper-cases every input into an output of the same name plus ``suffix``."""

    name = "sample-upper"
    params_model = UpperParams

    def run(self, ctx: Any, params: UpperParams) -> dict[str, Any]:
        names = []
        for artifact in ctx.inputs:
            data = ctx.read_input(artifact.id)
            out = ctx.write_output(artifact.name + params.suffix, data.upper())
            names.append(out.name)
        return {"outputs": names}


upper = Upper()


class SleepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(0, ge=0, le=600)
    journal: str | None = Field(None, description="A file to append 'task-id pid' lines to")


class Sleep:
    """Writes an output naming its process, sleeps (checking for cancellation), succeeds."""

    name = "sample-sleep"
    params_model = SleepParams

    def run(self, ctx: Any, params: SleepParams) -> dict[str, Any]:
        pid = os.getpid()
        if params.journal:
            # O_APPEND: lines of concurrent processes never interleave.
            fd = os.open(params.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, f"{ctx.task_id} {pid}\n".encode())
            finally:
                os.close(fd)
        ctx.write_output("ran-by.txt", str(pid).encode())
        deadline = time.monotonic() + params.seconds
        steps = 0
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
            steps += 1
            ctx.progress(min(steps, 1000), 1000)
        return {"pid": pid}
