"""The `gpu_demand` section of the site file: the inference pools whose demand gridflex reads."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

__all__ = ["EngineConfig", "GpuDemandConfig", "GpuDemandPoolConfig", "RayServeSchedulerConfig"]


def _http_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL of a /metrics page")
    return url


MetricsUrl = Annotated[str, AfterValidator(_http_url)]
PoolName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
]


class FlexTierConfig(BaseModel):
    """Power the pool's serving servers may give up to a site ceiling, and for how long."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    give_up_pct: float = Field(gt=0, le=100)
    """share of serving power that may be given up (power caps through `gridflex node`)"""
    for_s: float = Field(gt=0, le=7 * 86400)
    """for at most this long from the first cap"""


class RayServeSchedulerConfig(BaseModel):
    """The pool's Ray Serve instance (docs/hybrid.md): serving and lent workers are two
    applications' replica counts, set through the Serve REST API on the dashboard."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    kind: Literal["ray_serve"]
    """the scheduler"""
    dashboard_url: MetricsUrl
    """the Ray dashboard, http://<head>:8265"""
    inference_app: str = Field(min_length=1)
    """the Serve application that serves inference"""
    inference_deployment: str = Field(min_length=1)
    """its deployment whose replicas are the serving servers"""
    flexible_app: str = Field(min_length=1)
    """the Serve application of the flexible work idle servers are lent to"""
    flexible_deployment: str = Field(min_length=1)
    """its deployment whose replicas are the lent servers"""
    workers_per_server: int = Field(default=1, ge=1, le=64)
    """replicas one server carries"""
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    """one request's timeout"""


class KueueSchedulerConfig(BaseModel):
    """The pool on Kubernetes (docs/hybrid.md): serving workers are the inference Deployment's
    replicas, lent workers are GPU quota of a Kueue ClusterQueue (the `kueue` extra)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    kind: Literal["kueue"]
    """the scheduler"""
    kubeconfig: str | None = None
    """the kubeconfig file to use; null: the in-cluster service account"""
    context: str | None = None
    """the kubeconfig context; null: its current one"""
    cluster_queue: str = Field(min_length=1)
    """the ClusterQueue that admits the flexible work"""
    flavor: str = Field(min_length=1)
    """its ResourceFlavor whose GPU quota is the lent capacity"""
    gpu_resource: str = "nvidia.com/gpu"
    """the GPU resource name in the quota"""
    gpus_per_worker: int = Field(default=1, ge=1, le=64)
    """GPUs of quota per lent worker"""
    namespace: str = Field(min_length=1)
    """the namespace of the inference Deployment"""
    deployment: str = Field(min_length=1)
    """the inference Deployment whose replicas are the serving workers"""
    drain: bool = True
    """no worker lent: evict admitted work (HoldAndDrain); false: let it finish (Hold)"""
    workers_per_server: int = Field(default=1, ge=1, le=64)
    """workers one server carries"""
    timeout_s: float = Field(default=10.0, gt=0, le=60)
    """one request's timeout"""


class EngineConfig(BaseModel):
    """How the engine sizes the pool from its demand (docs/hybrid.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    load_class: str = Field(min_length=1)
    """the protected load class of the pool's GPU servers"""
    requests_per_server: float = Field(gt=0, le=100000)
    """requests (running and waiting) one server carries while holding the service level"""
    queue_time_target_s: float | None = Field(default=None, gt=0, le=3600)
    """the service level as a mean queue time (Triton reports it); above it the pool grows"""
    ttft_target_s: float | None = Field(default=None, gt=0, le=3600)
    """the service level as a mean time to first token (vLLM reports it); give one of the two"""
    headroom_pct: float = Field(default=25.0, ge=0, le=400)
    """servers kept serving above what the demand needs, for bursts between scrapes"""
    min_serving: int = Field(default=1, ge=0)
    """servers that always serve"""
    shrink_pct: float = Field(default=1.0, gt=0, le=100)
    """the most of the pool's servers released from serving per decision, as demand falls"""
    spare_sqrt: float = Field(default=0.0, ge=0, le=20)
    """spare servers per square root of the servers the demand needs, on top of headroom_pct
    (square-root staffing: 3 keeps about 30 spare for 100 servers, 95 for 1,000)"""
    warmup_s: float = Field(default=0.0, ge=0, le=3600)
    """how long a server taken back from lent (or paused) work takes to serve (its model
    loads); a rising demand is met where its trend will be this long from now"""
    power_speed_exponent: float | None = Field(default=None, gt=0, le=1)
    """a serving server capped to a fraction f of its power keeps f to this power of its
    throughput (memory-bound inference: about 0.3); given, a cap within the flex tier is priced
    by the throughput it costs and competes with miners and lent work by value; null: caps come
    after every interruptible and flexible load"""
    flex_tiers: list[FlexTierConfig] = Field(default_factory=list)
    """power the pool may give up to a ceiling, once miners and flexible load are cut"""
    lend_value_usd_per_mwh: float | None = None
    """idle servers are lent to flexible work while the price is at or below this; null: never"""
    scheduler: (
        Annotated[RayServeSchedulerConfig | KueueSchedulerConfig, Field(discriminator="kind")]
        | None
    ) = None
    """the workload scheduler that puts servers to serving and lent work; null: power only"""

    @model_validator(mode="after")
    def _one_service_level(self) -> EngineConfig:
        if (self.queue_time_target_s is None) == (self.ttft_target_s is None):
            raise ValueError("give the service level as queue_time_target_s or ttft_target_s "
                             "(one of them)")  # fmt: skip
        return self


class GpuDemandPoolConfig(BaseModel):
    """One inference pool: servers of one kind whose /metrics pages say how much is asked."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    server: Literal["vllm", "triton", "tgi"]
    """the inference server the endpoints belong to"""
    endpoints: list[MetricsUrl] = Field(min_length=1)
    """the /metrics page of each server in the pool"""
    scrape_every_s: float = Field(default=5.0, ge=1, le=300)
    """how often every endpoint is read"""
    stale_after_s: float = Field(default=30.0, ge=1, le=3600)
    """a demand older than this is not relied on (shown as stale)"""
    timeout_s: float = Field(default=2.0, gt=0, le=30)
    """one endpoint's timeout"""
    engine: EngineConfig | None = None
    """size the pool from its demand and lend its idle servers; null: demand is only shown"""


class GpuDemandConfig(BaseModel):
    """GPU inference demand, read from the inference servers (docs/node.md). A pool with an
    `engine` section is sized from it by the engine, idle servers lent (docs/hybrid.md); the
    rest is shown on /metrics and the status page."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    pools: dict[PoolName, GpuDemandPoolConfig] = Field(min_length=1)
    """the pools by name"""
