"""Pick the watcher for an environment's `preemption` setting."""

from __future__ import annotations

from activities.preemption.base import Watcher, WatcherConfig


def open_watcher(config: WatcherConfig) -> Watcher:
    """The watcher for `config.provider`: aws, gcp, azure, k8s-label or none."""
    if config.provider == "aws":
        from activities.preemption.aws import AwsWatcher

        return AwsWatcher(config)
    if config.provider == "gcp":
        from activities.preemption.gcp import GcpWatcher

        return GcpWatcher(config)
    if config.provider == "azure":
        from activities.preemption.azure import AzureWatcher

        return AzureWatcher(config)
    if config.provider == "k8s-label":
        from activities.preemption.k8s_label import K8sLabelWatcher

        return K8sLabelWatcher(config)
    if config.provider == "none":
        from activities.preemption.none import NoWatcher

        return NoWatcher(config)
    raise ValueError(f"preemption: unknown provider {config.provider!r}; use aws, gcp, azure, k8s-label or none")
