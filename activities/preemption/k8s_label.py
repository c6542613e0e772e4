"""A Kubernetes node label announcing preemption (CoreWeave-style), read from the node object.

CoreWeave cordons a Spot node chosen for preemption and labels it
`qos.coreweave.cloud/pending-preemption: "true"` for the warning window (up to minutes) before it
drains it. The watcher reads `GET /api/v1/nodes/{name}` from the API server with the pod's service
account token (`Authorization: Bearer`, 401 without it); the node name comes from the downward API
(`NODE_NAME`). A 404 for the node means the node object was deleted: the environment confirming the
instance is gone, which is evidence for recovery but not a notice. In-cluster, the address is
`https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT` and the cluster CA verifies it.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from activities.preemption.base import InstanceGone, Notice, UnreadableAnswer, Watcher, WatcherConfig, utcnow

LABEL = "qos.coreweave.cloud/pending-preemption"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class K8sLabelWatcher(Watcher):
    provider = "k8s-label"
    address_variable = None
    default_address = "https://kubernetes.default.svc"
    default_poll_interval_s = 5.0

    def __init__(self, config: WatcherConfig) -> None:
        super().__init__(config)
        self.node = config.node_name or os.environ.get("NODE_NAME") or ""
        if not self.node:
            raise ValueError("k8s-label: the node name is unknown; set NODE_NAME (downward API spec.nodeName)")
        self.label = config.label or LABEL
        self.token_file = Path(config.token_file) if config.token_file else SERVICE_ACCOUNT / "token"
        ca = SERVICE_ACCOUNT / "ca.crt"
        if self.address.startswith("https://") and ca.exists():
            self.session.verify = str(ca)

    def default(self) -> str:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        return f"https://{host}:{port}" if host else "https://kubernetes.default.svc"

    def _headers(self) -> dict[str, str]:
        try:
            # Read on every look: the kubelet rotates projected tokens.
            return {"Authorization": f"Bearer {self.token_file.read_text().strip()}"}
        except OSError:
            return {}

    def look(self) -> list[Notice]:
        path = f"/api/v1/nodes/{quote(self.node, safe='')}"
        response = self.session.get(self.address + path, headers=self._headers(), timeout=self.config.request_timeout_s)
        if response.status_code == 404:
            raise InstanceGone(f"node {self.node!r} no longer exists in the API server")
        if response.status_code != 200:
            raise UnreadableAnswer(f"{path}: HTTP {response.status_code}")
        try:
            node = response.json()
            labels = node["metadata"].get("labels") or {}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise UnreadableAnswer(f"{path}: not a Node object ({error})") from None
        if str(labels.get(self.label, "")).lower() != "true":
            return []
        detail = {
            "node": self.node,
            "label": self.label,
            "value": labels[self.label],
            "unschedulable": bool((node.get("spec") or {}).get("unschedulable")),
            "resourceVersion": node["metadata"].get("resourceVersion"),
        }
        return [Notice(provider="k8s-label", kind="preempt", deadline=None, seen_at=utcnow(),
                       key=f"k8s-label:{self.node}:{self.label}", detail=detail)]  # fmt: skip
