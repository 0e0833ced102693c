"""Prometheus metrics: cleanup counters kept as runs happen, storage read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ephemera.catalog import Catalog
from ephemera.volume import Volume

if TYPE_CHECKING:
    from ephemera.cleanup import CleanupReport
    from ephemera.integrity import Integrity, VerifyReport


class _StorageCollector(Collector):
    """Reads the catalog when scraped, so the numbers are never stale."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def collect(self) -> Iterator[Metric]:
        stored = GaugeMetricFamily(
            "ephemera_storage_bytes",
            "Bytes of artifacts by storage class and state",
            labels=["storage_class", "state"],
        )
        counted = GaugeMetricFamily(
            "ephemera_artifacts",
            "Artifacts by storage class and state",
            labels=["storage_class", "state"],
        )
        for storage_class, state, count, size in self.catalog.artifact_breakdown():
            stored.add_metric([storage_class, state], size)
            counted.add_metric([storage_class, state], count)
        sessions = GaugeMetricFamily("ephemera_sessions", "Sessions by state", labels=["state"])
        for state, count in self.catalog.session_states().items():
            sessions.add_metric([state], count)
        tasks = GaugeMetricFamily("ephemera_tasks", "Tasks by state", labels=["state"])
        for state, count in self.catalog.task_counts().items():
            tasks.add_metric([state], count)
        flagged = GaugeMetricFamily(
            "ephemera_artifacts_flagged",
            "Ready artifacts verification found wrong, by integrity (corrupt, missing)",
            labels=["integrity"],
        )
        counts = self.catalog.flagged_counts()
        for integrity in ("corrupt", "missing"):
            flagged.add_metric([integrity], counts.get(integrity, 0))
        yield from (stored, counted, sessions, tasks, flagged)


class _VolumeCollector(Collector):
    """Free space of the local volume, for an alert well before uploads answer 507."""

    def __init__(self, volume: Volume) -> None:
        self.volume = volume

    def collect(self) -> Iterator[Metric]:
        free = self.volume.free_bytes()
        if free is None:
            return  # no backend is local
        yield GaugeMetricFamily(
            "ephemera_volume_free_bytes", "Free bytes on the fullest local data volume", free
        )
        yield GaugeMetricFamily(
            "ephemera_volume_low_space_bytes",
            "Below this, /readyz fails and the scheduler cleans up at once",
            self.volume.settings.low_space_bytes,
        )


class Metrics:
    """One registry per store, so several stores in one process never share counters."""

    def __init__(self, catalog: Catalog, volume: Volume) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["operation", "dry_run"]
        self.runs = Counter("ephemera_cleanup_runs", "Cleanup runs", labels, registry=self.registry)
        self.deleted = Counter(
            "ephemera_cleanup_deleted_items",
            "Items a cleanup deleted",
            labels,
            registry=self.registry,
        )
        self.freed = Counter(
            "ephemera_cleanup_deleted_bytes",
            "Bytes a cleanup freed",
            labels,
            registry=self.registry,
        )
        self.errors = Counter(
            "ephemera_cleanup_errors", "Item errors met by cleanup", labels, registry=self.registry
        )
        self.duration = Histogram(
            "ephemera_cleanup_duration_seconds",
            "Duration of cleanup runs",
            labels,
            registry=self.registry,
            buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800),
        )
        self.verified = Counter(
            "ephemera_verify_items",
            "Artifacts verification read, by outcome (ok, corrupt, missing, error)",
            ["outcome"],
            registry=self.registry,
        )
        self.verified_bytes = Counter(
            "ephemera_verify_bytes", "Bytes verification re-hashed", registry=self.registry
        )
        self.verify_runs = Counter(
            "ephemera_verify_runs",
            "Verification runs (on demand and scrub)",
            registry=self.registry,
        )
        self.registry.register(_StorageCollector(catalog))
        self.registry.register(_VolumeCollector(volume))

    def observe(self, report: CleanupReport) -> None:
        for part in report.reports or [report]:
            labels = (part.operation, str(part.dry_run).lower())
            self.runs.labels(*labels).inc()
            self.deleted.labels(*labels).inc(part.deleted_count)
            self.freed.labels(*labels).inc(part.deleted_size_bytes)
            self.errors.labels(*labels).inc(len(part.errors))
            self.duration.labels(*labels).observe(part.duration_s)

    def observe_flagged(self, integrity: Integrity) -> None:
        """An artifact found wrong while it was served."""
        self.verified.labels(integrity.value).inc()

    def observe_verify(self, report: VerifyReport) -> None:
        self.verify_runs.inc()
        self.verified_bytes.inc(report.checked_bytes)
        wrong = report.missing_count + report.corrupt_count + len(report.errors)
        self.verified.labels("ok").inc(max(report.checked_count - wrong, 0))
        self.verified.labels("corrupt").inc(report.corrupt_count)
        self.verified.labels("missing").inc(report.missing_count)
        self.verified.labels("error").inc(len(report.errors))

    def render(self) -> bytes:
        return generate_latest(self.registry)
