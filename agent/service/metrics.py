"""Prometheus metrics of the service (prometheus-client), on a registry of its own.

A registry per service keeps tests (several services in one process) from colliding on the
default global registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent.domain.signals import GpuDemand

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cycle_seconds = Histogram(
            "gridflex_cycle_seconds",
            "Duration of one cycle: snapshot, decide, apply, verify, publish",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.dispatch_verified_seconds = Histogram(
            "gridflex_dispatch_to_verified_seconds",
            "From receiving a dispatch to the site's load verified under its ceiling",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.site_kw = Gauge(
            "gridflex_site_kw", "Site load, verified (measured or applied)", registry=r
        )
        self.planned_kw = Gauge("gridflex_planned_kw", "Site load as last decided", registry=r)
        self.class_kw = Gauge(
            "gridflex_class_kw", "Planned load per class", ["load_class"], registry=r
        )
        self.price = Gauge("gridflex_price_usd_per_mwh", "Price the last decision used", registry=r)
        self.devices_available = Gauge(
            "gridflex_devices_available", "Devices reachable now", registry=r
        )
        self.devices_total = Gauge("gridflex_devices_total", "Devices configured", registry=r)
        self.active_events = Gauge(
            "gridflex_active_events", "Dispatch events accepted or active", registry=r
        )
        self.grid_emergency = Gauge(
            "gridflex_grid_emergency_level",
            "Grid condition in force: 0 normal, 1 conservation, 2-4 EEA1-EEA3", registry=r,
        )  # fmt: skip
        self.fourcp_warning = Gauge(
            "gridflex_fourcp_warning", "1 while a 4CP peak warning is on", registry=r
        )
        self.events_non_compliant = Gauge(
            "gridflex_events_non_compliant",
            "Live events whose verified site load is over their ceiling now",
            registry=r,
        )
        self.events_went_non_compliant = Counter(
            "gridflex_events_went_non_compliant",
            "Times a live event went over its ceiling after being verified under it",
            registry=r,
        )
        self.commands = Counter(
            "gridflex_device_commands", "Device commands applied", ["result"], registry=r
        )
        self.errors = Counter("gridflex_errors", "Errors by kind", ["kind"], registry=r)
        self.messages = Counter(
            "gridflex_messages", "MQTT messages in, by topic and outcome", ["topic", "outcome"],
            registry=r,
        )  # fmt: skip

        self.gpu_demand = Gauge(
            "gridflex_gpu_demand", "Inference demand per pool, from its servers' metrics",
            ["pool", "what"], registry=r,
        )  # fmt: skip
        self.gpu_demand_endpoints_up = Gauge(
            "gridflex_gpu_demand_endpoints_up", "Endpoints of the pool that answered", ["pool"],
            registry=r,
        )  # fmt: skip

        self.pool_servers = Gauge(
            "gridflex_pool_servers", "An inference pool's servers by use, as last decided "
            "(needed, serving, lent, paused, capped)", ["pool", "use"], registry=r,
        )  # fmt: skip
        self.pool_give_up_kw = Gauge(
            "gridflex_pool_give_up_kw", "Serving power an inference pool gave up to a ceiling",
            ["pool"], registry=r,
        )  # fmt: skip

    def record_gpu_demand(self, demand: GpuDemand) -> None:
        """`what`: waiting, running, kv_cache_usage, queue_time_seconds, ttft_seconds (those the
        server has)."""
        values = {"waiting": demand.waiting, "running": demand.running,
                  "kv_cache_usage": demand.kv_cache_usage,
                  "queue_time_seconds": demand.queue_time_s,
                  "ttft_seconds": demand.ttft_s}  # fmt: skip
        for what, value in values.items():
            if value is not None:
                self.gpu_demand.labels(pool=demand.pool, what=what).set(value)
        self.gpu_demand_endpoints_up.labels(pool=demand.pool).set(demand.endpoints_up)
