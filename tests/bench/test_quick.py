"""Every bench runs: each script's --quick mode (small sizes, one round) prints one JSON line
with its figures, so a bench that stopped working fails `make test` instead of waiting for
the next `make bench`. The full sizes stay for `make bench`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.peers import MOSQUITTO

ROOT = Path(__file__).resolve().parents[2]
# a bench is a script (it runs as __main__); the others are a bench's parts (the hybrid
# simulator and its world, the oracle), imported
SCRIPTS = sorted(p.name for p in ROOT.joinpath("bench").glob("*.py")
                 if 'if __name__ == "__main__":' in p.read_text())  # fmt: skip
NEEDS_BROKER = {"dispatch.py"}


def test_every_bench_script_is_covered() -> None:
    """A new bench is picked up here by its file; a rename must not drop one silently."""
    assert {"audit_volume.py", "backtest.py", "decide.py", "dispatch.py", "fanout.py", "hybrid.py",
            "openadr_latency.py", "oracle.py", "prices_fetch.py"} <= set(SCRIPTS)  # fmt: skip


@pytest.mark.timeout(240)
@pytest.mark.parametrize("script", SCRIPTS)
def test_the_quick_mode_prints_one_json_line(script: str) -> None:
    if script in NEEDS_BROKER and MOSQUITTO is None:
        pytest.skip("no mosquitto binary: .ci/run installs it")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=220, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout[-2000:]
    figures = json.loads(lines[0])
    assert figures["bench"] == script.removesuffix(".py")
    assert figures["quick"] is True
