"""Prometheus metrics: cleanup counters kept as runs happen, storage read at scrape time.

The counts are kept in plain numbers and ``prometheus_client`` is imported only when they are
rendered: a process that never serves ``/metrics`` (``ephemera cleanup`` from cron) counts for
nothing and should not load it. The rendered families are the ones ``Counter`` and
``Histogram`` give (``_total``, ``_created``, ``_bucket``, ``_count``, ``_sum``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from ephemera.catalog import Catalog
    from ephemera.cleanup import CleanupReport
    from ephemera.integrity import Integrity, VerifyReport
    from ephemera.volume import Volume

CLEANUP_LABELS = ("operation", "dry_run")
DURATION_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, float("inf"))


@dataclass
class _Counter:
    """A counter's children by label values: (value, created), in the order they appeared."""

    name: str
    documentation: str
    labels: tuple[str, ...]
    children: dict[tuple[str, ...], list[float]] = field(default_factory=dict)

    def inc(self, values: tuple[str, ...], amount: float = 1) -> None:
        child = self.children.setdefault(values, [0.0, time.time()])
        child[0] += amount


@dataclass
class _Histogram:
    """A histogram's children: per label values, counts per bucket (not cumulative), sum and
    created."""

    name: str
    documentation: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...]
    children: dict[tuple[str, ...], tuple[list[int], list[float]]] = field(default_factory=dict)

    def observe(self, values: tuple[str, ...], amount: float) -> None:
        counts, totals = self.children.setdefault(
            values, ([0] * len(self.buckets), [0.0, time.time()])
        )
        totals[0] += amount
        counts[next(i for i, bound in enumerate(self.buckets) if amount <= bound)] += 1


class Metrics:
    """One set of counts per store, so several stores in one process never share counters."""

    def __init__(self, catalog: Catalog, volume: Volume) -> None:
        self.catalog = catalog
        self.volume = volume
        self._lock = threading.Lock()
        self.runs = _Counter("ephemera_cleanup_runs", "Cleanup runs", CLEANUP_LABELS)
        self.deleted = _Counter(
            "ephemera_cleanup_deleted_items", "Items a cleanup deleted", CLEANUP_LABELS
        )
        self.freed = _Counter(
            "ephemera_cleanup_deleted_bytes", "Bytes a cleanup freed", CLEANUP_LABELS
        )
        self.errors = _Counter(
            "ephemera_cleanup_errors", "Item errors met by cleanup", CLEANUP_LABELS
        )
        self.duration = _Histogram(
            "ephemera_cleanup_duration_seconds",
            "Duration of cleanup runs",
            CLEANUP_LABELS,
            DURATION_BUCKETS,
        )
        self.verified = _Counter(
            "ephemera_verify_items",
            "Artifacts verification read, by outcome (ok, corrupt, missing, error)",
            ("outcome",),
        )
        self.verified_bytes = _Counter("ephemera_verify_bytes", "Bytes verification re-hashed", ())
        self.verify_runs = _Counter(
            "ephemera_verify_runs", "Verification runs (on demand and scrub)", ()
        )
        # Counters without labels exist from the start, as prometheus_client's do.
        self.verified_bytes.inc((), 0)
        self.verify_runs.inc((), 0)

    def observe(self, report: CleanupReport) -> None:
        with self._lock:
            for part in report.reports or [report]:
                labels = (part.operation, str(part.dry_run).lower())
                self.runs.inc(labels)
                self.deleted.inc(labels, part.deleted_count)
                self.freed.inc(labels, part.deleted_size_bytes)
                self.errors.inc(labels, len(part.errors))
                self.duration.observe(labels, part.duration_s)

    def observe_flagged(self, integrity: Integrity) -> None:
        """An artifact found wrong while it was served."""
        with self._lock:
            self.verified.inc((integrity.value,))

    def observe_verify(self, report: VerifyReport) -> None:
        with self._lock:
            self.verify_runs.inc(())
            self.verified_bytes.inc((), report.checked_bytes)
            wrong = report.missing_count + report.corrupt_count + len(report.errors)
            self.verified.inc(("ok",), max(report.checked_count - wrong, 0))
            self.verified.inc(("corrupt",), report.corrupt_count)
            self.verified.inc(("missing",), report.missing_count)
            self.verified.inc(("error",), len(report.errors))

    def render(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry()
        registry.register(_Scrape(self))
        return generate_latest(registry)


class _Scrape:
    """What one scrape yields: the counts as they stand, then storage and free space read now
    (so the numbers are never stale)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        with m._lock:
            families = [
                *(_counter(c) for c in (m.runs, m.deleted, m.freed, m.errors)),
                _histogram(m.duration),
                *(_counter(c) for c in (m.verified, m.verified_bytes, m.verify_runs)),
            ]
        yield from families
        yield from _storage(m.catalog)
        yield from _volume(m.volume)


def _counter(counter: _Counter) -> Metric:
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily(counter.name, counter.documentation, labels=counter.labels)
    for values, (value, created) in counter.children.items():
        family.add_metric(values, value, created=created)
    return family


def _histogram(histogram: _Histogram) -> Metric:
    from prometheus_client.core import HistogramMetricFamily
    from prometheus_client.samples import Sample

    family = HistogramMetricFamily(histogram.name, histogram.documentation, labels=histogram.labels)
    for values, (counts, (total, created)) in histogram.children.items():
        cumulative, buckets = 0, []
        for bound, count in zip(histogram.buckets, counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        family.add_metric(values, buckets, total)
        labels = dict(zip(histogram.labels, values, strict=True))
        family.samples.append(Sample(histogram.name + "_created", labels, created))
    return family


def _storage(catalog: Catalog) -> Iterator[Metric]:
    from prometheus_client.core import GaugeMetricFamily

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
    for storage_class, state, count, size in catalog.artifact_breakdown():
        stored.add_metric([storage_class, state], size)
        counted.add_metric([storage_class, state], count)
    sessions = GaugeMetricFamily("ephemera_sessions", "Sessions by state", labels=["state"])
    for state, count in catalog.session_states().items():
        sessions.add_metric([state], count)
    tasks = GaugeMetricFamily("ephemera_tasks", "Tasks by state", labels=["state"])
    for state, count in catalog.task_counts().items():
        tasks.add_metric([state], count)
    flagged = GaugeMetricFamily(
        "ephemera_artifacts_flagged",
        "Ready artifacts verification found wrong, by integrity (corrupt, missing)",
        labels=["integrity"],
    )
    counts = catalog.flagged_counts()
    for integrity in ("corrupt", "missing"):
        flagged.add_metric([integrity], counts.get(integrity, 0))
    yield from (stored, counted, sessions, tasks, flagged)


def _volume(volume: Volume) -> Iterator[Metric]:
    """Free space of the local volume, for an alert well before uploads answer 507."""
    from prometheus_client.core import GaugeMetricFamily

    free = volume.free_bytes()
    if free is None:
        return  # no backend is local
    yield GaugeMetricFamily(
        "ephemera_volume_free_bytes", "Free bytes on the fullest local data volume", free
    )
    yield GaugeMetricFamily(
        "ephemera_volume_low_space_bytes",
        "Below this, /readyz fails and the scheduler cleans up at once",
        volume.settings.low_space_bytes,
    )
