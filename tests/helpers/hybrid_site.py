"""A hybrid site file (miners and one inference pool) for the service tests."""

from __future__ import annotations

SITE = """
site: {{id: gpu-demand}}
classes:
  miners: {{priority: interruptible, economics: {{kind: fixed, value_usd_per_mwh: 90}}}}
devices:
  - {{id: miner, kind: miner, class: miners, count: 2, rated_kw: 3.25, driver: {{type: simulated}}}}
prices: {{source: none}}
service: {{cycle_s: 0.2, database: "{db}", metrics_port: null}}
gpu_demand:
  pools:
    chat: {{server: vllm, endpoints: ["{a}", "{b}"], scrape_every_s: 1, stale_after_s: 5}}
"""


HYBRID = (
    SITE.replace(
        "  - {{id: miner,",
        "  - {{id: gpu, kind: gpu, class: gpu, count: 8, rated_kw: 1.2, min_kw: 0.4,\n"
        "      idle_kw: 0.1, control: power_limit, driver: {{type: simulated}}}}\n  - {{id: miner,",
    )
    .replace(
        "classes:\n",
        "classes:\n  gpu: {{priority: protected}}\n",
    )
    .replace(
        "stale_after_s: 5}}",
        "stale_after_s: 5,\n"
        "           engine: {{load_class: gpu, requests_per_server: 40, queue_time_target_s: 2,\n"
        "                    lend_value_usd_per_mwh: 100}}}}",
    )
)
