"""docs/hybrid.md's site file is a valid site file, and its pool is the one the engine sizes."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from agent.config import parse_config
from agent.config.gpu_demand import KueueSchedulerConfig

DOC = Path(__file__).resolve().parents[1] / "docs/hybrid.md"


def test_the_documented_hybrid_site_parses_and_declares_its_pool() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    (text,) = [b for b in blocks if b.startswith("site:")]
    env = {"GRIDFLEX_NODE_KEY": "k" * 32, "GRIDFLEX_MQTT_PASSWORD": "p"}
    config = parse_config(text, env=env)
    (pool,) = config.decision_policy().pools
    assert (pool.name, pool.load_class, pool.requests_per_server) == ("chat", "gpu", 32)
    assert [(t.give_up_fraction, t.for_s) for t in pool.flex_tiers] == [(0.3, 1800), (0.25, 10800)]
    assert (pool.service_level, pool.service_level_s) == ("ttft", 2.0)
    assert pool.shrink_fraction == 0.01
    assert (pool.headroom_fraction, pool.spare_sqrt, pool.warmup_s) == (0.0, 3.0, 180.0)
    # the priced cap the doc works out: $1,909/MWh capped 35 % at exponent 0.3 is $661/MWh
    assert pool.power_speed_exponent == 0.3
    assert round(pool.cap_value(1909.0, 0.35) or 0.0) == 661


def test_the_documented_kueue_scheduler_is_a_valid_one() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    (text,) = re.findall(r"  ```yaml\n(.*?)  ```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) == 2
    scheduler = KueueSchedulerConfig.model_validate(yaml.safe_load(text)["scheduler"])
    assert (scheduler.cluster_queue, scheduler.gpus_per_worker) == ("flex", 8)
