"""The local status page, as a site engineer opens it: `gridflex run` on the local trial (plus a
miner that ignores its commands) against a real Mosquitto, with `service.status_page_port` set;
a dispatch and an override arrive over MQTT; a real headless Chromium (Debian's chromium and
chromedriver, driven by Selenium) shows the load against the ceiling, the live event with its
compliance, the device not obeying and the decision's reasons; the JSON behind it agrees with the
acks; nothing on the page writes, and markup in a message shows as text."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.app.status_page import StatusPage
from tests.helpers.mqtt_watch import GRIDFLEX, Watcher, ack, now_iso
from tests.helpers.peers import Broker, free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
MARKUP = "<img src=x onerror=document.title='owned'>"


def _site(tmp_path: Path, broker: Broker, page_port: int) -> Path:
    site = yaml.safe_load((ROOT / "deploy/examples/local-trial.yaml").read_text())
    site["mqtt"].update(port=broker.port, topic_prefix="gridflex/e2e")
    site["service"].update(database=str(tmp_path / "trial.sqlite3"), metrics_port=None,
                           status_page_port=page_port)  # fmt: skip
    # an older, less efficient miner: the first a dispatch sheds; it keeps drawing regardless
    site["classes"]["s9"] = {"priority": "interruptible",
                             "economics": {"kind": "mining", "hashprice_usd_per_ph_day": 49.0,
                                           "efficiency_j_per_th": 40}}  # fmt: skip
    site["devices"].append({"id": "stuck-miner", "kind": "miner", "class": "s9",
                            "rated_kw": 3.25, "min_on_s": 0, "min_off_s": 0,
                            "driver": {"type": "simulated", "stuck": True}})  # fmt: skip
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium and chromium-driver are missing (.ci/run installs them)")
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install chromium "
                    "chromium-driver")  # fmt: skip
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-sync",
                 "--disable-component-update", "--window-size=1280,1400"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver: Any, element_id: str) -> str:
    return str(driver.find_element("id", element_id).text)


def test_the_status_page_shows_the_site_as_the_acks_tell_it(
    tmp_path: Path, own_mqtt_broker: Broker, browser: Any
) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    config = _site(tmp_path, own_mqtt_broker, port)
    watcher = Watcher(own_mqtt_broker)
    service = subprocess.Popen([*GRIDFLEX, "run", "--config", str(config)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        watcher.wait_for("status", lambda p: p == "online", timeout_s=30)
        watcher.wait_for("telemetry", lambda p: json.loads(p)["price_usd_per_mwh"] is not None,
                         timeout_s=30)  # fmt: skip
        watcher.send("dispatch", {"event_id": "trial-1", "kind": "limit", "target_kw": 60,
                                  "program": "ERS", "issued_at": now_iso()})  # fmt: skip
        expires = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        watcher.send("override", {"override_id": "maint-7", "action": "limit",
                                  "device_id": "gpu-0001", "limit_kw": 5, "expires_at": expires,
                                  "issued_by": MARKUP, "issued_at": now_iso()})  # fmt: skip
        active = json.loads(watcher.wait_for("dispatch/ack", ack("trial-1", "active"),
                                             timeout_s=30))  # fmt: skip

        browser.get(url + "/")
        wait = WebDriverWait(browser, 30, poll_frequency=0.25)
        wait.until(lambda d: d.find_elements("css selector", "#events td.status-active")
                   and "stuck-miner" in _text(d, "attention")
                   and "maint-7" in _text(d, "decision"))  # fmt: skip
        browser.save_screenshot(str(tmp_path / "status-page.png"))
        shots = os.environ.get("GRIDFLEX_SCREENSHOTS")
        if shots:
            shutil.copy(tmp_path / "status-page.png", Path(shots) / "status-page.png")

        assert _text(browser, "site") == "trial"
        assert "ceiling 60 kW" in _text(browser, "load-line")
        assert "price $" in _text(browser, "price-line")
        events = _text(browser, "events")
        assert "trial-1 (ERS)" in events
        assert "active" in events
        assert "cycles compliant, worst" in events
        attention = _text(browser, "attention")
        assert "stuck-miner" in attention
        assert "not obeying" in attention
        assert "1 not obeying" in _text(browser, "attention-line")
        decision = _text(browser, "decision")
        assert "dispatch" in decision
        # the engineer's name went in as text: shown literally, never run or parsed as markup
        assert MARKUP in decision
        assert browser.title == "gridflex status"
        assert browser.find_elements("css selector", "#decision img") == []

        status, headers, body = _get(url + "/status.json")
        assert status == 200
        assert headers["Content-Security-Policy"].startswith("default-src 'self'")
        view = json.loads(body)
        assert view["telemetry"]["site_ceiling_kw"] == 60
        assert view["telemetry"]["site_kw"] <= 60 * 1.005
        (event,) = view["events"]
        assert event["event_id"] == "trial-1"
        assert event["requested_kw"] == active["requested_kw"]
        assert event["compliance"]["cycles"] >= 1
        assert view["attention"]["counts"] == {"not_obeying": 1}
        assert view["attention"]["ids"] == "stuck-miner"
        reasons = {g["reason"] for g in view["decision"]["groups"]}
        assert any("override maint-7" in r for r in reasons)

        # read-only: writes are refused, nothing outside the page's files is served
        request = urllib.request.Request(url + "/status.json", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 501
        refused.value.close()
        assert _get(url + "/../../etc/passwd")[0] == 404
        assert _get(url + "/agent/app/status_page.py")[0] == 404

        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=30) == 0
    finally:
        if service.poll() is None:
            service.kill()
        watcher.client.loop_stop()
        watcher.client.disconnect()


def test_a_port_that_is_taken_leaves_the_service_running_without_its_page() -> None:
    first, second = StatusPage(), StatusPage()
    assert first.serve("127.0.0.1", 0)
    try:
        assert first.port is not None
        assert second.serve("127.0.0.1", first.port) is False
    finally:
        first.close()
