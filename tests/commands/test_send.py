"""`gridflex send` as an engineer or a QSE's script uses it: each kind of message built from
flags, signed with the site key from the environment, through a real Mosquitto to a running
`gridflex run`, and its ack printed; a refusal exits 1 with the service's reason, a bad flag
exits 2 naming the field before anything is sent, and a wrong key is refused by the service."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers.mqtt_watch import GRIDFLEX, Watcher
from tests.helpers.peers import Broker

ROOT = Path(__file__).resolve().parents[2]
KEY = "a-site-key-of-thirty-two-bytes-or-more"

# (flags, exit status, ack status); in order: the release ends the dispatch sent before it
CASES = [
    (["dispatch", "--event-id", "send-1", "--limit-kw", "60", "--program", "ERS"], 0, "accepted"),
    (["release", "--event-id", "send-1"], 0, "completed"),
    (["release", "--event-id", "never-sent"], 1, "rejected"),
    (["override", "--override-id", "o-1", "--action", "off", "--class", "s19xp",
      "--for-min", "10", "--issued-by", "alice"], 0, "accepted"),
    (["clear", "--override-id", "o-1", "--issued-by", "alice"], 0, "cleared"),
    (["emergency", "--level", "eea2", "--source", "qse-acme", "--for-min", "30"], 0, "accepted"),
    (["emergency", "--level", "normal", "--source", "qse-acme"], 0, "accepted"),
    (["4cp", "--active", "--source", "qse-acme", "--for-min", "60"], 0, "accepted"),
    (["4cp", "--inactive", "--source", "qse-acme"], 0, "accepted"),
]  # fmt: skip


def _site(tmp_path: Path, broker: Broker) -> Path:
    site = yaml.safe_load((ROOT / "deploy/examples/local-trial.yaml").read_text())
    site["mqtt"].update(port=broker.port, topic_prefix="gridflex/send",
                        hmac_secret="${GRIDFLEX_SITE_KEY}")  # fmt: skip
    site["service"].update(database=str(tmp_path / "send.sqlite3"), metrics_port=None,
                           status_page_port=None)  # fmt: skip
    config = tmp_path / "send.yaml"
    config.write_text(yaml.safe_dump(site))
    return config


def _send(config: Path, flags: list[str], key: str = KEY) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GRIDFLEX_SITE_KEY": key}
    return subprocess.run([*GRIDFLEX, "send", "--config", str(config), *flags], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


def test_each_message_kind_round_trips_through_a_broker_and_the_running_service(
    tmp_path: Path, own_mqtt_broker: Broker
) -> None:
    config = _site(tmp_path, own_mqtt_broker)
    watcher = Watcher(own_mqtt_broker, "gridflex/send")
    service = subprocess.Popen([*GRIDFLEX, "run", "--config", str(config)], cwd=ROOT,
                               env={**os.environ, "GRIDFLEX_SITE_KEY": KEY},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        watcher.wait_for("status", lambda p: p == "online", timeout_s=30)
        for flags, code, status in CASES:
            sent = _send(config, flags)
            assert sent.returncode == code, (flags, sent.stdout, sent.stderr)
            ack = json.loads(sent.stdout.strip().splitlines()[-1])
            assert ack["status"] == status, (flags, ack)
            if code == 1:
                assert f"rejected: {ack['reason']}" in sent.stderr
        # a wrong key: the service refuses it, and says why
        forged = _send(config, ["dispatch", "--event-id", "forged", "--limit-kw", "10"],
                       key="not-the-site-key-but-as-long-as-one")  # fmt: skip
        assert forged.returncode == 1, forged.stderr
        assert "signature" in json.loads(forged.stdout)["reason"]
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=30) == 0
    finally:
        if service.poll() is None:
            service.kill()
        watcher.client.loop_stop()
        watcher.client.disconnect()


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["override", "--override-id", "o-2", "--action", "limit", "--class", "s19xp",
          "--for-min", "5"], "a limit needs limit_kw or limit_pct"),
        (["override", "--override-id", "o-3", "--action", "off", "--for-min", "5"],
         "name exactly one of device_id or class"),
        (["dispatch", "--event-id", "d", "--limit-kw", "5", "--start", "2026-12-07T10:00"],
         "has no UTC offset"),
        (["--key-id", "qse", "release", "--event-id", "d"], "'qse' is not in mqtt.hmac_keys"),
    ],
)  # fmt: skip
def test_a_message_the_service_would_reject_is_refused_before_it_is_sent(
    tmp_path: Path, own_mqtt_broker: Broker, flags: list[str], says: str
) -> None:
    sent = _send(_site(tmp_path, own_mqtt_broker), flags)
    assert sent.returncode == 2, sent.stderr
    assert says in sent.stderr
