"""A fresh install runs every documented command: a wheel built from the checkout, installed
with plain `pip install` into a new venv (no extras), each command run from a directory outside
the checkout, against the peers it needs here (a Mosquitto, the loopback ERCOT server).

Slow (it builds a venv): `make test-install`, which .ci/run runs after `make test`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.adapters.signals.fake_ercot import (
    PASSWORD,
    SUBSCRIPTION_KEY,
    USERNAME,
    FakeErcot,
    api_rows,
    serve,
)
from tests.helpers.peers import Broker, free_port
from tests.helpers.status_page import wait_for_priced_page

pytestmark = [pytest.mark.install, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {"GRIDFLEX_MQTT_PASSWORD": "pw", "GRIDFLEX_DISPATCH_HMAC": "x" * 40}


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without this checkout's venv or import path."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "VIRTUAL_ENV"} and not k.startswith("GRIDFLEX_")}  # fmt: skip
    return {**env, "COLUMNS": "100", **extra}


def _run(bin_dir: Path, cwd: Path, *args: str, env: dict[str, str] | None = None,
         timeout_s: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
    command = [str(bin_dir / "gridflex"), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                          env=env or _clean_env(), timeout=timeout_s, check=False)  # fmt: skip


def _data(bin_dir: Path) -> Path:
    """The price year shipped inside the installed package (not the checkout's copy)."""
    found = subprocess.run([str(bin_dir / "python"), "-c",
                            "import agent, pathlib; print(pathlib.Path(agent.__file__).parent)"],
                           capture_output=True, text=True, check=True, cwd="/")  # fmt: skip
    package = Path(found.stdout.strip())
    assert ROOT not in package.parents, f"imported from the checkout: {package}"
    return package / "data/ercot_rt_spp_15min_hb_hubavg_2024.csv.gz"


def test_the_offline_commands(venv: Path, tmp_path: Path) -> None:
    assert _run(venv, tmp_path, "--version").returncode == 0
    helped = _run(venv, tmp_path, "--help")
    assert helped.returncode == 0
    assert "backtest" in helped.stdout

    site = tmp_path / "small-site.yaml"
    site.write_text((ROOT / "deploy/examples/small-site.yaml").read_text())
    checked = _run(venv, tmp_path, "check-config", "--away", str(site),
                   env=_clean_env(**SECRETS))  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr

    demo = _run(venv, tmp_path, "demo", "--seconds", "0", "--no-mqtt", timeout_s=180)
    assert demo.returncode == 0, demo.stderr
    assert "net earned by curtailing" in demo.stdout

    out = tmp_path / "bt"
    backtest = _run(venv, tmp_path, "backtest", "--prices", str(_data(venv)), "--load-mw", "5",
                    "--breakeven", "60", "--start", "2024-05-01", "--end", "2024-05-15",
                    "--out", str(out))  # fmt: skip
    assert backtest.returncode == 0, backtest.stderr
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"  # matplotlib came with the install
    assert json.loads((out / "summary.json").read_text())["intervals"] == 14 * 96

    # no NVML without the gpu extra: one line that names it, no traceback
    node = _run(venv, tmp_path, "node", "--node-id", "gpu-1", "--prefix", "gridflex/x",
                "--broker-host", "127.0.0.1", "--broker-port", "1")  # fmt: skip
    assert node.returncode != 0
    assert "pip install 'gridflex[gpu]'" in node.stderr
    assert "Traceback" not in node.stderr


def test_prices_fetch_from_the_api(venv: Path, tmp_path: Path) -> None:
    env = _clean_env(ERCOT_API_USERNAME=USERNAME, ERCOT_API_PASSWORD=PASSWORD,
                     ERCOT_API_SUBSCRIPTION_KEY=SUBSCRIPTION_KEY)  # fmt: skip
    with serve(FakeErcot(data={"rt15": api_rows("rt15")})) as fake:
        out = tmp_path / "rt.csv"
        fetched = _run(venv, tmp_path, "prices", "fetch", "--out", str(out), "--base-url",
                       fake.url, "--auth-url", fake.auth_url, "--start", "2024-03-09", "--end",
                       "2024-03-11", env=env)  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    assert len(out.read_text().splitlines()) == 1 + 96 + 92 + 96  # the 10th springs forward


def test_the_service_and_the_commands_that_watch_it(
    venv: Path, tmp_path: Path, own_mqtt_broker: Broker
) -> None:
    site = yaml.safe_load((ROOT / "deploy/examples/local-trial.yaml").read_text())
    page_port = free_port()
    site["prices"]["replay_path"] = str(_data(venv))
    site["mqtt"].update(port=own_mqtt_broker.port)
    site["service"].update(database=str(tmp_path / "trial.sqlite3"), metrics_port=None,
                           status_page_port=page_port)  # fmt: skip
    config = tmp_path / "trial.yaml"
    config.write_text(yaml.safe_dump(site))
    assert _run(venv, tmp_path, "check-config", str(config)).returncode == 0
    log = tmp_path / "run.log"
    with log.open("w") as sink:
        command = [str(venv / "gridflex"), "run", "--config", str(config)]
        service = subprocess.Popen(command, cwd=tmp_path, env=_clean_env(), stdout=sink,
                                   stderr=sink)  # fmt: skip
    try:
        view = wait_for_priced_page(page_port, service, log)
        assert view["telemetry"]["devices_total"] == 52
        status = _run(venv, tmp_path, "status", "--config", str(config))
        assert status.returncode == 0, status.stderr
        assert "gridflex/trial: online" in status.stdout
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=60) == 0
    finally:
        if service.poll() is None:
            service.kill()
    events = _run(venv, tmp_path, "events", "--config", str(config))
    assert events.returncode == 0, events.stderr
    audit = _run(venv, tmp_path, "audit", "--config", str(config), "--since", "1h")
    assert audit.returncode == 0, audit.stderr
    assert "command" in audit.stdout
