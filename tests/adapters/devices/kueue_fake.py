"""A Kubernetes API server on 127.0.0.1 with Kueue's objects, for the Kueue pool's tests.

No API server can run here, so this speaks the objects' wire format (kueue.x-k8s.io/v1beta1
ClusterQueue and Workload as their Go types define them, apps/v1 Deployment and its scale) and
models what Kueue does with them: it admits the queue's pending active workloads first come
first served while they fit the GPU quota and the stopPolicy is None, evicts every admitted one
on HoldAndDrain and any deactivated one, keeps them on Hold, and reports flavorsUsage. A
Deployment's ready replicas reach its spec one read later (pods take time to start). PATCH takes
JSON merge patches only (RFC 7386), as the adapter must send them.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.helpers.peers import free_port

__all__ = ["FakeKube", "fake_kube"]

GPU = "nvidia.com/gpu"
_CQ = re.compile(r"^/apis/kueue\.x-k8s\.io/v1beta1/clusterqueues/([^/?]+)$")
_WLS = re.compile(r"^/apis/kueue\.x-k8s\.io/v1beta1/workloads$")
_WL = re.compile(r"^/apis/kueue\.x-k8s\.io/v1beta1/namespaces/([^/]+)/workloads/([^/?]+)$")
_SCALE = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)/scale$")
_STATUS = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)/status$")


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


class FakeKube:
    def __init__(self, gpu_quota: int = 0) -> None:
        self.port = free_port()
        self.lock = threading.Lock()
        self.patches: list[tuple[str, str]] = []  # (path, content type)
        self.queue: dict[str, Any] = {
            "apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "ClusterQueue",
            "metadata": {"name": "flex", "resourceVersion": "1"},
            "spec": {"namespaceSelector": {}, "stopPolicy": "None", "resourceGroups": [
                {"coveredResources": ["cpu", GPU], "flavors": [
                    {"name": "h100", "resources": [{"name": "cpu", "nominalQuota": "512"},
                                                   {"name": GPU, "nominalQuota": str(gpu_quota)}]},
                ]},
            ]},
            "status": {"admittedWorkloads": 0, "pendingWorkloads": 0, "reservingWorkloads": 0,
                       "flavorsUsage": [], "flavorsReservation": [], "conditions": []},
        }  # fmt: skip
        self.workloads: list[dict[str, Any]] = []
        self.deployment: dict[str, Any] = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "chat", "namespace": "inference"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "chat"}},
                     "template": {"metadata": {"labels": {"app": "chat"}}, "spec": {"containers": [
                         {"name": "vllm", "image": "vllm/vllm-openai"}]}}},
            "status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1},
        }  # fmt: skip
        self._clock = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def submit(self, name: str, gpus: int) -> None:
        """A flexible job's Workload, pending in the queue."""
        with self.lock:
            self._clock += 1
            self.workloads.append({
                "apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "Workload",
                "metadata": {"name": name, "namespace": "batch"},
                "spec": {"active": True, "queueName": "flex", "podSets": [
                    {"name": "main", "count": 1, "template": {"spec": {"containers": [
                        {"name": "train", "resources": {"requests": {GPU: str(gpus)}}}]}}}]},
                "status": {"conditions": []}, "_gpus": gpus, "_order": self._clock,
            })  # fmt: skip
            self._reconcile()

    def admitted(self) -> list[str]:
        with self.lock:
            return [w["metadata"]["name"] for w in self.workloads if _is_admitted(w)]

    # -- what Kueue does ---------------------------------------------------------------------
    def _reconcile(self) -> None:
        stop = self.queue["spec"].get("stopPolicy", "None")
        quota = _gpu_quota(self.queue)
        for w in self.workloads:
            if _is_admitted(w) and (not w["spec"].get("active", True) or stop == "HoldAndDrain"):
                _set_admitted(w, None, "Evicted")
        used = sum(w["_gpus"] for w in self.workloads if _is_admitted(w))
        if stop == "None":
            for w in sorted(self.workloads, key=lambda w: w["_order"]):
                if _is_admitted(w) or not w["spec"].get("active", True):
                    continue
                if used + w["_gpus"] <= quota:
                    self._clock += 1
                    _set_admitted(
                        w, f"2026-12-02T12:{self._clock // 60:02d}:{self._clock % 60:02d}Z"
                    )
                    used += w["_gpus"]
        admitted = [w for w in self.workloads if _is_admitted(w)]
        self.queue["status"].update({
            "admittedWorkloads": len(admitted),
            "pendingWorkloads": sum(1 for w in self.workloads
                                    if not _is_admitted(w) and w["spec"].get("active", True)),
            "flavorsUsage": [{"name": "h100", "resources": [
                {"name": "cpu", "total": "0"},
                {"name": GPU, "total": str(used), "borrowed": "0"}]}],
        })  # fmt: skip

    def _wire(self, w: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in w.items() if not k.startswith("_")}

    # -- HTTP --------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                del args

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _missing(self) -> None:
                self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "reason": "NotFound", "code": 404})  # fmt: skip

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                with fake.lock:
                    if (m := _CQ.match(path)) and m.group(1) == "flex":
                        self._send(200, fake.queue)
                    elif _WLS.match(path):
                        items = [fake._wire(w) for w in fake.workloads]
                        self._send(200, {"apiVersion": "kueue.x-k8s.io/v1beta1",
                                         "kind": "WorkloadList", "items": items})  # fmt: skip
                    elif (m := _STATUS.match(path)) and m.group(2) == "chat":
                        self._send(200, fake.deployment)
                        status = fake.deployment["status"]  # ready one read later
                        status["replicas"] = status["readyReplicas"] = fake.deployment["spec"][
                            "replicas"
                        ]
                    else:
                        self._missing()

            def do_PATCH(self) -> None:
                path = self.path.split("?")[0]
                kind = self.headers.get("Content-Type", "")
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if kind != "application/merge-patch+json":
                    self._send(
                        415, {"kind": "Status", "code": 415, "reason": "UnsupportedMediaType"}
                    )
                    return
                with fake.lock:
                    fake.patches.append((path, kind))
                    if (m := _CQ.match(path)) and m.group(1) == "flex":
                        fake.queue = merge(fake.queue, {"spec": body.get("spec", {})})
                        fake._reconcile()
                        self._send(200, fake.queue)
                    elif m := _WL.match(path):
                        found = [w for w in fake.workloads if w["metadata"]["name"] == m.group(2)]
                        if not found:
                            self._missing()
                            return
                        found[0]["spec"] = merge(found[0]["spec"], body.get("spec", {}))
                        fake._reconcile()
                        self._send(200, fake._wire(found[0]))
                    elif (m := _SCALE.match(path)) and m.group(2) == "chat":
                        replicas = int(body["spec"]["replicas"])
                        fake.deployment["spec"]["replicas"] = replicas
                        running = fake.deployment["status"]["replicas"]
                        self._send(200, {"apiVersion": "autoscaling/v1", "kind": "Scale",
                                         "metadata": {"name": "chat", "namespace": "inference"},
                                         "spec": {"replicas": replicas},
                                         "status": {"replicas": running}})  # fmt: skip
                    else:
                        self._missing()

        return Handler

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _is_admitted(w: dict[str, Any]) -> bool:
    return any(c["type"] == "Admitted" and c["status"] == "True" for c in w["status"]["conditions"])


def _set_admitted(w: dict[str, Any], at: str | None, reason: str = "Admitted") -> None:
    if at is None:
        w["status"] = {"conditions": [{"type": "Admitted", "status": "False", "reason": reason,
                                       "lastTransitionTime": "2026-12-02T13:00:00Z"}]}  # fmt: skip
        return
    w["status"] = {
        "conditions": [{"type": "Admitted", "status": "True", "reason": "Admitted",
                        "lastTransitionTime": at}],
        "admission": {"clusterQueue": "flex", "podSetAssignments": [
            {"name": "main", "count": 1, "flavors": {"nvidia.com/gpu": "h100"},
             "resourceUsage": {"nvidia.com/gpu": str(w["_gpus"])}}]},
    }  # fmt: skip


def _gpu_quota(queue: dict[str, Any]) -> int:
    for group in queue["spec"]["resourceGroups"]:
        for flavor in group["flavors"]:
            for item in flavor["resources"]:
                if item["name"] == GPU:
                    return int(item["nominalQuota"])
    return 0


@contextmanager
def fake_kube(gpu_quota: int = 0) -> Iterator[FakeKube]:
    kube = FakeKube(gpu_quota)
    kube.start()
    try:
        yield kube
    finally:
        kube.stop()
