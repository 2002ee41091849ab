"""A GPU pool on Kubernetes: inference is a Deployment, flexible work is what Kueue admits.

- *serving* workers are the inference Deployment's replicas (its `scale` subresource);
- *lent* workers are GPU quota in a Kueue ClusterQueue: the flavor's `nominalQuota` of the GPU
  resource is set to `lent x gpus_per_worker`. With no worker lent the queue is stopped:
  `stopPolicy: HoldAndDrain` (admitted workloads are evicted, to resume from their checkpoint)
  or `Hold` (nothing new is admitted; running work finishes), per the settings.
- Lowering a quota does not evict what Kueue already admitted, so a reclaim also deactivates
  (`spec.active: false`) the most recently admitted workloads of the queue until what stays
  admitted fits the new quota: the newest have the least work to lose. They return to the
  queue when their owner sets them active again.
- `read()` takes the Deployment's ready replicas and the queue's `status.flavorsUsage`.

Through the official kubernetes client (the site's kubeconfig or in-cluster service account),
each call in a worker thread; API errors are translated to the device errors.
"""

from __future__ import annotations

import asyncio
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.errors import DeviceRejectedError, DeviceTimeoutError, DeviceUnavailableError
from agent.ports import PoolPlan, PoolState, utc_now

__all__ = ["KueuePool", "KueueSettings"]

GROUP, VERSION = "kueue.x-k8s.io", "v1beta1"
MERGE = "application/merge-patch+json"


@dataclass(frozen=True, slots=True)
class KueueSettings:
    cluster_queue: str
    flavor: str  # the ResourceFlavor whose GPU quota is the lent capacity
    namespace: str  # of the inference Deployment
    deployment: str
    gpu_resource: str = "nvidia.com/gpu"
    gpus_per_worker: int = 1
    drain: bool = True  # no worker lent: HoldAndDrain (evict) rather than Hold
    timeout_s: float = 10.0


class KueuePool:
    """A GpuPoolScheduler over one ClusterQueue and one Deployment (see the module doc).
    `api_client`: a kubernetes.client.ApiClient (tests point one at their server)."""

    def __init__(
        self, pool_id: str, settings: KueueSettings, api_client: Any, *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:  # fmt: skip
        from kubernetes import client  # noqa: PLC0415 - the kueue extra, only when configured

        self._pool_id = pool_id
        self._settings = settings
        self._custom = client.CustomObjectsApi(api_client)
        self._apps = client.AppsV1Api(api_client)
        self._api_error: type[Exception] = client.ApiException
        self._clock = clock

    async def apply(self, plan: PoolPlan) -> None:
        await asyncio.to_thread(self._guarded, self._apply, plan)

    async def read(self) -> PoolState:
        state: PoolState = await asyncio.to_thread(self._guarded, self._read)
        return state

    # -- the API -----------------------------------------------------------------------------
    def _apply(self, plan: PoolPlan) -> None:
        s = self._settings
        self._apps.patch_namespaced_deployment_scale(
            s.deployment, s.namespace, {"spec": {"replicas": plan.serving}},
            _content_type=MERGE, _request_timeout=s.timeout_s,
        )  # fmt: skip
        queue = self._queue()
        gpus = plan.lent * s.gpus_per_worker
        groups = _with_quota(queue, s.flavor, s.gpu_resource, gpus, self._pool_id)
        stop = "None" if plan.lent else ("HoldAndDrain" if s.drain else "Hold")
        self._custom.patch_cluster_custom_object(
            GROUP, VERSION, "clusterqueues", s.cluster_queue,
            {"spec": {"resourceGroups": groups, "stopPolicy": stop}},
            _content_type=MERGE, _request_timeout=s.timeout_s,
        )  # fmt: skip
        if plan.lent:
            self._evict_over(gpus)

    def _evict_over(self, quota_gpus: int) -> None:
        """Deactivate the newest admitted workloads until the rest fit `quota_gpus`."""
        s = self._settings
        listed: dict[str, Any] = self._custom.list_cluster_custom_object(  # type: ignore[assignment]
            GROUP, VERSION, "workloads", _request_timeout=s.timeout_s
        )
        admitted = [w for w in listed.get("items", []) if _admitted_to(w, s.cluster_queue)]
        admitted.sort(key=_admitted_at, reverse=True)
        using = sum(_gpus_of(w, s.gpu_resource) for w in admitted)
        for workload in admitted:
            if using <= quota_gpus:
                return
            meta = workload["metadata"]
            self._custom.patch_namespaced_custom_object(
                GROUP, VERSION, meta["namespace"], "workloads", meta["name"],
                {"spec": {"active": False}}, _content_type=MERGE, _request_timeout=s.timeout_s,
            )  # fmt: skip
            using -= _gpus_of(workload, s.gpu_resource)

    def _read(self) -> PoolState:
        s = self._settings
        scale = self._apps.read_namespaced_deployment_status(
            s.deployment, s.namespace, _request_timeout=s.timeout_s
        )
        queue = self._queue()
        quota = _quota_of(queue, s.flavor, s.gpu_resource)
        stopped = queue.get("spec", {}).get("stopPolicy", "None") != "None"
        used = _usage_of(queue, s.flavor, s.gpu_resource)
        per = s.gpus_per_worker
        return PoolState(
            serving_target=int((scale.spec.replicas if scale.spec else 0) or 0),
            serving_running=int((scale.status.ready_replicas if scale.status else 0) or 0),
            lent_target=0 if stopped else int(quota // per),
            lent_running=math.ceil(used / per),
            observed_at_utc=self._clock(),
        )

    def _queue(self) -> dict[str, Any]:
        s = self._settings
        queue: dict[str, Any] = self._custom.get_cluster_custom_object(  # type: ignore[assignment]
            GROUP, VERSION, "clusterqueues", s.cluster_queue, _request_timeout=s.timeout_s
        )
        return queue

    def _guarded(self, call: Callable[..., Any], *args: Any) -> Any:
        """Kubernetes' errors as the device errors: refused, timed out, unreachable."""
        import urllib3  # noqa: PLC0415 - the kubernetes client's transport

        try:
            return call(*args)
        except self._api_error as exc:
            why = f"{getattr(exc, 'status', '?')} {getattr(exc, 'reason', '') or ''}".strip()
            raise DeviceRejectedError(self._pool_id, f"Kubernetes answered {why}") from exc
        except urllib3.exceptions.TimeoutError as exc:
            raise DeviceTimeoutError(self._pool_id, f"Kubernetes: {exc}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise DeviceUnavailableError(self._pool_id, f"Kubernetes: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise DeviceRejectedError(self._pool_id, f"Kubernetes: unexpected object: "
                                      f"{exc!r}") from exc  # fmt: skip


# -- the ClusterQueue's shape ----------------------------------------------------------------
def _with_quota(queue: dict[str, Any], flavor: str, resource: str, gpus: int, pool_id: str
                ) -> list[dict[str, Any]]:  # fmt: skip
    """The queue's resourceGroups with the flavor's GPU nominalQuota set (a merge patch replaces
    the whole list, so every group goes back)."""
    groups = copy.deepcopy(queue.get("spec", {}).get("resourceGroups") or [])
    for group in groups:
        for quota in group.get("flavors", []):
            if quota.get("name") != flavor:
                continue
            for item in quota.get("resources", []):
                if item.get("name") == resource:
                    item["nominalQuota"] = str(gpus)
                    return groups
    raise DeviceRejectedError(pool_id, f"ClusterQueue has no {resource} quota in flavor "
                              f"{flavor!r}")  # fmt: skip


def _quota_of(queue: dict[str, Any], flavor: str, resource: str) -> float:
    for group in queue.get("spec", {}).get("resourceGroups") or []:
        for quota in group.get("flavors", []):
            if quota.get("name") == flavor:
                for item in quota.get("resources", []):
                    if item.get("name") == resource:
                        return _quantity(item.get("nominalQuota", 0))
    return 0.0


def _usage_of(queue: dict[str, Any], flavor: str, resource: str) -> float:
    for usage in queue.get("status", {}).get("flavorsUsage") or []:
        if usage.get("name") == flavor:
            for item in usage.get("resources", []):
                if item.get("name") == resource:
                    return _quantity(item.get("total", 0))
    return 0.0


def _admitted_to(workload: dict[str, Any], queue: str) -> bool:
    status = workload.get("status", {})
    active = workload.get("spec", {}).get("active", True)
    admitted = any(c.get("type") == "Admitted" and c.get("status") == "True"
                   for c in status.get("conditions", []))  # fmt: skip
    return bool(active and admitted and status.get("admission", {}).get("clusterQueue") == queue)


def _admitted_at(workload: dict[str, Any]) -> str:
    for condition in workload.get("status", {}).get("conditions", []):
        if condition.get("type") == "Admitted":
            return str(condition.get("lastTransitionTime", ""))
    return ""


def _gpus_of(workload: dict[str, Any], resource: str) -> float:
    sets = workload.get("status", {}).get("admission", {}).get("podSetAssignments", [])
    return sum(_quantity(s.get("resourceUsage", {}).get(resource, 0)) for s in sets)


def _quantity(value: Any) -> float:
    """A Kubernetes quantity of whole devices ("8", 8); milli-units ("500m") as fractions."""
    text = str(value).strip()
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    return float(text)
