"""Prometheus metrics of one app instance (its own registry: no process-global state)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                   100)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mlb_http_requests_total", "HTTP requests",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("mlb_http_request_seconds", "HTTP request latency",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.predictions = Counter("mlb_predictions_total", "Tasks predicted", ["family"],
                                   registry=self.registry)
        self.task_errors = Counter("mlb_task_errors_total",
                                   "Tasks that got an empty prediction", ["reason"],
                                   registry=self.registry)
        self.webhooks = Counter("mlb_webhooks_total", "Webhook events received", ["action"],
                                registry=self.registry)
        self.sam_embeddings = Counter("mlb_sam_embeddings_total",
                                      "SAM embeddings a click needed, by where they came from "
                                      "(memory, disk, computed, waited)", ["source"],
                                      registry=self.registry)
        self.clipseg_activations = Counter(
            "mlb_clipseg_activations_total", "CLIPSeg vision activations an image needed, by "
            "where they came from (memory, computed)", ["source"], registry=self.registry)
        self.jobs = Counter("mlb_jobs_total", "Background jobs finished", ["name", "status"],
                            registry=self.registry)
        self.job_seconds = Histogram("mlb_job_seconds", "Background job duration", ["name"],
                                     buckets=LATENCY_BUCKETS, registry=self.registry)

    def watch_caches(self, lookups: Mapping[str, Callable[[], tuple[int, int]]]) -> None:
        """Export each cache's ``(hits, misses)``, read when scraped, as
        ``mlb_cache_lookups_total{cache, result}`` (the hit rate is hits / (hits + misses))."""
        self.registry.register(_CacheLookups(lookups))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CacheLookups(Collector):
    def __init__(self, lookups: Mapping[str, Callable[[], tuple[int, int]]]) -> None:
        self._lookups = dict(lookups)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("mlb_cache_lookups", "Cache lookups by result",
                                     labels=["cache", "result"])
        for cache, read in self._lookups.items():
            hits, misses = read()
            family.add_metric([cache, "hit"], hits)
            family.add_metric([cache, "miss"], misses)
        yield family
