"""The administration routes (an admin key) and the server's health."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2

from ephemera.client.common import query, seg, unreachable
from ephemera.client.connection import Connection
from ephemera.client.errors import error_of
from ephemera.client.records import (
    ListedSession,
    audit_entry_of,
    link_key_of,
    listed_session_of,
)
from ephemera.models import AuditEntry, LinkKey


class AdminMethods(Connection):
    """Every session, cleanup on demand, stats, the audit log, verification; health."""

    def list_all_sessions(self, *, page_size: int = 1000) -> Iterator[ListedSession]:
        """Every session of the server (an admin key), with its valid leases counted."""
        for item in self._pages("/admin/sessions", page_size):
            yield listed_session_of(item)

    def cleanup(
        self,
        operation: str,
        *,
        dry_run: bool = False,
        hours_old: float | None = None,
        days_old: float | None = None,
        details: bool = False,
        purge_missing: bool = False,
    ) -> dict[str, Any]:
        """Run a cleanup operation (``expired``, ``idle-sessions``, ``old-results``,
        ``orphaned``, ``quota``, ``all``): its report, as the API documents it."""
        params = query(
            dry_run=dry_run,
            hours_old=hours_old,
            days_old=days_old,
            details=details,
            purge_missing=purge_missing,
        )
        report: dict[str, Any] = self._call(
            "POST", f"/admin/cleanup/{seg(operation)}", params=params
        )
        return report

    def cleanup_session(
        self, session_id: str, *, dry_run: bool = False, details: bool = False
    ) -> dict[str, Any]:
        """Close one session through the cleanup engine (a lease still protects it)."""
        path = f"/admin/cleanup/session/{seg(session_id)}"
        report: dict[str, Any] = self._call(
            "POST", path, params=query(dry_run=dry_run, details=details)
        )
        return report

    def cleanup_stats(self, *, include_orphaned: bool = False) -> dict[str, Any]:
        stats: dict[str, Any] = self._call(
            "GET", "/admin/cleanup/stats", params=query(include_orphaned=include_orphaned)
        )
        return stats

    def audit_log(
        self, *, action: str | None = None, page_size: int = 1000
    ) -> Iterator[AuditEntry]:
        """The audit log, newest first (of one action), page by page."""
        for item in self._pages("/admin/audit", page_size, action=action):
            yield audit_entry_of(item)

    def verify(
        self,
        *,
        session_id: str | None = None,
        rate_mb_s: float | None = None,
        repair: str | None = None,
    ) -> dict[str, Any]:
        """Re-hash stored bytes; flag (``repair="drop"``: delete) missing or corrupt ones."""
        params = query(session_id=session_id, rate_mb_s=rate_mb_s, repair=repair)
        report: dict[str, Any] = self._call("POST", "/admin/verify", params=params)
        return report

    # -- the keys that sign download links ----------------------------------------------

    def rotate_link_key(self) -> LinkKey:
        """A new key signs every link from now on; older ones verify until revoked."""
        return link_key_of(self._call("POST", "/admin/link-keys"))

    def list_link_keys(self) -> list[LinkKey]:
        """Every signing key, newest first (their secrets never leave the server)."""
        return [link_key_of(k) for k in self._call("GET", "/admin/link-keys")["items"]]

    def revoke_link_key(self, key_id: str) -> None:
        """Every link the key signed is refused from now on; NotFound if none such."""
        self._call("DELETE", f"/admin/link-keys/{seg(key_id)}")

    # -- health ---------------------------------------------------------------------------

    def health(self) -> str:
        """``ok`` while the server process answers."""
        return str(self._call("GET", f"{self.endpoint.root}/healthz")["status"])

    def ready(self) -> str:
        """``ready`` when the database and blob store answer; Unavailable otherwise."""
        return str(self._call("GET", f"{self.endpoint.root}/readyz")["status"])

    def metrics(self) -> str:
        """The Prometheus metrics, as text (an admin key, unless the server made them public)."""
        try:
            response = self._http.get(f"{self.endpoint.root}/metrics")
        except httpx2.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc
        if response.status_code >= 400:
            raise error_of(response)
        return response.text
