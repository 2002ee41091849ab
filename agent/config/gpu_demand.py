"""The `gpu_demand` section of the site file: the inference pools whose demand gridflex reads."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

__all__ = ["GpuDemandConfig", "GpuDemandPoolConfig"]


def _http_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL of a /metrics page")
    return url


MetricsUrl = Annotated[str, AfterValidator(_http_url)]
PoolName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
]


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


class GpuDemandConfig(BaseModel):
    """GPU inference demand, read from the inference servers (docs/node.md). The engine does not
    yet move power on it; it is shown on /metrics and the status page."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    pools: dict[PoolName, GpuDemandPoolConfig] = Field(min_length=1)
    """the pools by name"""
