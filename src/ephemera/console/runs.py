"""Running a processor from a workspace, and following the task it makes.

The form is generated from the processor's params schema (:mod:`ephemera.console.forms`);
an external processor, which has none, takes its params as one JSON object. The task's
inputs are the artifacts ticked under "Inputs" (the session's own uploads, by default) and
every artifact of the session the params name, so choosing a capture need not also tick it.

A submission the form or the processor's model refuses comes back as the form, with what was
typed and each problem beside its control (422). The task's page follows the session's events
and shows its state, progress and, once finished, its result (:mod:`ephemera.console.results`).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from ephemera.console import forms, results
from ephemera.console.auth import Console
from ephemera.console.live import events_url
from ephemera.console.templating import render
from ephemera.console.workspace import all_artifacts, may_change, require_change, workspace_url
from ephemera.errors import InvalidInput
from ephemera.models import Artifact, ConsoleLogin, Task
from ephemera.processors import ProcessorInfo
from ephemera.store import Store

# Kinds a task makes: not ticked as inputs by default.
PRODUCED = frozenset({"output", "result"})
PARAMS_JSON = "params_json"


def task_url(session_id: str, task_id: str) -> str:
    return f"{workspace_url(session_id)}/tasks/{task_id}"


def form_fields(info: ProcessorInfo) -> list[forms.Field]:
    return forms.build_form(info.params_schema) if info.params_schema is not None else []


def run_context(
    store: Store,
    session_id: str,
    login: ConsoleLogin,
    info: ProcessorInfo,
    artifacts: list[Artifact],
    *,
    values: dict[str, Any],
    errors: dict[str, str],
    chosen: list[str],
) -> dict[str, Any]:
    fields = form_fields(info)
    return {
        "title": f"Run {info.name}",
        "nav": "workspace",
        "login": login,
        "session_id": session_id,
        "processor": info,
        "fields": fields,
        "labels": {**forms.labels(fields), "inputs": "Inputs", PARAMS_JSON: "Parameters"},
        "artifacts": artifacts,
        "values": values,
        "errors": errors,
        "chosen": chosen,
        "external": info.params_schema is None,
    }


def task_context(store: Store, session_id: str, task: Task) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "task": task,
        "finished": task.finished_at is not None,
        "result": results.view(session_id, task),
    }


def add_routes(router: APIRouter, console: Console) -> None:
    store = console.store

    @router.get("/workspace/{session_id}/run")
    def run_form(
        session_id: str,
        request: Request,
        processor: str | None = None,
        login: ConsoleLogin = Depends(console.login),
    ) -> Response:
        require_change(console, session_id, login)
        if not processor:
            return RedirectResponse(workspace_url(session_id) + "#run-heading", 303)
        info = store.get_processor_info(processor)
        artifacts = all_artifacts(store, session_id)
        chosen = [a.id for a in artifacts if a.kind not in PRODUCED]
        values = forms.initial_values(form_fields(info))
        if info.params_schema is None:
            values[PARAMS_JSON] = "{}"
        context = run_context(
            store, session_id, login, info, artifacts, values=values, errors={}, chosen=chosen
        )
        return render(request, "workspace/run.html", context)

    @router.post("/workspace/{session_id}/tasks")
    async def submit(
        session_id: str, request: Request, login: ConsoleLogin = Depends(console.login)
    ) -> Response:
        require_change(console, session_id, login)
        posted = await request.form()
        form = {key: [v for v in posted.getlist(key) if isinstance(v, str)] for key in posted}
        name = (form.get("processor") or [""])[0]
        info = await anyio.to_thread.run_sync(store.get_processor_info, name)
        artifacts = await anyio.to_thread.run_sync(all_artifacts, store, session_id)
        known = {a.id for a in artifacts}
        chosen = [v for v in form.get("inputs", []) if v]
        submission = read_params(info, form, known)
        errors = dict(submission.errors)
        strangers = [v for v in chosen if v not in known]
        if strangers:
            errors["inputs"] = "not an artifact of this session: " + ", ".join(strangers[:3])
        if not errors:
            named = forms.artifact_references(submission.params, known)
            inputs = list(dict.fromkeys([*chosen, *named]))
            try:
                task = await anyio.to_thread.run_sync(
                    lambda: store.submit_task(
                        session_id, info.name, inputs=inputs, params=submission.params
                    )
                )
            except InvalidInput as exc:
                errors[""] = exc.message
            else:
                if login.role == "admin":  # as the API audits an admin key's submissions
                    await anyio.to_thread.run_sync(
                        lambda: store.audit(
                            login.audit_actor,
                            "task.submit",
                            f"{session_id}/{task.id}",
                            {"processor": task.processor, "via": "console"},
                        )
                    )
                return RedirectResponse(task_url(session_id, task.id), status_code=303)
        context = run_context(
            store,
            session_id,
            login,
            info,
            artifacts,
            values=submission.values,
            errors=errors,
            chosen=chosen,
        )
        return render(request, "workspace/run.html", context, 422)

    @router.get("/workspace/{session_id}/tasks/{task_id}")
    def task_page(
        session_id: str,
        task_id: str,
        request: Request,
        login: ConsoleLogin = Depends(console.login),
    ) -> Response:
        console.workspace(session_id, login)
        task = store.get_task(session_id, task_id)
        context = {
            "title": f"Task {task.processor}",
            "nav": "workspace",
            "login": login,
            "events": events_url(session_id),
            "can_change": may_change(login),
            **task_context(store, session_id, task),
        }
        return render(request, "workspace/task.html", context)

    @router.get("/workspace/{session_id}/tasks/{task_id}/status")
    def task_fragment(
        session_id: str,
        task_id: str,
        request: Request,
        login: ConsoleLogin = Depends(console.login),
    ) -> Response:
        console.workspace(session_id, login)
        task = store.get_task(session_id, task_id)
        context = {"login": login, "can_change": may_change(login)}
        context.update(task_context(store, session_id, task))
        return render(request, "workspace/task_status.html", context)

    @router.post("/workspace/{session_id}/tasks/{task_id}/cancel")
    def cancel(
        session_id: str,
        task_id: str,
        login: ConsoleLogin = Depends(console.login),
    ) -> Response:
        require_change(console, session_id, login)
        store.cancel_task(session_id, task_id)
        if login.role == "admin":
            store.audit(login.audit_actor, "task.cancel", f"{session_id}/{task_id}")
        return RedirectResponse(task_url(session_id, quote(task_id, safe="")), status_code=303)


def read_params(
    info: ProcessorInfo, form: dict[str, list[str]], known: set[str]
) -> forms.Submission:
    """The params of a posted run form: by the schema's controls, or the one JSON object of
    an external processor."""
    if info.params_schema is not None:
        return forms.read_form(form_fields(info), form, known)
    text = (form.get(PARAMS_JSON) or ["{}"])[0]
    submission = forms.Submission(values={PARAMS_JSON: text})
    try:
        params = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        submission.errors[PARAMS_JSON] = f"not valid JSON: {exc.msg}"
        return submission
    if not isinstance(params, dict):
        submission.errors[PARAMS_JSON] = "must be a JSON object"
    else:
        submission.params = params
    return submission
