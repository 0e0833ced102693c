"""The cleanup page: pick an operation and its parameters, preview what it would delete
(a dry run, grouped by rule), then run exactly that operation in the background, follow it,
and read its report beside the preview.

Who may do what: a worker key's sign-in may preview (a dry run deletes nothing; it is
audited under its own name like every run) and follow runs; only an admin key's runs for
real. Previews and runs count against the same per-key limit as the API's cleanup requests.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from ephemera.cleanup.records import Operation
from ephemera.console.auth import Console
from ephemera.console.cleanup_runs import APPLIES, CleanupParams, CleanupRuns, Preview
from ephemera.console.templating import render
from ephemera.errors import InvalidInput
from ephemera.http.ratelimit import cleanup_requests
from ephemera.models import ConsoleLogin

PAGE = "/console/cleanup"
# How many items a page lists one by one (the groups and totals always count them all).
SHOWN_ITEMS = 500

OPERATIONS: list[tuple[str, str]] = [
    (Operation.EXPIRED, "expired: temporary artifacts past their expiry"),
    (Operation.IDLE_SESSIONS, "idle-sessions: sessions past their idle timeout or max age"),
    (Operation.SESSION, "session: close one session now"),
    (Operation.OLD_RESULTS, "old-results: task outputs older than the result retention"),
    (Operation.ORPHANED, "orphaned: bytes and records left without their counterpart"),
    (Operation.QUOTA, "quota: evict idle sessions above the storage high-water mark"),
    (Operation.ALL, "all: every operation above but session, in order"),
]


def _float(name: str, text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise InvalidInput(f"{name} must be a number") from None


def params_from(
    operation: str, hours_old: str, days_old: str, session_id: str, purge_missing: str
) -> CleanupParams:
    return CleanupParams.checked(
        operation,
        hours_old=_float("hours_old", hours_old),
        days_old=_float("days_old", days_old),
        session_id=session_id.strip() or None,
        purge_missing=purge_missing in ("true", "on", "1"),
    )


Field = Annotated[str, Form(max_length=100)]


def add_routes(router: APIRouter, console: Console) -> None:
    runs = CleanupRuns(console.store)
    limit = cleanup_requests(console.store)

    @router.get("/cleanup")
    def cleanup_form(
        request: Request,
        operation: str = "expired",
        hours_old: str = "",
        days_old: str = "",
        session_id: str = "",
        purge_missing: str = "",
        login: ConsoleLogin = Depends(console.operator),
    ) -> Response:
        return render(
            request,
            "cleanup/form.html",
            {
                "title": "Cleanup",
                "nav": "cleanup",
                "login": login,
                "operations": OPERATIONS,
                # Which operations read each parameter (cleanup.js hides the others).
                "uses": {
                    name: " ".join(str(op) for op, used in APPLIES.items() if name in used)
                    for name in ("hours_old", "days_old", "session_id", "purge_missing")
                },
                "chosen": {
                    "operation": operation,
                    "hours_old": hours_old,
                    "days_old": days_old,
                    "session_id": session_id,
                    "purge_missing": purge_missing in ("true", "on", "1"),
                },
                "runs": runs.runs.newest_first(),
            },
        )

    @router.post("/cleanup/previews")
    def preview_cleanup(
        operation: Field,
        hours_old: Field = "",
        days_old: Field = "",
        session_id: Field = "",
        purge_missing: Field = "",
        login: ConsoleLogin = Depends(console.admin),
    ) -> Response:
        """A dry run; its page is the answer (a GET, so a reload does not run it again).

        Admin only, as in the API: a dry run is an audited cleanup run, and a large one
        holds its items in memory."""
        params = params_from(operation, hours_old, days_old, session_id, purge_missing)
        actor = login.audit_actor
        limit.check(actor)
        made = runs.preview(params, actor)
        return RedirectResponse(f"{PAGE}/previews/{made.id}", status_code=303)

    @router.get("/cleanup/previews/{preview_id}")
    def preview_page(
        request: Request, preview_id: str, login: ConsoleLogin = Depends(console.operator)
    ) -> Response:
        preview = runs.previews.get(preview_id, "preview")
        return render(
            request,
            "cleanup/preview.html",
            {
                "title": f"Preview of {preview.params.operation}",
                "nav": "cleanup",
                "login": login,
                "preview": preview,
                "shown": SHOWN_ITEMS,
                "change": f"{PAGE}?{urlencode(preview.params.fields())}",
            },
        )

    @router.post("/cleanup/runs")
    def run_cleanup(
        operation: Field,
        hours_old: Field = "",
        days_old: Field = "",
        session_id: Field = "",
        purge_missing: Field = "",
        preview: Annotated[str, Form(max_length=64)] = "",
        login: ConsoleLogin = Depends(console.admin),
    ) -> Response:
        """Start the real run and show its page at once; it goes on in the background."""
        params = params_from(operation, hours_old, days_old, session_id, purge_missing)
        previewed: Preview | None = None
        if preview:
            previewed = runs.previews.get(preview, "preview")
            if previewed.params != params:
                raise InvalidInput("the parameters differ from the preview's: preview again")
        actor = login.audit_actor
        limit.check(actor)
        run = runs.start(params, actor, previewed)
        return RedirectResponse(f"{PAGE}/runs/{run.id}", status_code=303)

    def run_context(run_id: str, login: ConsoleLogin) -> dict[str, object]:
        run = runs.runs.get(run_id, "cleanup run")
        return {
            "title": f"Cleanup {run.params.operation}",
            "nav": "cleanup",
            "login": login,
            "run": run,
            "shown": SHOWN_ITEMS,
            "status_url": f"{PAGE}/runs/{run.id}/status",
            "page_url": f"{PAGE}/runs/{run.id}",
        }

    @router.get("/cleanup/runs/{run_id}")
    def run_page(
        request: Request, run_id: str, login: ConsoleLogin = Depends(console.operator)
    ) -> Response:
        return render(request, "cleanup/run.html", run_context(run_id, login))

    @router.get("/cleanup/runs/{run_id}/status")
    def run_status(
        request: Request, run_id: str, login: ConsoleLogin = Depends(console.operator)
    ) -> Response:
        """The fragment htmx polls: the progress while it runs, then the report."""
        return render(request, "cleanup/_status.html", run_context(run_id, login))
