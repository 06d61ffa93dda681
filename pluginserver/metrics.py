# -*- test-case-name: tests.test_operations -*-
"""
Prometheus metrics, as C{/metrics} serves them.

Counting happens on every request, so it is plain dict arithmetic here; the
prometheus_client metric families are built only when C{/metrics} is
scraped, by a custom collector.  Process metrics (CPU, memory, file
descriptors) come from prometheus_client's own process collector.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds of the request-duration histogram, in seconds."""


_bucket = bisect.bisect_left


class _Histogram:
    """
    One route's request durations: counts per bucket, and their sum.
    """

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0


class Metrics:
    """
    The server's counters and the collector that exposes them.

    @param generations: gives the serving generation of each plugin, by
        name, when scraped.
    @param process: also expose this process's CPU, memory and file
        descriptors (prometheus_client's process collector).

    @ivar extra: gives more metric families to expose after these (the
        supervisor of worker processes adds its own).
    """

    def __init__(self, generations: Callable[[], Mapping[str, int]], process: bool = True) -> None:
        self._generations = generations
        self._requests: dict[tuple[str, int], int] = {}
        self._durations: dict[str, _Histogram] = {}
        self._reloads: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._errors: defaultdict[str, int] = defaultdict(int)
        self.extra: Callable[[], Iterable[Metric]] = tuple
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        if process:
            ProcessCollector(registry=self.registry)

    # -- counting (hot path) ---------------------------------------------------

    def request_done(self, route: str, status: int, seconds: float) -> None:
        """
        Count one answered request.
        """
        key = (route, status)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        histogram = self._durations.get(route)
        if histogram is None:
            histogram = self._durations[route] = _Histogram()
        histogram.counts[_bucket(BUCKETS, seconds)] += 1
        histogram.total += seconds

    def plugin_error(self, plugin: str) -> None:
        """
        Count an exception a plugin's handler raised (answered 500).
        """
        self._errors[plugin] += 1

    def reload_outcome(self, plugin: str, success: bool) -> None:
        """
        Count a load or reload of a plugin, successful or not.

        Both series of the plugin exist from its first load on (the other
        one at 0): Prometheus's C{increase()} sees no increase in a series'
        first sample, so an alert on C{result="failure"} would otherwise
        miss a plugin's first failure.
        """
        reloads = self._reloads
        reloads[plugin, "success" if success else "failure"] += 1
        reloads[plugin, "failure" if success else "success"] += 0

    # -- several processes ----------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """
        Every count, JSON-ready, for L{add} in another process (the
        supervisor of worker processes adds up its workers').
        """
        return {
            "requests": [[route, status, n] for (route, status), n in self._requests.items()],
            "durations": [[route, h.counts, h.total] for route, h in self._durations.items()],
            "reloads": [[plugin, result, n] for (plugin, result), n in self._reloads.items()],
            "errors": dict(self._errors),
            "generations": dict(self._generations()),
        }

    def add(self, snapshot: Mapping[str, Any]) -> None:
        """
        Add the counts of a L{snapshot} to these: requests, durations and
        errors add up; reload counts and generations, which every worker
        has alike (they reload together), take the highest.
        """
        requests = self._requests
        for route, status, n in snapshot["requests"]:
            requests[route, status] = requests.get((route, status), 0) + n
        for route, counts, total in snapshot["durations"]:
            histogram = self._durations.get(route)
            if histogram is None:
                histogram = self._durations[route] = _Histogram()
            histogram.counts = [a + b for a, b in zip(histogram.counts, counts, strict=True)]
            histogram.total += total
        for plugin, result, n in snapshot["reloads"]:
            self._reloads[plugin, result] = max(self._reloads[plugin, result], n)
        for plugin, n in snapshot["errors"].items():
            self._errors[plugin] += n

    # -- exposition ----------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """
        The metric families, built at scrape time (prometheus_client's
        collector protocol).
        """
        requests = CounterMetricFamily(
            "pluginserver_requests",
            "Requests answered, by route and status.",
            labels=["route", "status"],
        )
        for (route, status), count in sorted(self._requests.items()):
            requests.add_metric([route, str(status)], count)
        yield requests

        durations = HistogramMetricFamily(
            "pluginserver_request_duration_seconds",
            "Time from a request's arrival to its answer, by route.",
            labels=["route"],
        )
        for route, histogram in sorted(self._durations.items()):
            cumulative: list[tuple[str, float]] = []
            running = 0
            for bound, count in zip(BUCKETS, histogram.counts, strict=False):
                running += count
                cumulative.append((repr(bound), running))
            running += histogram.counts[-1]
            cumulative.append(("+Inf", running))
            durations.add_metric([route], cumulative, histogram.total)
        yield durations

        reloads = CounterMetricFamily(
            "pluginserver_plugin_reloads",
            "Plugin loads and reloads, by plugin and result (success, failure).",
            labels=["plugin", "result"],
        )
        for (plugin, result), count in sorted(self._reloads.items()):
            reloads.add_metric([plugin, result], count)
        yield reloads

        errors = CounterMetricFamily(
            "pluginserver_plugin_errors",
            "Exceptions raised by plugin handlers (answered 500), by plugin.",
            labels=["plugin"],
        )
        for plugin, count in sorted(self._errors.items()):
            errors.add_metric([plugin], count)
        yield errors

        generation = GaugeMetricFamily(
            "pluginserver_plugin_generation",
            "The generation of each plugin now serving (1 at first load).",
            labels=["plugin"],
        )
        for plugin, number in sorted(self._generations().items()):
            generation.add_metric([plugin], number)
        yield generation
        yield from self.extra()

    def exposition(self) -> bytes:
        """
        Every metric in the Prometheus text format.
        """
        return generate_latest(self.registry)
