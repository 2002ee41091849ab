"""The status page of a running `gridflex run`, as the install tests wait for it."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path


def wait_for_priced_page(
    port: int, service: subprocess.Popen[bytes], log: Path
) -> dict[str, object]:
    """The status page's JSON once telemetry has a price (the page's files came installed)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert service.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as page:
                assert b"gridflex status" in page.read()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=2) as got:
                view = json.loads(got.read())
            telemetry = view.get("telemetry")
            if isinstance(telemetry, dict) and telemetry.get("price_usd_per_mwh") is not None:
                return dict(view)
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError("the status page never showed a priced telemetry")
