"""Sample processors from outside ephemera, registered through its entry-point group.

Like any processor, they touch nothing but their task's inputs and outputs. What a test needs
to know of a run (which process ran which task) is in the output, the result and one log line
on the worker's standard error, never in a file whose path a client could choose.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

# The line each run of sample-sleep logs, so tests can tell which process ran which task.
RUN_LINE = "sample-sleep task %s runs in process %d"


class UpperParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    suffix: str = Field("", max_length=20, description="Appended to each output's name")


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

    seconds: float = Field(0, ge=0, le=600, description="How long to sleep")


class Sleep:
    """Writes an output naming its process, sleeps (checking for cancellation), succeeds."""

    name = "sample-sleep"
    params_model = SleepParams

    def run(self, ctx: Any, params: SleepParams) -> dict[str, Any]:
        pid = os.getpid()
        log.info(RUN_LINE, ctx.task_id, pid)
        ctx.write_output("ran-by.txt", str(pid).encode())
        deadline = time.monotonic() + params.seconds
        steps = 0
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
            steps += 1
            ctx.progress(min(steps, 1000), 1000)
        return {"pid": pid}
