"""The local status page, as a site engineer opens it: `gridflex run` on the local trial (plus a
miner that ignores its commands) against a real Mosquitto, with `service.status_page_port` set;
a dispatch, an override and a grid condition arrive over MQTT; a real headless Chromium (Debian's
chromium and chromedriver, driven by Selenium) shows the load on the site's own scale against the
ceiling and the import limit, the last 24 h from the store, the live event with its compliance
after its ramp window, overrides with who set them, the posture coloured with its expiry, alarms
with since-when, device counts that add up, and the decision's reasons; `gridflex status` says
the same; the JSON behind it agrees with the acks; nothing on the page writes, and markup in a
message shows as text. Screenshots are saved beside each test's files (their paths printed) and
into GRIDFLEX_SCREENSHOTS when it is set."""

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
from agent.service.store import Store
from tests.helpers.mqtt_watch import GRIDFLEX, Watcher, ack, now_iso
from tests.helpers.peers import Broker, free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
MARKUP = "<img src=x onerror=document.title='owned'>"


def _site(tmp_path: Path, broker: Broker, page_port: int,
          import_limit_kw: float | None = None) -> Path:  # fmt: skip
    site = yaml.safe_load((ROOT / "deploy/examples/local-trial.yaml").read_text())
    if import_limit_kw is not None:
        site["site"]["import_limit_kw"] = import_limit_kw
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
        assert "cycles compliant after the ramp window" in events
        assert ", worst" in events
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
        watcher.close()


def test_a_port_that_is_taken_leaves_the_service_running_without_its_page() -> None:
    first, second = StatusPage(), StatusPage()
    assert first.serve("127.0.0.1", 0)
    try:
        assert first.port is not None
        assert second.serve("127.0.0.1", first.port) is False
    finally:
        first.close()


def _screenshot(browser: Any, path: Path) -> None:
    """Saved beside the test's files (and into GRIDFLEX_SCREENSHOTS when set), path printed."""
    browser.save_screenshot(str(path))
    print(f"screenshot: {path}")
    shots = os.environ.get("GRIDFLEX_SCREENSHOTS")
    if shots:
        shutil.copy(path, Path(shots) / path.name)


CAPACITY_KW = 48 * 3.25 + 2 * 10.2 + 18 + 6 + 3.25  # the local trial and the stuck miner


def _seed_history(database: Path, site_kw: float) -> int:
    """Yesterday's minutes, as the service stores them: what the page must draw from."""
    store = Store(database)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    rows = 0
    for minutes_ago in range(24 * 60 - 10, 5, -10):
        at = now - timedelta(minutes=minutes_ago)
        ceiling = 60.0 if minutes_ago < 120 else None  # a dispatch two hours ago
        store.save_history(at, {"site_kw": min(site_kw, ceiling or site_kw), "planned_kw": site_kw,
                                "ceiling_kw": ceiling, "price_usd_per_mwh": 25.0 + minutes_ago % 60,
                                "class_kw": {"s19xp": 150.0, "inference": 20.0}})  # fmt: skip
        rows += 1
    store.close()
    return rows


@pytest.mark.parametrize("import_limit_kw", [2000.0, 215.0], ids=["load-10pct", "load-95pct"])
def test_the_page_an_operator_keeps_open(
    tmp_path: Path, own_mqtt_broker: Broker, browser: Any, import_limit_kw: float
) -> None:
    """The load on the site's own scale (axis to the import limit), the last 24 h from the store,
    overrides in force with who set them and their expiry, the grid posture coloured with its
    expiry, alarms with since-when, and device counts that add up; `gridflex status` says the
    same. On a site at 10 % of its import limit and one at 95 %."""
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    config = _site(tmp_path, own_mqtt_broker, port, import_limit_kw)
    seeded = _seed_history(tmp_path / "trial.sqlite3", CAPACITY_KW)
    watcher = Watcher(own_mqtt_broker)
    service = subprocess.Popen([*GRIDFLEX, "run", "--config", str(config)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        watcher.wait_for("status", lambda p: p == "online", timeout_s=30)

        def priced_and_running(payload: str) -> bool:
            t = json.loads(payload)
            return t["price_usd_per_mwh"] is not None and t["site_kw"] > CAPACITY_KW * 0.5

        watcher.wait_for("telemetry", priced_and_running, timeout_s=30)
        expires = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
        # the engineer switches the old miner off; it ignores the command (it keeps drawing)
        watcher.send("override", {"override_id": "maint-9", "action": "off",
                                  "device_id": "stuck-miner", "expires_at": expires.isoformat(),
                                  "issued_by": "j.ortiz", "issued_at": now_iso()})  # fmt: skip

        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 30, poll_frequency=0.25)
        wait.until(lambda d: "maint-9" in _text(d, "overrides")
                   and "device not obeying" in _text(d, "alarms")
                   and d.find_elements("css selector", "#history path.site"))  # fmt: skip
        share = json.loads(_get(f"http://127.0.0.1:{port}/status.json")[2])["telemetry"][
            "site_kw"] / import_limit_kw  # fmt: skip
        _screenshot(browser, tmp_path / f"status-{round(100 * share)}pct.png")

        # the scale is the site's own: the axis runs to the import limit (or the fleet's rating)
        axis = [e.text for e in browser.find_elements("css selector", "#axis span")]
        top = max(CAPACITY_KW, import_limit_kw)
        assert axis[0] == "0 kW"
        assert float(axis[-1].removesuffix(" kW").replace(",", "")) >= top
        assert float(axis[-1].removesuffix(" kW").replace(",", "")) <= top * 1.5
        width = browser.execute_script("return document.getElementById('load-bar').style.width")
        view = json.loads(_get(f"http://127.0.0.1:{port}/status.json")[2])
        t = view["telemetry"]
        scale_top = float(axis[-1].removesuffix(" kW").replace(",", ""))
        assert float(width.removesuffix("%")) == pytest.approx(100 * t["site_kw"] / scale_top,
                                                               abs=3)  # fmt: skip
        assert f"% of the {import_limit_kw:,.0f} kW import limit" in _text(browser, "load-line")
        limit_left = browser.execute_script(
            "return document.getElementById('limit-mark').style.left"
        )
        assert float(limit_left.removesuffix("%")) == pytest.approx(
            100 * import_limit_kw / scale_top
        )

        # the last 24 h, from the store: one point a stored minute, the dispatch's ceiling too
        path = browser.find_element("css selector", "#history path.site").get_attribute("d")
        assert path.count("L") + path.count("M") >= seeded
        assert browser.find_elements("css selector", "#history path.ceiling")
        assert browser.find_elements("css selector", "#price-history path.price")
        assert len(browser.find_elements("css selector", "#history path.class")) == 2

        # a conservation appeal: the posture coloured, with its expiry
        appeal_until = (datetime.now(UTC) + timedelta(minutes=45)).isoformat()
        watcher.send("grid/emergency", {"level": "conservation", "issued_at": now_iso(),
                                        "expires_at": appeal_until})  # fmt: skip
        watcher.wait_for("grid/ack", lambda p: '"accepted"' in p, timeout_s=15)
        wait.until(lambda d: "CONSERVATION" in _text(d, "grid-posture"))
        _screenshot(browser, tmp_path / f"status-{round(100 * share)}pct-conservation.png")
        view = json.loads(_get(f"http://127.0.0.1:{port}/status.json")[2])
        t = view["telemetry"]
        overrides = _text(browser, "overrides")
        assert "device stuck-miner" in overrides
        assert "j.ortiz" in overrides
        posture = browser.find_element("id", "grid-posture")
        assert "posture-conservation" in posture.get_attribute("class")
        assert "until" in posture.text
        alarms = _text(browser, "alarms")
        assert "stuck-miner" in alarms
        (alarm,) = [a for a in t["alarms"] if a["kind"] == "device_not_obeying"]
        assert datetime.fromisoformat(alarm["since"]) <= datetime.now(UTC)
        # counts that add up, and agree with the alarm list
        states = t["device_states"]
        assert sum(states.values()) == t["devices_total"]
        assert states["not_obeying"] == 1
        assert "1 not obeying" in _text(browser, "counts-line")

        shown = subprocess.run([*GRIDFLEX, "status", "--config", str(config)], cwd=ROOT,
                               capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        assert "ALARM device not obeying on stuck-miner since" in shown.stdout
        assert "override maint-9 on device stuck-miner: off, set by j.ortiz, until" in shown.stdout
        assert "grid conservation until" in shown.stdout
        assert f"of the {import_limit_kw:,.1f} kW import limit" in shown.stdout
        assert "1 not obeying" in shown.stdout

        # the broker goes away: the page (served by the service itself) says so, with since when
        own_mqtt_broker.stop()
        try:
            wait.until(lambda d: "broker down" in _text(d, "alarms"))
        finally:
            own_mqtt_broker.start()
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=30) == 0
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(timeout=10)
        watcher.close()
