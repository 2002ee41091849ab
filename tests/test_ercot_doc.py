"""docs/ercot.md's `ercot` section is a valid one, and its point map is the outstation's."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from adapters.scada.dnp3_outstation import AI, AO, BI
from agent.config.ercot import ErcotConfig
from tests.service.site import site_config

DOC = Path(__file__).resolve().parents[1] / "docs/ercot.md"


def test_the_documented_ercot_section_is_valid() -> None:
    (text,) = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    config = ErcotConfig.model_validate(yaml.safe_load(text)["ercot"])
    resource = config.model()
    assert resource.tolerance_kw(40_000) == 3000.0  # 3 % of 40 MW is less than 3 MW
    assert resource.normal_ramp.slowest_kw_per_min(10_000, 30_000) == 400.0
    assert config.dnp3 is not None


def test_the_documented_point_map_is_the_outstations() -> None:
    rows = re.findall(r"^\| (Analog output|Analog input|Binary input) \| (\d+) \| (.*?) \|$",
                      DOC.read_text(), flags=re.MULTILINE)  # fmt: skip
    found = {(kind, int(index)) for kind, index, _ in rows}
    ours = {("Analog output", v) for k, v in vars(AO).items() if k.isupper()}
    ours |= {("Analog input", v) for k, v in vars(AI).items() if k.isupper()}
    ours |= {("Binary input", v) for k, v in vars(BI).items() if k.isupper()}
    assert found == ours


def test_a_tolerance_floor_the_site_cannot_miss_is_warned_about() -> None:

    ramp = "normal_ramp: [{at_kw: 0, up_kw_per_min: 60, down_kw_per_min: 60}]"
    small = site_config(
        Path("/tmp/x.db"), 1502, mqtt=f"ercot: {{resource: R1, {ramp}}}"
    )  # 3 MW on a 361 kW site
    (warning,) = [w for w in small.warnings() if "ercot.tolerance_min_kw" in w]
    assert "3,000 kW is more than a tenth of the site's 361 kW rated" in warning
    own = site_config(
        Path("/tmp/x.db"), 1502, mqtt=f"ercot: {{resource: R1, tolerance_min_kw: 2, {ramp}}}"
    )
    assert not [w for w in own.warnings() if "ercot" in w]
