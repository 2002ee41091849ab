"""check-config refuses ratings no site has (watts typed for kW) and protected load the import
limit cannot carry, naming the field; a fleet rated far above its import limit is a warning."""

from __future__ import annotations

import pytest

from agent.config.load import parse_config
from agent.config.problems import ConfigFileError

SITE = """
site: {{id: t, import_limit_kw: {limit}{maxima}}}
classes:
  asic: {{priority: interruptible, economics: {{kind: fixed, value_usd_per_mwh: 60}}}}
  gpu: {{priority: protected}}
  controls: {{priority: critical}}
devices:
  - {{id: m1, class: asic, kind: miner, rated_kw: {miner_kw}, driver: {{type: simulated}}}}
  - {{id: g1, class: gpu, kind: gpu, rated_kw: {gpu_kw}, driver: {{type: simulated}}}}
  - {{id: c1, class: controls, kind: other, rated_kw: 5, driver: {{type: simulated}}}}
"""


def site(*, limit: float = 20_000, miner_kw: float = 3.5, gpu_kw: float = 10.0,
         maxima: str = "") -> str:  # fmt: skip
    return SITE.format(limit=limit, miner_kw=miner_kw, gpu_kw=gpu_kw, maxima=maxima)


@pytest.mark.parametrize(
    ("text", "field", "says"),
    [
        (site(miner_kw=3500), "devices[0].rated_kw", "kW, not W? (3500 W would be 3.5 kW)"),
        (site(gpu_kw=40), "devices[1].rated_kw", "no gpu draws more than 15 kW"),
        (site(limit=12, gpu_kw=10), "site.import_limit_kw",
         "protected and critical load is rated 15 kW, above the import limit"),
    ],
)  # fmt: skip
def test_an_impossible_site_is_refused_with_the_field_named(text: str, field: str,
                                                            says: str) -> None:  # fmt: skip
    with pytest.raises(ConfigFileError) as refused:
        parse_config(text, env={})
    message = str(refused.value)
    assert field in message
    assert says in message


def test_the_maximum_of_a_kind_is_the_site_files_to_set() -> None:
    config = parse_config(site(gpu_kw=40, maxima=", plausible_max_kw: {gpu: 50}"), env={})
    assert config.devices[1].rated_kw == 40


def test_a_fleet_far_above_the_import_limit_is_a_warning() -> None:
    config = parse_config(site(limit=16, miner_kw=3.5), env={})
    assert not any("times site.import_limit_kw" in w for w in config.warnings())
    config = parse_config(site(limit=16, miner_kw=40, maxima=", plausible_max_kw: {miner: 50}"),
                          env={})  # fmt: skip
    (warning,) = [w for w in config.warnings() if "times site.import_limit_kw" in w]
    assert "rated 55 kW, 3.4 times site.import_limit_kw 16" in warning
