"""Ratings a site file can hold but no site has: watts typed for kW, protected load the site's
connection cannot carry. Checked on the raw data, so each is reported with its path and line
alongside every other problem of the file (agent.config.load).

A device's rated_kw above its kind's plausible maximum (times its `units`, for a tank or a
container that stands for many machines) is an error (`site.plausible_max_kw`
sets the maxima: a miner 20 kW, a GPU server 15 kW, a PDU outlet 25 kW by default; an S21 XP
Hydro draws 5.7 kW, an 8-GPU H100 server about 10 kW, a 30 A 240 V outlet 7.2 kW). Protected
and critical load rated above the import limit is an error: no ceiling could ever be met.
A fleet rated far above the import limit is a warning (SiteConfig.warnings): valid for a site
that never runs everything at once, and a typo otherwise.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_MAX_KW", "FLEET_OVER_LIMIT_RATIO", "plausibility_problems"]

DEFAULT_MAX_KW = {"miner": 20.0, "gpu": 15.0, "pdu_outlet": 25.0}
FLEET_OVER_LIMIT_RATIO = 3.0  # a fleet rated beyond this many times the import limit: a warning
_KEPT = frozenset({"protected", "critical"})

Problem = tuple[tuple[int | str, ...], Any, str]


def plausibility_problems(raw: dict[str, Any]) -> list[Problem]:
    site = raw.get("site") if isinstance(raw.get("site"), dict) else {}
    assert isinstance(site, dict)
    maxima = dict(DEFAULT_MAX_KW)
    declared = site.get("plausible_max_kw")
    if isinstance(declared, dict):
        maxima.update({str(k): float(v) for k, v in declared.items()
                       if isinstance(v, int | float)})  # fmt: skip
    classes = raw.get("classes") if isinstance(raw.get("classes"), dict) else {}
    assert isinstance(classes, dict)
    devices = raw.get("devices") if isinstance(raw.get("devices"), list) else []
    assert isinstance(devices, list)
    problems: list[Problem] = []
    kept_kw = 0.0
    for i, device in enumerate(devices):
        if not isinstance(device, dict):
            continue
        rated = device.get("rated_kw")
        if not isinstance(rated, int | float) or isinstance(rated, bool):
            continue
        kind = str(device.get("kind", ""))
        units = device.get("units", 1)
        units = units if isinstance(units, int) and not isinstance(units, bool) and units > 0 else 1
        most = maxima.get(kind)
        if most is not None and rated > most * units:
            hint = ""
            if 0 < rated / 1000.0 <= most * units:
                hint = f": kW, not W? ({rated:g} W would be {rated / 1000.0:g} kW)"
            elif units == 1:
                hint = "; a tank or container of many: set units"
            whom = f"no {kind} draws" if units == 1 else f"no {units} of kind {kind} draw"
            problems.append((("devices", i, "rated_kw"), rated,
                             f"{whom} more than {most * units:g} kW (site.plausible_max_kw)"
                             + hint))  # fmt: skip
        spec = classes.get(device.get("class"))
        priority = str(spec.get("priority", "")).lower() if isinstance(spec, dict) else ""
        if priority in _KEPT:
            kept_kw += float(rated)
    limit = site.get("import_limit_kw")
    if isinstance(limit, int | float) and not isinstance(limit, bool) and kept_kw > limit:
        problems.append((("site", "import_limit_kw"), limit,
                         f"protected and critical load is rated {kept_kw:g} kW, above the import "
                         "limit: no ceiling could be met without cutting it"))  # fmt: skip
    return problems
