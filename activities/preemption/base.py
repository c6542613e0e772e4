"""What every preemption watcher returns and the one small interface each provider implements.

A watcher runs on the environment's own worker and asks the provider's metadata service (or the
Kubernetes API server) whether this machine is about to be taken away. One `observe` is one look:
a poll (AWS, Azure, a node label) or a long-poll that returns early on a change (GCP). An answer
that could not be read is an `Observation` with `reachable=False`, never a notice: a slow or
unreachable metadata server is not a preemption (issue 20, "no false recoveries").
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import requests
from pydantic import BaseModel, ConfigDict, Field

Provider = Literal["aws", "gcp", "azure", "k8s-label", "none"]
NoticeKind = Literal["preempt", "rebalance", "maintenance"]

#: Overrides every provider's metadata address on this worker (the plan's `preemption_address` wins).
ADDRESS_VARIABLE = "SKYSHIFT_PREEMPTION_ADDRESS"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Notice(BaseModel):
    """A provider's announcement that this machine will be preempted, rebalanced or maintained."""

    model_config = ConfigDict(frozen=True)

    provider: Provider
    kind: NoticeKind
    deadline: datetime | None = Field(
        None, description="When the provider acts (AWS `time`, Azure `NotBefore`); None when it does not say"
    )
    seen_at: datetime = Field(description="When this worker read the notice")
    key: str = Field(description="Identity of the notice, so a restarted watcher can skip one already handled")
    detail: dict[str, Any] = Field(default_factory=dict, description="The provider's answer as it was read")


class Observation(BaseModel):
    """One look at the provider: a notice, nothing, or no answer (which is not a notice)."""

    model_config = ConfigDict(frozen=True)

    provider: Provider
    reachable: bool
    notice: Notice | None = None
    error: str | None = Field(None, description="Why the answer could not be read, when reachable is False")
    gone: bool = Field(
        False, description="The environment says this instance no longer exists (k8s: its node object is deleted)"
    )
    at: datetime = Field(default_factory=utcnow)


class WatcherConfig(BaseModel):
    """Where and how a watcher looks. Secrets are named (a token file path), never carried."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: Provider
    address: str | None = Field(None, description="Metadata (or API server) base URL; default: the provider's")
    poll_interval_s: float | None = Field(
        None, gt=0, le=3600, description="Seconds between polls (GCP: the long-poll's timeout); default per provider"
    )
    request_timeout_s: float = Field(2.0, gt=0, le=300, description="A read slower than this counts as unreachable")
    node_name: str | None = Field(None, description="k8s-label: the node to read (default: $NODE_NAME)")
    label: str | None = Field(None, description="k8s-label: the label that announces preemption")
    token_file: str | None = Field(None, description="k8s-label: the service account token's path")


class Watcher(ABC):
    """One provider's reader. Subclasses declare their defaults as data and implement `look`."""

    provider: ClassVar[Provider]
    #: The provider's own address variable (what its SDKs read), tried after ADDRESS_VARIABLE.
    address_variable: ClassVar[str | None] = None
    default_address: ClassVar[str] = ""
    default_poll_interval_s: ClassVar[float] = 5.0

    def __init__(self, config: WatcherConfig) -> None:
        self.config = config
        self.address = resolve_address(config.address, self.address_variable, self.default())
        self.poll_interval_s = config.poll_interval_s or self.default_poll_interval_s
        self.session = requests.Session()  # a well-kept client: pooling, timeouts, no proxy below
        self.session.trust_env = False  # a metadata service is link-local: never through an HTTP proxy

    def default(self) -> str:
        """The address used when neither the plan nor a variable names one."""
        return self.default_address

    @property
    def waits_itself(self) -> bool:
        """True when `look` blocks until a change (a long-poll), so the caller need not sleep between looks."""
        return False

    @abstractmethod
    def look(self) -> list[Notice]:
        """Read the provider once: the notices it shows now, most urgent first (empty: none).
        Raises `requests.RequestException` or `UnreadableAnswer` when no answer could be read,
        `InstanceGone` when the environment says this instance no longer exists."""

    def observe(self, seen: frozenset[str] = frozenset()) -> Observation:
        """One look; the most urgent notice not in `seen` (keys already handled), or none."""
        try:
            notices = [n for n in self.look() if n.key not in seen]
        except InstanceGone as error:
            return Observation(provider=self.provider, reachable=True, gone=True, error=_describe(error))
        except (requests.RequestException, UnreadableAnswer) as error:
            return Observation(provider=self.provider, reachable=False, error=_describe(error))
        return Observation(provider=self.provider, reachable=True, notice=notices[0] if notices else None)

    def acknowledge(self, notice: Notice) -> bool:
        """Tell the provider this machine is ready for the event (Azure's StartRequests); False
        where the provider has no such step."""
        return False

    def close(self) -> None:
        self.session.close()


class InstanceGone(Exception):
    """The environment answered that this instance no longer exists: evidence for recovery, not a notice."""


class UnreadableAnswer(Exception):
    """The service answered, but not with something this watcher can trust (a 5xx, a 401 after a fresh
    token, malformed JSON): counted as unreachable, never as a notice."""


def resolve_address(configured: str | None, provider_variable: str | None, default: str) -> str:
    """Plan field, then SKYSHIFT_PREEMPTION_ADDRESS, then the provider's own variable, then its default."""
    for candidate in (configured, os.environ.get(ADDRESS_VARIABLE), os.environ.get(provider_variable or "")):
        if candidate:
            address = candidate.strip().rstrip("/")
            return address if "://" in address else f"http://{address}"
    return default


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:300]
