"""`gridflex check-config` through the installed console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_config import BROKEN, ENV, EXAMPLES, EXPECTED_PROBLEMS

GRIDFLEX = shutil.which("gridflex", path=str(Path(sys.executable).parent))


def gridflex(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert GRIDFLEX is not None, "the gridflex console script is not installed in this venv"
    return subprocess.run(
        [GRIDFLEX, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_accepted_with_a_summary(path: Path) -> None:
    result = gridflex("check-config", str(path), env=ENV)
    assert result.returncode == 0, result.stderr
    assert "breakeven $/MWh" in result.stdout
    assert "OK" in result.stdout
    assert ENV["GRIDFLEX_MQTT_PASSWORD"] not in result.stdout + result.stderr


def test_the_summary_gives_kw_and_breakeven_per_class() -> None:
    result = gridflex("check-config", "deploy/examples/west-50mw.yaml", env=ENV)
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert "35,280.0" in rows["s21"]  # 10,080 outlets x 3.5 kW
    assert "114.33" in rows["s21"]  # 49 $/PH/day less 2 % at 17.5 J/TH
    assert "never curtailed" in rows["controls"]


def test_a_broken_file_exits_2_and_names_every_problem(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(BROKEN)
    result = gridflex("check-config", str(site))
    assert result.returncode == 2
    assert f"{len(EXPECTED_PROBLEMS)} problems" in result.stderr
    for line, path, _ in EXPECTED_PROBLEMS:
        assert f"site.yaml:{line}: {path}:" in result.stderr
    assert "(got 'blue')" in result.stderr


def test_a_missing_secret_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRIDFLEX_MQTT_PASSWORD", raising=False)
    result = gridflex("check-config", "deploy/examples/small-site.yaml")
    assert result.returncode == 2
    assert "environment variable GRIDFLEX_MQTT_PASSWORD is not set" in result.stderr
