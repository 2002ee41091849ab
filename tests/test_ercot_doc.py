"""docs/ercot.md's `ercot` section is a valid one, and its point map is the outstation's."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from adapters.scada.dnp3_outstation import AI, AO, BI
from agent.config.ercot import ErcotConfig

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
