"""Preemption watchers: one small interface, a provider per module (AWS IMDSv2, GCP metadata, Azure
Scheduled Events, a Kubernetes node label, none), chosen per environment by the plan's `preemption`.

Like `activities.stores`, callers open a watcher through the registry and never branch on the provider.
"""

from activities.preemption.base import (
    ADDRESS_VARIABLE,
    InstanceGone,
    Notice,
    NoticeKind,
    Observation,
    Provider,
    UnreadableAnswer,
    Watcher,
    WatcherConfig,
)
from activities.preemption.registry import open_watcher

__all__ = [
    "ADDRESS_VARIABLE",
    "InstanceGone",
    "Notice",
    "NoticeKind",
    "Observation",
    "Provider",
    "UnreadableAnswer",
    "Watcher",
    "WatcherConfig",
    "open_watcher",
]
