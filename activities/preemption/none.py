"""No preemption notices (RunPod, on-premises, on-demand capacity): the watcher only heartbeats.

Such a job recovers only on the worker's own report or on a missed heartbeat confirmed by the
environment (`activities.preemption.recovery`).
"""

from __future__ import annotations

from activities.preemption.base import Notice, Watcher


class NoWatcher(Watcher):
    provider = "none"
    default_poll_interval_s = 30.0

    def look(self) -> list[Notice]:
        return []
