"""Site-file cases shared by the config tests and the check-config command tests."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "deploy" / "examples").glob("*.yaml"))
ENV = {
    "GRIDFLEX_MQTT_PASSWORD": "s3cret-pw",
    "GRIDFLEX_DISPATCH_HMAC": "hmac-key-of-at-least-thirty-two-bytes",
}


BROKEN = """\
site:
  id: bad site
  timezone: Mars/Olympus
classes:
  s19:
    priority: interruptable
    economics: {kind: mining, hashprice_usd_per_ph_day: 0, efficiency_j_per_th: 21}
  fans: {priority: flexible, follows: nothing}
devices:
  - {id: a, kind: miner, class: s19, rated_kw: 3, min_kw: 5}
  - {id: a, kind: toaster, class: s99, rated_kw: -1, colour: blue}
  - id: c
    kind: gpu
    class: s19
    rated_kw: 3
    driver: {type: modbus, host: x, port: 99999, profile: p}
policy: {stale_posture: panic}
mqtt: {password: "${NOPE_SECRET}"}
"""

EXPECTED_PROBLEMS = [
    (2, "site.id", "should match pattern"),
    (3, "site.timezone", "unknown time zone 'Mars/Olympus'"),
    (6, "classes.s19.priority", "must be one of interruptible, flexible, protected, critical"),
    (7, "classes.s19.economics.hashprice_usd_per_ph_day", "greater than 0"),
    (8, "classes.fans.follows", "names no load class"),
    (10, "devices[0].min_kw", "exceeds rated_kw 3"),
    (11, "devices[1].id", "duplicate of devices[0].id"),
    (11, "devices[1].kind", "Input should be 'miner'"),
    (11, "devices[1].class", "unknown class"),
    (11, "devices[1].rated_kw", "greater than 0"),
    (11, "devices[1].colour", "unknown key"),
    (16, "devices[2].driver.port", "less than or equal to 65535"),
    (17, "policy.stale_posture", "'hold_last', 'curtail_interruptible' or 'run_all'"),
    (18, "mqtt.password", "environment variable NOPE_SECRET is not set"),
]
