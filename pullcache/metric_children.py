"""Labelled metric children looked up once per label set, for the counters every request touches.

prometheus-client's `labels()` checks and joins the values and takes a lock on every call, a measurable
share of a cached manifest request. The label sets on those paths are small and fixed (methods, routes,
status codes, upstream names, cache results), so their children are kept here. The cache is keyed by the
metric object itself, so a metric made anew (another registry, multiprocess mode) gets children of its own.
"""
from __future__ import annotations

from typing import TypeVar

from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

_children: dict[tuple[MetricWrapperBase, tuple[str, ...]], MetricWrapperBase] = {}


def child(metric: M, *values: str) -> M:
    """`metric.labels(*values)`, remembered."""
    key = (metric, values)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*values)
    return found  # type: ignore[return-value]  # labels() returns the metric's own type
